"""Timing a .tflite with the interpreter (edgebn.runtime.timing): samples, clock, batch, inputs."""

import numpy as np
import pytest

from edgebn.bench.run import BenchTargets, bench
from edgebn.errors import EdgebnError
from edgebn.runtime.timing import BenchSettings, Latency, bench_tflite
from edgebn.tflite.quantization import make_inputs


def test_latency_percentiles_from_samples():
    lat = Latency.from_ns(np.arange(1, 101) * 1000)
    assert lat.min == 1.0 and lat.p50 == pytest.approx(50.5) and lat.p99 == pytest.approx(99.01)


def test_min_time_mode_runs_until_the_clock(cnn):
    t, _ = bench_tflite(cnn["tflite"], BenchSettings(warmup=0, min_time_s=0.05))
    assert t.runs >= 100


def test_batch_resizes_input(cnn):
    t, _ = bench_tflite(cnn["tflite"], BenchSettings(warmup=1, runs=10, batch=4))
    assert t.batch == 4
    assert t.to_json()["samples_per_s"] == pytest.approx(4 * t.throughput_per_s)


def test_int8_inputs_real_and_random():
    x = np.linspace(0, 1, 2 * 4, dtype=np.float32).reshape(2, 4)
    real = make_inputs((1, 4), np.int8, (1 / 255, -128), 2, data=x)
    assert real[0].dtype == np.int8
    np.testing.assert_array_equal(real[0], np.round(x[:1] * 255 - 128).astype(np.int8))
    rand = make_inputs((1, 64), np.int8, (0.1, 0), 3)
    assert all(r.dtype == np.int8 for r in rand) and rand[0].min() < 0 < rand[0].max()


@pytest.mark.parametrize("field, value", [("threads", 0), ("batch", 0), ("runs", 0),
                                          ("warmup", -1), ("min_time_s", 0),
                                          ("keras_time_s", 0)])
def test_bad_settings_are_refused(cnn, field, value):
    with pytest.raises(EdgebnError, match=f"{field} must be"):
        bench(BenchTargets(cnn["tflite"]), BenchSettings(**{field: value}))
