"""Copy a bundle to a device over the OpenSSH client and run its self-test there.

    edgebn deploy BUNDLE --host pi@raspberrypi.local [--selftest] [--bench] [--trust KEY.pub]
    edgebn deploy --rollback --host pi@raspberrypi.local

The bundle's manifest is checked here first (a damaged bundle is never shipped). The
device keeps releases side by side and one symlink to the live one:

    DEST/releases/<first 16 hex of manifest.json's sha256>/   one bundle each, never edited
    DEST/current -> releases/<id>                              what runs
    DEST/releases.log                                          the history of current, oldest first

Everything a deploy or rollback changes on the device happens under one lock per
destination (``flock DEST/.lock``), so deploys to one device from many hosts, or one host
listed many times, run one after the other. A bundle travels as one tar stream over
``ssh`` into ``DEST/releases/.<id>.incoming.<pid>``; on a device that trusts a signing key
the device's own verifier (installed by ``--trust`` beside the trust file, outside every
bundle: edgebn/deploy/device/verify.py) checks that staged copy — signature, exactly the listed
files, every hash — before it becomes a release. Then it is renamed to its release
directory, ``current`` is switched with ``ln -sfn`` to a temporary link and ``mv -T`` over
``current`` (GNU mv: one rename(2)), and its id is appended to releases.log, with
SIGHUP/INT/TERM ignored from the switch to the log line, so ``current`` is always the
last line of releases.log. There is no moment without a working bundle, a copy cut short
leaves ``current`` as it was, the live release is never removed, and the leftovers of a
deploy that died are removed by the next one. Redeploying the live release keeps its
directory (releases are content-addressed). ``--rollback`` drops the last line of
releases.log and points ``current`` at the line before it, under the same lock.
``--selftest`` and ``--bench`` run ``predict.py --selftest/--bench --json`` in
``DEST/current``, through the verifier on a trusting device
(``python3 -I verify.py run DEST/current ...``), else as ``python3 -I predict.py``.
With ``--trust KEY.pub`` the bundle's signature is checked here against that key before
anything is copied. Authentication is the user's own
ssh setup (keys, agent, ~/.ssh/config); ``BatchMode`` is on, so a password prompt fails
instead of hanging. Many hosts at once: edgebn.deploy.fleet.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import shlex
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.deploy.bundle import DEVICE_DIR, load_device_module
from edgebn.errors import EdgebnError

SSH_TIMEOUT_S = 600
KEEPALIVE_S = 10  # ssh's ServerAliveInterval; 3 unanswered probes end the connection
DEVICE_TRUST = "~/.config/edgebn/allowed_signers"  # predict.py's default; $EDGEBN_TRUST overrides
VERIFIER = "verify.py"  # installed beside the device's trust file by --trust
EXIT_LOCKED, EXIT_NO_SPACE, EXIT_REFUSED = 4, 5, 6  # the device scripts' own exit codes


def _device_path(path: str, what: str) -> str:
    """A path on the device: not empty, not the root, no NUL or line breaks."""
    if not isinstance(path, str) or not path.strip() or any(c in path for c in "\0\n\r"):
        raise EdgebnError(f"{what} {path!r}: expected a directory path on the device "
                          "(not empty, no NUL or line breaks)")
    if posixpath.normpath(path) in ("/", "//", ".") or path.strip("/") in ("", "~"):
        raise EdgebnError(f"{what} {path!r}: refusing the device's root or home itself; "
                          "name a directory of its own (e.g. ~/edgebn)")
    return path


@dataclass(frozen=True)
class DeployOptions:
    dest: str = "edgebn"  # directory on the device (relative to the login's home)
    selftest: bool = False
    python: str = "python3"  # the device's Python (one word: it is shell-quoted)
    bench: bool = False
    bench_runs: int = 200
    trust: Path | None = None  # a public key to install in the device's trust file first
    trust_file: str | None = None  # the device's trust file when not the default (sets EDGEBN_TRUST)
    timeout_s: float = SSH_TIMEOUT_S  # per host: all of one host's ssh calls together
    profile: bool = False  # predict.py --profile on the device (a bundle made with --profile)

    def __post_init__(self) -> None:
        _device_path(self.dest, "destination")
        if self.trust_file is not None:
            _device_path(self.trust_file, "trust file")
        if not self.python or any(c.isspace() or c == "\0" for c in self.python):
            raise EdgebnError(f"device python {self.python!r}: expected one command word")
        if not self.timeout_s > 0:
            raise EdgebnError(f"timeout must be > 0 s. Received: {self.timeout_s}")

    @property
    def device_trust(self) -> str:
        return self.trust_file or DEVICE_TRUST

    @property
    def verifier(self) -> str:
        return posixpath.join(posixpath.dirname(self.device_trust), VERIFIER)


@dataclass(frozen=True)
class DeployResult:
    host: str
    path: str  # DEST/current on the device
    bytes_sent: int
    seconds: float
    selftest: dict[str, Any] | None = None
    selftest_exit: int | None = None
    release: str | None = None  # DEST/releases/<id>
    previous: str | None = None  # the release current pointed to before, if any
    bench: dict[str, Any] | None = None
    trusted: str | None = None  # the allowed-signers line installed (--trust)
    profile: dict[str, Any] | None = None  # per-operator times on the device (--profile)

    @property
    def passed(self) -> bool:
        return self.selftest is None or bool(self.selftest_exit == 0 and self.selftest.get("passed"))

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "release": self.release,
                "previous": self.previous, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 2), "selftest": self.selftest,
                "selftest_exit": self.selftest_exit, "bench": self.bench,
                "trusted": self.trusted, "profile": self.profile}


@dataclass(frozen=True)
class RollbackResult:
    host: str
    path: str
    release: str  # what current points to now
    previous: str  # what it pointed to before
    seconds: float

    passed = True

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "release": self.release,
                "previous": self.previous, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class SshTarget:
    """A device as ``ssh`` reaches it: your keys, agent and ~/.ssh/config apply."""

    host: str  # user@host
    port: int | None = None
    identity: Path | None = None
    options: tuple[str, ...] = ()  # ssh -o options
    keepalive_s: int = KEEPALIVE_S  # a silent host is dropped after 3 of these

    def __post_init__(self) -> None:
        if (not self.host or self.host.startswith("-") or not self.host.isprintable()
                or any(c.isspace() for c in self.host)):
            raise EdgebnError(f"host {self.host!r}: expected user@host (not starting with '-', "
                              "no spaces or control characters)")
        if any("\0" in o or "\n" in o for o in self.options):
            raise EdgebnError("ssh options must not hold NUL or line breaks")

    def command(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
               "-o", f"ServerAliveInterval={int(self.keepalive_s)}", "-o", "ServerAliveCountMax=3"]
        if self.port is not None:
            cmd += ["-p", str(self.port)]
        if self.identity is not None:
            cmd += ["-i", str(self.identity)]
        for opt in self.options:
            cmd += ["-o", opt]
        return [*cmd, "--", self.host]


@dataclass(frozen=True)
class Shipment:
    """A bundle checked here and packed once, ready for any number of devices."""

    bundle: Path
    release: str  # first 16 hex of manifest.json's sha256
    tar: bytes


def _last_line(stderr: bytes, default: str = "(no message)") -> str:
    return (stderr.decode(errors="replace").strip().splitlines() or [default])[-1]


def _ssh(target: SshTarget, remote: str, what: str, timeout_s: float = SSH_TIMEOUT_S,
         data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run([*target.command(), remote], input=data, capture_output=True,
                              timeout=timeout_s, stdin=None if data is not None else
                              subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise EdgebnError("ssh not found: install the OpenSSH client (apt-get install "
                          "openssh-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise EdgebnError(f"{what}: ssh timed out after {timeout_s:g} s") from exc
    if done.returncode == 255:  # ssh's own failure: connection, authentication, host key
        raise EdgebnError(f"{what}: ssh {target.host} failed: {_last_line(done.stderr)}")
    return done


def prepare(bundle: str | Path, trust: Path | None = None) -> Shipment:
    """Check the bundle here as the device will, and pack it as one tar stream.

    The device's verifier runs on this machine first (exactly the listed files, regular,
    each hash); with ``trust`` (a public key) the signature must verify against that key
    too, so a bundle the device would refuse is never sent.
    """
    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise EdgebnError(f"{bundle}: not a bundle (no manifest.json): run edgebn bundle")
    verifier = load_device_module("verify")
    with tempfile.TemporaryDirectory(prefix="edgebn-trust-") as tmp:
        allowed = Path(tmp) / "allowed_signers"  # absent: no signature check
        if trust is not None:
            from edgebn.deploy.sign import allowed_signers_line

            allowed.write_text(allowed_signers_line(trust) + "\n", encoding="utf-8")
        try:
            verifier.check_bundle(str(bundle), str(allowed))
        except verifier.BundleError as exc:
            raise EdgebnError(f"{bundle}: {exc}") from exc
    release = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        tar.add(bundle, arcname=release)
    return Shipment(bundle, release, stream.getvalue())


def _release_script(*args: str | float) -> str:
    """The remote command that runs edgebn/deploy/device/release.sh with ``args`` on the device."""
    script = (DEVICE_DIR / "release.sh").read_text(encoding="utf-8")
    words = [a if isinstance(a, str) else str(int(a)) for a in args]
    return shlex.join(["sh", "-c", script, "release.sh", *words])


def install_trust(target: SshTarget, public_key: Path, options: DeployOptions,
                  timeout_s: float = SSH_TIMEOUT_S) -> str:
    """Make the device trust ``public_key`` and install its verifier beside the trust file.

    Both files are replaced atomically (written beside, then renamed); the verifier is
    edgebn's own edgebn/deploy/device/verify.py, sent over stdin.
    """
    from edgebn.deploy.sign import allowed_signers_line

    line = allowed_signers_line(public_key)
    done = _ssh(target, _release_script("trust", options.dest, options.device_trust,
                                        options.verifier, line),
                "trust", timeout_s, data=(DEVICE_DIR / VERIFIER).read_bytes())
    if done.returncode != 0:
        raise EdgebnError(f"installing the trust file on {target.host} failed "
                          f"(exit {done.returncode}): {_last_line(done.stderr)}")
    return line


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic), at least one: the host's remaining budget."""
    return max(1.0, deadline - time.monotonic())


def _predict(target: SshTarget, options: DeployOptions, args: tuple[str, ...], what: str,
             deadline: float) -> tuple[dict, int]:
    """predict.py ARGS --json in DEST/current: through the device's verifier when it trusts keys."""
    script = _release_script("predict", options.dest, options.device_trust, options.verifier,
                             options.python, *args, "--json")
    run = _ssh(target, script, what, _left(deadline))
    try:
        return json.loads(run.stdout.decode()), run.returncode
    except (ValueError, UnicodeDecodeError):
        raise EdgebnError(f"{what} on {target.host} did not run (exit {run.returncode}): "
                          f"{_last_line(run.stderr, '(no output)')}") from None


def _copy(shipment: Shipment, target: SshTarget, options: DeployOptions, deadline: float) -> str:
    """The release onto the device and live; what ``current`` pointed to before (or "")."""
    script = _release_script("copy", options.dest, shipment.release, options.device_trust,
                             options.verifier, options.python, _left(deadline))
    done = _ssh(target, script, "copy", _left(deadline), data=shipment.tar)
    if done.returncode != 0:
        why = _last_line(done.stderr)
        if done.returncode == EXIT_REFUSED:
            why = f"the device's verifier refused the bundle: {why.removeprefix('Error: ')}"
        raise EdgebnError(f"copy to {target.host}:{options.dest}/releases/{shipment.release} "
                          f"failed (exit {done.returncode}): {why}")
    return done.stdout.decode(errors="replace").strip().rpartition("previous=")[2]


def ship(shipment: Shipment, target: SshTarget, options: DeployOptions) -> DeployResult:
    """One device: trust (optional), copy into a release, switch current, self-test, bench."""
    start, deadline = time.perf_counter(), time.monotonic() + options.timeout_s
    trusted = (install_trust(target, options.trust, options, _left(deadline))
               if options.trust is not None else None)
    previous = _copy(shipment, target, options, deadline) or None
    doc, code, bench = None, None, None
    if options.selftest:
        out, code = _predict(target, options, ("--selftest",), "self-test", deadline)
        doc = out.get("selftest") if isinstance(out, dict) else None
        if doc is None:
            raise EdgebnError(f"self-test on {target.host} printed no result (exit {code})")
    if options.bench:
        out, bcode = _predict(target, options, ("--bench", "--runs", str(int(options.bench_runs))), "bench",
                              deadline)
        bench = out.get("bench") if isinstance(out, dict) else None
        if bcode != 0 or bench is None:
            raise EdgebnError(f"bench on {target.host} failed (exit {bcode})")
    profile = None
    if options.profile:
        out, pcode = _predict(target, options, ("--profile", "--runs", str(int(options.bench_runs))),
                              "profile", deadline)
        profile = out.get("profile") if isinstance(out, dict) else None
        if pcode != 0 or profile is None:
            raise EdgebnError(f"profile on {target.host} failed (exit {pcode})")
    return DeployResult(target.host, f"{options.dest}/current", len(shipment.tar),
                        time.perf_counter() - start, doc, code,
                        f"{options.dest}/releases/{shipment.release}", previous, bench, trusted,
                        profile)


def deploy(bundle: str | Path, target: SshTarget, options: DeployOptions = DeployOptions()
           ) -> DeployResult:
    """Ship ``bundle`` to one device as a new release and switch ``DEST/current`` to it."""
    check_profile(bundle, options)
    return ship(prepare(bundle, options.trust), target, options)


def check_profile(bundle: str | Path, options: DeployOptions) -> None:
    """--profile needs the bundle's operator models: refused here, before anything is sent."""
    if options.profile and not (Path(bundle) / "profile" / "profile.json").is_file():
        raise EdgebnError(f"{bundle}: no operator models for --profile: make the bundle with "
                          "edgebn bundle BUILD --out B --profile")


def rollback(target: SshTarget, options: DeployOptions = DeployOptions()) -> RollbackResult:
    """Point ``DEST/current`` back at the release before it (releases.log's previous line)."""
    start = time.perf_counter()
    done = _ssh(target, _release_script("rollback", options.dest, options.timeout_s), "rollback",
                options.timeout_s)
    if done.returncode != 0:
        raise EdgebnError(f"rollback on {target.host}:{options.dest} failed "
                          f"(exit {done.returncode}): {_last_line(done.stderr)}")
    said = dict(w.split("=", 1) for w in done.stdout.decode(errors="replace").split() if "=" in w)
    return RollbackResult(target.host, f"{options.dest}/current", said.get("current", ""),
                          said.get("previous", ""), time.perf_counter() - start)


def device_script(name: str, *args: str | float) -> str:
    """The remote command that runs edgebn/deploy/device/``name`` (a POSIX sh script) with
    ``args`` on the device: for modules beside this one (edgebn.deploy.service)."""
    script = (DEVICE_DIR / name).read_text(encoding="utf-8")
    words = [a if isinstance(a, str) else str(int(a)) for a in args]
    return shlex.join(["sh", "-c", script, name, *words])


def run_remote(target: SshTarget, remote: str, what: str, timeout_s: float = SSH_TIMEOUT_S,
               data: bytes | None = None) -> subprocess.CompletedProcess:
    """``remote`` on the device over ssh; EdgebnError when ssh itself fails (exit 255) or
    times out, else the finished process (its exit code is the caller's to read)."""
    return _ssh(target, remote, what, timeout_s, data)
