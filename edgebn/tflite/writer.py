"""The one .tflite flatbuffer writer: models built from scratch, operators alone, BN pairs bypassed.

Every flatbuffer edgebn writes is packed here (:func:`pack`), through the schema's object
API (``ModelT``), without TensorFlow. Constant data is written 16-byte aligned, as the
converter writes it (:class:`Buffer`). A rewrite starts from a file that
:func:`edgebn.tflite.reader.parse_tflite` has already bounds-checked and takes every
constant from the parsed file's own bytes (:func:`buffers_of`: buffers stored after the
flatbuffer, in files over 2 GB, come along too); a model built from scratch (the ceiling
probe, the empty ``invoke()``) is a :class:`Graph` of tensors, constants and operators.

* :func:`single_op` — the operator ``op`` of subgraph ``s`` as a model of its own: the
  same operator code and options, the same tensors (shapes, dtypes, quantization) and
  the same constant buffers; its non-constant inputs become the model's inputs, its
  outputs the model's outputs. An operator that calls other subgraphs (WHILE, IF,
  CALL_ONCE, StableHLO regions) cannot stand alone and is refused.
* :func:`bypass_chains` — the same graph with residual BN chains ``y = act(x · s + t)`` (a
  MUL+ADD pair, a SUB → MUL → MUL → ADD chain, each operator read only by the next)
  removed: every reader of ``y`` reads ``x`` instead. An activation the converter fused
  into the last ADD (the ReLU after a pre-activation BN) stays: fused into the operator
  that makes ``x`` when ``x`` has no other reader and that operator can carry one, else as
  its own operator ``y = act(x)``,
  which is what the converter makes of the model with the BN layer deleted. Its outputs
  differ from the original's; it is a cost estimate.
* :func:`empty_model` (what an empty ``invoke()`` costs) and :func:`strip_names`.
"""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import flatbuffers
import numpy as np

from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.tflite.reader import (
    FILE_IDENTIFIER,
    Subgraph,
    Tensor,
    TFLiteModel,
    parse_tflite,
    schema,
)

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

BUFFER_ALIGN = 16  # bytes; the converter aligns constant data the same way


class Buffer:
    """A BufferT stand-in whose data vector starts on a BUFFER_ALIGN boundary."""

    def __init__(self, raw: bytes = b"") -> None:
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


def buffers_of(model: TFLiteModel) -> list[Buffer]:
    """Every buffer of a parsed model with its bytes, to write into a rewrite of it."""
    return [Buffer(model.buffer_bytes(i)) for i in range(model.buffer_count)]


def pack(m: fb.ModelT) -> bytes:
    """A ``ModelT`` as .tflite bytes (file identifier TFL3); its buffers are :class:`Buffer`."""
    size = sum(len(getattr(b, "raw", b"")) for b in m.buffers or [])
    builder = flatbuffers.Builder(size + 4096)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def operator_code(builtin: str) -> fb.OperatorCodeT:
    """The ``OperatorCodeT`` of builtin operator ``builtin`` (a name: ``"CONV_2D"``), version 1."""
    code = schema().OperatorCodeT()
    code.builtinCode = getattr(schema().BuiltinOperator, builtin)
    code.deprecatedBuiltinCode, code.version = min(code.builtinCode, 127), 1
    return code


class Graph:
    """A one-subgraph model under construction: tensors, their constants, operators.

    Buffer 0 is the empty one, which every tensor the runtime computes points at.
    """

    def __init__(self) -> None:
        self.buffers: list[Buffer] = [Buffer()]
        self.tensors: list[fb.TensorT] = []
        self.operators: list[fb.OperatorT] = []
        self.codes: list[fb.OperatorCodeT] = []

    def add_buffer(self, raw: bytes) -> int:
        self.buffers.append(Buffer(raw))
        return len(self.buffers) - 1

    def add_tensor(self, tensor: fb.TensorT) -> int:
        """Add a ``TensorT`` as it is (its ``buffer`` an index of this graph's); its index."""
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def tensor(self, shape: Sequence[int], dtype: str = "FLOAT32",
               data: bytes | np.ndarray | None = None,
               name: str | None = None) -> int:
        """A new tensor; with ``data`` (bytes, or an array already of the stored dtype and
        byte order) a constant. Its index."""
        t = schema().TensorT()
        t.shape, t.type, t.name = list(shape), getattr(schema().TensorType, dtype), name
        t.buffer = 0 if data is None else self.add_buffer(
            data if isinstance(data, bytes) else np.ascontiguousarray(data).tobytes())
        return self.add_tensor(t)

    def add_operator(self, op: fb.OperatorT, code: fb.OperatorCodeT) -> int:
        """Add an ``OperatorT`` as it is, but for its operator code (``OperatorCodeT``)."""
        same = [i for i, c in enumerate(self.codes) if c is code]
        if not same:
            self.codes.append(code)
        op.opcodeIndex = same[0] if same else len(self.codes) - 1
        self.operators.append(op)
        return len(self.operators) - 1

    def operator(self, builtin: str, inputs: Sequence[int], outputs: Sequence[int],
                 options: object | None = None) -> int:
        """A builtin operator (``"ADD"``) with its options (an ``AddOptionsT``, or None)."""
        s = schema()
        op = s.OperatorT()
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            op.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            op.builtinOptions = options
        known = [c for c in self.codes if c.builtinCode == getattr(s.BuiltinOperator, builtin)]
        return self.add_operator(op, known[0] if known else operator_code(builtin))

    def pack(self, inputs: Sequence[int], outputs: Sequence[int], name: str | None = None,
             version: int = 3) -> bytes:
        """The model: this graph as its one subgraph, reading ``inputs``, making ``outputs``."""
        s = schema()
        sg = s.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.operators, name
        sg.inputs, sg.outputs = list(inputs), list(outputs)
        m = s.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = version, self.codes, [sg], self.buffers
        return pack(m)


def unpack(model: TFLiteModel) -> fb.ModelT:
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


def calls_subgraphs(op: fb.OperatorT) -> bool:
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


def single_op(model: TFLiteModel, unpacked: fb.ModelT, subgraph: int, index: int,
              frozen: dict[int, np.ndarray] | None = None) -> OneOp:
    """Operator ``index`` of ``subgraph`` as a model of its own (see the module docstring).

    ``frozen``: tensors to write as constants with these values, though the file computes
    them (the float32 weights a DEQUANTIZE makes of float16 ones once, at load).
    """
    return op_group(model, unpacked, subgraph, (index,), frozen)


def op_group(model: TFLiteModel, unpacked: fb.ModelT, subgraph: int, indices: Sequence[int],
             frozen: dict[int, np.ndarray] | None = None) -> OneOp:
    """Operators ``indices`` of ``subgraph`` (in execution order) as a model of their own: what
    :func:`single_op` makes of one operator, for a run of them (a PAD and the convolution that
    XNNPACK fuses it into). The group's inputs are what it reads and does not make; its
    outputs what it makes and does not read itself."""
    frozen = frozen or {}
    _check_group(model, subgraph, indices)
    sg, parsed = unpacked.subgraphs[subgraph], model.subgraphs[subgraph]
    ops = [sg.operators[i] for i in indices]
    for i, op in zip(indices, ops, strict=True):
        if calls_subgraphs(op):
            raise EdgebnError(f"{parsed.operators[i].op} runs other subgraphs; it cannot be "
                              "timed on its own")
    intermediates = [_intermediates(op) for op in ops]
    order = list(dict.fromkeys(t for op, mid in zip(ops, intermediates, strict=True)
                               for t in (*op.inputs, *op.outputs, *mid) if t >= 0))
    order = [int(t) for t in order]
    remap = {old: new for new, old in enumerate(order)}
    graph = Graph()
    for old in order:
        graph.add_tensor(_group_tensor(model, graph, sg.tensors[old], parsed.tensors[old],
                                       frozen.get(old)))
    for op, mid in zip(ops, intermediates, strict=True):
        graph.add_operator(_remapped(op, mid, remap), unpacked.operatorCodes[op.opcodeIndex])
    inputs, outputs = _group_ends(ops, sg, parsed, frozen)
    data = graph.pack([remap[t] for t in inputs], [remap[t] for t in outputs],
                      name=f"op{indices[0]}" if len(indices) == 1 else
                      f"ops{indices[0]}-{indices[-1]}", version=unpacked.version or 3)
    return OneOp(data, inputs)


def _check_group(model: TFLiteModel, subgraph: int, indices: Sequence[int]) -> None:
    """An EdgebnError unless every one of ``indices`` is an operator of ``subgraph``."""
    if not 0 <= subgraph < len(model.subgraphs):
        raise EdgebnError(f"{model.path}: no operator {indices[0] if indices else None} in "
                          f"subgraph {subgraph}; it has {len(model.subgraphs)} subgraphs")
    count = len(model.subgraphs[subgraph].operators)
    missing = [i for i in indices if not 0 <= i < count]
    if missing or not indices:
        raise EdgebnError(f"{model.path}: no operator {missing[0] if missing else None} in "
                          f"subgraph {subgraph}; it has {len(model.subgraphs)} subgraphs, "
                          f"subgraph {subgraph} {count} operators")


def _intermediates(op: fb.OperatorT) -> list[int]:
    return [int(t) for t in (op.intermediates if op.intermediates is not None else [])]


def _group_tensor(model: TFLiteModel, graph: Graph, tensor: fb.TensorT, parsed: Tensor,
                  frozen: np.ndarray | None) -> fb.TensorT:
    """A copy of ``tensor`` for the group's model: its constant (or ``frozen`` values) in a
    buffer of ``graph``, else buffer 0 (computed)."""
    t = copy.copy(tensor)
    t.buffer = 0
    if frozen is not None:
        t.buffer = graph.add_buffer(np.ascontiguousarray(frozen).tobytes())
    elif parsed.is_constant:
        t.buffer = graph.add_buffer(model.buffer_bytes(parsed.buffer))
    return t


def _remapped(op: fb.OperatorT, intermediates: list[int], remap: dict[int, int]) -> fb.OperatorT:
    """A copy of ``op`` reading and writing the group's tensor indices."""
    one = copy.copy(op)
    one.inputs = [remap[int(t)] if t >= 0 else -1 for t in op.inputs]
    one.outputs = [remap[int(t)] if t >= 0 else -1 for t in op.outputs]
    one.intermediates = [remap[t] for t in intermediates] or None
    return one


def _group_ends(ops: list[fb.OperatorT], sg: fb.SubGraphT, parsed: Subgraph,
                frozen: dict[int, np.ndarray]) -> tuple[tuple[int, ...], list[int]]:
    """The group's inputs and outputs, as the original's tensor indices."""
    made = {int(t) for op in ops for t in op.outputs if t >= 0}
    read = {int(t) for op in ops for t in op.inputs if t >= 0}
    return (tuple(t for t in _in_order(ops, "inputs") if t not in made
                  and _fed(t, sg, parsed, frozen)),
            [t for t in _in_order(ops, "outputs") if t not in read]
            or [int(t) for t in ops[-1].outputs if t >= 0])


def _in_order(ops: list[fb.OperatorT], side: str) -> list[int]:
    """Every tensor the operators read (``side="inputs"``) or write, first use first."""
    return [t for t in dict.fromkeys(int(i) for op in ops for i in getattr(op, side)) if t >= 0]


def _fed(t: int, sg: fb.SubGraphT, parsed: Subgraph, frozen: dict[int, np.ndarray]) -> bool:
    """A tensor the group's model takes as an input: not a constant, frozen or a variable."""
    return not parsed.tensors[t].is_constant and t not in frozen and not sg.tensors[t].isVariable


def _resolve(target: dict[int, int], t: int) -> int:
    """Follow bypassed outputs back to the tensor that now stands for them (chains of pairs)."""
    seen = set()
    while t in target and t not in seen:
        seen.add(t)
        t = target[t]
    return t


def bypass_chains(model: TFLiteModel, chains: Iterable[Sequence[int]]) -> bytes:
    """``model`` with each residual BN chain ``(subgraph, op, op, ...)`` (a MUL+ADD pair, a
    SUB → MUL → MUL → ADD chain) removed and short-circuited."""
    m = unpack(model)
    by_subgraph: dict[int, list[tuple[int, ...]]] = {}
    for sg_index, *ops in chains:
        by_subgraph.setdefault(sg_index, []).append(tuple(ops))
    for sg_index, sg_chains in by_subgraph.items():
        _bypass_in(model, m, sg_index, sg_chains)
    m.buffers = buffers_of(model)
    return pack(m)


# the activation a converter fuses into an ADD -> the builtin operator that computes it alone
_ACTIVATION_OPS = {"RELU": "RELU", "RELU_N1_TO_1": "RELU_N1_TO_1", "RELU6": "RELU6",
                   "TANH": "TANH"}
# operators whose kernels apply a fused activation (where the converter puts one)
_FUSIBLE = ("ADD", "SUB", "MUL", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
            "MAX_POOL_2D", "AVERAGE_POOL_2D")


def _fused_activation(op: fb.OperatorT) -> str | None:
    """The name of the activation fused into an unpacked operator, or None."""
    code = getattr(op.builtinOptions, "fusedActivationFunction", 0)
    if not code:
        return None
    names = {v: k for k, v in vars(schema().ActivationFunctionType).items()
             if not k.startswith("_")}
    name = names.get(code, str(code))
    if name not in _ACTIVATION_OPS:
        raise EdgebnError(f"an ADD with fused activation {name} cannot be kept on its own")
    return name


def _as_activation(m: fb.ModelT, op: fb.OperatorT, name: str, x: int) -> None:
    """Turn the unpacked ``op`` into the standalone activation ``name`` of tensor ``x``."""
    s = schema()
    builtin = getattr(s.BuiltinOperator, _ACTIVATION_OPS[name])
    codes = [i for i, c in enumerate(m.operatorCodes)
             if max(c.builtinCode, c.deprecatedBuiltinCode) == builtin]
    if not codes:
        m.operatorCodes.append(operator_code(_ACTIVATION_OPS[name]))
        codes = [len(m.operatorCodes) - 1]
    op.opcodeIndex, op.inputs = codes[0], [x]
    op.builtinOptionsType, op.builtinOptions = 0, None


def _chain_input(model: TFLiteModel, sg_index: int, ops: tuple[int, ...]) -> int:
    """The data tensor ``x`` of the chain ``y = act(x · s + t)``, after checking its links."""
    parsed = model.subgraphs[sg_index]
    chain = [parsed.operators[i] for i in ops if 0 <= i < len(parsed.operators)]
    linked = len(chain) == len(ops) >= 2 and all(
        op.op in ("MUL", "ADD", "SUB") and len(op.outputs) == 1 for op in chain) and all(
        a.outputs[0] in b.inputs for a, b in zip(chain, chain[1:], strict=False))
    if not linked:
        raise EdgebnError(f"{model.path}: subgraph {sg_index} ops {list(ops)} are not a chain of "
                          "MUL/ADD/SUB, each feeding the next. Received: "
                          + ", ".join(op.op for op in chain))
    data = [t for t in chain[0].inputs if t >= 0 and not parsed.tensors[t].is_constant]
    if len(data) != 1 and chain[0].op == "SUB":
        data = data[:1]
    if len(data) != 1:
        raise EdgebnError(f"{model.path}: subgraph {sg_index} op {ops[0]} has no single "
                          "data input to pass through")
    return data[0]


def _fusible_producer(model: TFLiteModel, sg: fb.SubGraphT, sg_index: int, x: int,
                      busy: set[int]) -> fb.OperatorT | None:
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


def _bypass_in(model: TFLiteModel, m: fb.ModelT, sg_index: int,
               chains: list[tuple[int, ...]]) -> None:
    sg = m.subgraphs[sg_index]
    target: dict[int, int] = {}  # the chain's output -> its data input
    drop: set[int] = set()
    busy = {i for chain in chains for i in chain}
    for ops in chains:
        x = _chain_input(model, sg_index, ops)
        last = sg.operators[ops[-1]]
        activation = _fused_activation(last)
        producer = None if activation is None else _fusible_producer(model, sg, sg_index, x, busy)
        if activation is None or producer is not None:
            if producer is not None:  # y = act(x) with act fused where x is made
                producer.builtinOptions.fusedActivationFunction = \
                    last.builtinOptions.fusedActivationFunction
            target[model.subgraphs[sg_index].operators[ops[-1]].outputs[0]] = x
            drop |= set(ops)
        else:  # y = act(x): the chain goes, its last operator becomes the activation alone
            _as_activation(m, last, activation, x)
            drop |= set(ops[:-1])
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
    graph = Graph()
    a, b, y = (graph.tensor([1], name=f"t{i}") for i in range(3))
    graph.operator("ADD", [a, b], [y], schema().AddOptionsT())
    return graph.pack([a, b], [y])


def strip_names(data: bytes) -> bytes:
    """The same model with every tensor and subgraph name and signature removed.

    Useful to check that analysis does not lean on names, and to ship a model that
    leaks no layer names.
    """

    parsed = parse_tflite(data)  # refuse invalid input before the unchecked object API sees it
    model = unpack(parsed)
    for sg in model.subgraphs or []:
        sg.name = None
        for t in sg.tensors or []:
            t.name = None
    model.signatureDefs = None
    model.metadata = None
    model.metadataBuffer = None
    model.buffers = buffers_of(parsed)
    return pack(model)
