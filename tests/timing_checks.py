"""What every timed result satisfies, shared by the bench, scaling and isolated-run tests."""

from edgebn.runtime.timing import BenchSettings, Latency

QUICK = BenchSettings(warmup=5, runs=200)


def sane(lat: Latency) -> None:
    """Percentiles in order, above zero; the mean among them, a spread."""
    assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p99
    assert lat.min <= lat.mean and lat.std >= 0
