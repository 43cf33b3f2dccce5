"""One host of a rollout (edgebn.deploy.rows): its status, what passes, its JSON both ways."""

from edgebn.deploy.rows import FAILING, OK, DeviceFacts, HostRow, Status


def test_a_row_round_trips_through_its_json_and_unknown_keys_are_ignored():
    row = HostRow("pi@a:2222", Status.deployed, "0123456789abcdef", previous="fedcba9876543210",
                  batch=2, seconds=1.23456, bytes_sent=4096, path="edgebn/current",
                  device=DeviceFacts(os="Debian 13", python="3.13.5", temp_c=51.5))
    doc = row.to_json()
    assert doc["status"] == "deployed" and doc["seconds"] == 1.23 and doc["passed"] is True
    assert doc["device"] == {"os": "Debian 13", "python": "3.13.5", "runtime": None,
                             "temp_c": 51.5, "throttled": None, "thread_warning": None}
    back = HostRow.from_json(doc | {"a_future_field": 1})
    assert back == HostRow(**{**row.__dict__, "seconds": 1.23})


def test_what_passes_and_what_spends_the_failure_budget():
    assert HostRow("h", Status.unchanged).passed
    assert not HostRow("h", Status.deployed, reason="health check slow").passed
    assert {s for s in Status if HostRow("h", s).passed} == set(OK)
    assert FAILING == {Status.failed, Status.refused, Status.rolled_back}
    assert Status.offline not in FAILING and Status.not_attempted not in FAILING
