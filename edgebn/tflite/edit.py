"""Edits of an unpacked model (the schema's ``ModelT``): new tensors and constants, an operator
made another builtin, and what a rewrite leaves unread pruned."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgebn.tflite.reader import schema
from edgebn.tflite.writer import Buffer, operator_code

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb


def new_tensor(usg: fb.SubGraphT, shape: list[int], dtype: str, name: str, buffer: int = 0,
               quantization: fb.QuantizationParametersT | None = None) -> int:
    """A tensor appended to ``usg`` (computed, or ``buffer``'s constant); its index."""
    t = schema().TensorT()
    t.shape, t.type = list(shape), getattr(schema().TensorType, dtype)
    t.name, t.buffer = name, buffer
    t.quantization = quantization
    usg.tensors.append(t)
    return len(usg.tensors) - 1


def new_const(m: fb.ModelT, usg: fb.SubGraphT, values: np.ndarray, name: str,
              dtype: str = "FLOAT32", quantization: fb.QuantizationParametersT | None = None
              ) -> int:
    """A constant tensor of ``values`` (stored little-endian) appended to ``usg``; its index."""
    little = np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<"))
    m.buffers.append(Buffer(little.tobytes()))
    return new_tensor(usg, list(values.shape), dtype, name, len(m.buffers) - 1, quantization)


def set_builtin(m: fb.ModelT, op: fb.OperatorT, builtin: str, options: object) -> None:
    """Make ``op`` the builtin operator ``builtin`` with ``options`` (its code added once)."""
    code = getattr(schema().BuiltinOperator, builtin)
    same = [i for i, c in enumerate(m.operatorCodes)
            if max(c.builtinCode, c.deprecatedBuiltinCode) == code]
    if not same:
        m.operatorCodes.append(operator_code(builtin))
        same = [len(m.operatorCodes) - 1]
    op.opcodeIndex = same[0]
    op.builtinOptionsType = (getattr(schema().BuiltinOptions, type(options).__name__[:-1])
                             if options else 0)
    op.builtinOptions = options


def prune(m: fb.ModelT) -> None:
    """Empty the constants no operator reads any more, and drop DEQUANTIZE ops nobody reads."""
    for usg in m.subgraphs:
        while dead := _dead_dequantize(m, usg):
            usg.operators = [op for op in usg.operators if all(op is not d for d in dead)]
        read = {int(t) for op in usg.operators for t in (*op.inputs, *op.outputs)} | \
            {int(t) for t in (*usg.inputs, *usg.outputs)}
        shared: dict[int, set[tuple[int, int]]] = {}
        for sg in m.subgraphs:
            for i, t in enumerate(sg.tensors):
                shared.setdefault(t.buffer, set()).add((id(sg), i))
        for i, t in enumerate(usg.tensors):
            alone = len(shared.get(t.buffer, ())) == 1  # no other tensor shares the buffer
            if i not in read and t.buffer and alone and not t.isVariable:
                m.buffers[t.buffer] = Buffer(b"")
                t.buffer = 0


def _dead_dequantize(m: fb.ModelT, usg: fb.SubGraphT) -> list[fb.OperatorT]:
    """The DEQUANTIZE operators of ``usg`` whose outputs nothing reads (nor the subgraph gives)."""
    read = {int(t) for op in usg.operators for t in op.inputs} | {int(t) for t in usg.outputs}
    dequantize = schema().BuiltinOperator.DEQUANTIZE
    return [op for op in usg.operators if op.opcodeIndex is not None
            and m.operatorCodes[op.opcodeIndex].builtinCode == dequantize
            and all(int(t) not in read for t in op.outputs)]
