"""The device commands (edgebn.cli.device): bundle, emulate and deploy registered on an app of
their own, and deploy's choice among one host, a rollout, a rollback, an exported playbook
and a service refusing contradictory options with one error line, exit 2, before any ssh."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from edgebn.cli.device import register_device_commands
from edgebn.cli.options import OneLineErrors

runner = CliRunner()


@pytest.fixture(scope="module")
def device_app() -> typer.Typer:
    app = typer.Typer(cls=OneLineErrors, add_completion=False, pretty_exceptions_enable=False)
    register_device_commands(app)
    return app


@pytest.fixture
def bundle_dir(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    return str(d)


def _error(result) -> str:
    """The one error line of a refused command."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0].removeprefix("Error: ")


def test_bundle_emulate_and_deploy_are_registered_with_their_options(device_app):
    assert [c.callback.__name__ for c in device_app.registered_commands] == [
        "bundle", "emulate", "deploy"]
    for command, flags in (("bundle", ("--out", "--sign", "--profile")),
                           ("emulate", ("--runtime", "--os", "--cache")),
                           ("deploy", ("--host", "--engine", "--rollback", "--service",
                                       "--export-playbook"))):
        result = runner.invoke(device_app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and all(f in result.stdout for f in flags), command


def test_a_deploy_needs_a_device(device_app, bundle_dir):
    assert _error(runner.invoke(device_app, ["deploy", bundle_dir])) == (
        "no device: give --host user@host, --hosts FILE or --inventory")


def test_an_inventory_goes_alone_and_with_the_ansible_engine(device_app, bundle_dir):
    both = runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a", "--inventory",
                                      "a,b,"])
    assert _error(both) == "--inventory names the hosts itself: not with --host or --hosts"
    native = runner.invoke(device_app, ["deploy", bundle_dir, "--inventory", "a,b,"])
    assert _error(native).startswith("--inventory is read by Ansible: add --engine ansible")


def test_a_bundle_or_rollback_exactly_one(device_app, bundle_dir):
    want = "give a BUNDLE to deploy, or --rollback without one"
    assert _error(runner.invoke(device_app, ["deploy", "--host", "pi@a"])) == want
    assert _error(runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a",
                                             "--rollback"])) == want


@pytest.mark.parametrize("args, what", [
    (["--service", "--engine", "ansible"], "--service"),
    (["--listen", "127.0.0.1:9000", "--export-playbook", "out"], "--service"),
])
def test_the_service_runs_with_the_native_engine_only(device_app, bundle_dir, args, what):
    result = runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a", *args])
    assert _error(result) == f"{what} runs with the native engine and --host/--hosts only"


def test_a_rollback_runs_with_the_native_engine_only(device_app):
    result = runner.invoke(device_app, ["deploy", "--rollback", "--host", "pi@a", "--engine",
                                        "ansible"])
    assert _error(result) == "--rollback runs with the native engine and --host/--hosts only"


def test_service_options_need_the_service_and_a_valid_address(device_app, bundle_dir):
    alone = runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a", "--listen",
                                       "127.0.0.1:9000"])
    assert _error(alone) == "--listen, --socket and --workers go with --service"
    port0 = runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a", "--service",
                                       "--listen", "127.0.0.1:0"])
    assert _error(port0) == "listen address '127.0.0.1:0': the port must be 1..65535"


def test_a_host_with_a_bad_port_is_refused(device_app, bundle_dir):
    result = runner.invoke(device_app, ["deploy", bundle_dir, "--host", "pi@a:70000"])
    assert _error(result) == ("host 'pi@a:70000': the port must be 1..65535 in ASCII digits. "
                              "Received: '70000'")


def test_bundle_and_emulate_refuse_a_missing_directory(device_app, tmp_path):
    missing = str(tmp_path / "nothing")
    assert "nothing" in _error(runner.invoke(device_app, ["bundle", missing, "--out",
                                                          str(tmp_path / "b")]))
    assert "nothing" in _error(runner.invoke(device_app, ["emulate", missing]))
    assert not (tmp_path / "b").exists()
