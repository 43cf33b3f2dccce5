"""Real sshds on 127.0.0.1 (the test's own, on free ports): each one a device with its own home.

    from sshd_hosts import _target, _ssh_args   # helpers; the sshd and sshds fixtures: conftest
    from sshd_hosts import Device, make_keys      # a fleet of devices, each its own PATH too
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from edgebn.deploy.ssh import SshTarget

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
REAL_SSH = shutil.which("ssh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sshd(d: Path, port: int, path: str | None = None) -> subprocess.Popen:
    """An sshd on 127.0.0.1:``port`` whose sessions have HOME=d/home (and PATH=``path``)."""
    env = f"HOME={d / 'home'}" + (f" PATH={path}" if path else "")
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nPidFile {d / 'pid'}\n"
        f"MaxStartups 30\nSetEnv {env}\n")  # each sshd a device with its own ~
    # its log to a file: a pipe nobody reads fills after a few hundred connections, and then
    # sshd blocks on it and every login hangs
    with open(d / "sshd.log", "ab") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=log)
    for _ in range(50):
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {(d / 'sshd.log').read_text()[-300:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    pytest.skip("sshd did not listen within 5 s")


def _target(s) -> SshTarget:
    return SshTarget(s["host"], s["port"], s["identity"], s["options"])


def _ssh_args(s) -> list[str]:
    args = ["--port", str(s["port"]), "-i", str(s["identity"])]
    for opt in s["options"]:
        args += ["-o", opt]
    return args


# ---------------------------------------------------------------- a fleet of devices (issue 29)

class Device:
    """One device: an sshd of its own on 127.0.0.1, with its own HOME and its own PATH.

    The PATH's ``python3`` is a script in ``home/bin`` that logs each call (its first words)
    to ``home/python.log`` and runs ``self.python``: a test gives one device a Python
    without NumPy, or a slow one, by rewriting it. ``freeze`` stops the device's sshd and
    everything it started (SIGSTOP: a device that hangs, its connections silent);
    ``restart`` kills all of it and starts a fresh sshd on the same port (a reboot).
    """

    def __init__(self, root: Path, keys: Path, user: str, index: int, python: str) -> None:
        self.dir = root / f"device{index:03d}"
        self.home = self.dir / "home"
        (self.home / "bin").mkdir(parents=True)
        for name in ("host", "authorized_keys"):
            shutil.copy(keys / name, self.dir / name)
        self.port = _free_port()
        self.user, self.identity = user, keys / "user"
        self.options = ("StrictHostKeyChecking=no", f"UserKnownHostsFile={keys / 'known_hosts'}",
                        "LogLevel=ERROR")
        self.set_python(python)
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        return _start_sshd(self.dir, self.port, f"{self.home / 'bin'}:/usr/bin:/bin")

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1"

    def set_python(self, python: str, before: str = "") -> None:
        """The device's ``python3``: ``python``, after the shell lines ``before``."""
        wrapper = self.home / "bin" / "python3"
        wrapper.write_text("#!/bin/sh\nprintf '%s\\n' \"$*\" | cut -c 1-120 >> "
                           f"\"$HOME/python.log\"\n{before}exec {python} \"$@\"\n")
        wrapper.chmod(0o755)

    def calls(self, needle: str) -> int:
        log = self.home / "python.log"
        return sum(needle in line for line in log.read_text().splitlines()) if log.exists() else 0

    def tree(self) -> list[int]:
        """The sshd and every process it started, parents first."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def freeze(self) -> None:
        for pid in self.tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def kill(self) -> None:
        for pid in self.tree():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.proc = self._start()


def make_keys(d: Path) -> tuple[Path, str]:
    """A host key and a user key in ``d`` (authorized_keys accepts the user key); the login."""
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    return d, subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()


@contextlib.contextmanager
def tarpit():
    """A port that sends an SSH banner to every connection and then says nothing more."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    stop, held = threading.Event(), []

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()
