"""The device commands' output for people (edgebn.cli.render_device): a bundle, one host's
deploy, a rollout's and a fleet's tables, the device's per-operator profile, a rollback, an
exported playbook and a served release, each rendered from a typed result written here."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from edgebn.cli import render_device
from edgebn.deploy.ansible_engine import Exported
from edgebn.deploy.bundle import BundleResult
from edgebn.deploy.fleet import FleetResult, HostOutcome
from edgebn.deploy.policy import Engine, RolloutResult
from edgebn.deploy.rows import DeviceFacts, HostRow, Status
from edgebn.deploy.service import ServedDeploy, ServedRollback, ServiceResult
from edgebn.deploy.ssh import RollbackResult

SELFTEST = {"passed": True, "runtime": "tflite-runtime 2.14.0", "numpy": "1.26.4",
            "machine": "aarch64", "max_abs_diff": 1.5e-7, "units": "probabilities",
            "signature": "verified", "os": "Debian 13", "python": "3.13.5"}
BENCH = {"latency_us": {"p50": 812.345, "p90": 900.0, "p99": 1000.04}, "runtime": "ai-edge-litert",
         "threads": 4, "device": {"cpu": "Cortex-A76", "cores": 4},
         "thermal": {"after": {"temp_c": 61.4, "throttled": False}}}
PROFILE = {"runtime": "ai-edge-litert", "threads": 1, "ops_sum_us": 1234.5,
           "latency_us": {"p50": 1300.0},
           "operators": [
               {"index": 0, "op": "CONV_2D", "time_us": 1000.0, "share": 0.81, "macs": 1_000_000,
                "note": None},
               {"index": 1, "op": "MEAN", "time_us": None, "share": 0.0, "macs": 0,
                "note": "not timed"},
               {"index": 2, "op": "FULLY_CONNECTED", "time_us": 234.5, "share": 0.19,
                "macs": 1280, "note": "after the BN"}]}


@pytest.fixture
def screen(monkeypatch) -> Console:
    """What render_device prints, recorded, wide enough for one line per row."""
    console = Console(file=io.StringIO(), record=True, width=200, force_terminal=False)
    monkeypatch.setattr(render_device, "out", console)
    return console


def _lines(screen: Console) -> list[str]:
    return [line.rstrip() for line in screen.export_text(clear=False).splitlines()]


def _row(screen: Console, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in _lines(screen):
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{screen.export_text(clear=False)}")


def test_a_signed_bundle_lists_its_files_self_test_and_the_device_command(screen):
    render_device.bundle(BundleResult(
        Path("/tmp/out/bundle-int8"), {"predict.py": "ab", "model.tflite": "cd"}, {},
        {"passed": True, "samples": 8, "runtime": "ai-edge-litert 2.1.0"}, signed=True))
    assert _lines(screen) == [
        "wrote /tmp/out/bundle-int8: model.tflite, predict.py, manifest.json",
        "self-test here: passed (8 golden inputs, ai-edge-litert 2.1.0)",
        "signed: manifest.json.sig (devices that trust the key verify it)",
        "on the device: python3 bundle-int8/predict.py --selftest"]


def test_a_failed_unsigned_bundle_says_failed_and_nothing_of_a_signature(screen):
    render_device.bundle(BundleResult(Path("b"), {"model.tflite": "cd"}, {},
                                      {"passed": False, "samples": 2, "runtime": "x"}))
    assert _lines(screen)[1] == "self-test here: FAILED (2 golden inputs, x)"
    assert not any("signed" in line for line in _lines(screen))


def test_one_deploy_shows_release_self_test_health_and_bench(screen):
    render_device.deploy(HostRow("pi@a:2222", Status.deployed, "0123abcd", previous="fedc9876",
                                 seconds=1.26, bytes_sent=4096, selftest=SELFTEST, health="ok",
                                 bench=BENCH))
    assert _lines(screen) == [
        "pi@a:2222: deployed 0123abcd (was fedc9876), 4096 bytes sent, 1.3 s",
        "self-test of the staged release on pi@a:2222: passed (tflite-runtime 2.14.0, NumPy "
        "1.26.4, aarch64, max |diff| 1.5e-07 probabilities; signature verified)",
        "health check: ok",
        "on pi@a:2222: p50 812.3 us, p90 900.0 us, p99 1000.0 us (ai-edge-litert, 4 threads, "
        "Cortex-A76, 4 cores)"]


def test_a_rolled_back_deploy_gives_its_reason_and_its_device_profile(screen):
    render_device.deploy(HostRow("pi@b", Status.rolled_back, "0123abcd", reason="health check "
                                 "timed out after 30 s", seconds=40.0, profile=PROFILE))
    lines = _lines(screen)
    assert lines[:2] == ["pi@b: rolled_back 0123abcd, 0 bytes sent, 40.0 s",
                         "health check timed out after 30 s"]
    assert not any("self-test" in line for line in lines)
    title = " ".join(" ".join(lines[2:5]).split())  # the table's title, wrapped to its width
    assert title.startswith("pi@b: per operator (ai-edge-litert, 1 threads); sum 1,234.5 µs "
                            "beside the whole model's p50 1,300.0 µs")
    assert _row(screen, "0")[1] == "CONV_2D"


def test_the_device_profile_lists_the_slowest_operators_first_up_to_top(screen):
    render_device.device_profile("pi@a", PROFILE, top=2)
    assert _row(screen, "0") == ["0", "CONV_2D", "1,000.0", "81.0%", "1,000,000", ""]
    assert _row(screen, "2") == ["2", "FULLY_CONNECTED", "234.5", "19.0%", "1,280",
                                 "after the BN"]
    assert "MEAN" not in screen.export_text(clear=False)  # untimed, third: beyond top 2
    render_device.device_profile("pi@a", PROFILE)
    assert _row(screen, "1") == ["1", "MEAN", "-", "0.0%", "", "not timed"]


def test_a_rollout_has_one_row_per_host_and_its_counts_and_spent_budget(screen):
    rows = (HostRow("pi@a", Status.deployed, "r2", previous="r1", batch=1, seconds=2.04,
                    bench=BENCH, device=DeviceFacts("Debian 13", "3.13.5", "tflite-runtime",
                                                    61.4)),
            HostRow("pi@b", Status.failed, "r2", batch=2, reason="self-test failed", seconds=1.0),
            HostRow("pi@c", Status.not_attempted, "r2", reason="budget spent"))
    render_device.rollout(RolloutResult(Engine.native, "r2", rows, 3.5, (1, 1, 1), 0))
    lines = _lines(screen)
    assert "3 hosts in batches of 1+1+1, native engine, release r2, 3.5 s" in lines[0]
    assert _row(screen, "pi@a") == ["pi@a", "1", "deployed", "r1", "812.3", "Debian 13",
                                    "3.13.5", "tflite-runtime", "61", "2.0", ""]
    assert _row(screen, "pi@b") == ["pi@b", "2", "failed", "-", "-", "-", "-", "-", "-", "1.0",
                                    "self-test failed"]
    assert _row(screen, "pi@c")[1:3] == ["-", "not_attempted"]
    assert lines[-1] == "1 deployed, 1 failed, 1 not_attempted; the failure budget (0) was spent"


def test_a_check_rollout_says_so_and_a_passing_one_spends_no_budget(screen):
    rows = (HostRow("pi@a", Status.unchanged, "r2"),)
    render_device.rollout(RolloutResult(Engine.ansible, "r2", rows, 0.5, (1,), None, check=True))
    lines = _lines(screen)
    assert "1 hosts in batches of 1, ansible engine, release r2, 0.5 s (check: nothing " \
           "changed)" in lines[0]
    assert lines[-1] == "1 unchanged"


def test_rollback_exported_playbook_lines(screen):
    render_device.rollback(RollbackResult("pi@a", "edgebn/current", "r1", "r2", 0.4))
    render_device.exported(Exported(Path("/tmp/run"), ("rollout.yml", "vars.json"),
                                    "cd /tmp/run && ansible-playbook rollout.yml"))
    assert _lines(screen) == ["pi@a:edgebn/current -> releases/r1 (was r2)",
                              "wrote rollout.yml, vars.json to /tmp/run; run it with:",
                              "  cd /tmp/run && ansible-playbook rollout.yml"]


def _service(error: str | None = None, **address: str) -> ServiceResult:
    return ServiceResult("pi@a", "edgebn.service", address, "python3 predict.py --serve",
                         {"release": "0123abcd", "runtime": "ai-edge-litert 2.1.0"}, 2.0, error)


def test_a_served_deploy_names_the_unit_its_address_and_the_live_release(screen):
    row = HostRow("pi@a", Status.deployed, "0123abcd", seconds=1.0)
    render_device.served(ServedDeploy(row, _service(listen="127.0.0.1:8750")))
    assert _lines(screen)[-1] == ("service edgebn.service on pi@a (127.0.0.1:8750): serving "
                                  "release 0123abcd, self-test passed at load, "
                                  "ai-edge-litert 2.1.0")


def test_a_served_deploy_that_did_not_go_live_and_a_failed_service_rollback(screen):
    row = HostRow("pi@a", Status.failed, "0123abcd", reason="self-test failed")
    render_device.served(ServedDeploy(row, None))
    assert _lines(screen)[-1] == "the release did not go live: the service was left as it was"
    rollback = RollbackResult("pi@a", "edgebn/current", "r1", "r2", 0.4)
    render_device.served(ServedRollback(rollback, _service("health names r2",
                                                           socket="/run/e.sock"), True))
    assert _lines(screen)[-2:] == ["pi@a:edgebn/current -> releases/r1 (was r2)",
                                   "service edgebn.service on pi@a (/run/e.sock): "
                                   "health names r2"]


def test_a_fleet_table_reads_each_hosts_result_and_counts_the_failed(screen):
    row = HostRow("pi@a", Status.deployed, "r2", bytes_sent=10, selftest=SELFTEST, bench=BENCH)
    served = ServedDeploy(row, _service(listen="127.0.0.1:8750"))
    hosts = (HostOutcome("pi@a", 2.26, served),
             HostOutcome("pi@b", 0.5, RollbackResult("pi@b", "edgebn/current", "r1", "r2", 0.5)),
             HostOutcome("pi@c", 5.0, error="ssh: connection refused"))
    render_device.fleet(FleetResult(hosts, 7.8))
    lines = _lines(screen)
    assert "3 hosts, 7.8 s" in lines[0]
    assert _row(screen, "pi@a") == ["pi@a", "yes", "passed", "812.3", "Debian 13", "3.13.5",
                                    "tflite-runtime 2.14.0", "61", "no", "2.3", ""]
    assert _row(screen, "pi@b") == ["pi@b", "no", "-", "-", "-", "-", "-", "-", "-", "0.5", ""]
    assert _row(screen, "pi@c")[-1] == "ssh: connection refused"
    assert lines[-1] == "1 host(s) failed"
    render_device.fleet(FleetResult(hosts[:2], 1.0))
    assert _lines(screen)[-1] == "all hosts passed"
