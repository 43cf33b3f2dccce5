"""The interpreter timed in a fresh process (edgebn.runtime.isolate): memory without TensorFlow."""

from dataclasses import replace

from timing_checks import QUICK, sane

from edgebn.bench.run import BenchTargets, bench


def test_isolated_worker_reports_memory_without_tensorflow(cnn, digits):

    result = bench(BenchTargets(cnn["tflite"]), replace(QUICK, isolate=True), data=digits.x_test)
    assert result.tflite.runs == 200
    sane(result.tflite.latency_us)
    assert result.tflite.peak_rss_mb < 300  # this process has TensorFlow (> 400 MB) loaded
