"""Timing a .tflite with the interpreter: ``invoke()`` samples, interleaved with a baseline.

Each timed sample is one ``interpreter.invoke()`` measured with ``perf_counter_ns``;
inputs are set outside the timed region, so the figure is what a bare ``invoke()`` loop
would show. With a baseline .tflite, both interpreters run in one process, interleaved
block by block, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.machine import peak_rss_mb
from edgebn.runtime.backends import Backend, interpreter_errors, load_interpreter
from edgebn.tensors import make_inputs
from edgebn.tflite.reader import TFLiteModel, as_tflite

DEFAULT_MIN_TIME_S = 1.0
DEFAULT_WARMUP = 100
WARMUP_MAX_S = 0.5  # a 25 M-parameter model is warm long before 100 runs of 0.1 s
MIN_RUNS = 30  # timed runs per .tflite at the least, when timing by the clock
BLOCK_S = 0.05  # seconds of invocations between clock checks (and baseline switches)
KERAS_MIN_TIME_S = 1.0
INTERLEAVE_BLOCK = 50  # invocations per model before switching, with --baseline


@dataclass(frozen=True)
class Latency:
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    std: float

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> Latency:
        us = np.asarray(samples_ns, dtype=np.float64) / 1e3
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        return cls(float(us.min()), float(p50), float(p90), float(p99), float(us.mean()),
                   float(us.std()))


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 1
    batch: int = 1
    warmup: int = DEFAULT_WARMUP
    runs: int | None = None  # exact number of timed runs; None: run for min_time_s
    min_time_s: float = DEFAULT_MIN_TIME_S
    backend: Backend = Backend.auto
    xnnpack: bool = True
    isolate: bool = False  # the interpreter in a fresh process: memory without TensorFlow
    xla: bool = False  # jit_compile the Keras tf.function
    keras_time_s: float = KERAS_MIN_TIME_S  # seconds of timed calls per Keras model and mode
    cost: bool = True  # MACs per second against this machine's probed ceiling (edgebn.runtime.cost)

    def validate(self) -> None:
        for name, low in (("threads", 1), ("batch", 1), ("warmup", 0)):
            if getattr(self, name) < low:
                raise EdgebnError(f"{name} must be >= {low}. Received: {getattr(self, name)}")
        if self.runs is not None and self.runs < 1:
            raise EdgebnError(f"runs must be >= 1. Received: {self.runs}")
        for name in ("min_time_s", "keras_time_s"):
            if not getattr(self, name) > 0:
                raise EdgebnError(f"{name} must be > 0. Received: {getattr(self, name)}")


@dataclass(frozen=True)
class CostStats:
    """MACs per inference, the rate achieved at p50, and this machine's ceiling."""

    macs: int
    gmacs_per_s: float
    ceiling_gmacs_per_s: float

    @property
    def efficiency(self) -> float:
        return self.gmacs_per_s / self.ceiling_gmacs_per_s if self.ceiling_gmacs_per_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"macs": self.macs, "gmacs_per_s": self.gmacs_per_s,
                "ceiling_gmacs_per_s": self.ceiling_gmacs_per_s, "efficiency": self.efficiency}


@dataclass(frozen=True)
class TFLiteStats:
    model: str
    backend: str
    xnnpack: bool
    threads: int
    batch: int
    runs: int
    warmup: int
    init_ms: float
    first_us: float
    latency_us: Latency
    peak_rss_mb: float
    samples_ns: np.ndarray = field(repr=False, compare=False)
    cost: CostStats | None = None  # MACs against the probed ceiling, when measured

    @property
    def throughput_per_s(self) -> float:
        return 1e6 / self.latency_us.mean

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "xnnpack": self.xnnpack,
                "threads": self.threads, "batch": self.batch, "runs": self.runs,
                "warmup": self.warmup, "init_ms": self.init_ms, "first_us": self.first_us,
                "latency_us": asdict(self.latency_us),
                "throughput_per_s": self.throughput_per_s,
                "samples_per_s": self.throughput_per_s * self.batch,
                "peak_rss_mb": self.peak_rss_mb} | (
                    {"cost": self.cost.to_json()} if self.cost is not None else {})


class _Runner:
    """One loaded interpreter with its inputs, ready to be invoked and timed."""

    def __init__(self, model: TFLiteModel, settings: BenchSettings, data: np.ndarray | None):
        t0 = time.perf_counter_ns()
        self.interp, self.info = load_interpreter(model, settings.backend, settings.threads,
                                                  settings.xnnpack)
        if not self.interp.get_input_details():
            raise EdgebnError(f"{model.path}: the model has no inputs; bench feeds its first one")
        self.path = model.path
        with interpreter_errors(f"{model.path}: the interpreter cannot run this model"):
            self._feed(settings, data, t0)

    def _feed(self, settings: BenchSettings, data: np.ndarray | None, t0: int) -> None:
        detail = self.interp.get_input_details()[0]
        if settings.batch != 1:
            shape = [settings.batch, *detail["shape"][1:]]
            self.interp.resize_tensor_input(detail["index"], shape)
            self.interp.allocate_tensors()
            detail = self.interp.get_input_details()[0]
        self.init_ms = (time.perf_counter_ns() - t0) / 1e6
        self.index = detail["index"]
        self.inputs = make_inputs(detail["shape"], detail["dtype"], detail["quantization"],
                                  count=16, data=data)
        self.samples: list[int] = []
        self.interp.set_tensor(self.index, self.inputs[0])
        t0 = time.perf_counter_ns()
        self.interp.invoke()
        self.first_us = (time.perf_counter_ns() - t0) / 1e3

    def warm_up(self, runs: int) -> None:
        """At most ``runs`` untimed runs, or WARMUP_MAX_S of them, whichever ends first."""
        deadline = time.perf_counter() + WARMUP_MAX_S
        for done in range(0, runs, 10):
            self.run(min(10, runs - done), keep=False)
            if time.perf_counter() >= deadline:
                break

    def run(self, n: int, keep: bool = True) -> int:
        """Invoke ``n`` times; return the time spent inside invoke(), in ns."""
        with interpreter_errors(f"{self.path}: the interpreter cannot run this model"):
            return self._run(n, keep)

    def _run(self, n: int, keep: bool) -> int:
        invoke, set_tensor, index, inputs = (self.interp.invoke, self.interp.set_tensor,
                                             self.index, self.inputs)
        clock = time.perf_counter_ns
        spent = 0
        k = len(inputs)
        for i in range(n):
            set_tensor(index, inputs[i % k])
            t0 = clock()
            invoke()
            dt = clock() - t0
            spent += dt
            if keep:
                self.samples.append(dt)
        return spent

    def stats(self, settings: BenchSettings) -> TFLiteStats:
        samples = np.array(self.samples, dtype=np.int64)
        return TFLiteStats(self.path, str(self.info), self.info.xnnpack, settings.threads,
                           settings.batch, len(samples), settings.warmup, self.init_ms,
                           self.first_us, Latency.from_ns(samples), peak_rss_mb(), samples)


def bench_tflite(model: TFLiteModel | str | Path, settings: BenchSettings = BenchSettings(),
                 data: np.ndarray | None = None, baseline: TFLiteModel | str | Path | None = None
                 ) -> tuple[TFLiteStats, TFLiteStats | None]:
    """Time ``model`` (and ``baseline``, interleaved in blocks) with the interpreter."""
    settings.validate()
    runners = [_Runner(as_tflite(model), settings, data)]
    if baseline is not None:
        runners.append(_Runner(as_tflite(baseline), settings, data))
    for r in runners:
        r.warm_up(settings.warmup)
    # Interleave in blocks when there is a baseline; otherwise check the clock every block.
    # A block lasts about BLOCK_S, so a slow model is still timed for about min_time_s.
    slowest_us = max(r.first_us for r in runners)
    block = max(1, min(INTERLEAVE_BLOCK if len(runners) > 1 else 256,
                       int(BLOCK_S * 1e6 / max(slowest_us, 1.0))))
    deadline = time.perf_counter() + settings.min_time_s * len(runners)
    while True:
        for r in runners:
            n = block if settings.runs is None else min(block, settings.runs - len(r.samples))
            if n > 0:
                r.run(n)
        if settings.runs is not None:
            if all(len(r.samples) >= settings.runs for r in runners):
                break
        elif time.perf_counter() >= deadline and all(len(r.samples) >= MIN_RUNS for r in runners):
            break
    stats = [r.stats(settings) for r in runners]
    return stats[0], (stats[1] if len(stats) > 1 else None)


# ---------------------------------------------------------------- a ratio with its interval

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
    to hold the ratio itself, so that what differs between two instances of one file widens it. A busy core
    slows whole rounds of both models alike: the ratio stands, the interval widens, and the
    run goes on until it is narrow enough or time is up.
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

    def interval_json(self) -> dict[str, Any]:
        """The fields every interleaved ratio carries in a JSON document (docs/reference/json.md)."""
        return {"ratio": self.ratio, "interval": list(self.interval), "confidence": self.confidence,
                "rounds": self.rounds, "significant": self.significant}

    def to_json(self) -> dict[str, Any]:
        return self.interval_json() | {"current_p50_us": self.current_p50_us,
                                       "baseline_p50_us": self.baseline_p50_us, "seconds": self.seconds}

    def describe(self) -> str:
        """``1.032x, interval [1.010, 1.051] over 40 interleaved rounds: significant``."""
        low, high = self.interval
        return (f"{self.ratio:.3f}x, interval [{low:.3f}, {high:.3f}] over {self.rounds} interleaved "
                f"rounds: {'significant' if self.significant else 'not significant'}")


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
    runners = [_Runner(m, settings, data) for m in models]
    for r in runners:
        r.warm_up(settings.warmup)
    kept: list[list[int]] = [[], []]  # samples of the interpreters already replaced
    block = max(1, min(INTERLEAVE_BLOCK, int(BLOCK_S * 1e6 / max(max(r.first_us for r in runners), 1.0))))
    cap = max_time_s if max_time_s is not None else 2 * settings.min_time_s
    start = time.perf_counter()
    ratios: list[float] = []
    interval = (0.0, math.inf)
    while True:
        if ratios and len(ratios) % REFRESH_ROUNDS == 0:
            for i, r in enumerate(runners):
                kept[i] += r.samples
            runners = [_Runner(m, settings, data) for m in models]
            for r in runners:
                r.warm_up(min(settings.warmup, 20))
        order = runners if len(ratios) % 2 == 0 else runners[::-1]
        for r in order:
            r.run(block)
        cur, base = (np.median(r.samples[-block:]) for r in runners)
        ratios.append(float(cur / max(base, 1)))
        if len(ratios) >= MIN_ROUNDS:
            blocks = [np.median(ratios[i:i + REFRESH_ROUNDS])
                      for i in range(0, len(ratios) - REFRESH_ROUNDS + 1, REFRESH_ROUNDS)]  # full pairs
            interval = _interval(np.array(blocks))  # over interpreter pairs, not rounds
            spent = time.perf_counter() - start
            if (interval[1] - interval[0] < width and spent >= MIN_SHARE * cap) or spent >= cap:
                break
    p50s = [float(np.median(np.array(k + r.samples)) / 1e3) for k, r in zip(kept, runners, strict=True)]
    ratio = float(np.median(ratios))
    interval = (min(interval[0], ratio), max(interval[1], ratio))
    return RatioEstimate(ratio, interval, len(ratios), p50s[0], p50s[1],
                         seconds=time.perf_counter() - start)
