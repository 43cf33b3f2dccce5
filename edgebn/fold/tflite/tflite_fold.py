"""``edgebn fold model.tflite``: fold the residual BN on the flatbuffer, prove it, time both files.

The rewrite is :func:`edgebn.fold.tflite.rewrite.fold_chains`; the proof is
:mod:`edgebn.fold.tflite.proof` (every tensor both files compute) and
:mod:`edgebn.fold.tflite.parameters` (an int8 fold's weights and bias). A fold beyond either
is refused: nothing is written, exit 2. Then both files are timed interleaved in rounds
(:func:`edgebn.runtime.ratio.latency_ratio`): the ratio before / after comes with its interval.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgebn.data.dataset import DataSpec
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError, FoldError
from edgebn.files import write_atomic
from edgebn.fold.tflite.parameters import ParameterCheck, check_parameters
from edgebn.fold.tflite.proof import (
    DEFAULT_TOLERANCE,
    FLOAT16_ROUNDING,
    INT8_STEPS,
    SAMPLES,
    SCALE_ROUNDING,
    TensorDiff,
    compare,
    proof_inputs,
    step_bound,
)
from edgebn.fold.tflite.rewrite import ChainFold, fold_chains
from edgebn.fold.tflite.samples import tflite_samples
from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.ratio import RatioEstimate, latency_ratio
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.provenance import COUNTED
from edgebn.tflite.reader import TFLiteModel, as_tflite, parse_tflite, read_tflite

BENCH_S = 1.0  # seconds each file is timed, interleaved


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
    worst_quantized: TensorDiff | None = None  # the quantized tensor most steps apart
    compared_quantized: int = 0  # of ``compared``, the quantized tensors
    clipped: int = 0  # chain-output elements left out: the original clipped what the fold removes
    clipped_runs: int = 0  # runs left out for the tensors after those elements
    step_tolerance: float = INT8_STEPS  # quantized tensors: steps allowed (step_bound)
    parameters: ParameterCheck | None = None  # the int8 backward folds' weights and bias

    @property
    def max_steps(self) -> float:
        return self.worst_quantized.max_steps or 0.0 if self.worst_quantized is not None else 0.0

    @property
    def max_rel_diff(self) -> float:
        return self.worst.max_rel_diff if self.worst is not None else 0.0

    @property
    def all_folded(self) -> bool:
        """Every BN chain folded (a Normalization or Rescaling chain kept does not count)."""
        return all(c.result == "folded" for c in self.chains if c.source_type in COUNTED)

    @property
    def measure(self) -> str:
        return f"every tensor present in both files ({self.compared}), {self.samples} inputs"

    def to_json(self) -> JsonDict:
        doc: JsonDict = {
            "model": self.model, "out": self.out, "measure": self.measure, "inputs": self.inputs,
            "tolerance": self.tolerance, "compared_tensors": self.compared,
            "max_rel_diff": self.max_rel_diff,
            "worst_tensor": None if self.worst is None else self.worst.to_json(),
            "compared_quantized": self.compared_quantized, "step_tolerance": self.step_tolerance,
            "max_steps": self.max_steps, "clipped_elements": self.clipped,
            "clipped_runs": self.clipped_runs,
            "worst_quantized_tensor": None if self.worst_quantized is None else
            self.worst_quantized.to_json(),
            "parameters": None if self.parameters is None else self.parameters.to_json(),
            "bn": [c.to_json() for c in self.chains],
            "counts": {k: sum(c.result == k for c in self.chains)
                       for k in ("folded", "collapsed", "kept")},
            "latency_us": None}
        if self.speed is not None:
            e = self.speed
            doc["latency_us"] = {"before_p50": e.current_p50_us, "after_p50": e.baseline_p50_us,
                                 **e.interval_json()}
        return doc


def fold_tflite(model: TFLiteModel | str | Path, data: np.ndarray | None = None,
                tolerance: float | None = None, bench: BenchSettings
                | None = None) -> TFLiteFoldResult:
    """Fold ``model``'s residual BN, prove the folded file, and time both (``bench``)."""
    original = as_tflite(model)
    # preflighted: a file the interpreter refuses stops here
    load_interpreter(original, xnnpack=False)
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
        found = compare(original, folded, rewrite, feeds)
    except (ValueError, RuntimeError) as exc:
        raise FoldError(f"{original.path}: the folded file cannot run: {exc}; nothing "
                        "written") from None
    result = TFLiteFoldResult(original.path, None, rewrite.chains, found.compared, SAMPLES, where,
                              limit, found.worst, data=rewrite.data,
                              worst_quantized=found.worst_quantized,
                              compared_quantized=found.quantized, clipped=found.clipped,
                              clipped_runs=found.clipped_runs,
                              step_tolerance=step_bound(original, rewrite),
                              parameters=check_parameters(original, folded, rewrite))
    _refuse_beyond(result, FLOAT16_ROUNDING if rewrite.float16 else SCALE_ROUNDING)
    if bench is not None and rewrite.chains:
        result = replace(result, speed=latency_ratio(original, folded, bench, width=0.02))
    return result


def _refuse_beyond(result: TFLiteFoldResult, weight_rounding: float) -> None:
    """A FoldError where the proof sees the folded file beyond its tolerances."""
    worst, worst_q, check = result.worst, result.worst_quantized, result.parameters
    if worst is not None and not worst.max_rel_diff <= result.tolerance:
        raise FoldError(f"{result.model}: the folded file differs from the original at tensor "
                        f"{worst.tensor} ({worst.name or 'unnamed'}) by {worst.max_rel_diff:.3g} "
                        "of its "
                        f"largest value, above the tolerance {result.tolerance:.3g}: nothing "
                        "written")
    if worst_q is not None and not (worst_q.max_steps or 0.0) <= result.step_tolerance:
        raise FoldError(f"{result.model}: the folded file differs from the original at quantized "
                        f"tensor {worst_q.tensor} ({worst_q.name or 'unnamed'}) by "
                        f"{worst_q.max_steps:.3g} "
                        f"steps of its scale, above {result.step_tolerance:g}: nothing written")
    if check is not None and not check.max_weight_rel_diff <= weight_rounding:
        raise FoldError(f"{result.model}: a folded kernel's weights differ from s⊗W by "
                        f"{check.max_weight_rel_diff:.3g} of a channel's largest weight, above "
                        f"{weight_rounding:.3g}: nothing written")
    if check is not None and not check.max_bias_steps <= 0.5 + 1e-6:
        raise FoldError(f"{result.model}: a folded kernel's bias differs from s⊗b + t by "
                        f"{check.max_bias_steps:.3g} bias steps, above half a step: nothing "
                        "written")


def fold_tflite_file(model: str | Path, out: str | Path, data: np.ndarray | None = None,
                     tolerance: float | None = None,
                     bench: BenchSettings | None = BenchSettings(min_time_s=BENCH_S, cost=False)
                     ) -> TFLiteFoldResult:
    """:func:`fold_tflite`, then the folded file written atomically to ``out``."""
    result = fold_tflite(model, data, tolerance, bench)
    write_atomic(out, result.data)
    return replace(result, out=str(out))


def fold_file(model: str | Path, out: str | Path, spec: DataSpec | None = None,
              tolerance: float | None = None) -> TFLiteFoldResult:
    """Fold ``model``'s residual BN into ``out``, proven on ``spec``'s samples (or random ones)."""
    if Path(out).suffix != ".tflite":
        raise EdgebnError(f"the folded model's path must end in .tflite. Received: {out}")
    parsed = read_tflite(model)
    return fold_tflite_file(parsed, out, tflite_samples(parsed, spec), tolerance)
