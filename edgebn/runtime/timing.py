"""Timing a .tflite with the interpreter: ``invoke()`` samples, interleaved with a baseline.

Each timed sample is one ``interpreter.invoke()`` measured with ``perf_counter_ns``;
inputs are set outside the timed region, so the figure is what a bare ``invoke()`` loop
would show. With a baseline .tflite, both interpreters run in one process, interleaved
block by block, so drift on a shared machine hits both alike.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.machine import peak_rss_mb
from edgebn.runtime.backends import Backend, interpreter_errors, load_interpreter
from edgebn.tflite.quantization import make_inputs
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

    def to_json(self) -> JsonDict:
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

    def to_json(self) -> JsonDict:
        return {"model": self.model, "backend": self.backend, "xnnpack": self.xnnpack,
                "threads": self.threads, "batch": self.batch, "runs": self.runs,
                "warmup": self.warmup, "init_ms": self.init_ms, "first_us": self.first_us,
                "latency_us": asdict(self.latency_us),
                "throughput_per_s": self.throughput_per_s,
                "samples_per_s": self.throughput_per_s * self.batch,
                "peak_rss_mb": self.peak_rss_mb} | (
                    {"cost": self.cost.to_json()} if self.cost is not None else {})


class Runner:
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
    runners = [Runner(as_tflite(model), settings, data)]
    if baseline is not None:
        runners.append(Runner(as_tflite(baseline), settings, data))
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
