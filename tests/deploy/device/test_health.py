"""The device's health check after a switch (edgebn/deploy/device/health.py), on this machine."""

import json

import pytest

from edgebn.deploy.bundle import load_device_module

health = load_device_module("health")


def test_service_json_names_a_listen_address_or_a_socket(tmp_path):
    (tmp_path / "service.json").write_text(json.dumps({"listen": "[::1]:8750", "unit": "u"}))
    _, where = health.service(str(tmp_path))
    assert where == "http://[::1]:8750"
    (tmp_path / "service.json").write_text(json.dumps({"socket": "/run/edgebn.sock"}))
    assert health.service(str(tmp_path))[1] == "unix socket /run/edgebn.sock"
    for bad in ({"listen": "nohost"}, {"listen": "h:99999"}, ["not", "an", "object"]):
        (tmp_path / "service.json").write_text(json.dumps(bad))
        with pytest.raises(health.HealthError, match="expected"):
            health.service(str(tmp_path))
    (tmp_path / "service.json").write_text("{")
    with pytest.raises(health.HealthError, match="unreadable"):
        health.service(str(tmp_path))


def test_a_server_that_is_not_there_is_said_so_in_one_reason(tmp_path):
    (tmp_path / "service.json").write_text(json.dumps({"socket": str(tmp_path / "none.sock")}))
    connect, _ = health.service(str(tmp_path))
    doc, why = health.ask(connect, 0.5)
    assert doc is None and why.startswith(("FileNotFoundError", "ConnectionRefusedError"))
