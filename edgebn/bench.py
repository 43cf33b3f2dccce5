"""TFLite inference against the Keras model it came from, on the same inputs.

Each timed sample is one ``interpreter.invoke()`` measured with
``perf_counter_ns``; inputs are set outside the timed region, so the figure is
what a bare ``invoke()`` loop would show. Keras is timed in three ways a user
might actually run it (:mod:`edgebn.bench_keras`): eager ``model(x, training=False)``,
``model.predict``, and a compiled ``tf.function``. With a baseline .tflite (the BN-free
twin), both interpreters run in one process, interleaved block by block, so drift on a
shared machine hits both alike. Other .tflite files (``BenchTargets.others``, e.g. the
float32 conversion beside an int8 one) are timed after them with the same settings;
thread counts are compared in :mod:`edgebn.scaling`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.machine import environment, peak_rss_mb
from edgebn.runtime import Backend, interpreter_errors, load_interpreter
from edgebn.tensors import make_inputs
from edgebn.tflite import TFLiteModel, as_tflite

if TYPE_CHECKING:  # edgebn.scaling imports this module
    from edgebn.scaling import ThreadScaling

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
    cost: bool = True  # MACs per second against this machine's probed ceiling (edgebn.cost)

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
    cost: Any = None  # edgebn.cost.CostStats, when measured

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


@dataclass(frozen=True)
class KerasStats:
    mode: str  # eager | predict | compiled
    runs: int
    latency_us: Latency
    samples_ns: np.ndarray = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "latency_us": asdict(self.latency_us),
                "throughput_per_s": 1e6 / self.latency_us.mean}


@dataclass(frozen=True)
class BenchRow:
    """One timed runtime: the unit of the table, the Markdown and the plot."""

    label: str
    key: str  # where it sits in the JSON: tflite, baseline, keras.eager, keras_folded.compiled, ...
    runs: int
    latency_us: Latency
    samples_ns: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class BenchResult:
    environment: dict[str, Any]
    tflite: TFLiteStats
    baseline: TFLiteStats | None = None
    keras: dict[str, KerasStats] = field(default_factory=dict)
    keras_baseline: dict[str, KerasStats] = field(default_factory=dict)
    keras_folded: dict[str, KerasStats] = field(default_factory=dict)
    baseline_label: str = "baseline"  # what the baseline is ("BN-free twin" in a build)
    others: dict[str, TFLiteStats] = field(default_factory=dict)  # label -> another .tflite
    scaling: ThreadScaling | None = None  # with several thread counts (edgebn.scaling)

    def rows(self) -> list[BenchRow]:
        rows = [BenchRow(f"TFLite {Path(self.tflite.model).name}", "tflite", self.tflite.runs,
                         self.tflite.latency_us, self.tflite.samples_ns)]
        if self.baseline is not None:
            rows.append(BenchRow(f"TFLite {self.baseline_label} ({Path(self.baseline.model).name})",
                                 "baseline", self.baseline.runs, self.baseline.latency_us,
                                 self.baseline.samples_ns))
        rows += [BenchRow(f"TFLite {label} ({Path(s.model).name})", f"others.{label}", s.runs,
                          s.latency_us, s.samples_ns) for label, s in self.others.items()]
        for key, label, group in (("keras", "Keras", self.keras),
                                  ("keras_baseline", f"Keras {self.baseline_label}",
                                   self.keras_baseline),
                                  ("keras_folded", "Keras folded", self.keras_folded)):
            rows += [BenchRow(f"{label} {m}", f"{key}.{m}", s.runs, s.latency_us, s.samples_ns)
                     for m, s in group.items()]
        return rows

    def speedup(self) -> dict[str, Any]:
        p50 = self.tflite.latency_us.p50
        out: dict[str, Any] = {f"vs_{mode}": s.latency_us.p50 / p50 for mode, s in self.keras.items()}
        if self.keras:
            fastest = min(self.keras.values(), key=lambda s: s.latency_us.p50)
            out["vs_fastest_keras"] = fastest.latency_us.p50 / p50
            out["fastest_keras"] = fastest.mode
        return out

    def bn_cost(self) -> dict[str, float]:
        """What BN costs: BN model p50 over its BN-free twin's p50, per runtime."""
        out = {}
        if self.baseline is not None:
            out["tflite"] = self.tflite.latency_us.p50 / self.baseline.latency_us.p50
        for mode, s in self.keras.items():
            if mode in self.keras_baseline:
                out[f"keras_{mode}"] = s.latency_us.p50 / self.keras_baseline[mode].latency_us.p50
        return out

    def fold_gain(self) -> dict[str, float]:
        """What folding in Keras buys inside Keras: the BN model's p50 over the folded one's."""
        return {f"keras_{mode}": s.latency_us.p50 / self.keras_folded[mode].latency_us.p50
                for mode, s in self.keras.items() if mode in self.keras_folded}

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"environment": self.environment, "tflite": self.tflite.to_json()}
        if self.baseline is not None:
            doc["baseline"] = self.baseline.to_json() | {"label": self.baseline_label}
        if self.keras:
            doc["keras"] = {m: s.to_json() for m, s in self.keras.items()}
            doc["speedup"] = self.speedup()
        if self.keras_baseline:
            doc["keras_baseline"] = {m: s.to_json() for m, s in self.keras_baseline.items()}
        if self.keras_folded:
            doc["keras_folded"] = {m: s.to_json() for m, s in self.keras_folded.items()}
        if self.fold_gain():
            doc["fold_gain"] = self.fold_gain()
        if self.bn_cost():
            doc["bn_cost"] = self.bn_cost()
        if self.others:
            doc["others"] = {label: s.to_json() for label, s in self.others.items()}
        if self.scaling is not None:
            doc["threads_scaling"] = self.scaling.to_json()
        return doc


# ---------------------------------------------------------------- TFLite


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


# ---------------------------------------------------------------- the command


@dataclass(frozen=True)
class BenchTargets:
    """What to time: a .tflite, optionally a baseline .tflite, and the Keras models behind them.

    Each model is given parsed (or as a path); each Keras model in memory (or as a .keras path).
    ``others`` are more .tflite files (the float32 conversion beside an int8 one, ...),
    each timed on its own after the model and its baseline, with the same settings.
    """

    tflite: TFLiteModel | str | Path
    baseline: TFLiteModel | str | Path | None = None
    keras: Any = None
    keras_baseline: Any = None
    keras_folded: Any = None
    baseline_label: str = "baseline"
    others: dict[str, Any] = field(default_factory=dict)  # label -> .tflite, timed after the rest

    def keras_models(self) -> dict[str, Any]:
        from edgebn.train import load_keras

        given = {"model": self.keras, "baseline": self.keras_baseline,
                 "folded": self.keras_folded}
        return {k: load_keras(m) if isinstance(m, (str, Path)) else m
                for k, m in given.items() if m is not None}


def bench(targets: BenchTargets, settings: BenchSettings = BenchSettings(),
          data: np.ndarray | None = None) -> BenchResult:
    """TFLite (and optional baseline) against Keras, same inputs, same batch."""
    settings.validate()
    model = as_tflite(targets.tflite)
    baseline = as_tflite(targets.baseline) if targets.baseline is not None else None
    tfl, base = time_tflite(model, settings, data, baseline)
    others = {label: time_tflite(as_tflite(m), settings, data)[0]
              for label, m in targets.others.items()}
    timed_models: dict[str, dict[str, KerasStats]] = {}
    keras_models = targets.keras_models()
    if keras_models:
        sg = model.subgraphs[0]
        shape = [settings.batch, *sg.tensors[sg.inputs[0]].shape[1:]]
        x = make_inputs(shape, np.float32, None, 1, data)[0]  # the interpreter's samples
        from edgebn.bench_keras import bench_keras_models

        timed_models = bench_keras_models(keras_models, x, settings)
    env = environment(tfl.backend, tfl.xnnpack, tfl.threads)
    return BenchResult(env, tfl, base, timed_models.get("model", {}),
                       timed_models.get("baseline", {}), timed_models.get("folded", {}),
                       targets.baseline_label, others)


def time_tflite(model: TFLiteModel, settings: BenchSettings, data: np.ndarray | None = None,
                baseline: TFLiteModel | None = None) -> tuple[TFLiteStats, TFLiteStats | None]:
    """``bench_tflite``, in a fresh process when ``settings.isolate``; the model with its cost."""
    if settings.isolate:
        from edgebn.isolate import isolated_tflite

        tfl, base = isolated_tflite(model, settings, data, baseline)
    else:
        tfl, base = bench_tflite(model, settings, data, baseline)
    if settings.cost:
        from edgebn.cost import with_cost

        tfl = with_cost(tfl, model, settings)
    return tfl, base
