"""The ratio of two .tflite files' p50 latencies, with its confidence interval (issue 18).

Both files' interpreters run in one process, interleaved round by round
(:func:`latency_ratio`), so drift on a shared machine hits both alike; the ratio comes with
Student's t interval over pairs of interpreters, and is called significant only where the
interval excludes 1 and the ratio is beyond what the method resolves (:data:`RESOLUTION`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebn.documents import JsonDict
from edgebn.runtime.timing import BLOCK_S, INTERLEAVE_BLOCK, BenchSettings, Runner
from edgebn.tflite.reader import TFLiteModel, as_tflite

CONFIDENCE = 0.95
RESOLUTION = 0.02  # one file against itself measured 1.006x-1.019x (2-core Xeon, 3 runs):
# a smaller difference is not called significant, whatever its interval
MIN_ROUNDS = 24  # rounds before the interval may stop the run (3 pairs of interpreters)
MIN_SHARE = 0.25  # and at least this share of the time cap: a burst of noise is not a sample
REFRESH_ROUNDS = 8  # both interpreters made anew this often: one instance can run a steady
# ~10 % slower than another of the same file (its arena's placement), which rounds alone
# would report as a difference between the files
# Student's t, two-sided 95 %, by degrees of freedom (pairs − 1): with 3 pairs of
# interpreters a percentile bootstrap can only return their range, which called one file
# against itself "significant" (1.013x, [1.010, 1.025]); t widens it as few pairs deserve
T_95 = ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (6, 2.447), (7, 2.365),
        (8, 2.306), (9, 2.262), (10, 2.228), (12, 2.179), (15, 2.131), (20, 2.086),
        (30, 2.042), (60, 2.000))


@dataclass(frozen=True)
class RatioEstimate:
    """``current`` p50 over ``baseline`` p50 from interleaved rounds, with its interval.

    Each round times both models for one block (the order alternating round by round); the
    ratio is the median of the rounds' p50 ratios. Both interpreters are made anew every
    REFRESH_ROUNDS rounds, and the interval is Student's t over those pairs' median ratios
    (on their logarithms: ``exp(mean ± t·s/√n)``, n pairs, n − 1 degrees of freedom), widened
    to hold the ratio itself, so that what differs between two instances of one file widens it. A
    busy core slows whole rounds of both models alike: the ratio stands, the interval widens, and
    the run goes on until it is narrow enough or time is up.
    """

    ratio: float
    interval: tuple[float, float]
    rounds: int
    current_p50_us: float
    baseline_p50_us: float
    confidence: float = CONFIDENCE
    seconds: float = 0.0  # spent timing, against the cap

    @property
    def significant(self) -> bool:
        """The interval excludes 1 and the ratio is ``RESOLUTION`` or more from it: the two
        differ, with this confidence, by more than the method resolves."""
        return (self.interval[0] > 1 or self.interval[1] < 1) and abs(self.ratio - 1) >= RESOLUTION

    def beyond(self, limit: float) -> bool:
        """Slower than ``limit`` (a ratio) with confidence: the whole interval above it."""
        return self.interval[0] > limit

    def interval_json(self) -> JsonDict:
        """The fields every interleaved ratio carries in a JSON document (docs/reference/json)."""
        return {"ratio": self.ratio, "interval": list(self.interval), "confidence": self.confidence,
                "rounds": self.rounds, "significant": self.significant}

    def to_json(self) -> JsonDict:
        return self.interval_json() | {"current_p50_us": self.current_p50_us,
                                       "baseline_p50_us": self.baseline_p50_us,
                                       "seconds": self.seconds}

    def describe(self) -> str:
        """``1.032x, interval [1.010, 1.051] over 40 interleaved rounds: significant``."""
        low, high = self.interval
        return (f"{self.ratio:.3f}x, interval [{low:.3f}, {high:.3f}] over {self.rounds} "
                f"interleaved rounds: {'significant' if self.significant else 'not significant'}")


def _interval(pairs: np.ndarray) -> tuple[float, float]:
    """Student's t interval of the pairs' ratios, on their logarithms (CONFIDENCE 0.95)."""
    logs = np.log(np.maximum(pairs, 1e-12))
    n = len(logs)
    if n < 2:
        return 0.0, math.inf
    t = next((q for df, q in reversed(T_95) if n - 1 >= df), T_95[0][1])
    half = t * float(np.std(logs, ddof=1)) / math.sqrt(n)
    centre = float(np.mean(logs))
    return math.exp(centre - half), math.exp(centre + half)


def latency_ratio(model: TFLiteModel | str | Path, baseline: TFLiteModel | str | Path,
                  settings: BenchSettings = BenchSettings(), width: float = 0.05,
                  max_time_s: float | None = None, data: np.ndarray | None = None) -> RatioEstimate:
    """Time both interleaved in rounds until the interval is narrower than ``width`` (after
    MIN_ROUNDS) or ``max_time_s`` (default: ``settings.min_time_s`` per model) is spent."""
    settings.validate()
    models = [as_tflite(model), as_tflite(baseline)]
    runners = [Runner(m, settings, data) for m in models]
    for r in runners:
        r.warm_up(settings.warmup)
    kept: list[list[int]] = [[], []]  # samples of the interpreters already replaced
    block = max(1, min(INTERLEAVE_BLOCK,
                       int(BLOCK_S * 1e6 / max(max(r.first_us for r in runners), 1.0))))
    cap = max_time_s if max_time_s is not None else 2 * settings.min_time_s
    start = time.perf_counter()
    ratios: list[float] = []
    interval = (0.0, math.inf)
    while True:
        if ratios and len(ratios) % REFRESH_ROUNDS == 0:
            for i, r in enumerate(runners):
                kept[i] += r.samples
            runners = [Runner(m, settings, data) for m in models]
            for r in runners:
                r.warm_up(min(settings.warmup, 20))
        order = runners if len(ratios) % 2 == 0 else runners[::-1]
        for r in order:
            r.run(block)
        cur, base = (np.median(r.samples[-block:]) for r in runners)
        ratios.append(float(cur / max(base, 1)))
        if len(ratios) >= MIN_ROUNDS:
            blocks = [np.median(ratios[i:i + REFRESH_ROUNDS])
                      # full pairs
                      for i in range(0, len(ratios) - REFRESH_ROUNDS + 1, REFRESH_ROUNDS)]
            interval = _interval(np.array(blocks))  # over interpreter pairs, not rounds
            spent = time.perf_counter() - start
            if (interval[1] - interval[0] < width and spent >= MIN_SHARE * cap) or spent >= cap:
                break
    p50s = [float(np.median(np.array(k + r.samples)) / 1e3) for k,
            r in zip(kept, runners, strict=True)]
    ratio = float(np.median(ratios))
    interval = (min(interval[0], ratio), max(interval[1], ratio))
    return RatioEstimate(ratio, interval, len(ratios), p50s[0], p50s[1],
                         seconds=time.perf_counter() - start)
