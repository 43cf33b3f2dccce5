"""Copy a bundle to a device over the OpenSSH client, prove it there, then make it live.

    edgebn deploy BUNDLE --host pi@raspberrypi.local [--trust KEY.pub] [--bench]
    edgebn deploy --rollback --host pi@raspberrypi.local

The bundle's manifest is checked here first (a damaged bundle is never shipped). The
device keeps releases side by side and one symlink to the live one:

    DEST/releases/<first 16 hex of manifest.json's sha256>/   one bundle each, never edited
    DEST/current -> releases/<id>                              what runs
    DEST/releases.log                                          the history of current, oldest first

What happens on the device is edgebn/deploy/device/release.sh, driven for one host by
edgebn.deploy.release (the same for the Ansible engine): first its read-only ``status``
(a host already on the release is left alone, nothing sent), then one ``deploy`` under
one lock per destination (``flock DEST/.lock``, so deploys to one device from many hosts
run one after the other). The bundle travels as one tar stream over ``ssh`` into
``DEST/releases/.<id>.incoming.<pid>``; on a device that trusts a signing key the device's
own verifier (installed by ``--trust`` beside the trust file, outside every bundle:
edgebn/deploy/device/verify.py) checks that staged copy: signature, exactly the listed
files, every hash. The staged copy's self-test runs next, with the device's own Python
and runtime (through the verifier on a trusting device), and only a release that passed
is renamed to its release directory and made live: ``current`` is switched with ``ln
-sfn`` to a temporary link and ``mv -T`` over ``current`` (GNU mv: one rename(2)), and its
id is appended to releases.log, with SIGHUP/INT/TERM ignored from the switch on, so
``current`` is always the last line of releases.log. Then the health check (the service's
``/health`` when DEST/service.json names one, else the live release's self-test); when it
fails, the device rolls back to the previous release itself (``rollback --expect ID``: only
what this deploy switched). There is no moment without a working bundle, a copy cut short
leaves ``current`` as it was, the live release is never removed, and the leftovers of a
deploy that died are removed by the next one. ``--rollback`` drops the last line of
releases.log and points ``current`` at the line before it, under the same lock. With
``--trust KEY.pub`` the bundle's signature is checked here against that key before
anything is copied. Authentication is the user's own ssh setup (keys, agent,
~/.ssh/config); ``BatchMode`` is on, so a password prompt fails instead of hanging. Many
hosts at once, in batches with a failure budget: edgebn.deploy.rollout.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgebn.deploy.bundle import load_device_module
from edgebn.deploy.release import (
    KEEPALIVE_COUNT,
    KEEPALIVE_S,
    SSH_TIMEOUT_S,
    DeployOptions,
    Ran,
    Shipment,
    Unreachable,
    device_file,
    last_line,
    release_command,
    release_host,
)
from edgebn.deploy.rows import HostRow
from edgebn.deploy.sign import allowed_signers_line
from edgebn.errors import EdgebnError

__all__ = ["DeployOptions", "HostRow", "RollbackResult", "Shipment", "SshTarget", "SshTransport",
           "check_profile", "deploy", "prepare", "rollback", "ship"]


@dataclass(frozen=True)
class RollbackResult:
    host: str
    path: str
    release: str  # what current points to now
    previous: str  # what it pointed to before
    seconds: float

    passed = True

    def to_json(self) -> dict[str, str | float]:
        return {"host": self.host, "path": self.path, "release": self.release,
                "previous": self.previous, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class SshTarget:
    """A device as ``ssh`` reaches it: your keys, agent and ~/.ssh/config apply."""

    host: str  # user@host
    port: int | None = None
    identity: Path | None = None
    options: tuple[str, ...] = ()  # ssh -o options
    keepalive_s: int = KEEPALIVE_S  # a silent host is dropped after KEEPALIVE_COUNT + 1 of these

    def __post_init__(self) -> None:
        if (not self.host or self.host.startswith("-") or not self.host.isprintable()
                or any(c.isspace() for c in self.host)):
            raise EdgebnError(f"host {self.host!r}: expected user@host (not starting with '-', "
                              "no spaces or control characters)")
        if any("\0" in o or "\n" in o for o in self.options):
            raise EdgebnError("ssh options must not hold NUL or line breaks")

    def command(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15",
               "-o", f"ServerAliveInterval={int(self.keepalive_s)}",
               "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}"]
        if self.port is not None:
            cmd += ["-p", str(self.port)]
        if self.identity is not None:
            cmd += ["-i", str(self.identity)]
        for opt in self.options:
            cmd += ["-o", opt]
        return [*cmd, "--", self.host]


@dataclass(frozen=True)
class SshTransport:
    """edgebn's own engine: one ``ssh`` process per remote command (edgebn.deploy.release)."""

    target: SshTarget

    @property
    def name(self) -> str:
        t = self.target
        return t.host if t.port is None else f"{t.host}:{t.port}"

    def run(self, command: str, data: bytes | None, what: str, timeout_s: float) -> Ran:
        done = _ssh(self.target, command, what, timeout_s, data)
        return Ran(done.returncode, done.stdout.decode(errors="replace"),
                   done.stderr.decode(errors="replace"))


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
        raise Unreachable(f"{what}: ssh {target.host} failed: "
                          f"{last_line(done.stderr.decode(errors='replace'))}")
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


def trust_line(options: DeployOptions) -> str | None:
    """The allowed-signers line of ``--trust KEY.pub``, or None."""
    if options.trust is None:
        return None

    return allowed_signers_line(options.trust)


def ship(shipment: Shipment, target: SshTarget, options: DeployOptions,
         line: str | None = None) -> HostRow:
    """One device, in the order of edgebn.deploy.release: status, trust (optional), then
    stage, verify, self-test, switch, health check, roll back on failure; bench/profile.

    Raises EdgebnError when the deploy did not run (unreachable, refused, no space...);
    returns the row otherwise (``passed`` False: the self-test failed, the release never
    went live; or it was rolled back).
    """
    line = line if line is not None else trust_line(options)
    return release_host(SshTransport(target), shipment, options, trust_line=line)


def deploy(bundle: str | Path, target: SshTarget, options: DeployOptions = DeployOptions()
           ) -> HostRow:
    """Ship ``bundle`` to one device as a new release and switch ``DEST/current`` to it."""
    check_profile(bundle, options)
    return ship(prepare(bundle, options.trust), target, options)


def check_profile(bundle: str | Path, options: DeployOptions) -> None:
    """A profile needs the bundle's operator models: refused here, before anything is sent."""
    if options.profile and not (Path(bundle) / "profile" / "profile.json").is_file():
        raise EdgebnError(f"{bundle}: no operator models in it (profile/profile.json): bundle "
                          "the build with its operator models", option="profile")


def rollback(target: SshTarget, options: DeployOptions = DeployOptions(),
             expect: str | None = None) -> RollbackResult:
    """Point ``DEST/current`` back at the release before it (releases.log's previous line).

    With ``expect`` (a release id), only when ``current`` is that release.
    """
    start = time.perf_counter()
    done = _ssh(target, release_command("rollback", options.dest, options.timeout_s,
                                        *([expect] if expect else [])),
                "rollback", options.timeout_s)
    if done.returncode != 0:
        raise EdgebnError(f"rollback on {target.host}:{options.dest} failed "
                          f"(exit {done.returncode}): "
                          f"{last_line(done.stderr.decode(errors='replace'))}")
    said = dict(w.split("=", 1) for w in done.stdout.decode(errors="replace").split() if "=" in w)
    return RollbackResult(target.host, f"{options.dest}/current", said.get("current", ""),
                          said.get("previous", ""), time.perf_counter() - start)


def device_script(name: str, *args: str | float) -> str:
    """The remote command that runs edgebn/deploy/device/``name`` (a POSIX sh script) with
    ``args`` on the device: for modules beside this one (edgebn.deploy.service)."""
    script = device_file(name).decode("utf-8")
    words = [a if isinstance(a, str) else str(int(a)) for a in args]
    return shlex.join(["sh", "-c", script, name, *words])


def run_remote(target: SshTarget, remote: str, what: str, timeout_s: float = SSH_TIMEOUT_S,
               data: bytes | None = None) -> subprocess.CompletedProcess:
    """``remote`` on the device over ssh; EdgebnError when ssh itself fails (exit 255) or
    times out, else the finished process (its exit code is the caller's to read)."""
    return _ssh(target, remote, what, timeout_s, data)
