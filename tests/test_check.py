import json
import shutil

import pytest
from typer.testing import CliRunner

from edgebn.bench import BenchSettings
from edgebn.check import Thresholds, check
from edgebn.cli import app
from edgebn.errors import EdgebnError

runner = CliRunner()
QUICK = BenchSettings(warmup=20, min_time_s=0.2)


def _build_dir(root, name, tflite, accuracy):
    d = root / name
    d.mkdir()
    shutil.copy(tflite, d / "model.tflite")
    (d / "report.json").write_text(json.dumps(
        {"tflite": {"path": "model.tflite", "test_accuracy": accuracy}}))
    return d / "report.json"


@pytest.fixture(scope="module")
def slow_tflite(tmp_path_factory):
    """Same input and output as the cnn, many times the arithmetic: a latency regression."""
    import keras

    from edgebn.convert import to_tflite as convert

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(128, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    return convert(keras.Model(inputs, outputs),
                   tmp_path_factory.mktemp("slow") / "slow.tflite").path


@pytest.fixture
def baseline(cnn, tmp_path):
    return _build_dir(tmp_path, "baseline", cnn["tflite"], 0.98)


def _failed(result):
    return sorted(m.name for m in result.metrics if not m.passed)


def test_identical_build_passes(cnn, baseline, tmp_path):
    current = _build_dir(tmp_path, "current", cnn["tflite"], 0.98)
    result = check(current, baseline, bench_settings=QUICK)
    assert result.passed, result.to_json()
    assert [m.name for m in result.metrics] == [
        "accuracy", "size_bytes", "new_ops", "bn_verdict", "latency_p50_ratio"]
    assert result.grown_ops == () and result.to_json()["grown_ops"] == []


def test_accuracy_drop_fails(cnn, baseline, tmp_path):
    current = _build_dir(tmp_path, "current", cnn["tflite"], 0.95)
    assert _failed(check(current, baseline, bench_settings=QUICK)) == ["accuracy"]
    assert check(current, baseline, Thresholds(max_accuracy_drop=0.05), QUICK).passed


def test_latency_regression_against_a_slower_model_fails(slow_tflite, baseline, tmp_path):
    current = _build_dir(tmp_path, "current", slow_tflite, 0.98)
    result = check(current, baseline, Thresholds(max_size_growth=100.0), QUICK)
    assert _failed(result) == ["latency_p50_ratio"]
    ratio = next(m for m in result.metrics if m.name == "latency_p50_ratio")
    assert ratio.current > 2 * ratio.baseline
    # the operators that grew most are named: the wide convolutions, from a per-op diff
    assert 0 < len(result.grown_ops) <= 5
    assert result.grown_ops[0].op == "CONV_2D" and result.grown_ops[0].delta_us > 0
    assert all(d.delta_us > 0 for d in result.grown_ops)
    doc = result.to_json()
    assert doc["grown_ops"][0]["op"] == "CONV_2D" and doc["grown_ops"][0]["delta_us"] > 0


def test_cli_names_grown_operators(slow_tflite, baseline, tmp_path):
    current = _build_dir(tmp_path, "current", slow_tflite, 0.98)
    args = ["check", str(current), "--baseline", str(baseline), "--bench-time", "0.1",
            "--max-size-growth", "100"]
    table = runner.invoke(app, args)
    assert table.exit_code == 1, table.output
    assert "operators that grew most" in table.stdout and "CONV_2D" in table.stdout
    doc = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert doc["passed"] is False and doc["grown_ops"][0]["op"] == "CONV_2D"


def test_size_growth_fails(mlp_fitted, baseline, tmp_path):
    current = _build_dir(tmp_path, "current", mlp_fitted["paths"]["none"], 0.98)
    result = check(current, baseline, Thresholds(max_latency_regression=100.0), QUICK)
    assert "size_bytes" in _failed(result)


def test_new_op_fails_unless_allowed(pattern_files, cnn, tmp_path):
    base = _build_dir(tmp_path, "base", pattern_files[("conv_bn_relu", "none", False)], 0.9)
    current = _build_dir(tmp_path, "current", pattern_files[("rescaling", "none", False)], 0.9)
    loose = dict(max_latency_regression=100.0, max_size_growth=100.0)
    result = check(current, base, Thresholds(**loose), QUICK)
    assert _failed(result) == ["new_ops"]
    assert next(m for m in result.metrics if m.name == "new_ops").current == ["ADD", "MUL"]
    assert check(current, base, Thresholds(**loose, allow_ops=("ADD", "MUL")), QUICK).passed


def test_bn_residue_fails(pattern_files, tmp_path):
    base = _build_dir(tmp_path, "base", pattern_files[("rescaling", "none", False)], 0.9)
    current = _build_dir(tmp_path, "current", pattern_files[("bn_last", "none", False)], 0.9)
    result = check(current, base, Thresholds(max_latency_regression=100.0,
                                             max_size_growth=100.0), QUICK)
    assert _failed(result) == ["bn_verdict"]


def test_cli_exit_codes(cnn, baseline, tmp_path):
    same = _build_dir(tmp_path, "same", cnn["tflite"], 0.98)
    ok = runner.invoke(app, ["check", str(same), "--baseline", str(baseline), "--bench-time",
                             "0.2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["passed"] is True
    worse = _build_dir(tmp_path, "worse", cnn["tflite"], 0.5)
    bad = runner.invoke(app, ["check", str(worse), "--baseline", str(baseline), "--bench-time",
                              "0.2"])
    assert bad.exit_code == 1 and "FAIL" in bad.stdout


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a readable JSON report"),
    ('{"tflite": {}}', "not an edgebn build report"),
    ('{"tflite": {"path": "gone.tflite", "test_accuracy": 1}}', "does not exist"),
])
def test_bad_reports_are_refused(baseline, tmp_path, content, message):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EdgebnError, match=message):
        check(path, baseline)
    result = runner.invoke(app, ["check", str(path), "--baseline", str(baseline)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1


def test_check_in_a_terminal_shows_only_its_own_lines(cnn, baseline, tmp_path):
    """The interpreters' own 'INFO: Created TensorFlow Lite XNNPACK delegate' stays off."""
    import subprocess
    import sys

    current = _build_dir(tmp_path, "current", cnn["tflite"], 0.98)
    proc = subprocess.run([sys.executable, "-m", "edgebn.cli", "check", str(current),
                           "--baseline", str(baseline), "--bench-time", "0.05"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no regression" in proc.stdout and "INFO:" not in proc.stdout + proc.stderr
    loud = subprocess.run([sys.executable, "-m", "edgebn.cli", "check", str(current),
                           "--baseline", str(baseline), "--bench-time", "0.05", "--verbose"],
                          capture_output=True, text=True, timeout=120)
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in loud.stderr
