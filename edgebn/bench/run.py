"""TFLite inference against the Keras model it came from, on the same inputs.

Each timed sample is one ``interpreter.invoke()`` measured with
``perf_counter_ns``; inputs are set outside the timed region, so the figure is
what a bare ``invoke()`` loop would show. Keras is timed in three ways a user
might actually run it (:mod:`edgebn.bench.keras`): eager ``model(x, training=False)``,
``model.predict``, and a compiled ``tf.function``. With a baseline .tflite (the BN-free
twin), both interpreters run in one process, interleaved block by block, so drift on a
shared machine hits both alike. Other .tflite files (``BenchTargets.others``, e.g. the
float32 conversion beside an int8 one) are timed after them with the same settings;
thread counts are compared in :mod:`edgebn.bench.scaling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebn.bench.keras import KerasStats, bench_keras_models
from edgebn.bench.scaling import ThreadScaling, check_thread_counts
from edgebn.documents import JsonDict
from edgebn.machine import environment
from edgebn.runtime.measure import time_tflite
from edgebn.runtime.ratio import RatioEstimate, latency_ratio
from edgebn.runtime.timing import BenchSettings, Latency, TFLiteStats
from edgebn.tflite.quantization import make_inputs
from edgebn.tflite.reader import TFLiteModel, as_tflite
from edgebn.zoo.keras_io import load_keras

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras


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
    environment: JsonDict
    tflite: TFLiteStats
    baseline: TFLiteStats | None = None
    keras: dict[str, KerasStats] = field(default_factory=dict)
    keras_baseline: dict[str, KerasStats] = field(default_factory=dict)
    keras_folded: dict[str, KerasStats] = field(default_factory=dict)
    baseline_label: str = "baseline"  # what the baseline is ("BN-free twin" in a build)
    others: dict[str, TFLiteStats] = field(default_factory=dict)  # label -> another .tflite
    scaling: ThreadScaling | None = None  # with several thread counts (edgebn.bench.scaling)
    baseline_ratio: RatioEstimate | None = None  # p50 / baseline p50 with its interval (rounds)

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

    def speedup(self) -> JsonDict:
        p50 = self.tflite.latency_us.p50
        out: JsonDict = {f"vs_{mode}": s.latency_us.p50 / p50 for mode, s in self.keras.items()}
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

    def to_json(self) -> JsonDict:
        doc: JsonDict = {"environment": self.environment, "tflite": self.tflite.to_json()}
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
        if self.baseline_ratio is not None:
            doc["baseline_ratio"] = self.baseline_ratio.to_json()
        if self.others:
            doc["others"] = {label: s.to_json() for label, s in self.others.items()}
        if self.scaling is not None:
            doc["threads_scaling"] = self.scaling.to_json()
        return doc


@dataclass(frozen=True)
class BenchTargets:
    """What to time: a .tflite, optionally a baseline .tflite, and the Keras models behind them.

    Each model is given parsed (or as a path); each Keras model in memory (or as a .keras path).
    ``others`` are more .tflite files (the float32 conversion beside an int8 one, ...),
    each timed on its own after the model and its baseline, with the same settings.
    """

    tflite: TFLiteModel | str | Path
    baseline: TFLiteModel | str | Path | None = None
    keras: keras.Model | str | Path | None = None
    keras_baseline: keras.Model | str | Path | None = None
    keras_folded: keras.Model | str | Path | None = None
    baseline_label: str = "baseline"
    others: dict[str, TFLiteModel] = field(default_factory=dict)  # label -> .tflite, timed last
    ratio_interval: bool = True  # with a baseline, also time both in rounds: the ratio's interval

    def keras_models(self) -> dict[str, keras.Model]:
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
    ratio = None
    if baseline is not None and targets.ratio_interval and not settings.isolate:
        ratio = latency_ratio(model, baseline, settings, width=0.02, data=data)
    timed_models: dict[str, dict[str, KerasStats]] = {}
    keras_models = targets.keras_models()
    if keras_models:
        sg = model.subgraphs[0]
        shape = [settings.batch, *sg.tensors[sg.inputs[0]].shape[1:]]
        x = make_inputs(shape, np.float32, None, 1, data)[0]  # the interpreter's samples

        timed_models = bench_keras_models(keras_models, x, settings)
    env = environment(tfl.backend, tfl.xnnpack, tfl.threads)
    return BenchResult(env, tfl, base, timed_models.get("model", {}),
                       timed_models.get("baseline", {}), timed_models.get("folded", {}),
                       targets.baseline_label, others, baseline_ratio=ratio)


def bench_threads(targets: BenchTargets, settings: BenchSettings = BenchSettings(),
                  threads: Sequence[int] = (1,), data: np.ndarray | None = None) -> BenchResult:
    """:func:`bench` at ``threads[0]``, then the .tflite alone at each other count.

    With one count this is ``bench`` at that count; with several, the result's ``scaling``
    holds one row per count (the first is the bench's own ``tflite``).
    """
    counts = check_thread_counts(threads)
    settings.validate()
    targets = replace(targets, tflite=as_tflite(targets.tflite))  # read once, timed per count
    first = bench(targets, replace(settings, threads=counts[0]), data)
    if len(counts) == 1:
        return first
    more = [time_tflite(targets.tflite, replace(settings, threads=n), data)[0]
            for n in counts[1:]]
    return replace(first, scaling=ThreadScaling.from_stats([first.tflite, *more]))
