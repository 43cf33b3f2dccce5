"""Copy a bundle to a device over the OpenSSH client and run its self-test there.

    edgebn deploy BUNDLE --host pi@raspberrypi.local [--selftest] [--bench] [--trust KEY.pub]
    edgebn deploy --rollback --host pi@raspberrypi.local

The bundle's manifest is checked here first (a damaged bundle is never shipped). The
device keeps releases side by side and one symlink to the live one:

    DEST/releases/<first 16 hex of manifest.json's sha256>/   one bundle each, never edited
    DEST/current -> releases/<id>                              what runs
    DEST/releases.log                                          the history of current, oldest first

A bundle travels as one tar stream over ``ssh`` into ``DEST/releases/.<id>.incoming``,
is renamed to its release directory, and then ``current`` is switched with ``ln -sfn``
to ``current.tmp`` and ``mv -T current.tmp current`` (GNU mv: one rename(2)), so there
is no moment without a working bundle, and a copy cut short leaves ``current`` as it was.
Redeploying the live release keeps its directory (releases are content-addressed).
``--rollback`` drops the last line of releases.log and points ``current`` at the line
before it. ``--selftest`` runs ``predict.py --selftest --json`` in ``DEST/current``;
``--bench`` runs ``predict.py --bench --json`` there. Authentication is the user's own
ssh setup (keys, agent, ~/.ssh/config); ``BatchMode`` is on, so a password prompt fails
instead of hanging. Many hosts at once: edgebn.fleet.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError

SSH_TIMEOUT_S = 600
DEVICE_TRUST = "~/.config/edgebn/allowed_signers"  # predict.py's default; $EDGEBN_TRUST overrides


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

    @property
    def passed(self) -> bool:
        return self.selftest is None or bool(self.selftest_exit == 0 and self.selftest.get("passed"))

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "release": self.release,
                "previous": self.previous, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 2), "selftest": self.selftest,
                "selftest_exit": self.selftest_exit, "bench": self.bench,
                "trusted": self.trusted}


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

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise EdgebnError(f"--host {self.host!r}: expected user@host (not starting with '-', "
                              "no spaces)")

    def command(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
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


def _remote_path(path: str) -> str:
    """``path`` for the device's shell: quoted, with a leading ``~/`` left to mean $HOME."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def prepare(bundle: str | Path) -> Shipment:
    """Check the bundle's manifest here and pack it as one tar stream named for its release."""
    from edgebn.bundle import load_predict_module

    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise EdgebnError(f"{bundle}: not a bundle (no manifest.json): run edgebn bundle")
    predict = load_predict_module()
    try:
        predict.verify_manifest(str(bundle))
    except predict.BundleError as exc:
        raise EdgebnError(f"{bundle}: {exc}") from exc
    release = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        tar.add(bundle, arcname=release)
    return Shipment(bundle, release, stream.getvalue())


def _copy_script(dest: str, release: str) -> str:
    d, r = _remote_path(dest), shlex.quote(release)
    return (f"set -e; D={d}; R={r}; mkdir -p \"$D/releases\"; S=\"$D/releases/.$R.incoming\"; "
            'rm -rf "$S"; mkdir "$S"; tar -xf - -C "$S"; '
            'P=$(readlink "$D/current" 2>/dev/null || true); '
            'if [ "$P" != "releases/$R" ]; then rm -rf "$D/releases/$R"; '
            'mv "$S/$R" "$D/releases/$R"; fi; rm -rf "$S"; '
            'ln -sfn "releases/$R" "$D/current.tmp"; mv -T "$D/current.tmp" "$D/current"; '
            'if [ "$(tail -n 1 "$D/releases.log" 2>/dev/null)" != "$R" ]; then '
            '{ cat "$D/releases.log" 2>/dev/null || true; echo "$R"; } > "$D/releases.log.tmp"; '
            'mv "$D/releases.log.tmp" "$D/releases.log"; fi; echo "previous=${P#releases/}"')


def _rollback_script(dest: str) -> str:
    return (f"set -e; D={_remote_path(dest)}; "
            'P=$(readlink "$D/current") || { echo "no current release in $D" >&2; exit 3; }; '
            'sed \'$d\' "$D/releases.log" > "$D/releases.log.tmp"; '
            'R=$(tail -n 1 "$D/releases.log.tmp"); '
            'if [ -z "$R" ] || [ ! -d "$D/releases/$R" ]; then rm -f "$D/releases.log.tmp"; '
            'echo "no earlier release to roll back to in $D/releases.log" >&2; exit 3; fi; '
            'ln -sfn "releases/$R" "$D/current.tmp"; mv -T "$D/current.tmp" "$D/current"; '
            'mv "$D/releases.log.tmp" "$D/releases.log"; echo "previous=${P#releases/} current=$R"')


def install_trust(target: SshTarget, public_key: Path, trust_file: str | None = None,
                  timeout_s: float = SSH_TIMEOUT_S) -> str:
    """Make the device trust ``public_key`` for bundles (replacing its trust file atomically)."""
    from edgebn.sign import allowed_signers_line

    line = allowed_signers_line(public_key)
    f = _remote_path(trust_file or DEVICE_TRUST)
    done = _ssh(target, f"set -e; F={f}; mkdir -p \"$(dirname \"$F\")\"; "
                        f"printf '%s\\n' {shlex.quote(line)} > \"$F.tmp\"; mv \"$F.tmp\" \"$F\"",
                "trust", timeout_s)
    if done.returncode != 0:
        raise EdgebnError(f"installing the trust file on {target.host} failed "
                          f"(exit {done.returncode}): {_last_line(done.stderr)}")
    return line


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic), at least one: the host's remaining budget."""
    return max(1.0, deadline - time.monotonic())


def _predict(target: SshTarget, options: DeployOptions, args: str, what: str,
             deadline: float) -> tuple[dict, int]:
    env = (f"EDGEBN_TRUST={_remote_path(options.trust_file)} " if options.trust_file else "")
    run = _ssh(target, f"cd {_remote_path(options.dest)}/current && {env}"
                       f"{shlex.quote(options.python)} predict.py {args} --json",
               what, _left(deadline))
    try:
        return json.loads(run.stdout.decode()), run.returncode
    except (ValueError, UnicodeDecodeError):
        raise EdgebnError(f"{what} on {target.host} did not run (exit {run.returncode}): "
                          f"{_last_line(run.stderr, '(no output)')}") from None


def ship(shipment: Shipment, target: SshTarget, options: DeployOptions) -> DeployResult:
    """One device: trust (optional), copy into a release, switch current, self-test, bench."""
    start, deadline = time.perf_counter(), time.monotonic() + options.timeout_s
    trusted = (install_trust(target, options.trust, options.trust_file, _left(deadline))
               if options.trust is not None else None)
    done = _ssh(target, _copy_script(options.dest, shipment.release), "copy", _left(deadline),
                data=shipment.tar)
    if done.returncode != 0:
        raise EdgebnError(f"copy to {target.host}:{options.dest}/releases/{shipment.release} "
                          f"failed (exit {done.returncode}): {_last_line(done.stderr)}")
    previous = done.stdout.decode(errors="replace").strip().rpartition("previous=")[2] or None
    doc, code, bench = None, None, None
    if options.selftest:
        out, code = _predict(target, options, "--selftest", "self-test", deadline)
        doc = out.get("selftest") if isinstance(out, dict) else None
        if doc is None:
            raise EdgebnError(f"self-test on {target.host} printed no result (exit {code})")
    if options.bench:
        out, bcode = _predict(target, options, f"--bench --runs {int(options.bench_runs)}", "bench",
                              deadline)
        bench = out.get("bench") if isinstance(out, dict) else None
        if bcode != 0 or bench is None:
            raise EdgebnError(f"bench on {target.host} failed (exit {bcode})")
    return DeployResult(target.host, f"{options.dest}/current", len(shipment.tar),
                        time.perf_counter() - start, doc, code,
                        f"{options.dest}/releases/{shipment.release}", previous, bench, trusted)


def deploy(bundle: str | Path, target: SshTarget, options: DeployOptions = DeployOptions()
           ) -> DeployResult:
    """Ship ``bundle`` to one device as a new release and switch ``DEST/current`` to it."""
    return ship(prepare(bundle), target, options)


def rollback(target: SshTarget, options: DeployOptions = DeployOptions()) -> RollbackResult:
    """Point ``DEST/current`` back at the release before it (releases.log's previous line)."""
    start = time.perf_counter()
    done = _ssh(target, _rollback_script(options.dest), "rollback", options.timeout_s)
    if done.returncode != 0:
        raise EdgebnError(f"rollback on {target.host}:{options.dest} failed "
                          f"(exit {done.returncode}): {_last_line(done.stderr)}")
    said = dict(w.split("=", 1) for w in done.stdout.decode(errors="replace").split() if "=" in w)
    return RollbackResult(target.host, f"{options.dest}/current", said.get("current", ""),
                          said.get("previous", ""), time.perf_counter() - start)
