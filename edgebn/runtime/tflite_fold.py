"""``edgebn fold model.tflite``: fold the residual BN on the flatbuffer, prove it, time both files.

The rewrite is :func:`edgebn.tflite.fold.fold_chains`. **The proof**: the original and the
folded file run on the same inputs (the user's ``--data``, else random ones in the range
``edgebn bench`` feeds) with the reference kernels and every tensor kept
(``experimental_preserve_all_tensors``); every float tensor present in both files — same index,
computed in both, not one the fold changes on purpose — is compared, not only the output::

    max|folded − original| ≤ tolerance · max|original|      (per tensor)

``tolerance`` defaults to :data:`DEFAULT_TOLERANCE`, float32 rounding through a few layers; where
folded weights were stored as float16 again, float16 rounding is added
(:data:`FLOAT16_ROUNDING`). A fold beyond it is refused: nothing is written, exit 2. Then both
files are timed interleaved in rounds (:func:`edgebn.runtime.timing.latency_ratio`): the
ratio before / after comes with its interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError, FoldError
from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.timing import BenchSettings, RatioEstimate, latency_ratio
from edgebn.stages import write_atomic
from edgebn.tensors import make_inputs
from edgebn.tflite.fold import ChainFold, Rewrite, fold_chains
from edgebn.tflite.reader import TFLiteModel, as_tflite, parse_tflite

DEFAULT_TOLERANCE = 1e-5  # |Δ| per tensor beyond which a fold is refused, relative to its max |value|
FLOAT16_ROUNDING = 2.0 ** -10  # weights rounded to float16 again: relative error per weight ≤ 2⁻¹¹
SAMPLES = 8  # inputs each file runs on for the proof (a wrong fold shows on any)
BENCH_S = 1.0  # seconds each file is timed, interleaved


@dataclass(frozen=True)
class TensorDiff:
    subgraph: int
    tensor: int
    name: str
    max_abs_diff: float
    max_rel_diff: float


@dataclass(frozen=True)
class TFLiteFoldResult:
    model: str
    out: str | None
    chains: tuple[ChainFold, ...]
    compared: int  # tensors compared
    samples: int
    inputs: str  # where the proof's inputs came from
    tolerance: float
    worst: TensorDiff | None
    speed: RatioEstimate | None = None  # the original's p50 over the folded file's, interleaved
    data: bytes = b""

    @property
    def max_rel_diff(self) -> float:
        return self.worst.max_rel_diff if self.worst is not None else 0.0

    @property
    def all_folded(self) -> bool:
        return all(c.result == "folded" for c in self.chains)

    @property
    def measure(self) -> str:
        return f"every tensor present in both files ({self.compared}), {self.samples} inputs"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "model": self.model, "out": self.out, "measure": self.measure, "inputs": self.inputs,
            "tolerance": self.tolerance, "compared_tensors": self.compared,
            "max_rel_diff": self.max_rel_diff,
            "worst_tensor": None if self.worst is None else {
                "subgraph": self.worst.subgraph, "tensor": self.worst.tensor, "name": self.worst.name,
                "max_abs_diff": self.worst.max_abs_diff, "max_rel_diff": self.worst.max_rel_diff},
            "bn": [c.to_json() for c in self.chains],
            "counts": {k: sum(c.result == k for c in self.chains) for k in ("folded", "collapsed", "kept")},
            "latency_us": None}
        if self.speed is not None:
            e = self.speed
            doc["latency_us"] = {"before_p50": e.current_p50_us, "after_p50": e.baseline_p50_us,
                                 **e.interval_json()}
        return doc


def _run_all(model: TFLiteModel, feeds: list[list[np.ndarray]], checked: bool
             ) -> list[dict[tuple[int, int], np.ndarray]]:
    """Every float tensor of every subgraph after each run, by (subgraph, index)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
        interp, _ = load_interpreter(model, xnnpack=False, preserve_all_tensors=True, checked=checked)
    made = {(sg.index, t) for sg in model.subgraphs for op in sg.operators for t in op.outputs if t >= 0}
    runs = []
    for feed in feeds:
        for detail, x in zip(interp.get_input_details(), feed, strict=True):
            interp.set_tensor(detail["index"], x)
        interp.invoke()
        values = {}
        for sg_index, t in made:
            if model.subgraphs[sg_index].tensors[t].dtype != "FLOAT32":
                continue
            try:
                v = interp.get_tensor(t, sg_index) if sg_index else interp.get_tensor(t)
            except (ValueError, RuntimeError, TypeError):
                continue
            if v is not None:
                values[(sg_index, t)] = np.array(v, dtype=np.float64)
        runs.append(values)
    return runs


def compare(original: TFLiteModel, folded: TFLiteModel, rewrite: Rewrite,
            feeds: list[list[np.ndarray]]) -> tuple[int, TensorDiff | None]:
    """How many tensors were compared, and the worst (largest relative difference)."""
    # the original was preflighted; the rewrite of it is checked in a child process too
    before, after = _run_all(original, feeds, checked=False), _run_all(folded, feeds, checked=True)
    worst, compared = None, 0
    for key in sorted(set(before[0]) & set(after[0]) - rewrite.changed):
        a = np.stack([run[key] for run in before])
        b = np.stack([run[key] for run in after])
        if a.shape != b.shape:
            continue
        compared += 1
        scale = float(np.abs(a).max()) if a.size else 0.0
        diff = float(np.abs(a - b).max()) if a.size else 0.0
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        if not np.isfinite(diff):
            rel = float("inf")
        if worst is None or rel > worst.max_rel_diff:
            name = original.subgraphs[key[0]].tensors[key[1]].name
            worst = TensorDiff(key[0], key[1], name, diff, rel)
    return compared, worst


def proof_inputs(model: TFLiteModel, data: np.ndarray | None, samples: int
                 ) -> tuple[list[list[np.ndarray]], str]:
    """Each run's inputs: ``data`` (the first input's samples) when given, else random."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interp, _ = load_interpreter(model, xnnpack=False, checked=False)
    details = interp.get_input_details()
    if not details:
        raise EdgebnError(f"{model.path}: the model has no inputs to run the proof on")
    if data is not None and len(details) != 1:
        raise EdgebnError(f"{model.path}: --data gives one input; the model takes {len(details)}")
    per_input = [make_inputs(d["shape"], d["dtype"], d["quantization"], samples,
                             data if data is not None else None, seed=i)
                 for i, d in enumerate(details)]
    where = f"{samples} samples of --data" if data is not None else f"{samples} random inputs"
    return [list(feed) for feed in zip(*per_input, strict=True)], where


def fold_tflite(model: TFLiteModel | str | Path, data: np.ndarray | None = None,
                tolerance: float | None = None, bench: BenchSettings | None = None) -> TFLiteFoldResult:
    """Fold ``model``'s residual BN, prove the folded file, and time both (``bench``)."""
    original = as_tflite(model)
    load_interpreter(original, xnnpack=False)  # preflighted: a file the interpreter refuses stops here
    try:
        rewrite = fold_chains(original)
    except (ValueError, IndexError, KeyError, TypeError, ArithmeticError) as exc:
        raise FoldError(f"{original.path}: cannot fold this file: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    folded = parse_tflite(rewrite.data, f"{original.path} (folded)")
    feeds, where = proof_inputs(original, data, SAMPLES)
    limit = (DEFAULT_TOLERANCE if tolerance is None else tolerance) + (
        FLOAT16_ROUNDING if rewrite.float16 else 0.0)
    try:
        compared, worst = compare(original, folded, rewrite, feeds)
    except (ValueError, RuntimeError) as exc:
        raise FoldError(f"{original.path}: the folded file cannot run: {exc}; nothing written") from None
    result = TFLiteFoldResult(original.path, None, rewrite.chains, compared, SAMPLES, where,
                              limit, worst, data=rewrite.data)
    if worst is not None and not worst.max_rel_diff <= limit:
        raise FoldError(f"{original.path}: the folded file differs from the original at tensor "
                        f"{worst.tensor} ({worst.name or 'unnamed'}) by {worst.max_rel_diff:.3g} of its "
                        f"largest value, above the tolerance {limit:.3g}: nothing written")
    if bench is not None and rewrite.chains:
        result = replace(result, speed=latency_ratio(original, folded, bench, width=0.02))
    return result


def fold_tflite_file(model: str | Path, out: str | Path, data: np.ndarray | None = None,
                     tolerance: float | None = None,
                     bench: BenchSettings | None = BenchSettings(min_time_s=BENCH_S, cost=False)
                     ) -> TFLiteFoldResult:
    """:func:`fold_tflite`, then the folded file written atomically to ``out``."""
    result = fold_tflite(model, data, tolerance, bench)
    write_atomic(out, result.data)
    return replace(result, out=str(out))
