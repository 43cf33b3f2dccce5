"""``edgebn profile`` (edgebn.cli.perf): the command registered on an app of its own, run on a
Conv → BN (four operators the converter left) → Conv file written with edgebn's writer: its
document names each operator with its MACs and residue, the table shows the top ones, and bad
options are one error line."""

from __future__ import annotations

import json

import pytest
import typer
from tflite_forms import conv_bn
from typer.testing import CliRunner

from edgebn.cli.options import OneLineErrors
from edgebn.cli.perf import register_perf_commands

runner = CliRunner()


@pytest.fixture(scope="module")
def perf_app() -> typer.Typer:
    app = typer.Typer(cls=OneLineErrors, add_completion=False, pretty_exceptions_enable=False)
    register_perf_commands(app)

    @app.callback()
    def _root() -> None:
        """A group, as edgebn's app is: ``profile`` is named on the command line."""

    return app


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("perf") / "conv_bn.tflite"
    path.write_bytes(conv_bn(0))  # [1,6,6,3] → 3x3 conv → 4 BN ops → 3x3 conv → [1,2,2,2]
    return path


def test_profile_is_the_one_command_registered(perf_app):
    assert [c.callback.__name__ for c in perf_app.registered_commands] == ["profile"]
    result = runner.invoke(perf_app, ["profile", "--help"])
    assert result.exit_code == 0
    assert all(flag in result.stdout for flag in ("--baseline", "--min-time", "--top", "--json"))


def test_the_document_has_every_operator_with_its_macs_and_residue(perf_app, model):
    result = runner.invoke(perf_app, ["profile", str(model), "--json", "--min-time", "0.05",
                                      "--no-context", "--no-residue", "--threads", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ops = doc["operators"]
    assert [o["op"] for o in ops] == ["CONV_2D", "SUB", "MUL", "MUL", "ADD", "CONV_2D"]
    assert [o["residual_bn"] for o in ops] == [False, True, True, True, True, False]
    # 4x4x4 outputs of 3x3x3 taps each; 2x2x2 outputs (the shape the file gives) of 3x3x4
    assert (ops[0]["shape"], ops[5]["shape"]) == ([1, 4, 4, 4], [1, 2, 2, 2])
    assert (ops[0]["macs"], ops[5]["macs"]) == (4 * 4 * 4 * 27, 2 * 2 * 2 * 36)
    assert doc["threads"] == 1 and doc["residual_chains"] == 1 and doc["residue"] is None
    assert doc["latency_us"]["p50"] > 0 and all(o["time_us"] > 0 for o in ops)


def test_the_table_shows_the_top_operators_and_the_residual_bn(perf_app, model):
    result = runner.invoke(perf_app, ["profile", str(model), "--min-time", "0.05", "--top", "2",
                                      "--no-context", "--no-residue", "--no-xnnpack"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # a title wraps to its table's width
    assert "threads 1, XNNPACK off (top 2 of 6 operators)" in text
    assert "residual BN: 1 chains (4 operators)" in text
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert len(rows) == 2  # --top 2


@pytest.mark.parametrize("args, needle", [
    (["--min-time", "0.001"], "--min-time"),
    (["--top", "0"], "--top"),
])
def test_an_option_out_of_range_is_one_error_line_exit_2(perf_app, model, args, needle):
    result = runner.invoke(perf_app, ["profile", str(model), *args])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]


def test_a_missing_model_is_refused_before_anything_runs(perf_app, tmp_path):
    result = runner.invoke(perf_app, ["profile", str(tmp_path / "none.tflite")])
    assert result.exit_code == 2 and "none.tflite" in result.stderr
