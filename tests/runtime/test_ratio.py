"""The interleaved ratio's interval (edgebn.runtime.ratio.latency_ratio) and bench --baseline."""

from __future__ import annotations

import json
import math

import numpy as np
from profile_models import two_halves
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.runtime.ratio import RESOLUTION, RatioEstimate, _interval, latency_ratio
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.reader import parse_tflite


def test_the_interval_is_students_t_over_the_pairs():
    pairs = np.array([1.00, 1.02, 1.04])
    low, high = _interval(pairs)
    logs = np.log(pairs)
    half = 4.303 * logs.std(ddof=1) / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (low, high) == (math.exp(logs.mean() - half), math.exp(logs.mean() + half))
    assert low < 1.0 < high  # three pairs this far apart do not tell 1.02 from 1
    assert _interval(np.array([1.0])) == (0.0, math.inf)
    many = np.full(40, 1.02) + np.linspace(-0.002, 0.002, 40)
    assert _interval(many)[0] > 1.0


def test_significant_needs_the_interval_and_the_resolution():
    def est(ratio, low, high):
        return RatioEstimate(ratio, (low, high), 24, 100.0, 100.0)

    assert not est(1.013, 1.010, 1.025).significant  # one file against itself measured this
    assert est(1.0 + 2 * RESOLUTION, 1.03, 1.05).significant
    assert not est(1.05, 0.99, 1.10).significant
    assert est(0.9, 0.85, 0.95).significant


def test_a_model_twice_as_deep_is_told_apart():
    deep = parse_tflite(two_halves(size=24, c=32, depth=4), "deep.tflite")
    shallow = parse_tflite(two_halves(size=24, c=32, depth=2), "shallow.tflite")
    e = latency_ratio(deep, shallow, BenchSettings(min_time_s=0.3), width=0.05)
    assert e.significant and e.interval[0] > 1.4 and e.rounds >= 24
    assert e.interval[0] <= e.ratio <= e.interval[1]


def test_bench_baseline_reports_the_interval(tmp_path):
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    a.write_bytes(two_halves(size=16, c=16, depth=2))
    b.write_bytes(two_halves(size=16, c=16, depth=1))
    result = CliRunner().invoke(app, ["bench", str(a), "--baseline", str(b), "--min-time", "0.2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)["baseline_ratio"]
    assert set(doc) >= {"ratio", "interval", "confidence", "rounds", "significant"}
    assert doc["ratio"] > 1.3 and doc["significant"] is True
