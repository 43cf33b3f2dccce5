"""edgebn deploy --service against real sshds on 127.0.0.1: the unit's server command run for
real, the unit file checked by systemd's own verifier, and a device without systemd.

This machine (a container) has no systemd user manager, as a device without one: the
install is refused there in one line that names the command that runs the server by hand,
and these tests run that command, exactly as the unit's ExecStart would.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from serving import Served, call, untrusting_env
from sshd_hosts import _free_port, _ssh_args, _target
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.deploy.service import (
    DeviceFacts,
    ServiceOptions,
    deploy_service,
    probe,
    rollback_service,
    server_command,
    unit_name,
    unit_text,
)
from edgebn.deploy.ssh import DeployOptions, deploy, device_script, run_remote
from edgebn.errors import EdgebnError

runner = CliRunner()


def _served_by_hand(line: str, tmp_path: Path, name: str) -> Served:
    """The command a device without systemd is told to run, run as it is."""
    words = shlex.split(line)
    env = untrusting_env(tmp_path / "home")
    while words[0] == "env" or "=" in words[0]:
        if "=" in words[0]:
            key, _, value = words[0].partition("=")
            env[key] = value
        words = words[1:]
    return Served(words, env, tmp_path / name)


def test_deploy_service_without_systemd_is_one_line_and_the_server_runs_by_hand(
        sshd, bundles, tmp_path):
    dest, port = str(tmp_path / "device"), _free_port()
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", sshd["host"], "--dest",
                              dest,
                              "--python", sys.executable, "--service", "--listen",
                              f"127.0.0.1:{port}", *_ssh_args(sshd)])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no systemd user session (" in lines[0], lines
    release = os.readlink(Path(dest) / "current").removeprefix("releases/")
    assert f"release {release} is live in {dest}/current" in lines[0]
    assert not (Path(dest) / "service.json").exists()  # nothing says a service runs there
    line = lines[0].split("run the server by hand there: ", 1)[1]
    assert shlex.split(line) == [sys.executable, "-I", f"{dest}/current/predict.py", "--serve",
                                 "--listen", f"127.0.0.1:{port}"]
    srv = _served_by_hand(line, tmp_path, "by-hand")
    try:
        assert srv.port == port and srv.health()["release"] == release
    finally:
        srv.stop()


def test_the_unit_is_valid_for_systemd_and_its_command_serves(sshd, bundles, tmp_path):
    """The unit file made for this device passes `systemd-analyze verify --user`, a broken
    one does not, and its ExecStart, run as systemd would run it, serves the release."""
    analyze = shutil.which("systemd-analyze")
    dest, port = str(tmp_path / "device"), _free_port()
    options = DeployOptions(dest, python=sys.executable)
    live = Path(deploy(bundles["int8"], _target(sshd), options).release).name
    facts = probe(_target(sshd), options, 60)
    assert facts.dest == dest and facts.python == sys.executable and not facts.trusting
    assert facts.home == str(sshd["home"]) and facts.systemd != "ok"
    command = server_command(facts, options, ServiceOptions(f"127.0.0.1:{port}", workers=2))
    unit = unit_name(dest)
    assert unit == f"edgebn-serve-{dest.strip('/').replace('/', '-')}.service"
    text = unit_text(command, facts.trust, facts.dest)
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    words = [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(exec_start[10:])]
    assert words == command
    if analyze is not None:
        runtime = tmp_path / "xdg"
        runtime.mkdir(mode=0o700)
        broken = text.replace(sys.executable, "/nonexistent/py")
        for name, body in ((unit, text), ("broken.service", broken)):
            (tmp_path / name).write_text(body)
            done = subprocess.run([analyze, "verify", "--user", str(tmp_path / name)],
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
            if name == unit:
                assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
            else:
                assert done.returncode != 0 and "is not executable" in done.stderr
    srv = Served(words, untrusting_env(tmp_path / "home") | {"EDGEBN_TRUST": facts.trust},
                 tmp_path / "unit")
    try:
        h = srv.health()
        assert srv.port == port and h["release"] == live and h["workers"] == 2
    finally:
        srv.stop()
    if analyze is None:
        pytest.skip("systemd-analyze not installed: the unit file itself was not verified")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_on_a_trusting_device_the_server_runs_through_the_verifier(sshd, bundles, tmp_path):
    from edgebn.deploy.sign import sign_manifest

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    signed = shutil.copytree(bundles["none"], tmp_path / "signed")
    sign_manifest(signed, tmp_path / "k")
    trust_file = str(tmp_path / "device-config" / "allowed_signers")
    options = DeployOptions(str(tmp_path / "device"), python=sys.executable,
                            trust=tmp_path / "k.pub", trust_file=trust_file)
    with pytest.raises(EdgebnError) as err:
        deploy_service(signed, _target(sshd), options, ServiceOptions(f"127.0.0.1:{_free_port()}"))
    line = str(err.value).split("run the server by hand there: ", 1)[1]
    assert shlex.split(line)[:6] == ["env", f"EDGEBN_TRUST={trust_file}", sys.executable, "-I",
                                     str(tmp_path / "device-config" / "verify.py"), "run"]
    srv = _served_by_hand(line, tmp_path, "trusting")
    try:
        assert srv.health()["signature"].startswith("verified by ED25519")
    finally:
        srv.stop()


def test_rollback_service_moves_the_server_back(sshd, bundles, tmp_path):
    """service.json as deploy --service writes it on a device with systemd; the server run
    by hand (no systemd here to SIGHUP it): it follows current back by itself."""
    dest = tmp_path / "device"
    target, options = _target(sshd), DeployOptions(str(dest), python=sys.executable)
    first = Path(deploy(bundles["none"], target, options).release).name
    second = Path(deploy(bundles["int8"], target, options).release).name
    args = ["deploy", "--rollback", "--service", "--host", sshd["host"], "--dest", str(dest),
            "--python", sys.executable, *_ssh_args(sshd), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "no service in" in res.stderr and "service.json" in res.stderr
    assert os.readlink(dest / "current") == f"releases/{second}"  # refused before any change
    port = _free_port()
    (dest / "service.json").write_text(json.dumps({"listen": f"127.0.0.1:{port}",
                                                   "unit": unit_name(str(dest))}) + "\n")
    srv = Served.predict_py(dest / "current", "--listen", f"127.0.0.1:{port}", "--poll", "0.2",
                            env=untrusting_env(tmp_path / "home"), logs=tmp_path / "logs")
    try:
        assert srv.health()["release"] == second
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["release"] == first and doc["previous"] == second and doc["reloaded"] is False
        assert doc["service"]["health"]["release"] == first and doc["service"]["error"] is None
        assert doc["service"]["address"] == {"listen": f"127.0.0.1:{port}"}
        golden = (bundles["none"] / "golden" / "inputs.npy").read_bytes()
        status, _, body = call(port, "POST", "/predict", golden)
        assert status == 200 and json.loads(body)["release"] == first
    finally:
        srv.stop()
    # the server is gone: the deploy's health check fails; kept live (no rollback) so that the
    # rollback below has a release to go back from, to a server that does not answer
    kept = deploy(bundles["int8"], target, replace(options, rollback=False, health_timeout_s=2))
    assert kept.status.value == "failed" and "health" in kept.reason
    start = time.monotonic()
    result = rollback_service(target, options, ServiceOptions(health_timeout_s=2))
    assert not result.passed and time.monotonic() - start < 30
    assert result.service.error.startswith(f"/health did not name release {first} within 2 s")


def test_install_refuses_without_systemd_on_the_device_itself(sshd, tmp_path):
    """service.sh's own check, had the probe said otherwise: exit 7, one line, nothing written."""
    dest = tmp_path / "device"
    dest.mkdir()
    done = run_remote(_target(sshd), device_script("service.sh", "install", str(dest), "x.service",
                                                   "{}"), "install", 60, data=b"[Unit]\n")
    assert done.returncode == 7 and done.stderr.decode().startswith("no systemd user session: ")
    assert list(dest.iterdir()) == []
    assert not (sshd["home"] / ".config" / "systemd").exists()


@pytest.mark.parametrize("kw, needle", [
    ({"listen": ":8750"}, "expected HOST:PORT"),
    ({"listen": "127.0.0.1:0"}, "the port must be 1..65535"),
    ({"listen": "a b:1"}, "expected HOST:PORT"),
    ({"socket": "relative.sock"}, "expected an absolute path"),
    ({"socket": "/tmp/x y"}, "expected an absolute path"),
    ({"listen": "127.0.0.1:1", "socket": "/s"}, "not both"),
    ({"workers": 0}, "workers must be 1..64"),
])
def test_service_options_are_checked(kw, needle):
    with pytest.raises(EdgebnError, match=needle):
        ServiceOptions(**kw)


def test_service_flags_need_service(bundles):
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", "pi@x", "--listen",
                              "127.0.0.1:1"])
    assert res.exit_code == 2 and "--listen, --socket and --workers go with --service" in res.stderr


def test_device_facts_parse():
    text = "home=/h\ndest=/h/e\ntrust=/h/t\npython=/usr/bin/python3\ntrusting=1\nsystemd=ok\n"
    facts = DeviceFacts.parse(text)
    assert facts == DeviceFacts("/h", "/h/e", "/h/t", "/usr/bin/python3", True, "ok")
    with pytest.raises(EdgebnError, match="said too little"):
        DeviceFacts.parse(text.replace("python=", "py="))
