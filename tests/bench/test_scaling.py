"""The thread-scaling table (edgebn.bench.scaling): one row per interpreter thread count."""

import json
from dataclasses import replace

import pytest
from timing_checks import QUICK, sane

from edgebn.bench.run import BenchTargets
from edgebn.errors import EdgebnError
from edgebn.runtime.timing import BenchSettings


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
        sane(r.latency_us)
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
