import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import EdgebnError
from edgebn.pipeline.check import Thresholds, check
from edgebn.pipeline.report_read import read_report
from edgebn.runtime.timing import BenchSettings

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
    proc = subprocess.run([sys.executable, "-m", "edgebn.cli.app", "check", str(current),
                           "--baseline", str(baseline), "--bench-time", "0.05"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no regression" in proc.stdout and "INFO:" not in proc.stdout + proc.stderr
    loud = subprocess.run([sys.executable, "-m", "edgebn.cli.app", "check", str(current),
                           "--baseline", str(baseline), "--bench-time", "0.05", "--verbose"],
                          capture_output=True, text=True, timeout=120)
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" in loud.stderr


# ---------------------------------------------------------------- hostile reports (issue 22)

COMMITTED = Path(__file__).resolve().parents[2] / "models" / "digits-cnn"


def _committed(root, name, text=None, **tflite):
    """A copy of the committed digits-cnn build; ``tflite`` fields replaced, or the whole text."""
    d = root / name
    d.mkdir()
    shutil.copy(COMMITTED / "model.tflite", d / "model.tflite")
    if text is None:
        doc = json.loads((COMMITTED / "report.json").read_text())
        doc["tflite"].update(tflite)
        text = json.dumps(doc)
    (d / "report.json").write_text(text)
    return d / "report.json"


def _refused(current, baseline, message):
    with pytest.raises(EdgebnError, match=message):
        check(current, baseline, bench_settings=QUICK)
    result = runner.invoke(app, ["check", str(current), "--baseline", str(baseline),
                                 "--bench-time", "0.05"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr.strip()


ACCURACY = r"tflite\.test_accuracy must be a finite number in \[0, 1\]"


@pytest.mark.parametrize("value, shown", [
    ("Infinity", "inf"), ("-Infinity", "-inf"), ("NaN", "nan"), ("1e308", "1e+308"),
    ("1e999", "inf"), ("5.0", "5.0"), ("-0.01", "-0.01"), ("2", "2"), ("true", "True"),
    ('"0.99"', "'0.99'"), ("null", "None"), ("[0.99]", "[0.99]"),
])
def test_accuracy_outside_0_1_is_refused_in_report_and_baseline(tmp_path, value, shown):
    good = _committed(tmp_path, "good")
    text = (COMMITTED / "report.json").read_text().replace(
        '"test_accuracy": 0.9916666666666667', f'"test_accuracy": {value}')
    bad = _committed(tmp_path, "bad", text)
    line = _refused(bad, good, f"{ACCURACY}. Received: {re.escape(shown)}$")
    assert line.startswith("Error: ") and str(bad) in line
    _refused(good, bad, ACCURACY)  # the baseline is read the same way


def test_an_integer_too_long_is_refused_naming_its_field(tmp_path):
    good = _committed(tmp_path, "good")
    for digits in (401, 5000):  # 401: past float's range; 5000: past Python's int-string limit
        text = (COMMITTED / "report.json").read_text().replace(
            '"test_accuracy": 0.9916666666666667', f'"test_accuracy": {"9" * digits}')
        bad = _committed(tmp_path, f"bad{digits}", text)
        _refused(bad, good, f"tflite.test_accuracy: an integer of {digits} digits")
    text = (COMMITTED / "report.json").read_text().replace('"runs": 42850', '"runs": ' + "1" * 30)
    _refused(_committed(tmp_path, "runs", text), good,
             r"bench\.\w+\.runs: an integer of 30 digits \(at most 19\)")


def test_model_paths_outside_the_build_directory_are_refused(tmp_path):
    good = _committed(tmp_path, "good")
    outside = str(good.parent / "model.tflite")  # a real model, absolute
    _refused(_committed(tmp_path, "abs", path=outside), good, "must be relative to")
    _refused(good, _committed(tmp_path, "abs_base", path=outside), "must be relative to")
    up = _committed(tmp_path, "up", path="../good/model.tflite")
    _refused(up, good, "outside the report's directory")
    _refused(_committed(tmp_path, "upup", path="../" * 40 + str(outside)[1:]), good,
             "outside the report's directory")
    link = _committed(tmp_path, "link", path="model.tflite")
    (link.parent / "model.tflite").unlink()
    (link.parent / "model.tflite").symlink_to(outside)
    _refused(link, good, "outside the report's directory")


def test_a_symlink_inside_the_build_directory_is_followed(tmp_path):
    good = _committed(tmp_path, "good")
    inside = _committed(tmp_path, "inside", path="alias.tflite")
    (inside.parent / "alias.tflite").symlink_to("model.tflite")
    assert read_report(inside).tflite == (inside.parent / "model.tflite").resolve()
    assert check(inside, good, bench_settings=QUICK).metrics[0].passed


def test_model_paths_that_are_not_regular_files_are_refused(tmp_path):
    good = _committed(tmp_path, "good")
    _refused(_committed(tmp_path, "dot", path="."), good, "not a regular file")
    fifo = _committed(tmp_path, "fifo", path="pipe.tflite")
    os.mkfifo(fifo.parent / "pipe.tflite")
    _refused(fifo, good, "not a regular file")
    loop = _committed(tmp_path, "loop", path="loop.tflite")
    (loop.parent / "loop.tflite").symlink_to("loop.tflite")
    _refused(loop, good, "cannot be read")
    _refused(_committed(tmp_path, "nul", path="model.tflite\x00x"), good, "tflite.path")


@pytest.mark.parametrize("path, message", [
    ("a" * 5000, "tflite.path must be a path of 1 to 4096 characters"),
    ("a" * 300 + ".tflite", "cannot be read"),  # a name past the file system's NAME_MAX
    ("", "tflite.path must be a path of 1 to 4096 characters"),
])
def test_long_paths_are_refused_in_one_line(tmp_path, path, message):
    _refused(_committed(tmp_path, "long", path=path), _committed(tmp_path, "good"), message)


def test_deep_nesting_long_strings_and_big_files_are_refused(tmp_path):
    good = _committed(tmp_path, "good")
    _refused(_committed(tmp_path, "deep", "[" * 100_000 + "]" * 100_000), good,
             "nested more than 64 deep")
    deep_inside = json.loads((COMMITTED / "report.json").read_text())
    text = json.dumps(deep_inside).replace('"fold": {', '"fold": ' + '{"x": ' * 70 + "1" + "}" * 70
                                           + ', "was": {', 1)
    _refused(_committed(tmp_path, "deep_inside", text), good, "nested more than 64 deep")
    quoted = '["' + "[" * 1000 + '"]'  # brackets inside a string do not nest
    assert "nested" not in _refused(_committed(tmp_path, "quoted", quoted), good,
                                    "must be an object")
    _refused(_committed(tmp_path, "arch", **{"quantize": "x" * 70_000}), good,
             r"tflite.quantize: a string of 70000 characters \(at most 65536\)")
    big = _committed(tmp_path, "big")
    with open(big, "r+b") as f:
        f.truncate(16 * 1024 * 1024 + 1)
    _refused(big, good, "larger than 16 MiB")
    _refused(_committed(tmp_path, "dup", text=(COMMITTED / "report.json").read_text().replace(
        '"tflite": {', '"tflite": {"test_accuracy": 0.1, ', 1)), good,
             "duplicate key 'test_accuracy'")


def test_wrong_shapes_name_their_field(tmp_path):
    good = _committed(tmp_path, "good")
    doc = json.loads((COMMITTED / "report.json").read_text())
    for where, value, message in [
        ("tflite", [1], "tflite must be an object"),
        ("model", "cnn", "model must be an object"),
        ("dataset.preprocessing.raw_max", float("inf"), "dataset.preprocessing.raw_max must be"),
        ("dataset.preprocessing.input_shape", [8, 8], "dataset.preprocessing.input_shape must be"),
        ("dataset.preprocessing.color", "plaid", "dataset.preprocessing.color must be one of"),
        ("dataset.class_names", ["0", 1], r"dataset.class_names must be a list of strings"),
        ("inspect.bn.verdict", 3, "inspect.bn.verdict must be a string"),
    ]:
        bad = json.loads(json.dumps(doc))
        *parents, key = where.split(".")
        node = bad
        for parent in parents:
            node = node[parent]
        node[key] = value
        name = where.replace(".", "_")
        _refused(_committed(tmp_path, name, json.dumps(bad)), good, message)
    _refused(_committed(tmp_path, "list", "[]"), good, "must be an object")


def test_a_report_that_is_not_a_regular_file_is_refused(tmp_path):
    good = _committed(tmp_path, "good")
    os.mkfifo(tmp_path / "fifo.json")
    _refused(tmp_path / "fifo.json", good, "not a regular file")
    _refused(tmp_path, good, "not a regular file")
    _refused(tmp_path / ("r" * 5000 + ".json"), good, "cannot be read|no such file")


def test_bundle_reads_the_same_checked_report(tmp_path):
    import numpy as np

    from edgebn.pipeline.rebundle import source_from_build_dir

    report = _committed(tmp_path, "build")
    np.save(report.parent / "samples.npy", np.zeros((4, 8, 8, 1), np.float32))
    source = source_from_build_dir(report.parent)
    assert source.arch == "cnn" and source.labels == tuple("0123456789")
    assert source.preprocessing.input_shape == (8, 8, 1) and 0.99 < source.test_accuracy < 1
    outside = _committed(tmp_path, "outside", path=str(report.parent / "model.tflite"))
    np.save(outside.parent / "samples.npy", np.zeros((4, 8, 8, 1), np.float32))
    with pytest.raises(EdgebnError, match="must be relative to"):
        source_from_build_dir(outside.parent)


@pytest.mark.parametrize("name", ["max_accuracy_drop", "max_latency_regression",
                                  "max_size_growth"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1])
def test_thresholds_must_be_finite_and_not_negative(tmp_path, name, value):
    good = _committed(tmp_path, "good")
    with pytest.raises(EdgebnError, match=f"{name} must be a finite number >= 0"):
        check(good, good, Thresholds(**{name: value}), QUICK)


def test_junit_and_the_github_summary(cnn, baseline, tmp_path, monkeypatch):
    """check --junit: read back by junitparser, one case per metric, a failure where the gate
    fails; with GITHUB_STEP_SUMMARY set, the Markdown summary is appended to that file."""
    from junitparser import Failure, JUnitXml

    summary = tmp_path / "summary.md"
    summary.write_text("earlier steps\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    worse = _build_dir(tmp_path, "worse", cnn["tflite"], 0.5)
    xml = tmp_path / "gate.xml"
    r = runner.invoke(app, ["check", str(worse), "--baseline", str(baseline), "--bench-time", "0.2",
                            "--junit", str(xml)])
    assert r.exit_code == 1, r.output
    suites = JUnitXml.fromfile(str(xml))
    cases = {case.name: case for suite in suites for case in suite}
    assert set(cases) == {"accuracy", "size_bytes", "new_ops", "bn_verdict", "latency_p50_ratio"}
    failed = {name for name, case in cases.items()
              if any(isinstance(r, Failure) for r in case.result)}
    assert failed == {"accuracy"}
    (failure,) = cases["accuracy"].result
    assert "baseline 0.98, current 0.5" in failure.message and "drop <= 0.01" in failure.message
    text = summary.read_text()
    assert text.startswith("earlier steps\n") and "### edgebn check: **regression**" in text
    assert "| accuracy | 0.98 | 0.5 | drop <= 0.01 | FAIL |" in text
