"""edgebn deploy against a real sshd on 127.0.0.1 (the test's own, on a free port)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebn.cli import app
from edgebn.deploy import SshTarget, deploy
from edgebn.errors import EdgebnError

runner = CliRunner()
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that accepts one generated key; skipped with the reason if it cannot run."""
    if not Path(SSHD).exists() or shutil.which("ssh") is None:
        pytest.skip("openssh-server / openssh-client not installed (tools/install-system-deps installs them)")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
        f"PasswordAuthentication no\nPermitRootLogin prohibit-password\nPidFile {d / 'pid'}\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=subprocess.PIPE)
    for _ in range(50):
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {proc.stderr.read().decode()[-300:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    opts = ("StrictHostKeyChecking=no", f"UserKnownHostsFile={d / 'known_hosts'}")
    yield {"host": f"{user}@127.0.0.1", "port": port, "identity": d / "user", "options": opts,
           "home": Path.home()}
    proc.terminate()
    proc.wait(timeout=10)


def test_deploy_copies_and_runs_the_selftest_remotely(sshd, bundles, tmp_path):
    dest = str(tmp_path / "device")
    target = SshTarget(sshd["host"], sshd["port"], sshd["identity"], sshd["options"])
    result = deploy(bundles["int8"], target, dest, selftest=True, python=sys.executable)
    assert result.passed and result.selftest_exit == 0
    assert result.selftest["passed"] and result.selftest["samples"] == 16
    copied = Path(dest) / bundles["int8"].name
    assert (copied / "manifest.json").read_bytes() == (bundles["int8"] / "manifest.json").read_bytes()
    assert [p.name for p in Path(dest).iterdir()] == [copied.name]  # no staging dir left
    # Deploying again replaces the copy as a whole.
    (copied / "stale").write_text("x")
    deploy(bundles["int8"], target, dest)
    assert not (copied / "stale").exists()


def test_deploy_cli_json(sshd, bundles, tmp_path):
    args = ["deploy", str(bundles["none"]), "--host", sshd["host"], "--dest", str(tmp_path / "d"),
            "--selftest", "--python", sys.executable, "--port", str(sshd["port"]),
            "-i", str(sshd["identity"]), "--json"]
    for opt in sshd["options"]:
        args += ["-o", opt]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["selftest"]["passed"] and doc["selftest_exit"] == 0 and doc["bytes_sent"] > 0


def test_deploy_refuses_a_damaged_bundle_before_connecting(bundles, tmp_path):
    b = shutil.copytree(bundles["none"], tmp_path / "b")
    (b / "labels.txt").write_text("tampered\n")
    with pytest.raises(EdgebnError, match=r"labels.txt: sha256 .* does not match the manifest"):
        deploy(b, SshTarget("nobody@127.0.0.1", port=1))


def test_unreachable_host_is_one_line_exit_2(bundles):
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", "nobody@127.0.0.1",
                              "--port", str(_free_port())])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "copy: ssh nobody@127.0.0.1 failed" in lines[0]
