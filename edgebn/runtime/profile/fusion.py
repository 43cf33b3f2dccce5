"""What XNNPACK fuses across TFLite operators, so that a profile times them as they run.

XNNPACK's subgraph optimizer makes a constant, zero-valued PAD of the spatial axes the
padding of the CONV_2D or DEPTHWISE_CONV_2D that alone reads it: inside the model the PAD
costs nothing, timed alone it copies its whole padded output (MediaPipe's detectors pad
before nearly every strided convolution). Measured: each such pair, as a two-operator model,
runs as fast as the convolution alone.
"""

from __future__ import annotations

from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel

PADS = ("PAD", "PADV2")
PAD_CONSUMERS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def fused_pads(model: TFLiteModel, sg_index: int) -> dict[int, int]:
    """PAD operator -> the CONV_2D / DEPTHWISE_CONV_2D XNNPACK fuses it into: a constant,
    non-negative padding of the spatial axes only, read by that convolution alone as its data."""
    sg = model.subgraphs[sg_index]
    readers: dict[int, list[Operator]] = {}
    for op in sg.operators:
        for t in set(op.inputs):
            readers.setdefault(t, []).append(op)
    fused = {}
    for op in sg.operators:
        if op.op not in PADS or len(op.inputs) < 2 or len(op.outputs) != 1 or min(op.inputs) < 0:
            continue
        out = op.outputs[0]
        users = readers.get(out, [])
        if len(users) != 1 or users[0].op not in PAD_CONSUMERS or users[0].inputs[0] != out \
                or out in sg.outputs or users[0].index <= op.index:
            continue
        paddings = model.constant(sg.tensors[op.inputs[1]])
        if paddings is None or paddings.shape != (4, 2) or (paddings < 0).any() \
                or paddings[[0, 3]].any():
            continue
        if op.op == "PADV2" and (len(op.inputs) < 3 or not _zero_pad_value(model, sg, op)):
            continue
        fused[op.index] = users[0].index
    return fused


def _zero_pad_value(model: TFLiteModel, sg: Subgraph, op: Operator) -> bool:
    value = model.constant(sg.tensors[op.inputs[2]]) if op.inputs[2] >= 0 else None
    q = sg.tensors[op.inputs[2]].quantization if op.inputs[2] >= 0 else None
    zero = q.zero_point[0] if q is not None and q.zero_point else 0
    return value is not None and value.size == 1 and float(value.reshape(-1)[0]) == float(zero)
