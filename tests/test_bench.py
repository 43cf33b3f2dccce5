import json

import numpy as np
import pytest

from edgebn.bench import BenchSettings, BenchTargets, Latency, bench, bench_tflite
from edgebn.errors import EdgebnError
from edgebn.tensors import make_inputs

QUICK = BenchSettings(warmup=5, runs=200)


def _sane(lat):
    assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99
    assert lat.min <= lat.mean and lat.std >= 0


def test_latency_percentiles_from_samples():
    lat = Latency.from_ns(np.arange(1, 101) * 1000)
    assert lat.min == 1.0 and lat.p50 == pytest.approx(50.5) and lat.p99 == pytest.approx(99.01)


def test_tflite_alone_counts_runs_and_records_environment(cnn, digits):
    result = bench(BenchTargets(cnn["tflite"]), QUICK, data=digits.x_test)
    t = result.tflite
    assert t.runs == 200 and len(t.samples_ns) == 200 and t.warmup == 5
    _sane(t.latency_us)
    assert t.init_ms > 0 and t.first_us > 0 and t.peak_rss_mb > 0
    env = result.environment
    assert env["cores"] >= 1 and env["backend"].startswith("ai_edge_litert")
    assert env["threads"] == 1 and env["xnnpack"] is True
    doc = result.to_json()
    assert "keras" not in doc and "speedup" not in doc and "baseline" not in doc


def test_keras_modes_baseline_and_speedup_share_inputs(cnn, cnn_twin, digits):
    targets = BenchTargets(cnn["tflite"], cnn_twin["tflite"], keras=cnn["keras"],
                           keras_baseline=cnn_twin["keras"])
    result = bench(targets, BenchSettings(warmup=5, runs=30), data=digits.x_test)
    assert set(result.keras) == {"eager", "predict", "compiled"}
    for s in [*result.keras.values(), *result.keras_baseline.values()]:
        assert s.runs == 30
        _sane(s.latency_us)
    assert result.baseline.runs == result.tflite.runs == 30
    doc = json.loads(json.dumps(result.to_json()))
    sp = doc["speedup"]
    for mode in ("eager", "predict", "compiled"):
        assert sp[f"vs_{mode}"] == pytest.approx(
            doc["keras"][mode]["latency_us"]["p50"] / doc["tflite"]["latency_us"]["p50"])
    assert sp["vs_fastest_keras"] == min(sp[f"vs_{m}"] for m in ("eager", "predict", "compiled"))
    assert sp["fastest_keras"] in ("eager", "predict", "compiled")
    assert set(doc["bn_cost"]) == {"tflite", "keras_eager", "keras_predict", "keras_compiled"}
    # One set of rows feeds the table, report.md and the plot: every timed runtime, once.
    rows = result.rows()
    assert [r.key for r in rows] == ["tflite", "baseline", *(f"{g}.{m}" for g in (
        "keras", "keras_baseline") for m in ("eager", "predict", "compiled"))]
    assert all(len(r.samples_ns) == r.runs == 30 for r in rows)


def test_isolated_worker_reports_memory_without_tensorflow(cnn, digits):
    from dataclasses import replace

    result = bench(BenchTargets(cnn["tflite"]), replace(QUICK, isolate=True), data=digits.x_test)
    assert result.tflite.runs == 200
    _sane(result.tflite.latency_us)
    assert result.tflite.peak_rss_mb < 300  # this process has TensorFlow (> 400 MB) loaded


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


def test_plot_writes_a_png(cnn, tmp_path):
    from edgebn.render import plot

    result = bench(BenchTargets(cnn["tflite"]), QUICK)
    out = plot(result, tmp_path / "lat.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
