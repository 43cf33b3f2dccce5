"""Deploys under races and faults, against real sshds on 127.0.0.1: the device's state holds.

After every round, ``current`` resolves to a complete release (the device's verifier
accepts it) that is the last line of releases.log, and a rollback goes to the line
before it.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sshd_hosts import _target, tarpit
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.deploy.bundle import load_device_module
from edgebn.deploy.fleet import read_hosts
from edgebn.deploy.policy import RolloutPolicy
from edgebn.deploy.rollout import rollout_native
from edgebn.deploy.rows import Status
from edgebn.deploy.ssh import DeployOptions, SshTarget, deploy, prepare, rollback, ship
from edgebn.errors import EdgebnError

runner = CliRunner()
ROUNDS = 20


def _consistent(dest: Path) -> str:
    """``current``'s release id, after checking it is whole and the log's last line."""
    live = os.readlink(dest / "current")
    assert live.startswith("releases/"), live
    release = dest / live
    verifier = load_device_module("verify")
    verifier.check_bundle(str(release), str(dest / "no-trust-file"))  # every file, every hash
    log = (dest / "releases.log").read_text().split()
    assert log and log[-1] == release.name, (log[-3:], release.name)
    assert not [p.name for p in (dest / "releases").iterdir() if p.name.startswith(".")]
    return release.name


def test_the_same_host_eight_times_in_parallel(sshd, bundles, tmp_path):
    dest = tmp_path / "device"
    shipments = [prepare(bundles[q]) for q in ("none", "int8")]
    target = _target(sshd)
    opts = DeployOptions(str(dest), selftest=False, timeout_s=120)  # the lock, not the proofs
    for round_ in range(ROUNDS):
        result = rollout_native(bundles[("none", "int8")[round_ % 2]], [target] * 8, opts,
                                RolloutPolicy(parallel=8))
        assert result.passed, [h.reason for h in result.rows if h.reason]
        assert {h.status for h in result.rows} <= {Status.deployed, Status.unchanged}
        assert _consistent(dest) == shipments[round_ % 2].release
    log = (dest / "releases.log").read_text().split()
    back = rollback(target, opts)
    assert back.release == log[-2] and _consistent(dest) == log[-2]


def test_two_bundles_at_once_to_one_device(sshd, bundles, tmp_path):
    dest = tmp_path / "device"
    shipments = [prepare(bundles[q]) for q in ("none", "int8")]
    target, opts = _target(sshd), DeployOptions(str(dest), selftest=False, timeout_s=120)
    for _ in range(ROUNDS):
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda s: ship(s, target, opts), shipments))
        assert all(r.passed for r in results)
        live = _consistent(dest)
        assert live in {s.release for s in shipments}
        log = (dest / "releases.log").read_text().split()
        if len(log) >= 2:
            back = rollback(target, opts)
            assert back.release == log[-2] and back.previous == live
            assert _consistent(dest) == log[-2]


def test_a_full_disk_says_so_and_leaves_nothing_behind(sshd, bundles, tmp_path):
    dest = tmp_path / "small"
    dest.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(dest)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        with pytest.raises(EdgebnError,
                           match="no space left on the device in .* nothing was changed"):
            deploy(bundles["none"], _target(sshd), DeployOptions(str(dest), selftest=False))
        assert [p.name for p in (dest / "releases").iterdir()] == []  # no .incoming left
        assert not (dest / "current").exists()
    finally:
        subprocess.run(["umount", str(dest)], check=False)


def test_leftovers_of_a_deploy_that_died_are_removed_by_the_next(sshd, bundles, tmp_path):
    dest = tmp_path / "device"
    first = deploy(bundles["none"], _target(sshd), DeployOptions(str(dest), selftest=False))
    stale = dest / "releases" / f".{first.release}.incoming.999999"
    (stale / "x").mkdir(parents=True)
    (dest / ".current.999999").symlink_to("releases/nowhere")
    deploy(bundles["int8"], _target(sshd), DeployOptions(str(dest), selftest=False))
    assert not stale.exists() and not (dest / ".current.999999").is_symlink()
    _consistent(dest)


@pytest.mark.parametrize("line, needle", [
    ("pi@a\x00b:22", "no spaces or control characters"),
    ("pi@a:\u0662\u0662", "in ASCII digits"),
    ("pi@a:\u00b2", "in ASCII digits"),
    ("pi@a:99999", "1..65535"),
])
def test_hosts_file_lines_are_checked_before_any_deploy(bundles, tmp_path, line, needle):
    hosts = tmp_path / "hosts"
    hosts.write_text(f"pi@good\n{line}\n", encoding="utf-8")
    with pytest.raises(EdgebnError, match=f"line 2: .*{needle}"):
        read_hosts(hosts, SshTarget("x"))
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--hosts", str(hosts)])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and needle in lines[0], res.output


@pytest.mark.parametrize("dest", ["", "/", "//", "~", "a\nb", " "])
def test_a_destination_that_is_no_directory_of_its_own_is_refused(bundles, dest):
    with pytest.raises(EdgebnError, match="destination"):
        DeployOptions(dest)
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--host", "pi@a", "--dest", dest])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1, res.output


def test_a_host_that_sends_its_banner_and_goes_silent_is_dropped(bundles):
    """A tarpit: the SSH banner, then nothing. ssh's keepalive ends it, not the 600 s timeout."""
    with tarpit() as port:
        target = SshTarget("pi@127.0.0.1", port,
                           options=("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"),
                           keepalive_s=1)
        start = time.perf_counter()
        with pytest.raises(EdgebnError, match="ssh pi@127.0.0.1 failed"):
            deploy(bundles["none"], target, DeployOptions(timeout_s=600))
        assert time.perf_counter() - start < 30
