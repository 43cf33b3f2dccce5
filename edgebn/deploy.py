"""Copy a bundle to a device over the OpenSSH client and run its self-test there.

    edgebn deploy BUNDLE --host pi@raspberrypi.local [--selftest]

The bundle's manifest is checked here first (a damaged bundle is never shipped). It
travels as one tar stream over ``ssh`` into a hidden directory beside its destination,
which then replaces ``DEST/NAME`` with one ``mv``: an interrupted copy leaves the old
bundle in place. ``--selftest`` runs ``predict.py --selftest --json`` on the device and
brings its JSON back. Authentication is the user's own ssh setup (keys, agent,
~/.ssh/config); ``BatchMode`` is on, so a password prompt fails instead of hanging.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError

SSH_TIMEOUT_S = 600


@dataclass(frozen=True)
class DeployResult:
    host: str
    path: str  # the bundle's directory on the device
    bytes_sent: int
    seconds: float
    selftest: dict[str, Any] | None = None
    selftest_exit: int | None = None

    @property
    def passed(self) -> bool:
        return self.selftest is None or (self.selftest_exit == 0 and self.selftest.get("passed"))

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "path": self.path, "bytes_sent": self.bytes_sent,
                "seconds": round(self.seconds, 2), "selftest": self.selftest,
                "selftest_exit": self.selftest_exit}


@dataclass(frozen=True)
class SshTarget:
    """A device as ``ssh`` reaches it: your keys, agent and ~/.ssh/config apply."""

    host: str  # user@host
    port: int | None = None
    identity: Path | None = None
    options: tuple[str, ...] = ()  # ssh -o options

    def command(self) -> list[str]:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        if self.port is not None:
            cmd += ["-p", str(self.port)]
        if self.identity is not None:
            cmd += ["-i", str(self.identity)]
        for opt in self.options:
            cmd += ["-o", opt]
        return [*cmd, self.host]


def _last_line(stderr: bytes, default: str = "(no message)") -> str:
    return (stderr.decode(errors="replace").strip().splitlines() or [default])[-1]


def _ssh(base: list[str], remote: str, what: str, stdin=None) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run([*base, remote], stdin=stdin, capture_output=True,
                              timeout=SSH_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise EdgebnError("ssh not found: install the OpenSSH client (apt-get install "
                          "openssh-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise EdgebnError(f"{what}: ssh timed out after {SSH_TIMEOUT_S} s") from exc
    if done.returncode == 255:  # ssh's own failure: connection, authentication, host key
        raise EdgebnError(f"{what}: ssh {base[-1]} failed: {_last_line(done.stderr)}")
    return done


def deploy(bundle: str | Path, target: SshTarget, dest: str = "edgebn", selftest: bool = False,
           python: str = "python3") -> DeployResult:
    """Ship ``bundle`` to ``host:dest/NAME`` (replacing an older copy); optionally self-test it."""
    from edgebn.bundle import load_predict_module

    bundle = Path(bundle).resolve()
    if not (bundle / "manifest.json").is_file():
        raise EdgebnError(f"{bundle}: not a bundle (no manifest.json): run edgebn bundle")
    predict = load_predict_module()
    try:
        predict.verify_manifest(str(bundle))
    except predict.BundleError as exc:
        raise EdgebnError(f"{bundle}: {exc}") from exc
    name = bundle.name
    host = target.host
    base = target.command()
    q_dest, q_name = shlex.quote(dest), shlex.quote(name)
    stage = f"{q_dest}/.{q_name}.incoming"
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stream:
        with tarfile.open(fileobj=stream, mode="w") as tar:
            tar.add(bundle, arcname=name)
        sent = stream.tell()
        stream.seek(0)
        remote = (f"set -e; mkdir -p {q_dest}; rm -rf {stage}; mkdir {stage}; "
                  f"tar -xf - -C {stage}; rm -rf {q_dest}/{q_name}; "
                  f"mv {stage}/{q_name} {q_dest}/{q_name}; rmdir {stage}")
        done = _ssh(base, remote, "copy", stdin=stream)
    if done.returncode != 0:
        raise EdgebnError(f"copy to {host}:{dest}/{name} failed (exit {done.returncode}): "
                          f"{_last_line(done.stderr)}")
    doc, code = None, None
    if selftest:
        run = _ssh(base, f"cd {q_dest}/{q_name} && {python} predict.py --selftest --json",
                   "self-test")
        code = run.returncode
        try:
            doc = json.loads(run.stdout.decode())["selftest"]
        except (ValueError, KeyError, TypeError):
            raise EdgebnError(f"self-test on {host} did not run (exit {code}): "
                              f"{_last_line(run.stderr, '(no output)')}") from None
    return DeployResult(host, f"{dest}/{name}", sent, time.perf_counter() - start, doc, code)
