"""``edgebn fold model.tflite``: fold the residual BN on the flatbuffer, prove it, time both files.

The rewrite is :func:`edgebn.tflite.fold.fold_chains`. **The proof**: the original and the
folded file run on the same inputs (the user's ``--data``, else random ones in the range
``edgebn bench`` feeds) with the reference kernels and every tensor kept
(``experimental_preserve_all_tensors``); every float tensor present in both files — same index,
computed in both, not one the fold changes on purpose — is compared, not only the output::

    max|folded − original| ≤ tolerance · max|original|      (per tensor)

Equal infinities are equal (litert-torch pads a max-pool with −inf); a tensor whose every
value is 0 is measured against the largest value of any tensor compared, so the measure
stays finite.

``tolerance`` defaults to :data:`DEFAULT_TOLERANCE`, float32 rounding through a few layers; where
folded weights were stored as float16 again, float16 rounding is added
(:data:`FLOAT16_ROUNDING`).

**Quantized tensors** (INT8, UINT8, INT16 with one scale) are compared too, dequantized with
their own scale and zero point, in steps of the original's scale::

    max|folded − original| / scale ≤ step tolerance                    (per tensor)

The folded int8 file is not the original to the bit: it removes roundings. A chain of ``n``
steps on int8 activations requantized ``x`` and each step's output, each to half a step of
its own scale, before ``y``'s rounding; the fold keeps only ``y``'s (the kernel computes
``s·x + t`` in int32 and rounds once). So ``y`` may land one step either side wherever those
removed errors, at most ``Σ ½·S_k·|s after k| / S_y`` steps of ``y``, cross a rounding
boundary. The step tolerance is that bound, computed per folded chain from its own scales and
constants (:func:`step_bound`: ``1 + Σ ½·S_k·max|s after k| / S_y``, rounded up), and at
least :data:`INT8_STEPS`; operators after ``y`` see that difference and pass it on in their
own steps. The worst measured is reported (``max_steps``, beside ``step_tolerance``). The
fold also removes the clamps
of those tensors: where the original clipped one (an input beyond its calibrated range), it
saturated and the folded file did not; those elements of ``y``, and those runs for the
tensors computed from ``y``, are left out of the comparison and counted (``clipped_elements``,
``clipped_runs``); a tensor with every run left out is not counted as compared.

The int8 outputs cannot show a wrong fold of a size below their step (a scale off by 1e-3
moves ``y`` by a fraction of a step), so each backward fold of an int8 chain is also checked
on its **parameters**, from the original file's constants in float64 and a re-derivation of
``s`` and ``t`` of its own: the folded kernel's dequantized weights against ``s⊗W`` (to
float32 rounding of the new scale, :data:`SCALE_ROUNDING`), its bias, read at the kernel's
``S_in·S_w'[o]``, against ``s⊗b + t`` (within half a bias step).

A fold beyond either is refused: nothing is written, exit 2. Then both files are timed
interleaved in rounds (:func:`edgebn.runtime.timing.latency_ratio`): the ratio before / after
comes with its interval.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError, FoldError
from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.tensor_diff import activation_scale, difference
from edgebn.runtime.timing import BenchSettings, RatioEstimate, latency_ratio
from edgebn.stages import write_atomic
from edgebn.tensors import make_inputs
from edgebn.tflite.chains import constant_source
from edgebn.tflite.fold import KERNELS, ChainFold, Rewrite, fold_chains
from edgebn.tflite.provenance import COUNTED
from edgebn.tflite.reader import Operator, Tensor, TFLiteModel, as_tflite, parse_tflite

DEFAULT_TOLERANCE = 1e-5  # |Δ| per tensor beyond which a fold is refused, relative to its max |value|
FLOAT16_ROUNDING = 2.0 ** -10  # weights rounded to float16 again: relative error per weight ≤ 2⁻¹¹
SAMPLES = 8  # inputs each file runs on for the proof (a wrong fold shows on any)
INT8_STEPS = 2.0  # |Δ| per quantized tensor, in steps of its scale: the roundings a fold removes
SCALE_ROUNDING = 2.0 ** -23  # a folded weight scale rounded to float32: relative error ≤ 2⁻²⁴
QUANTIZED = ("INT8", "UINT8", "INT16")
BENCH_S = 1.0  # seconds each file is timed, interleaved


@dataclass(frozen=True)
class TensorDiff:
    subgraph: int
    tensor: int
    name: str
    max_abs_diff: float
    max_rel_diff: float
    max_steps: float | None = None  # a quantized tensor: max |Δ| in steps of its scale

    def to_json(self) -> dict[str, Any]:
        doc = {"subgraph": self.subgraph, "tensor": self.tensor, "name": self.name,
               "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff}
        return doc | ({} if self.max_steps is None else {"max_steps": self.max_steps})


@dataclass(frozen=True)
class ParameterCheck:
    """The folded int8 kernels' weights and bias against ``s⊗W`` and ``s⊗b + t`` (float64)."""

    kernels: int  # backward folds of int8 chains checked
    max_weight_rel_diff: float  # |folded − s⊗W| relative to the channel's largest (a float bias too)
    max_bias_steps: float  # an int32 bias: |folded − (s⊗b + t)| in steps of S_in·S_w'[o]

    def to_json(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "max_weight_rel_diff": self.max_weight_rel_diff,
                "max_bias_steps": self.max_bias_steps, "weight_tolerance": SCALE_ROUNDING,
                "bias_tolerance_steps": 0.5}


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

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
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
            "counts": {k: sum(c.result == k for c in self.chains) for k in ("folded", "collapsed", "kept")},
            "latency_us": None}
        if self.speed is not None:
            e = self.speed
            doc["latency_us"] = {"before_p50": e.current_p50_us, "after_p50": e.baseline_p50_us,
                                 **e.interval_json()}
        return doc


def _run_all(model: TFLiteModel, feeds: list[list[np.ndarray]], checked: bool
             ) -> list[dict[tuple[int, int], np.ndarray]]:
    """Every float tensor, and every quantized one dequantized, after each run, by (subgraph, index)."""
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
            tensor = model.subgraphs[sg_index].tensors[t]
            q = _per_tensor(tensor)
            if tensor.dtype != "FLOAT32" and q is None:
                continue
            try:
                v = interp.get_tensor(t, sg_index) if sg_index else interp.get_tensor(t)
            except (ValueError, RuntimeError, TypeError):
                continue
            if v is not None:
                v = np.array(v, dtype=np.float64)
                values[(sg_index, t)] = v if q is None else (v - q[1]) * q[0]
        runs.append(values)
    return runs


def step_bound(model: TFLiteModel, rewrite: Rewrite) -> float:
    """Steps of ``y`` the roundings a fold removes can move it, the worst folded chain:
    ``1 + Σ_k ½·S_k·max|Π_(j≥k) m_j| / S_y`` over the chain's quantized input and middle
    tensors ``k`` (``m_j`` the MUL constants from step ``k`` on), rounded up; at least
    :data:`INT8_STEPS`."""
    from edgebn.tflite.chains import constant_source
    from edgebn.tflite.fold import const_values

    worst = INT8_STEPS
    for c in rewrite.chains:
        if c.result != "folded":
            continue
        sg = model.subgraphs[c.subgraph]
        ops = [sg.operators[i] for i in c.ops]
        qy = _per_tensor(sg.tensors[ops[-1].outputs[0]])
        if qy is None:
            continue
        producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
        total, factor = 1.0, 1.0
        for op in reversed(ops):  # the factor after each step's input, from the end
            const = next((t for t in op.inputs if constant_source(model, sg, t, producer) is not None), None)
            if op.op == "MUL" and const is not None:
                factor = factor * float(np.abs(const_values(model, sg, const, producer)).max())
            data = next((t for t in op.inputs if t != const and t >= 0), None)
            q = _per_tensor(sg.tensors[data]) if data is not None else None
            if q is not None:
                total += 0.5 * q[0] * factor / qy[0]
        worst = max(worst, float(np.ceil(total)))
    return worst


def _per_tensor(tensor: Tensor) -> tuple[float, int] | None:
    """A quantized tensor's one scale and zero point, or None (float, or per-channel)."""
    q = tensor.quantization
    if tensor.dtype not in QUANTIZED or q is None or len(q.scale) != 1 or len(q.zero_point) > 1:
        return None
    return q.scale[0], (q.zero_point or (0,))[0]


@dataclass(frozen=True)
class Comparison:
    compared: int  # tensors compared, float and quantized
    worst: TensorDiff | None  # the float tensor with the largest relative difference
    worst_quantized: TensorDiff | None  # the quantized tensor most steps apart
    quantized: int = 0
    clipped: int = 0  # chain-output elements left out: the original clipped a removed tensor there
    clipped_runs: int = 0  # runs left out for the tensors after such a chain output


def _downstream(model: TFLiteModel, outputs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Every tensor computed from ``outputs`` (not themselves), in the same subgraph."""
    out: set[tuple[int, int]] = set()
    for sg in model.subgraphs:
        reached = {t for s, t in outputs if s == sg.index}
        for op in sg.operators:  # execution order: producers first
            if reached & set(op.inputs):
                reached |= {t for t in op.outputs if t >= 0}
        out |= {(sg.index, t) for t in reached} - outputs
    return out


def _clipped(original: TFLiteModel, rewrite: Rewrite, before: list[dict[tuple[int, int], np.ndarray]]
             ) -> tuple[dict[tuple[int, int], np.ndarray], np.ndarray]:
    """Where the original saturated a tensor a fold removes (the chain's input and middle): the
    elements of each chain output, stacked over runs; and the runs with any."""
    masks, runs = {}, np.zeros(len(before), bool)
    for c in rewrite.chains:
        sg = original.subgraphs[c.subgraph]
        ops = [sg.operators[i] for i in c.ops]
        y = (c.subgraph, ops[-1].outputs[0])
        if c.result != "folded" or y not in before[0]:
            continue
        mask = np.zeros(np.stack([r[y] for r in before]).shape, bool)
        x = next(i for i in ops[0].inputs if not sg.tensors[i].is_constant)
        for t in [x] + [op.outputs[0] for op in ops[:-1]]:
            q, key = _per_tensor(sg.tensors[t]), (c.subgraph, t)
            if q is None or key not in before[0]:
                continue
            info = np.iinfo(sg.tensors[t].dtype.lower())
            stored = np.round(np.stack([r[key] for r in before]) / q[0] + q[1])
            mask |= ((stored <= info.min) | (stored >= info.max)).reshape(mask.shape)
        if mask.any():
            masks[y] = mask
            runs |= mask.reshape(len(before), -1).any(axis=1)
    return masks, runs


def compare(original: TFLiteModel, folded: TFLiteModel, rewrite: Rewrite,
            feeds: list[list[np.ndarray]]) -> Comparison:
    """Every tensor both files compute, float ones relative to their largest value, quantized
    ones in steps of their scale; the worst of each."""
    # the original was preflighted; the rewrite of it is checked in a child process too
    before, after = _run_all(original, feeds, checked=False), _run_all(folded, feeds, checked=True)
    masks, runs = _clipped(original, rewrite, before)
    after_clipped = _downstream(original, set(masks)) if runs.any() else set()
    worst = worst_q = None
    compared = quantized = 0
    keys = sorted(set(before[0]) & set(after[0]) - rewrite.changed)
    floor = activation_scale(before, keys)  # for a tensor whose own largest value is 0
    for key in keys:
        a = np.stack([run[key] for run in before])
        b = np.stack([run[key] for run in after])
        if a.shape != b.shape:
            continue
        if key in masks:
            keep = ~masks[key]
        elif key in after_clipped:  # what the clipped elements fed: those runs left out
            keep = np.broadcast_to(~runs.reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)
        else:
            keep = np.ones(a.shape, bool)
        a, b = a[keep], b[keep]
        if a.size == 0 and keep.size:  # every run left out: this tensor is not compared
            continue
        compared += 1
        tensor = original.subgraphs[key[0]].tensors[key[1]]
        diff, scale = difference(a, b)
        scale = scale if scale > 0 else floor
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        q = _per_tensor(tensor)
        if q is not None:
            quantized += 1
            found = TensorDiff(key[0], key[1], tensor.name, diff, rel, diff / q[0])
            if worst_q is None or not found.max_steps <= worst_q.max_steps:
                worst_q = found
        elif worst is None or rel > worst.max_rel_diff:
            worst = TensorDiff(key[0], key[1], tensor.name, diff, rel)
    return Comparison(compared, worst, worst_q, quantized, int(sum(m.sum() for m in masks.values())),
                      int(runs.sum()) if after_clipped else 0)


def _chain_affine(model: TFLiteModel, ops: tuple[int, ...], sg: int) -> tuple[np.ndarray, np.ndarray]:
    """``s`` and ``t`` of a chain, re-derived here from its stored constants (not the fold's)."""
    s = t = np.zeros(0)
    graph = model.subgraphs[sg]
    for i, index in enumerate(ops):
        op = graph.operators[index]
        const = next(j for j in op.inputs if graph.tensors[j].is_constant)
        c = _real(model, graph.tensors[const]).reshape(-1)
        if i == 0:
            s, t = np.ones_like(c), np.zeros_like(c)
        s, t = {"SUB": (s, t - c), "ADD": (s, t + c), "MUL": (s * c, t * c)}[op.op]
    return s, t


def _real(model: TFLiteModel, tensor: Tensor) -> np.ndarray:
    """A stored constant's real values, float64: ``(q − zero point)·scale`` along its axis."""
    raw = model.constant(tensor)
    if raw is None:
        raise FoldError(f"{model.path}: tensor {tensor.index} is not a readable constant")
    q = tensor.quantization
    if raw.dtype.kind not in "iu" or q is None or not q.scale:
        return raw.astype(np.float64)
    shape = [1] * raw.ndim
    if len(q.scale) > 1:
        shape[q.quantized_dimension] = -1
    zero = np.array(q.zero_point or (0,), np.float64)
    zero = zero.reshape(shape) if zero.size > 1 else zero.reshape([1] * raw.ndim)
    step = np.array(q.scale, np.float64).reshape(shape)
    return (raw.astype(np.float64) - zero) * step


def check_parameters(original: TFLiteModel, folded: TFLiteModel, rewrite: Rewrite) -> ParameterCheck | None:
    """Each backward fold of an int8 chain: the folded kernel's weights and bias against
    ``s⊗W`` and ``s⊗b + t`` from the original's constants (the module docstring)."""
    kernels, w_worst, b_worst = 0, 0.0, 0.0
    for c in rewrite.chains:
        sg = original.subgraphs[c.subgraph]
        if c.result != "folded" or c.direction != "backward" or c.into is None or \
                sg.tensors[sg.operators[c.ops[0]].inputs[0]].dtype != "INT8":
            continue
        s, t = _chain_affine(original, c.ops, c.subgraph)
        w_old, b_old, _ = _kernel_parts(original, c.subgraph, sg.operators[c.into])
        fsg = folded.subgraphs[c.subgraph]
        makes = {o: op for op in fsg.operators for o in op.outputs}
        op = makes[sg.operators[c.ops[-1]].outputs[0]]
        op = makes[op.inputs[0]] if op.op == "QUANTIZE" else op  # a float kernel, then QUANTIZE
        w_new, b_new, b_step = _kernel_parts(folded, c.subgraph, op)
        axis = KERNELS[op.op][2]
        shape = [1] * w_old.ndim
        shape[axis] = -1
        want_w, want_b = w_old * s.reshape(shape), s * b_old + t
        # per output channel: |Δ| relative to that channel's largest weight
        others = tuple(i for i in range(w_old.ndim) if i != axis)
        top = np.abs(want_w).max(axis=others)
        err = np.abs(w_new - want_w).max(axis=others)
        w_worst = max(w_worst, float(np.max(np.where(top > 0, err / np.where(top > 0, top, 1), err))))
        if b_step is None:  # a float kernel's bias: relative to its largest value, as a weight
            w_worst = max(w_worst, float(np.abs(b_new - want_b).max() / max(np.abs(want_b).max(), 1e-30)))
        else:
            b_worst = max(b_worst, float((np.abs(b_new - want_b) / b_step).max()))
        kernels += 1
    return ParameterCheck(kernels, w_worst, b_worst) if kernels else None


def _kernel_parts(model: TFLiteModel, sg_index: int, op: Operator
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A kernel's real weights and bias (float64), and its int8 bias step ``S_in·S_w[o]``
    (None: a float kernel). The bias is read at that step, as the kernel reads it."""
    sg = model.subgraphs[sg_index]
    w_slot, b_slot, axis = KERNELS[op.op]
    producer = {o: p for p in sg.operators for o in p.outputs}
    w_tensor = sg.tensors[constant_source(model, sg, op.inputs[w_slot], producer)]
    w = _real(model, w_tensor)
    channels = w.shape[axis]
    b = op.inputs[b_slot] if len(op.inputs) > b_slot else -1
    if w_tensor.dtype != "INT8":
        bias = np.zeros(channels) if b < 0 else _real(model, sg.tensors[
            constant_source(model, sg, b, producer)]).reshape(-1)
        return w, bias, None
    data = sg.tensors[op.inputs[2 if op.op == "TRANSPOSE_CONV" else 0]]
    step = data.quantization.scale[0] * np.broadcast_to(
        np.array(w_tensor.quantization.scale, np.float64), (channels,))
    raw = np.zeros(channels) if b < 0 else model.constant(sg.tensors[b]).reshape(-1).astype(np.float64)
    return w, raw * step, step


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
        found = compare(original, folded, rewrite, feeds)
    except (ValueError, RuntimeError) as exc:
        raise FoldError(f"{original.path}: the folded file cannot run: {exc}; nothing written") from None
    result = TFLiteFoldResult(original.path, None, rewrite.chains, found.compared, SAMPLES, where,
                              limit, found.worst, data=rewrite.data, worst_quantized=found.worst_quantized,
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
                        f"{worst.tensor} ({worst.name or 'unnamed'}) by {worst.max_rel_diff:.3g} of its "
                        f"largest value, above the tolerance {result.tolerance:.3g}: nothing written")
    if worst_q is not None and not (worst_q.max_steps or 0.0) <= result.step_tolerance:
        raise FoldError(f"{result.model}: the folded file differs from the original at quantized "
                        f"tensor {worst_q.tensor} ({worst_q.name or 'unnamed'}) by {worst_q.max_steps:.3g} "
                        f"steps of its scale, above {result.step_tolerance:g}: nothing written")
    if check is not None and not check.max_weight_rel_diff <= weight_rounding:
        raise FoldError(f"{result.model}: a folded kernel's weights differ from s⊗W by "
                        f"{check.max_weight_rel_diff:.3g} of a channel's largest weight, above "
                        f"{weight_rounding:.3g}: nothing written")
    if check is not None and not check.max_bias_steps <= 0.5 + 1e-6:
        raise FoldError(f"{result.model}: a folded kernel's bias differs from s⊗b + t by "
                        f"{check.max_bias_steps:.3g} bias steps, above half a step: nothing written")


def fold_tflite_file(model: str | Path, out: str | Path, data: np.ndarray | None = None,
                     tolerance: float | None = None,
                     bench: BenchSettings | None = BenchSettings(min_time_s=BENCH_S, cost=False)
                     ) -> TFLiteFoldResult:
    """:func:`fold_tflite`, then the folded file written atomically to ``out``."""
    result = fold_tflite(model, data, tolerance, bench)
    write_atomic(out, result.data)
    return replace(result, out=str(out))
