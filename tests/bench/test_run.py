import json

import pytest
from timing_checks import QUICK, sane

from edgebn.bench.run import BenchTargets, bench
from edgebn.runtime.timing import BenchSettings


def test_tflite_alone_counts_runs_and_records_environment(cnn, digits):
    result = bench(BenchTargets(cnn["tflite"]), QUICK, data=digits.x_test)
    t = result.tflite
    assert t.runs == 200 and len(t.samples_ns) == 200 and t.warmup == 5
    sane(t.latency_us)
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
        sane(s.latency_us)
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


def test_plot_writes_a_png(cnn, tmp_path):
    from edgebn.cli.render import plot

    result = bench(BenchTargets(cnn["tflite"]), QUICK)
    out = plot(result, tmp_path / "lat.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- --threads 1,2,4 (issue 15)


