"""Many devices at once (edgebn.deploy.fleet): hosts as written, a fleet run in parallel."""

import threading
import time
from dataclasses import dataclass

import pytest

from edgebn.deploy.fleet import parse_host, read_hosts, run_fleet
from edgebn.deploy.ssh import SshTarget
from edgebn.errors import EdgebnError


def test_a_host_takes_its_own_port_and_the_bases_identity(tmp_path):
    base = SshTarget("x", 22, tmp_path / "key", ("StrictHostKeyChecking=no",))
    t = parse_host("pi@10.0.0.7:2200", base)
    assert (t.host, t.port, t.identity, t.options) == ("pi@10.0.0.7", 2200, base.identity,
                                                       base.options)
    assert parse_host("pi@b", base).port == 22
    for bad in ("pi@a:0", "pi@a:65536", "pi@a:http", "pi@a:٢٢"):
        with pytest.raises(EdgebnError, match="the port must be 1..65535 in ASCII digits"):
            parse_host(bad, base)


def test_a_hosts_file_names_its_bad_line_and_an_empty_one_is_refused(tmp_path):
    f = tmp_path / "pis.txt"
    f.write_text("pi@a\n\n# spare\npi@b:x\n")
    with pytest.raises(EdgebnError, match=rf"{f}, line 4: host 'pi@b:x'"):
        read_hosts(f, SshTarget("x"))
    f.write_text("# nobody yet\n")
    with pytest.raises(EdgebnError, match="no hosts in it") as err:
        read_hosts(f, SshTarget("x"))
    assert err.value.option == "hosts"


@dataclass(frozen=True)
class Done:
    passed: bool

    def to_json(self) -> dict:
        return {"passed": self.passed}


def test_a_fleet_runs_at_once_keeps_the_order_and_one_failure_stops_nothing():
    running, most = [], []
    lock = threading.Lock()

    def action(t: SshTarget) -> Done:
        with lock:
            running.append(t.host)
            most.append(len(running))
        time.sleep(0.05)
        with lock:
            running.remove(t.host)
        if t.host == "pi@b":
            raise EdgebnError("pi@b: unreachable")
        if t.host == "pi@c":
            raise ZeroDivisionError("a bug")
        return Done(True)

    targets = [SshTarget(h) for h in ("pi@a", "pi@b", "pi@c", "pi@d")]
    fleet = run_fleet(targets, action, parallel=4)
    assert [h.host for h in fleet.hosts] == ["pi@a", "pi@b", "pi@c", "pi@d"]
    assert [h.passed for h in fleet.hosts] == [True, False, False, True] and not fleet.passed
    assert fleet.hosts[1].error == "pi@b: unreachable"
    assert fleet.hosts[2].error == "internal error: ZeroDivisionError: a bug"
    assert max(most) > 1  # in parallel
    with pytest.raises(EdgebnError, match="must be >= 1") as err:
        run_fleet(targets, action, parallel=0)
    assert err.value.option == "parallel"
