"""The fold's proof: the original and the folded file run on the same inputs, every tensor compared.

The original and the
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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.fold.tflite.rewrite import Rewrite, const_values
from edgebn.fold.tflite.tensor_diff import activation_scale, difference
from edgebn.runtime.backends import load_interpreter
from edgebn.tflite.chains import constant_source
from edgebn.tflite.quantization import make_inputs
from edgebn.tflite.reader import Tensor, TFLiteModel

# |Δ| per tensor beyond which a fold is refused, relative to its max |value|
DEFAULT_TOLERANCE = 1e-5
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

    def to_json(self) -> JsonDict:
        doc = {"subgraph": self.subgraph, "tensor": self.tensor, "name": self.name,
               "max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff}
        return doc | ({} if self.max_steps is None else {"max_steps": self.max_steps})


def _run_all(model: TFLiteModel, feeds: list[list[np.ndarray]], checked: bool
             ) -> list[dict[tuple[int, int], np.ndarray]]:
    """Every float tensor, and every quantized one dequantized, after each run, by (subgraph,
    index)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging"
        interp, _ = load_interpreter(model, xnnpack=False, preserve_all_tensors=True,
                                     checked=checked)
    made = {(sg.index, t) for sg in model.subgraphs for op in sg.operators for t in op.outputs
            if t >= 0}
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
            const = next((t for t in op.inputs
                          if constant_source(model, sg, t, producer) is not None), None)
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


def _clipped(original: TFLiteModel, rewrite: Rewrite,
             before: list[dict[tuple[int, int], np.ndarray]]
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
    return Comparison(compared, worst, worst_q, quantized,
                      int(sum(m.sum() for m in masks.values())),
                      int(runs.sum()) if after_clipped else 0)


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
        raise EdgebnError(f"{model.path}: the samples feed one input; the model takes "
                          f"{len(details)}", option="npz")
    per_input = [make_inputs(d["shape"], d["dtype"], d["quantization"], samples,
                             data if data is not None else None, seed=i)
                 for i, d in enumerate(details)]
    where = f"{samples} samples of --data" if data is not None else f"{samples} random inputs"
    return [list(feed) for feed in zip(*per_input, strict=True)], where
