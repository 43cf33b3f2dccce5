"""Hostile reports (issue 22): mutated report.json documents through ``check`` and its CLI.

Seeded. Each case starts from the committed models/digits-cnn build and replaces one
value (NaN, infinities, huge or overlong integers, deep nesting, long strings, wrong
types, paths outside the build, symlinks, FIFOs), deletes a field, or damages the text,
in the report or in the baseline. Every case must end in a result (exit 0 or 1) or in
one line refused (exit 2), never a traceback. Most fail on reading, before any
benchmark; the few that pass reading are benchmarked (a handful) or have what was read
checked.
"""

import json
import os
import random
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import EdgebnError
from edgebn.pipeline.check import CheckResult, Thresholds, check
from edgebn.pipeline.report_read import read_report
from edgebn.runtime.timing import BenchSettings

SEED = 22
CASES = 320
BENCHED = 4  # cases that pass reading and go on to the benchmark
CLI_EVERY = 7  # every 7th refused case also through the CLI
COMMITTED = Path(__file__).resolve().parents[2] / "models" / "digits-cnn"
QUICK = BenchSettings(warmup=5, min_time_s=0.02)
LOOSE = Thresholds(max_latency_regression=100.0)  # no per-operator profile on a noisy ratio
runner = CliRunner()

READ = ["tflite.test_accuracy"] * 3 + ["tflite.path"] * 10 + ["tflite.quantize", "model.arch",
        "inspect.bn.verdict", "dataset.class_names", "dataset.preprocessing.input_shape",
        "dataset.preprocessing.raw_max", "dataset.preprocessing.scale",
        "dataset.preprocessing.offset", "dataset.preprocessing.color",
        "dataset.preprocessing.resize", "dataset.preprocessing", "dataset", "tflite", "model",
        "inspect", "inspect.bn"]  # the fields read; the accuracy and path most often
NUMBERS = [float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5.0, -0.5, 1.0000001,
           2, -1, 10**18, 0.0, 1, 0.5]
OTHERS = [True, False, None, "0.99", "", [], {}, [0.99], {"x": 1}, "x\ny", "\x00", "💥",
          "a" * 5000, "a" * 70_000]
PATHS = ["/etc/hostname", str(COMMITTED / "model.tflite"), "../baseline/model.tflite",
         "../" * 30 + "etc/hostname", ".", "", "a" * 5000, "a" * 300, "model.tflite\x00",
         "out.tflite", "loop.tflite", "pipe.tflite", "dir.tflite", "gone.tflite",
         "sub/../model.tflite", "./model.tflite", "alias.tflite", "model.tflite\n"]
# raw JSON text a value is replaced with (the json module would not write these)
RAW = {"@big401": "9" * 401, "@big5000": "9" * 5000, "@big30": "-" + "1" * 30,
       "@deep": "[" * 100_000 + "]" * 100_000, "@deep65": '{"a":' * 65 + "1" + "}" * 65,
       "@deep60": "[" * 60 + "]" * 60, "@NaN": "NaN", "@key": '{"' + "k" * 70_000 + '": 1}'}


def _leaves(doc, prefix=""):
    """Every dotted path of ``doc`` (list items by index)."""
    items = (doc.items() if isinstance(doc, dict) else
             enumerate(doc) if isinstance(doc, list) else ())
    for key, value in items:
        name = f"{prefix}.{key}" if prefix else str(key)
        yield name
        yield from _leaves(value, name)


def _set(doc, dotted, value, delete=False):
    *parents, last = dotted.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if delete:
        node.pop(key, None) if isinstance(node, dict) else node.pop(key)
    else:
        node[key] = value


def _hostile_value(rng, field):
    pool = NUMBERS + OTHERS + list(RAW)
    if field.endswith("path") or rng.random() < 0.15:
        pool = PATHS + pool[:6]
    return rng.choice(pool)


def _text(rng, base, leaves):
    """One hostile report.json text, and what was done to it."""
    doc = json.loads(json.dumps(base))
    kind = rng.choices(["read", "leaf", "delete", "damage"], [6, 3, 1.5, 1.5])[0]
    if kind == "damage":
        text = json.dumps(base)
        cut = rng.randrange(len(text))
        return rng.choice([
            text[:cut], text[:cut] + "\x7f" + text[cut + 1:], "\ufeff" + text, "", "\udcff",
            "[]", "0.99", '"report"', "null",
            text.replace('"tflite": {', '"tflite": {"path": 1, ', 1),
            text.replace('"test_accuracy": 0.99', '"test_accuracy": 0.1, "test_accuracy": 0.99', 1),
        ]), f"damaged at {cut}"
    field = rng.choice(READ if kind != "leaf" else leaves)
    if kind == "delete":
        _set(doc, field, None, delete=True)
        return json.dumps(doc), f"deleted {field}"
    value = _hostile_value(rng, field)
    raw = isinstance(value, str) and value in RAW
    _set(doc, field, f"@@{value}@@" if raw else value)
    text = json.dumps(doc)
    if raw:
        text = text.replace(json.dumps(f"@@{value}@@"), RAW[value])
    return text, f"{field} = {str(value)[:40]!r}"


def _build(root, name, text):
    """A build directory: the committed model, its oddities, and ``text`` as report.json."""
    d = root / name
    d.mkdir()
    shutil.copy(COMMITTED / "model.tflite", d / "model.tflite")
    (d / "out.tflite").symlink_to(COMMITTED / "model.tflite")
    (d / "alias.tflite").symlink_to("model.tflite")
    (d / "loop.tflite").symlink_to("loop.tflite")
    (d / "dir.tflite").mkdir()
    (d / "sub").mkdir()
    os.mkfifo(d / "pipe.tflite")
    (d / "report.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    return d / "report.json"


def _one_line(message):
    assert message and "\n" not in message and "Traceback" not in message, message


def _refusal(report, baseline):
    """The library's one-line refusal on reading, or None when both reports read."""
    try:
        for path in (report, baseline):
            r = read_report(path)
            assert 0 <= r.test_accuracy <= 1 and r.tflite.is_file() and not r.tflite.is_symlink()
            assert r.tflite.is_relative_to(path.parent.resolve()), r.tflite
    except EdgebnError as exc:
        _one_line(str(exc))
        return str(exc)
    return None


def _cli(report, baseline, extra=()):
    result = runner.invoke(app, ["check", str(report), "--baseline", str(baseline),
                                 "--bench-time", "0.02", "--max-latency-regression", "100",
                                 *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_hostile_reports_end_in_a_result_or_one_line(tmp_path):
    rng = random.Random(SEED)
    base = json.loads((COMMITTED / "report.json").read_text())
    base["tflite"]["test_accuracy"] = 0.99  # a value the damage above can find
    leaves = list(_leaves(base))
    good = _build(tmp_path, "baseline", json.dumps(base))
    counts = {"refused": 0, "cli": 0, "benched": 0, "read": 0}
    open_files = len(os.listdir("/proc/self/fd"))
    for i in range(CASES):
        text, what = _text(rng, base, leaves)
        hostile = _build(tmp_path, f"case{i}", text)
        report, baseline = (hostile, good) if rng.random() < 0.7 else (good, hostile)
        refused = _refusal(report, baseline)
        if refused is not None:
            counts["refused"] += 1
            with pytest.raises(EdgebnError) as caught:
                check(report, baseline, LOOSE, QUICK)
            assert str(caught.value) == refused, what
            if i % CLI_EVERY == 0:
                counts["cli"] += 1
                result = _cli(report, baseline)
                assert result.exit_code == 2, (what, result.output)
                assert result.stderr.strip() == f"Error: {refused}", what
        elif counts["benched"] < BENCHED:
            counts["benched"] += 1
            if counts["benched"] % 2:
                assert isinstance(check(report, baseline, LOOSE, QUICK), CheckResult), what
            else:
                result = _cli(report, baseline, ["--json"])
                assert result.exit_code in (0, 1), (what, result.output)
                assert json.loads(result.stdout)["passed"] is (result.exit_code == 0)
        else:
            counts["read"] += 1
    assert counts["refused"] > CASES // 2 and counts["cli"] > 20
    assert counts["benched"] == BENCHED and counts["read"] > 10, counts
    assert len(os.listdir("/proc/self/fd")) <= open_files + 2  # no descriptor left open per case


def test_the_nesting_count_is_not_fooled_by_strings_or_escapes(tmp_path):
    """Brackets inside strings, escaped quotes and backslashes do not count; real ones do."""
    from edgebn.pipeline.report_read import _nesting

    assert _nesting(b'{"a": "[[[[", "b": "\\"[[[", "c": "\\\\", "d": [[1]]}') == 3
    assert _nesting(b'["\\\\\\"]]]]"]') == 1
    assert _nesting(b"[" * 100_000) == 100_000
    assert _nesting(b"") == 0
