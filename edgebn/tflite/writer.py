"""Rewrite a .tflite flatbuffer without TensorFlow: one operator on its own, BN pairs bypassed.

Both rewrites go through the schema's object API (``ModelT``) on a file that
:func:`edgebn.tflite.reader.parse_tflite` has already bounds-checked, and take every
constant from the parsed file's own bytes (so buffers stored after the flatbuffer,
in files over 2 GB, come along too). Constant data is written 16-byte aligned, as
the converter writes it.

* :func:`single_op` — the operator ``op`` of subgraph ``s`` as a model of its own: the
  same operator code and options, the same tensors (shapes, dtypes, quantization) and
  the same constant buffers; its non-constant inputs become the model's inputs, its
  outputs the model's outputs. An operator that calls other subgraphs (WHILE, IF,
  CALL_ONCE, StableHLO regions) cannot stand alone and is refused.
* :func:`bypass_pairs` — the same graph with residual BN pairs ``y = act(x * scale + shift)``
  (a MUL whose only consumer is an ADD or SUB) removed: every reader of ``y`` reads
  ``x`` instead. An activation the converter fused into the ADD (the ReLU after a
  pre-activation BN) stays: fused into the operator that makes ``x`` when ``x`` has no
  other reader and that operator can carry one, else as its own operator ``y = act(x)``,
  which is what the converter makes of the model with the BN layer deleted. Its outputs
  differ from the original's; it is a cost estimate.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.tflite.reader import FILE_IDENTIFIER, TFLiteModel, schema

BUFFER_ALIGN = 16  # bytes; the converter aligns constant data the same way


class _Buffer:
    """A BufferT stand-in whose data vector starts on a BUFFER_ALIGN boundary."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def Pack(self, builder) -> int:  # noqa: N802 - the object API's method name
        s = schema()
        data = None
        if self.raw:
            n = len(self.raw)
            builder.StartVector(1, n, BUFFER_ALIGN)
            builder.head -= n
            builder.Bytes[builder.head:builder.head + n] = self.raw
            builder.vectorNumElems = n
            data = builder.EndVector()
        s.BufferStart(builder)
        if data is not None:
            s.BufferAddData(builder, data)
        return s.BufferEnd(builder)


def _raw(model: TFLiteModel, buffer: int) -> bytes:
    start, length = model._buffers[buffer]
    return model.data[start:start + length]


def unpack(model: TFLiteModel) -> Any:
    """The model as the schema's mutable object tree (``ModelT``); constants stay in ``model``.

    The object API decodes every table, also those ``parse_tflite`` does not read
    (operator options, metadata): a forged offset there becomes an InvalidModelError.
    """
    try:
        return schema().ModelT.InitFromPackedBuf(bytearray(model.data), 0)
    except (struct.error, IndexError, ValueError, TypeError, OverflowError, UnicodeDecodeError,
            RecursionError, MemoryError, AttributeError) as exc:
        raise InvalidModelError(f"{model.path}: invalid TFLite model: {type(exc).__name__} "
                                f"while decoding its operators ({exc})") from None


def _pack(m: Any, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def calls_subgraphs(op: Any) -> bool:
    """Whether an unpacked operator runs other subgraphs (its options name subgraph indices)."""
    for opts in (getattr(op, "builtinOptions", None), getattr(op, "builtinOptions2", None)):
        if opts is not None and any("ubgraphInd" in name for name in vars(opts)):
            return True
    return False


@dataclass(frozen=True)
class OneOp:
    """A one-operator model and, in its input order, the original tensors it reads."""

    data: bytes
    inputs: tuple[int, ...]  # tensor indices in the original subgraph


def single_op(model: TFLiteModel, unpacked: Any, subgraph: int, index: int,
              frozen: dict[int, np.ndarray] | None = None) -> OneOp:
    """Operator ``index`` of ``subgraph`` as a model of its own (see the module docstring).

    ``frozen``: tensors to write as constants with these values, though the file computes
    them (the float32 weights a DEQUANTIZE makes of float16 ones once, at load).
    """
    frozen = frozen or {}
    s = schema()
    if not 0 <= subgraph < len(model.subgraphs) or \
            not 0 <= index < len(model.subgraphs[subgraph].operators):
        raise EdgebnError(f"{model.path}: no operator {index} in subgraph {subgraph}; it has "
                          f"{len(model.subgraphs)} subgraphs" + (
                              f", subgraph {subgraph} {len(model.subgraphs[subgraph].operators)} "
                              "operators" if 0 <= subgraph < len(model.subgraphs) else ""))
    sg, parsed = unpacked.subgraphs[subgraph], model.subgraphs[subgraph]
    op = sg.operators[index]
    if calls_subgraphs(op):
        raise EdgebnError(f"{parsed.operators[index].op} runs other subgraphs; it cannot be "
                          "timed on its own")
    intermediates = [int(t) for t in (op.intermediates if op.intermediates is not None else [])]
    used = [int(t) for t in (*op.inputs, *op.outputs, *intermediates) if t >= 0]
    order = list(dict.fromkeys(used))
    remap = {old: new for new, old in enumerate(order)}
    buffers: list[Any] = [_Buffer(b"")]
    tensors = []
    for old in order:
        t = copy.copy(sg.tensors[old])
        t.buffer = 0
        if parsed.tensors[old].is_constant or old in frozen:
            raw = (np.ascontiguousarray(frozen[old]).tobytes() if old in frozen
                   else _raw(model, parsed.tensors[old].buffer))
            buffers.append(_Buffer(raw))
            t.buffer = len(buffers) - 1
        tensors.append(t)
    one = copy.copy(op)
    one.opcodeIndex = 0
    one.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
    one.outputs = [remap[int(t)] if t >= 0 else -1 for t in op.outputs]
    one.intermediates = [remap[t] for t in intermediates] or None
    inputs = tuple(t for t in dict.fromkeys(int(i) for i in op.inputs)
                   if t >= 0 and not parsed.tensors[t].is_constant and t not in frozen
                   and not sg.tensors[t].isVariable)
    new_sg = s.SubGraphT()
    new_sg.tensors, new_sg.operators = tensors, [one]
    new_sg.inputs = [remap[t] for t in inputs]
    new_sg.outputs = [remap[int(t)] for t in op.outputs if t >= 0]
    new_sg.name = f"op{index}"
    m = s.ModelT()
    m.version, m.operatorCodes = unpacked.version or 3, [unpacked.operatorCodes[op.opcodeIndex]]
    m.subgraphs, m.buffers = [new_sg], buffers
    return OneOp(_pack(m, sum(len(b.raw) for b in buffers)), inputs)


def _resolve(target: dict[int, int], t: int) -> int:
    """Follow bypassed outputs back to the tensor that now stands for them (chains of pairs)."""
    seen = set()
    while t in target and t not in seen:
        seen.add(t)
        t = target[t]
    return t


def bypass_pairs(model: TFLiteModel, pairs: Iterable[tuple[int, int, int]]) -> bytes:
    """``model`` with each (subgraph, MUL index, ADD/SUB index) pair removed and short-circuited."""
    m = unpack(model)
    by_subgraph: dict[int, list[tuple[int, int]]] = {}
    for sg_index, mul, add in pairs:
        by_subgraph.setdefault(sg_index, []).append((mul, add))
    for sg_index, sg_pairs in by_subgraph.items():
        _bypass_in(model, m, sg_index, sg_pairs)
    m.buffers = [_Buffer(_raw(model, i)) for i in range(len(model._buffers))]
    return _pack(m, model.size_bytes)


# the activation a converter fuses into an ADD -> the builtin operator that computes it alone
_ACTIVATION_OPS = {"RELU": "RELU", "RELU_N1_TO_1": "RELU_N1_TO_1", "RELU6": "RELU6",
                   "TANH": "TANH"}
# operators whose kernels apply a fused activation (where the converter puts one)
_FUSIBLE = ("ADD", "SUB", "MUL", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
            "MAX_POOL_2D", "AVERAGE_POOL_2D")


def _fused_activation(op: Any) -> str | None:
    """The name of the activation fused into an unpacked operator, or None."""
    code = getattr(op.builtinOptions, "fusedActivationFunction", 0)
    if not code:
        return None
    names = {v: k for k, v in vars(schema().ActivationFunctionType).items() if not k.startswith("_")}
    name = names.get(code, str(code))
    if name not in _ACTIVATION_OPS:
        raise EdgebnError(f"an ADD with fused activation {name} cannot be kept on its own")
    return name


def _as_activation(m: Any, op: Any, name: str, x: int) -> None:
    """Turn the unpacked ``op`` into the standalone activation ``name`` of tensor ``x``."""
    s = schema()
    builtin = getattr(s.BuiltinOperator, _ACTIVATION_OPS[name])
    codes = [i for i, c in enumerate(m.operatorCodes)
             if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin]
    if not codes:
        code = s.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
        m.operatorCodes.append(code)
        codes = [len(m.operatorCodes) - 1]
    op.opcodeIndex, op.inputs = codes[0], [x]
    op.builtinOptionsType, op.builtinOptions = 0, None


def _pair_input(model: TFLiteModel, sg_index: int, mul: int, add: int) -> int:
    """The data tensor ``x`` of the pair ``y = x * scale + shift``, after checking its shape."""
    parsed = model.subgraphs[sg_index]
    mul_op, add_op = parsed.operators[mul], parsed.operators[add]
    if mul_op.op != "MUL" or add_op.op not in ("ADD", "SUB") or \
            mul_op.outputs[0] not in add_op.inputs:
        raise EdgebnError(f"{model.path}: subgraph {sg_index} ops {mul}, {add} are not a "
                          f"MUL feeding an ADD. Received: {mul_op.op}, {add_op.op}")
    data = [t for t in mul_op.inputs if t >= 0 and not parsed.tensors[t].is_constant]
    if len(data) != 1:
        raise EdgebnError(f"{model.path}: subgraph {sg_index} op {mul} has no single "
                          "data input to pass through")
    return data[0]


def _fusible_producer(model: TFLiteModel, sg: Any, sg_index: int, x: int, busy: set[int]
                      ) -> Any | None:
    """The unpacked op that makes ``x``, if the activation can be fused into it as the
    converter would: ``x`` read by the pair alone, an op with an empty activation slot."""
    parsed = model.subgraphs[sg_index]
    readers = [op.index for op in parsed.operators if x in op.inputs]
    makers = [op.index for op in parsed.operators if x in op.outputs]
    if len(readers) != 1 or len(makers) != 1 or makers[0] in busy or x in parsed.outputs:
        return None
    if parsed.operators[makers[0]].op not in _FUSIBLE:
        return None
    producer = sg.operators[makers[0]]
    if getattr(producer.builtinOptions, "fusedActivationFunction", None) != 0:
        return None
    return producer


def _bypass_in(model: TFLiteModel, m: Any, sg_index: int, pairs: list[tuple[int, int]]) -> None:
    sg = m.subgraphs[sg_index]
    target: dict[int, int] = {}  # the pair's output -> the MUL's data input
    drop: set[int] = set()
    busy = {i for pair in pairs for i in pair}
    for mul, add in pairs:
        x = _pair_input(model, sg_index, mul, add)
        activation = _fused_activation(sg.operators[add])
        producer = None if activation is None else _fusible_producer(model, sg, sg_index, x, busy)
        if activation is None or producer is not None:
            if producer is not None:  # y = act(x) with act fused where x is made
                producer.builtinOptions.fusedActivationFunction = \
                    sg.operators[add].builtinOptions.fusedActivationFunction
            target[model.subgraphs[sg_index].operators[add].outputs[0]] = x
            drop |= {mul, add}
        else:  # y = act(x): the MUL goes, the ADD becomes the activation alone
            _as_activation(m, sg.operators[add], activation, x)
            drop.add(mul)
    for op in sg.operators:
        op.inputs = np.array([_resolve(target, int(t)) for t in op.inputs], dtype=np.int32)
    sg.outputs = np.array([_resolve(target, int(t)) for t in sg.outputs], dtype=np.int32)
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in drop]
    for sig in m.signatureDefs or []:
        if sig.subgraphIndex == sg_index:
            for tensor_map in sig.outputs or []:
                tensor_map.tensorIndex = _resolve(target, tensor_map.tensorIndex)


def empty_model() -> bytes:
    """One ADD of two one-element float32 tensors: what an ``invoke()`` costs with no work."""
    s = schema()
    tensors = []
    for i in range(3):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1], s.TensorType.FLOAT32, 0, f"t{i}"
        tensors.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = tensors, [op], [0, 1], [2]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [sg], [_Buffer(b"")]
    return _pack(m, 0)


def strip_names(data: bytes) -> bytes:
    """The same model with every tensor and subgraph name and signature removed.

    Re-packs through the schema's object API. Useful to check that analysis does
    not lean on names, and to ship a model that leaks no layer names.
    """
    from edgebn.tflite.reader import parse_tflite

    parse_tflite(data)  # refuse invalid input before the unchecked object API sees it
    model = schema().ModelT.InitFromPackedBuf(bytearray(data), 0)
    for sg in model.subgraphs or []:
        sg.name = None
        for t in sg.tensors or []:
            t.name = None
    model.signatureDefs = None
    model.metadata = None
    model.metadataBuffer = None
    return _pack(model, len(data))
