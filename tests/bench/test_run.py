import json
from dataclasses import replace

import numpy as np
import pytest

from edgebn.bench.run import BenchTargets, bench
from edgebn.errors import EdgebnError
from edgebn.runtime.timing import BenchSettings, Latency, bench_tflite
from edgebn.tflite.quantization import make_inputs

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
    from edgebn.cli.render import plot

    result = bench(BenchTargets(cnn["tflite"]), QUICK)
    out = plot(result, tmp_path / "lat.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- --threads 1,2,4 (issue 15)


def test_threads_1_2_gives_one_row_per_count(cnn, digits, tmp_path, monkeypatch):
    import edgebn.bench.run
    from edgebn.bench.run import bench_threads

    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    keras_timings = []
    real = edgebn.bench.run.bench_keras_models

    def counted(*args, **kwargs):
        keras_timings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(edgebn.bench.run, "bench_keras_models", counted)
    result = bench_threads(BenchTargets(cnn["tflite"], keras=cnn["keras"]),
                           BenchSettings(warmup=5, runs=50), (1, 2), data=digits.x_test)
    assert len(keras_timings) == 1 and set(result.keras) == {"eager", "predict", "compiled"}
    rows = result.scaling.rows
    assert [r.threads for r in rows] == [1, 2] and result.scaling.reference_threads == 1
    assert rows[0].latency_us == result.tflite.latency_us and rows[0].speedup == 1.0
    for r in rows:
        assert r.runs == 50 and r.speedup > 0
        _sane(r.latency_us)
        assert 0 < r.cost.efficiency < 1.2 and r.cost.macs == result.tflite.cost.macs
        assert len(r.cells()) == len(result.scaling.HEADER)
    assert rows[1].speedup == pytest.approx(rows[0].latency_us.p50 / rows[1].latency_us.p50)
    doc = json.loads(json.dumps(result.to_json()))
    assert doc["tflite"]["threads"] == doc["environment"]["threads"] == 1  # as with --threads 1
    assert {"keras", "speedup"} <= set(doc)
    scaling = doc["threads_scaling"]
    assert [s["threads"] for s in scaling] == [1, 2]
    assert all(s["speedup_vs_threads"] == 1 and s["cost"]["ceiling_gmacs_per_s"] > 0
               for s in scaling)
    assert scaling[0]["latency_us"] == doc["tflite"]["latency_us"]
    probed = json.loads((tmp_path / "ceiling.json").read_text())
    assert sorted(k.split("|threads=")[1].split("|")[0] for k in probed) == ["1", "2"]


def test_one_thread_count_is_the_plain_bench(cnn):
    from edgebn.bench.run import bench_threads

    result = bench_threads(BenchTargets(cnn["tflite"]), replace(QUICK, cost=False), (2,))
    assert result.scaling is None and result.tflite.threads == 2
    assert "threads_scaling" not in result.to_json()


def test_speedup_is_against_one_thread_when_listed_else_the_first(cnn):
    from edgebn.bench.run import bench_threads

    settings = BenchSettings(warmup=2, runs=20, cost=False)
    later = bench_threads(BenchTargets(cnn["tflite"]), settings, (2, 1)).scaling
    assert later.reference_threads == 1 and later.rows[1].speedup == 1.0
    first = bench_threads(BenchTargets(cnn["tflite"]), settings, (3, 2)).scaling
    assert first.reference_threads == 3 and first.rows[0].speedup == 1.0


@pytest.mark.parametrize("text, counts", [("1,2,4", (1, 2, 4)), ("3", (3,)), (" 2, 1", (2, 1))])
def test_thread_counts_parse(text, counts):
    from edgebn.bench.scaling import parse_thread_counts

    assert parse_thread_counts(text) == counts


@pytest.mark.parametrize("text", ["0,x", "", "1,,2", "0", "-1", "1,1", "1.5"])
def test_bad_thread_counts_are_refused(text):
    from edgebn.bench.scaling import parse_thread_counts

    with pytest.raises(EdgebnError, match=r"thread counts must be whole numbers >= 1.*Received"):
        parse_thread_counts(text)


def test_cli_threads_list_json_and_table(cnn, tmp_path):
    from typer.testing import CliRunner

    from edgebn.cli.app import app

    runner = CliRunner()
    env = {"EDGEBN_CACHE": str(tmp_path), "COLUMNS": "200"}
    args = ["bench", str(cnn["tflite"]), "--threads", "1,2", "--runs", "30", "--warmup", "2"]
    result = runner.invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["threads"] for s in doc["threads_scaling"]] == [1, 2]
    assert doc["tflite"]["threads"] == 1 and doc["tflite"]["runs"] == 30
    table = runner.invoke(app, args, env=env)
    assert table.exit_code == 0, table.output
    assert "by interpreter threads" in table.stdout and "efficiency" in table.stdout
    one = runner.invoke(app, ["bench", str(cnn["tflite"]), "--threads", "2", "--runs", "10",
                              "--json"], env=env)
    assert one.exit_code == 0 and "threads_scaling" not in json.loads(one.stdout)
    assert json.loads(one.stdout)["tflite"]["threads"] == 2


@pytest.mark.parametrize("value", ["0,x", "1,1", ""])
def test_cli_bad_threads_is_one_line_exit_2(cnn, value):
    from typer.testing import CliRunner

    from edgebn.cli.app import app

    result = CliRunner().invoke(app, ["bench", str(cnn["tflite"]), "--threads", value])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("Error: ") and "--threads" in lines[0]
    assert "thread counts must be whole numbers >= 1" in lines[0]
