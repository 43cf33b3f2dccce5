"""The int8 backward folds checked on their parameters, not only their outputs.

The int8 outputs cannot show a wrong fold of a size below their step (a scale off by 1e-3
moves ``y`` by a fraction of a step), so each backward fold of an int8 chain is also checked
on its **parameters**, from the original file's constants in float64 and a re-derivation of
``s`` and ``t`` of its own: the folded kernel's dequantized weights against ``s⊗W`` (to
float32 rounding of the new scale, :data:`SCALE_ROUNDING`), its bias, read at the kernel's
``S_in·S_w'[o]``, against ``s⊗b + t`` (within half a bias step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import FoldError
from edgebn.fold.tflite.proof import SCALE_ROUNDING
from edgebn.fold.tflite.rewrite import KERNELS, Rewrite
from edgebn.tflite.chains import constant_source
from edgebn.tflite.reader import Operator, Tensor, TFLiteModel


@dataclass(frozen=True)
class ParameterCheck:
    """The folded int8 kernels' weights and bias against ``s⊗W`` and ``s⊗b + t`` (float64)."""

    kernels: int  # backward folds of int8 chains checked
    # |folded − s⊗W| relative to the channel's largest (a float bias too)
    max_weight_rel_diff: float
    max_bias_steps: float  # an int32 bias: |folded − (s⊗b + t)| in steps of S_in·S_w'[o]

    def to_json(self) -> JsonDict:
        return {"kernels": self.kernels, "max_weight_rel_diff": self.max_weight_rel_diff,
                "max_bias_steps": self.max_bias_steps, "weight_tolerance": SCALE_ROUNDING,
                "bias_tolerance_steps": 0.5}


def _chain_affine(model: TFLiteModel, ops: tuple[int, ...], sg: int) -> tuple[np.ndarray,
                                                                              np.ndarray]:
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


def check_parameters(original: TFLiteModel, folded: TFLiteModel,
                     rewrite: Rewrite) -> ParameterCheck | None:
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
        w_worst = max(w_worst, float(np.max(np.where(top > 0, err / np.where(top > 0, top, 1),
                                                     err))))
        if b_step is None:  # a float kernel's bias: relative to its largest value, as a weight
            w_worst = max(w_worst, float(np.abs(b_new - want_b).max() / max(np.abs(want_b).max(),
                                                                            1e-30)))
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
    raw = np.zeros(channels) if b < 0 else \
        model.constant(sg.tensors[b]).reshape(-1).astype(np.float64)
    return w, raw * step, step
