"""What a model costs in multiply-accumulates, counted from the flatbuffer.

MACs are counted from the flatbuffer's tensor shapes, no TensorFlow. The output
shape already carries stride, padding and dilation, so each count is

* CONV_2D            N·Ho·Wo·Co · Kh·Kw·Ci   (inputs: input, filter [Co, Kh, Kw, Ci], bias)
* DEPTHWISE_CONV_2D  N·Ho·Wo·Co · Kh·Kw      (inputs: input, filter [1, Kh, Kw, Co], bias)
* FULLY_CONNECTED    output elements · K     (inputs: input, weights [units, K], bias)
* TRANSPOSE_CONV     N·Hi·Wi·Ci · Kh·Kw·Co   (inputs: output_shape, weights [Co, Kh, Kw, Ci],
                                              input, bias)
* CONV_3D            output elements · Kd·Kh·Kw·Ci   (filter [Kd, Kh, Kw, Ci, Co])
* BATCH_MATMUL       output elements · K     (K: the side of x that is not the output's rows)

and every other operator 0 (elementwise work is not multiply-accumulate).
Dynamic dimensions (-1) count as 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from math import prod

from edgebn.documents import JsonDict
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel


@dataclass(frozen=True)
class OpCost:
    subgraph: int
    index: int
    op: str
    macs: int
    weight_bytes: int  # bytes of the operator's constant inputs (filter, bias)

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class ModelCost:
    ops: tuple[OpCost, ...]
    macs: int  # per inference at the file's input shape
    weight_bytes: int  # constant buffers of the whole model, each counted once

    def to_json(self) -> JsonDict:
        return {"macs": self.macs, "weight_bytes": self.weight_bytes,
                "ops": [o.to_json() for o in self.ops if o.macs]}


def _dims(sg: Subgraph, ref: int) -> tuple[int, ...] | None:
    """The tensor's shape with dynamic dims as 1, or None when the input is omitted (-1)."""
    if ref < 0:
        return None
    return tuple(max(d, 1) for d in sg.tensors[ref].shape)


def _arg(sg: Subgraph, op: Operator, i: int) -> tuple[int, ...] | None:
    return _dims(sg, op.inputs[i]) if i < len(op.inputs) else None


def _out_elements(sg: Subgraph, op: Operator) -> int:
    out = _dims(sg, op.outputs[0]) if op.outputs else None
    return prod(out) if out else 0


def _matmul_k(sg: Subgraph, op: Operator) -> int:
    """K of x·y from x [..., M, K] (or [..., K, M] when adjoint) and the output [..., M, N]."""
    x, out = _arg(sg, op, 0), _dims(sg, op.outputs[0]) if op.outputs else None
    if not x or not out or len(x) < 2 or len(out) < 2:
        return 0
    return x[-1] if x[-2] == out[-2] else x[-2]


def _op_macs(sg: Subgraph, op: Operator) -> int:
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D"):
        f = _arg(sg, op, 1)
        if not f:
            return 0
        # conv: [Co, Kh, Kw, Ci] -> Kh·Kw·Ci; depthwise: [1, Kh, Kw, Co] -> Kh·Kw;
        # conv3d: [Kd, Kh, Kw, Ci, Co] -> Kd·Kh·Kw·Ci
        per_output = {"CONV_2D": prod(f[1:]), "DEPTHWISE_CONV_2D": prod(f[1:-1]),
                      "CONV_3D": prod(f[:-1])}[op.op]
        return _out_elements(sg, op) * per_output
    if op.op == "FULLY_CONNECTED":
        w = _arg(sg, op, 1)
        return _out_elements(sg, op) * w[1] if w and len(w) == 2 else 0
    if op.op == "TRANSPOSE_CONV":
        w, x = _arg(sg, op, 1), _arg(sg, op, 2)
        return prod(x) * prod(w[1:3]) * w[0] if w and x and len(w) == 4 else 0
    if op.op == "BATCH_MATMUL":
        return _out_elements(sg, op) * _matmul_k(sg, op)
    return 0


def model_cost(model: TFLiteModel) -> ModelCost:
    """Every operator's MACs and constant bytes, and the model's totals."""
    ops = []
    for sg in model.subgraphs:
        for op in sg.operators:
            weights = sum(sg.tensors[i].constant_bytes for i in set(op.inputs) if i >= 0)
            ops.append(OpCost(sg.index, op.index, op.op, _op_macs(sg, op), weights))
    return ModelCost(tuple(ops), sum(o.macs for o in ops), model.weight_bytes)
