"""Loading, feeding and timing the interpreters of ``edgebn profile`` (see
edgebn.runtime.profile.operators).

An isolated operator is fed what it sees inside the whole model: one reference run
with every intermediate tensor preserved (:func:`capture`), read back per tensor
(:func:`captured`); where that is not possible, random floats in [0, 1) and integer
zeros (zeros keep indices in range). Each :class:`Timed` interpreter is warmed up,
then invoked in blocks sized so that ``ROUNDS`` blocks fill its time budget.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Interpreter, TensorDetail, interpreter_errors, load_interpreter
from edgebn.runtime.timing import BenchSettings, Latency
from edgebn.tflite.quantization import make_inputs
from edgebn.tflite.reader import TFLiteModel

AT_LOAD = frozenset({"DEQUANTIZE", "DENSIFY"})  # kernels that compute constants once, cached
ROUNDS = 8  # every interpreter is timed in this many blocks, taking turns
MIN_RUNS = 16  # timed runs per interpreter at the least
WARMUP_RUNS = 5


def capture(model: TFLiteModel, settings: BenchSettings, feeds: list[np.ndarray]
            ) -> Interpreter | None:
    """One reference run of the whole model with every tensor kept; None if that fails."""
    try:  # reference kernels: a delegate would not keep its tensors
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
            interp, _ = load_interpreter(model, settings.backend, 1, xnnpack=False,
                                         preserve_all_tensors=True)
        for detail, x in zip(interp.get_input_details(), feeds, strict=True):
            interp.set_tensor(detail["index"], x)
        interp.invoke()
    except (EdgebnError, ValueError, RuntimeError, TypeError):
        return None
    return interp


def captured(interp: Interpreter | None, subgraph: int, tensor: int) -> np.ndarray | None:
    if interp is None:
        return None
    try:
        value = interp.get_tensor(tensor, subgraph) if subgraph else interp.get_tensor(tensor)
    except (ValueError, RuntimeError, TypeError):
        return None
    return None if value is None else np.array(value)


def _fallback(detail: TensorDetail, rng: np.random.Generator) -> np.ndarray:
    """Random values in [0, 1) for floats; zeros for integers (indices stay in range)."""
    shape, dtype = detail["shape"], np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return rng.random(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _whole_input(detail: TensorDetail) -> np.ndarray:
    """What ``edgebn bench`` feeds: uniform [0, 1) floats, integers over their whole range."""
    return make_inputs(detail["shape"], detail["dtype"], detail["quantization"], 1)[0]


class Timed:
    """One loaded interpreter with its inputs set, timed in blocks of invoke() calls."""

    def __init__(self, model: TFLiteModel, settings: BenchSettings,  # noqa: PLR0913
                 feeds: list[np.ndarray | None], budget_s: float, whole: bool = False,
                 checked: bool = True) -> None:
        """``checked=False``: a model edgebn made (one operator of a preflighted model)."""
        self.interp, self.info = load_interpreter(model, settings.backend, settings.threads,
                                                  settings.xnnpack, checked=checked)
        self.path = model.path
        with interpreter_errors(f"{model.path}: the interpreter cannot run this model"):
            self._feed(feeds, budget_s, whole)

    def _feed(self, feeds: list[np.ndarray | None], budget_s: float, whole: bool) -> None:
        details = self.interp.get_input_details()
        resized = False
        for d, x in zip(details, feeds, strict=True):
            if x is not None and tuple(x.shape) != tuple(d["shape"]):
                self.interp.resize_tensor_input(d["index"], list(x.shape))
                resized = True
        if resized:
            self.interp.allocate_tensors()
            details = self.interp.get_input_details()
        rng = np.random.default_rng(0)
        for d, x in zip(details, feeds, strict=True):
            if x is None:
                x = _whole_input(d) if whole else _fallback(d, rng)
            self.interp.set_tensor(d["index"], x.astype(d["dtype"]))
        self.samples: list[int] = []
        warm = [self._once() for _ in range(WARMUP_RUNS)]
        self.warm_ns = min(warm)
        per_round = budget_s / ROUNDS / max(min(warm) / 1e9, 1e-7)
        self.block = max(-(-MIN_RUNS // ROUNDS), int(per_round))

    def _once(self) -> int:
        t0 = time.perf_counter_ns()
        self.interp.invoke()
        return time.perf_counter_ns() - t0

    def run(self, runs: int | None = None) -> None:
        """One block: ``runs`` timed invoke() calls (default: the block its budget sized)."""
        with interpreter_errors(f"{self.path}: the interpreter cannot run this model"):
            self._run(self.block if runs is None else runs)

    def _run(self, runs: int) -> None:
        invoke, clock, keep = self.interp.invoke, time.perf_counter_ns, self.samples.append
        for _ in range(runs):
            t0 = clock()
            invoke()
            keep(clock() - t0)

    def latency(self) -> Latency:
        return Latency.from_ns(np.array(self.samples, dtype=np.int64))

    def inputs(self) -> list[np.ndarray]:
        return [self.interp.get_tensor(d["index"]) for d in self.interp.get_input_details()]
