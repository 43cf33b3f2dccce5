"""The interleaved ratio's interval (edgebn.runtime.ratio.latency_ratio) and bench --baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
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


# ---------------------------------------------------------------- hand-worked


def test_the_interval_is_students_t_over_the_pairs_logarithms():
    """Three pairs at ratios 1, e^0.1, e^-0.1: logs 0, ±0.1, mean 0, s = 0.1; two degrees of
    freedom, t = 4.303: exp(±4.303 · 0.1 / √3) = exp(±0.248434) = [0.780021, 1.282016]."""
    low, high = _interval(np.array([1.0, math.exp(0.1), math.exp(-0.1)]))
    assert low == pytest.approx(0.780021, abs=1e-6) and high == pytest.approx(1.282016, abs=1e-6)
    assert _interval(np.array([1.05])) == (0.0, math.inf)  # one pair: no interval
    # 12 pairs, 11 degrees of freedom: the table's row for 10 (t = 2.228), the wider
    logs = np.array([0.1, -0.1] * 6)
    low, high = _interval(np.exp(logs))
    half = 2.228 * float(np.std(logs, ddof=1)) / math.sqrt(12)
    assert (low, high) == pytest.approx((math.exp(-half), math.exp(half)))


@pytest.mark.parametrize("ratio, interval, significant", [
    (1.05, (1.01, 1.09), True),  # the interval above 1, the ratio beyond the resolution
    (1.01, (1.005, 1.015), False),  # above 1, but within what the method resolves
    (1.05, (0.98, 1.10), False),  # the interval holds 1
    (0.90, (0.85, 0.95), True),  # faster, as sure
])
def test_significant_needs_the_interval_off_1_and_the_ratio_past_the_resolution(
        ratio, interval, significant):
    e = RatioEstimate(ratio, interval, 40, 110.0, 100.0)
    assert e.significant is significant
    assert RESOLUTION == 0.02


def test_beyond_a_limit_means_the_whole_interval_above_it():
    e = RatioEstimate(1.12, (1.08, 1.16), 40, 112.0, 100.0)
    assert e.beyond(1.05) and not e.beyond(1.10)
    assert e.describe() == ("1.120x, interval [1.080, 1.160] over 40 interleaved rounds: "
                            "significant")
    assert e.interval_json() == {"ratio": 1.12, "interval": [1.08, 1.16], "confidence": 0.95,
                                 "rounds": 40, "significant": True}
