"""edgebn deploy against real sshds on 127.0.0.1 (the test's own, on free ports)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshd_hosts import REAL_SSH, _free_port, _ssh_args, _target
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.deploy.fleet import read_hosts
from edgebn.deploy.rollout import rollout_native
from edgebn.deploy.rows import Status
from edgebn.deploy.ssh import DeployOptions, SshTarget, deploy, rollback
from edgebn.errors import EdgebnError

runner = CliRunner()


def _local_selftest(bundle_dir: Path) -> dict:
    res = subprocess.run([sys.executable, str(bundle_dir / "predict.py"), "--selftest", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)["selftest"]


def _fake_ssh(tmp_path, body: str) -> dict:
    """A PATH whose ``ssh`` is a script: ``body`` runs with the real ssh in $REAL_SSH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\nREAL_SSH={REAL_SSH}\n{body}\n")
    (bin_dir / "ssh").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_deploy_lands_in_a_release_and_runs_the_selftest_in_current(sshd, bundles, tmp_path):
    dest = str(tmp_path / "device")
    opts = DeployOptions(dest, selftest=True, python=sys.executable)
    result = deploy(bundles["int8"], _target(sshd), opts)
    assert result.passed and result.status is Status.deployed and result.selftest_exit == 0
    assert result.selftest["passed"] and result.selftest["samples"] == 16
    assert result.selftest["signature"] == "unverified (no trust file)"
    assert result.health == "ok"  # no service: the live release's self-test passed too
    current = Path(dest) / "current"
    release = Path(dest) / "releases" / result.release
    assert os.readlink(current) == f"releases/{release.name}" and len(release.name) == 16
    manifest = (current / "manifest.json").read_bytes()
    assert manifest == (bundles["int8"] / "manifest.json").read_bytes()
    assert sorted(p.name for p in Path(dest).iterdir()) == [".lock", "current", "releases",
                                                            "releases.log"]
    assert [p.name for p in (Path(dest) / "releases").iterdir()] == [release.name]  # no staging
    assert result.previous is None and result.path == f"{dest}/current"


def test_a_second_release_keeps_the_first_and_rollback_returns_to_it(sshd, bundles, tmp_path):
    dest = tmp_path / "device"
    target, opts = _target(sshd), DeployOptions(str(dest), python=sys.executable)
    first = deploy(bundles["int8"], target, opts)
    second = deploy(bundles["none"], target, opts)
    assert second.previous == first.release
    assert os.readlink(dest / "current") == f"releases/{second.release}"
    assert (dest / "releases" / first.release).is_dir()
    assert (dest / "releases" / second.release).is_dir()
    assert (dest / "releases.log").read_text().split() == [first.release, second.release]
    with pytest.raises(EdgebnError, match=f"current is {second.release}, not {first.release}"):
        rollback(target, opts, expect=first.release)  # only what this deploy switched
    back = rollback(target, opts, expect=second.release)
    assert (back.release, back.previous) == (first.release, second.release)
    assert os.readlink(dest / "current") == f"releases/{first.release}"
    assert _local_selftest(dest / "current")["passed"]
    with pytest.raises(EdgebnError, match="no earlier release to roll back to"):
        rollback(target, opts)
    assert os.readlink(dest / "current") == f"releases/{first.release}"


def test_rollback_cli(sshd, bundles, tmp_path):
    dest = str(tmp_path / "d")
    for q in ("int8", "none"):
        deploy(bundles[q], _target(sshd), DeployOptions(dest, selftest=False))
    res = runner.invoke(app, ["deploy", "--rollback", "--host", sshd["host"], "--dest", dest,
                              *_ssh_args(sshd), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["path"] == f"{dest}/current"


def test_a_copy_cut_short_leaves_current_untouched(sshd, bundles, tmp_path, monkeypatch):
    dest = tmp_path / "device"
    old = deploy(bundles["int8"], _target(sshd), DeployOptions(str(dest), selftest=False))
    monkeypatch.setenv("PATH", _fake_ssh(tmp_path, 'head -c 4096 | "$REAL_SSH" "$@"')["PATH"])
    with pytest.raises(EdgebnError, match=r"deploy to .* failed \(exit 5\): receiving the bundle"):
        deploy(bundles["none"], _target(sshd), DeployOptions(str(dest), selftest=False))
    assert os.readlink(dest / "current") == f"releases/{old.release}"
    assert _local_selftest(dest / "current")["passed"]
    assert (dest / "releases.log").read_text().split() == [old.release]


def test_a_host_starting_with_a_dash_never_reaches_ssh(bundles, tmp_path):
    marker = tmp_path / "ssh-ran"
    env = _fake_ssh(tmp_path, f"touch {marker}")
    for host in ("-oProxyCommand=touch /tmp/pwned", "-V"):
        res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", host], env=env)
        assert res.exit_code == 2, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "expected user@host (not starting with '-'" in lines[0]
    assert not marker.exists()


def test_python_is_shell_quoted_on_the_device(sshd, bundles, tmp_path):
    marker = tmp_path / "injected"
    with pytest.raises(EdgebnError, match="expected one command word"):
        DeployOptions(str(tmp_path / "d"), selftest=True, python=f"python3; touch {marker}")
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", sshd["host"], "--dest",
                              str(tmp_path / "d"), "--selftest", "--python",
                              f"python3; touch {marker}", *_ssh_args(sshd)])
    assert res.exit_code == 2 and "expected one command word" in res.stderr, res.output
    assert not marker.exists()


def test_deploy_cli_json_with_bench(sshd, bundles, tmp_path):
    args = ["deploy", str(bundles["none"]), "--host", sshd["host"], "--dest", str(tmp_path / "d"),
            "--selftest", "--bench", "--runs", "20", "--python", sys.executable,
            *_ssh_args(sshd), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["selftest"]["passed"] and doc["selftest_exit"] == 0 and doc["bytes_sent"] > 0
    assert doc["status"] == "deployed" and doc["health"] == "ok" and len(doc["release"]) == 16
    bench = doc["bench"]
    lat = bench["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert bench["device"]["cores"] == os.cpu_count() and bench["device"]["cpu"]
    assert bench["runtime_name"] in ("ai_edge_litert", "tflite_runtime")
    assert bench["runtime_version"]


def test_trust_then_deploy_verifies_the_signature_on_the_device(sshd, bundles, tmp_path):
    from edgebn.deploy.sign import sign_manifest

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    signed = shutil.copytree(bundles["none"], tmp_path / "signed")
    sign_manifest(signed, tmp_path / "k")
    trust_file = str(tmp_path / "device-config" / "allowed_signers")
    opts = DeployOptions(str(tmp_path / "d"), selftest=True, python=sys.executable,
                         trust=tmp_path / "k.pub", trust_file=trust_file)
    result = deploy(signed, _target(sshd), opts)
    assert result.passed and result.selftest["signature"].startswith("verified by ED25519")
    assert Path(trust_file).read_text().startswith('edgebn-bundle namespaces="edgebn-bundle" ')
    unsigned_opts = DeployOptions(str(tmp_path / "d"), selftest=True, python=sys.executable,
                                  trust_file=trust_file)
    with pytest.raises(EdgebnError, match="the device's verifier refused the bundle: unsigned"):
        deploy(bundles["int8"], _target(sshd), unsigned_opts)
    assert os.readlink(tmp_path / "d" / "current") == f"releases/{result.release}"


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
    assert len(lines) == 1 and "status: ssh nobody@127.0.0.1 failed" in lines[0]


def test_hosts_file_parsing(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# the lab\npi@a:2222\n\n  pi@b   # second\n")
    got = [(t.host, t.port) for t in read_hosts(f, SshTarget("x", 22))]
    assert got == [("pi@a", 2222), ("pi@b", 22)]
    f.write_text("pi@a:http\n")
    with pytest.raises(EdgebnError, match="the port must be 1..65535"):
        read_hosts(f, SshTarget("x"))


def test_a_fleet_runs_in_parallel_and_one_dead_host_stops_nothing(sshds, bundles, tmp_path):
    opts = DeployOptions("~/fleet", selftest=True, python=sys.executable, timeout_s=60)
    alone = []
    for i, s in enumerate(sshds):  # each host on its own, for the same work
        start = time.perf_counter()
        assert deploy(bundles["none"], _target(s), DeployOptions(
            str(tmp_path / f"alone{i}"), selftest=True, python=sys.executable)).passed
        alone.append(time.perf_counter() - start)
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{s['host']}:{s['port']}\n" for s in sshds) +
                     f"# a dead one\nnobody@127.0.0.1:{_free_port()}\n")
    base = _target(sshds[0])
    start = time.perf_counter()
    result = rollout_native(bundles["none"], read_hosts(hosts, base), opts)
    wall = time.perf_counter() - start
    assert [h.status for h in result.rows] == [Status.deployed] * 3 + [Status.offline]
    dead = result.rows[3]
    assert dead.reason.startswith("status: ssh nobody@127.0.0.1 failed")
    assert result.passed  # offline is not failed: a re-run brings it up to date
    assert wall < 0.8 * sum(alone), (wall, alone)
    for s in sshds:  # each device's own home
        assert (s["home"] / "fleet" / "current" / "manifest.json").is_file()
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--hosts", str(hosts),
                              "--dest", "~/fleet-cli", "--selftest", "--bench", "--runs", "20",
                              "--python", sys.executable, *_ssh_args(sshds[0]), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [h["status"] for h in doc["hosts"]] == ["deployed"] * 3 + ["offline"]
    assert doc["engine"] == "native" and doc["batches"] == [4] and doc["failed"] == 0
    for h in doc["hosts"][:3]:  # each live device's own latency, from its own predict.py --bench
        lat = h["bench"]["latency_us"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        dev = h["device"]  # the table's OS, Python, runtime, temperature, throttle columns
        assert dev["python"] == platform.python_version()
        assert dev["runtime"].startswith("ai_edge_litert")
        assert dev["os"] == _os_release() and "temp_c" in dev and dev["throttled"] is None
        assert h["bench"]["device"]["cores"] >= 1 and h["selftest"]["passed"]
    assert doc["hosts"][3]["bench"] is None and doc["hosts"][3]["bytes_sent"] == 0
    assert doc["hosts"][3]["reason"].startswith("status: ssh nobody@127.0.0.1 failed")


def test_trust_cli_installs_the_default_trust_file_in_the_devices_home(sshds, bundles, tmp_path):
    from edgebn.deploy.sign import sign_manifest

    s = sshds[2]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    signed = shutil.copytree(bundles["int8"], tmp_path / "signed")
    sign_manifest(signed, tmp_path / "k")
    res = runner.invoke(app, ["deploy", str(signed), "--host", s["host"], "--dest", "~/trusting",
                              "--trust", str(tmp_path / "k.pub"), "--selftest", "--python",
                              sys.executable, *_ssh_args(s), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["selftest"]["signature"].startswith("verified by ED25519")
    assert (s["home"] / ".config" / "edgebn" / "allowed_signers").is_file()
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", s["host"], "--dest",
                              "~/trusting", "--selftest", "--python", sys.executable,
                              *_ssh_args(s)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unsigned bundle" in lines[0], lines
    (s["home"] / ".config" / "edgebn" / "allowed_signers").unlink()


def test_the_per_host_timeout_bounds_a_hanging_host(bundles, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _fake_ssh(tmp_path, "exec sleep 30")["PATH"])
    targets = [SshTarget("pi@a"), SshTarget("pi@b", 2222)]
    start = time.perf_counter()
    result = rollout_native(bundles["none"], targets, DeployOptions(timeout_s=1))
    assert time.perf_counter() - start < 10
    assert [h.reason for h in result.rows] == ["status: ssh timed out after 1 s"] * 2
    assert [h.status for h in result.rows] == [Status.offline] * 2  # nothing changed there
    assert result.passed and result.to_json()["failed"] == 0


def _os_release() -> str | None:
    for line in open("/etc/os-release", encoding="utf-8").read().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def test_deploy_profile_brings_each_hosts_operator_table_back(sshds, profile_bundles, bundles,
                                                              tmp_path):
    """``edgebn deploy --profile`` against the test's sshd hosts: predict.py --profile runs on
    each, and its per-operator table comes back per host (--json, and the terminal's tables)."""
    from edgebn.tflite.reader import read_tflite

    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"{s['host']}:{s['port']}\n" for s in sshds[:2]))
    args = ["deploy", str(profile_bundles["none"]), "--hosts", str(hosts), "--dest", "~/prof",
            "--profile", "--runs", "20", "--python", sys.executable, *_ssh_args(sshds[0])]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    model = read_tflite(profile_bundles["none"] / "model.tflite")
    ops = [o.op for o in model.subgraphs[0].operators]
    doc = json.loads(res.stdout)
    assert len(doc["hosts"]) == 2
    for h in doc["hosts"]:
        p = h["profile"]
        assert [r["op"] for r in p["operators"]] == ops and p["ops_sum_us"] > 0
    shown = runner.invoke(app, args)
    assert shown.exit_code == 0 and shown.stdout.count("per operator") == 2, shown.output
    refused = runner.invoke(app, ["deploy", str(bundles["none"]), "--hosts", str(hosts),
                                  "--profile",
                                  "--python", sys.executable, *_ssh_args(sshds[0])])
    assert refused.exit_code == 2 and "--profile" in refused.stderr
