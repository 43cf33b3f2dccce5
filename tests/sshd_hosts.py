"""Real sshds on 127.0.0.1 (the test's own, on free ports): each one a device with its own home.

    from sshd_hosts import _target, _ssh_args   # helpers; the sshd and sshds fixtures: conftest
"""

from __future__ import annotations

import shutil
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


def _start_sshd(d: Path, port: int) -> subprocess.Popen:
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nPidFile {d / 'pid'}\n"
        f"MaxStartups 30\nSetEnv HOME={d / 'home'}\n")  # each sshd a device with its own ~
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.PIPE)
    for _ in range(50):
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {proc.stderr.read().decode()[-300:]}")
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
