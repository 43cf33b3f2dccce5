"""``edgebn check``: the regression gate between a new build and a baseline build.

Only the accuracies are taken from the reports; everything else is measured on the
artifacts the reports point to: sizes from the files, the op set and BN verdict by
inspecting the new .tflite, and latency as a ratio of both files timed interleaved in
rounds on this machine (absolute times move between machines, ratios do not), with a
Student's t interval over interpreter pairs: the run goes on until the interval is narrower
than the threshold or ``--bench-time`` per model is spent, and latency fails only when the whole
interval lies beyond the threshold (:func:`edgebn.runtime.ratio.latency_ratio`).
When the latency ratio fails, both files are profiled operator by operator
(:mod:`edgebn.runtime.profile.operators`) and the operators whose isolated time grew most are named.

Reports are read by :func:`edgebn.pipeline.report_read.read_report`, which refuses a hostile one
in one line naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from edgebn.documents import JsonDict, JsonValue
from edgebn.errors import EdgebnError
from edgebn.pipeline.report_read import read_report
from edgebn.runtime.profile.opdiff import OpDiff
from edgebn.runtime.profile.operators import grown_operators
from edgebn.runtime.profile.result import ProfileSettings
from edgebn.runtime.ratio import latency_ratio
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.residue import inspect_tflite


@dataclass(frozen=True)
class Thresholds:
    max_accuracy_drop: float = 0.01  # absolute, in accuracy units (0.01 = 1 point)
    max_latency_regression: float = 0.10  # new p50 may be at most 10 % above the baseline's
    max_size_growth: float = 0.05  # new file may be at most 5 % larger
    allow_ops: tuple[str, ...] = ()  # ops the new model may add over the baseline's set

    def validate(self) -> None:
        for name in ("max_accuracy_drop", "max_latency_regression", "max_size_growth"):
            if not 0 <= getattr(self, name) < math.inf:  # NaN too: a threshold nothing fails
                raise EdgebnError(f"{name} must be a finite number >= 0. Received: "
                                  f"{getattr(self, name)}")


@dataclass(frozen=True)
class Metric:
    name: str
    baseline: JsonValue  # the metric as each report gives it
    current: JsonValue
    threshold: str
    passed: bool
    detail: JsonDict = field(default_factory=dict)  # the latency ratio's interval, rounds

    def to_json(self) -> JsonDict:
        return {"metric": self.name, "baseline": self.baseline, "current": self.current,
                "threshold": self.threshold, "passed": self.passed, **self.detail}


@dataclass(frozen=True)
class CheckResult:
    report: str
    baseline: str
    metrics: tuple[Metric, ...]
    environment: JsonDict = field(default_factory=dict)
    grown_ops: tuple[OpDiff, ...] = ()  # when latency regressed: the operators that grew most

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    def to_json(self) -> JsonDict:
        return {"report": self.report, "baseline": self.baseline, "passed": self.passed,
                "metrics": [m.to_json() for m in self.metrics],
                "grown_ops": [d.to_json() for d in self.grown_ops]}


def check(report: str | Path, baseline: str | Path, thresholds: Thresholds = Thresholds(),
          bench_settings: BenchSettings | None = None) -> CheckResult:
    """Compare the build behind ``report`` with the one behind ``baseline``."""
    thresholds.validate()
    bench_settings = bench_settings or BenchSettings()
    cur, base = read_report(report), read_report(baseline)
    metrics = []

    drop = base.test_accuracy - cur.test_accuracy
    metrics.append(Metric("accuracy", round(base.test_accuracy, 6), round(cur.test_accuracy, 6),
                          f"drop <= {thresholds.max_accuracy_drop}",
                          drop <= thresholds.max_accuracy_drop + 1e-12))

    cur_size, base_size = cur.tflite.stat().st_size, base.tflite.stat().st_size
    metrics.append(Metric("size_bytes", base_size, cur_size,
                          f"growth <= {thresholds.max_size_growth:.0%}",
                          cur_size <= base_size * (1 + thresholds.max_size_growth)))

    cur_inspect, base_inspect = inspect_tflite(cur.tflite), inspect_tflite(base.tflite)
    base_ops = set(base_inspect.model.op_counts())
    cur_ops = set(cur_inspect.model.op_counts())
    new_ops = sorted(cur_ops - base_ops - set(thresholds.allow_ops))
    metrics.append(Metric("new_ops", sorted(base_ops), new_ops or "none",
                          "none beyond the baseline's (or --allow-op)", not new_ops))
    metrics.append(Metric("bn_verdict", base_inspect.bn.verdict, cur_inspect.bn.verdict,
                          "clean", cur_inspect.clean))

    limit = 1 + thresholds.max_latency_regression
    est = latency_ratio(cur.tflite, base.tflite, bench_settings,
                        width=min(thresholds.max_latency_regression, 0.1) or 0.01)
    p50s = (est.current_p50_us, est.baseline_p50_us)
    if not all(0 < t < math.inf for t in p50s):  # a timer that measured nothing gates nothing
        raise EdgebnError(f"the latency p50s measured must be finite and > 0. Received: {p50s}")
    metrics.append(Metric("latency_p50_ratio", round(est.baseline_p50_us, 3),
                          round(est.current_p50_us, 3),
                          f"ratio <= {limit:.2f} with {est.confidence:.0%} confidence (measured "
                          f"{est.describe()})", not est.beyond(limit), detail=est.to_json()))
    grown = () if metrics[-1].passed else _grown(cur.tflite, base.tflite, bench_settings)
    return CheckResult(str(report), str(baseline), tuple(metrics), grown_ops=grown)


GROWN_OPS = 5  # operators named when latency regressed


def _grown(current: Path, baseline: Path, settings: BenchSettings) -> tuple[OpDiff, ...]:
    """The operators whose isolated time grew most, same runtime, threads and delegate."""
    profile_settings = ProfileSettings(threads=settings.threads, backend=settings.backend,
                                       xnnpack=settings.xnnpack, min_time_s=settings.min_time_s,
                                       residue=False)
    try:
        return tuple(grown_operators(current, baseline, profile_settings, GROWN_OPS))
    except EdgebnError:  # the regression stands (exit 1); naming its operators is a bonus
        return ()
