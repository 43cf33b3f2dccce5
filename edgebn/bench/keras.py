"""The Keras side of ``edgebn bench``: a model timed the three ways a user might run it.

Eager ``model(x, training=False)``, ``model.predict`` and a compiled ``tf.function``,
each on the same batch as the interpreter. Several models (the BN model, its BN-free
twin, the folded model) take turns within a mode, so drift on a shared machine hits
them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgebn.documents import JsonDict
from edgebn.runtime.timing import BenchSettings, Latency

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

KERAS_MIN_RUNS = 10
KERAS_MAX_RUNS = 5000
KERAS_BLOCK = 5  # calls per turn when several Keras models are timed interleaved
KERAS_MODES = ("eager", "predict", "compiled")


@dataclass(frozen=True)
class KerasStats:
    mode: str  # eager | predict | compiled
    runs: int
    latency_us: Latency
    samples_ns: np.ndarray = field(repr=False, compare=False)

    def to_json(self) -> JsonDict:
        return {"runs": self.runs, "latency_us": asdict(self.latency_us),
                "throughput_per_s": 1e6 / self.latency_us.mean}



def _keras_calls(model: keras.Model, x: np.ndarray, xla: bool) -> dict[str, Callable[[], object]]:
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    x_tensor = tf.constant(x)
    compiled = tf.function(lambda t: model(t, training=False), jit_compile=xla)
    return {"eager": lambda: model(x_tensor, training=False),
            "predict": lambda: model.predict(x, batch_size=len(x), verbose=0),
            "compiled": lambda: compiled(x_tensor)}


def bench_keras_models(models: dict[str, keras.Model], x: np.ndarray, settings: BenchSettings,
                       modes: tuple[str, ...] = KERAS_MODES) -> dict[str, dict[str, KerasStats]]:
    """Time several Keras models on the batch ``x``, mode by mode, interleaved.

    Within a mode the models take turns in blocks of KERAS_BLOCK calls, so that drift
    on a shared machine hits them alike (the same as the .tflite baseline); each model
    gets ``settings.keras_time_s`` of timed calls (or exactly ``settings.runs``).
    """
    runs = settings.runs
    calls = {name: _keras_calls(model, x, settings.xla) for name, model in models.items()}
    out: dict[str, dict[str, KerasStats]] = {name: {} for name in models}
    for mode in modes:
        for name in models:
            for _ in range(3):  # warm-up: tracing, first allocations
                calls[name][mode]()
        samples: dict[str, list[int]] = {name: [] for name in models}
        deadline = time.perf_counter() + settings.keras_time_s * len(models)
        while True:
            for name in models:
                call = calls[name][mode]
                for _ in range(KERAS_BLOCK):
                    t0 = time.perf_counter_ns()
                    call()
                    samples[name].append(time.perf_counter_ns() - t0)
            n = min(len(v) for v in samples.values())
            if runs is not None:
                if n >= runs:
                    break
            elif (time.perf_counter() >= deadline and n >= KERAS_MIN_RUNS) or n >= KERAS_MAX_RUNS:
                break
        for name, v in samples.items():
            arr = np.array(v[:runs] if runs is not None else v, dtype=np.int64)
            out[name][mode] = KerasStats(mode, len(arr), Latency.from_ns(arr), arr)
    return out


