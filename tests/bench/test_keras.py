"""The Keras side of ``edgebn bench`` (edgebn.bench.keras): several models timed in turns of
KERAS_BLOCK calls after three warm-up calls each, an exact number of runs or a time budget,
and each mode's statistics from its own samples."""

from __future__ import annotations

import numpy as np
import pytest

from edgebn.bench.keras import (
    KERAS_BLOCK,
    KERAS_MIN_RUNS,
    KERAS_MODES,
    KerasStats,
    bench_keras_models,
)
from edgebn.runtime.timing import BenchSettings, Latency


def _tapped(tag: str, log: list[str]):
    """Input 4x4x1 → a layer that logs ``tag`` each time it runs → ×2: a model whose eager calls
    can be counted."""
    import keras

    class Tap(keras.layers.Layer):
        def call(self, x):
            log.append(tag)
            return x * 2.0

    inputs = keras.Input((4, 4, 1))
    return keras.Model(inputs, Tap()(inputs))


@pytest.fixture
def x() -> np.ndarray:
    return np.ones((1, 4, 4, 1), np.float32)


def test_the_statistics_and_document_of_hand_worked_samples():
    samples = np.array([1000, 2000, 3000, 4000], np.int64)  # ns: 1, 2, 3, 4 µs
    s = KerasStats("eager", 4, Latency.from_ns(samples), samples)
    lat = s.latency_us
    assert (lat.min, lat.p50, lat.mean) == (1.0, 2.5, 2.5)
    assert lat.p90 == pytest.approx(3.7) and lat.p99 == pytest.approx(3.97)
    assert lat.std == pytest.approx(np.sqrt(1.25))
    doc = s.to_json()
    assert doc["runs"] == 4 and doc["throughput_per_s"] == pytest.approx(400_000.0)
    assert doc["latency_us"]["p50"] == 2.5 and set(doc) == {"runs", "latency_us",
                                                            "throughput_per_s"}


def test_models_take_turns_in_blocks_after_three_warm_up_calls_each(x):
    log: list[str] = []
    models = {"bn": _tapped("bn", log), "folded": _tapped("folded", log)}
    log.clear()  # building the graph ran each layer once, symbolically
    out = bench_keras_models(models, x, BenchSettings(runs=7), modes=("eager",))
    # 7 runs: two turns of 5 each (10 ≥ 7), the first 7 kept
    assert log == (["bn"] * 3 + ["folded"] * 3
                   + (["bn"] * KERAS_BLOCK + ["folded"] * KERAS_BLOCK) * 2)
    for name in models:
        stats = out[name]["eager"]
        assert (stats.mode, stats.runs, len(stats.samples_ns)) == ("eager", 7, 7)
        assert stats.latency_us == Latency.from_ns(stats.samples_ns)
        assert (stats.samples_ns > 0).all()


def test_a_time_budget_runs_whole_turns_and_at_least_the_minimum(x):
    log: list[str] = []
    model = _tapped("m", log)
    log.clear()
    out = bench_keras_models({"m": model}, x, BenchSettings(keras_time_s=0.01), modes=("eager",))
    runs = out["m"]["eager"].runs
    assert runs >= KERAS_MIN_RUNS and runs % KERAS_BLOCK == 0
    assert len(log) == 3 + runs


def test_every_mode_is_timed_the_same_number_of_runs_in_order(x):
    import keras

    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    out = bench_keras_models({"flat": model}, x, BenchSettings(runs=3))
    assert tuple(out["flat"]) == KERAS_MODES == ("eager", "predict", "compiled")
    assert [out["flat"][m].runs for m in KERAS_MODES] == [3, 3, 3]
    assert all(out["flat"][m].mode == m for m in KERAS_MODES)
