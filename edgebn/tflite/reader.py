"""Read a .tflite flatbuffer without TensorFlow.

Fields are read through the TFLite schema's generated Python binding
(``ai_edge_litert.schema_py_generated``, or the ``tflite`` package's) on the
flatbuffers runtime. That runtime does not verify buffers, so this module does:

* every vector length is checked against the file size before it is iterated,
  and all vectors together may not exceed a work budget proportional to the
  file size (a forged file can alias one huge table many times over);
* every operator is checked against the schema: opcode and tensor indices, inputs
  (count, -1 only where optional) and options table (a CONV_2D's code swapped for
  SPLIT is refused: XNNPACK would read SplitOptions that are not there);
* every index list is checked against what it indexes: operator inputs, outputs and
  intermediates, subgraph inputs and outputs, tensor buffers, a per-channel
  quantization's dimension, signature subgraphs and tensors;
* the identifier and size (at most ``MAX_FILE_BYTES``) are checked before reading;
* any low-level failure while decoding (offset out of range, bad UTF-8, ...)
  becomes an ``InvalidModelError`` naming the file.

So a hostile file ends in a result or in one clear error, never a crash or a hang.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import InvalidModelError

FILE_IDENTIFIER = b"TFL3"
_MIN_SIZE = 8  # root offset (4 bytes) + file identifier (4 bytes)
MAX_FILE_BYTES = 2 << 30  # 2 GiB: a flatbuffer's own limit, and far beyond an edge model

# builtin -> (fewest inputs, most (None: any), leading inputs that may not be -1 (None: all))
_INPUTS: dict[str, tuple[int, int | None, int | None]] = {
    **dict.fromkeys("CONV_2D DEPTHWISE_CONV_2D FULLY_CONNECTED CONV_3D".split(), (2, 3, 2)),
    **dict.fromkeys("MAX_POOL_2D AVERAGE_POOL_2D SOFTMAX SQUEEZE QUANTIZE DEQUANTIZE RELU RELU6 "
                    "TANH LOGISTIC HARD_SWISH RSQRT".split(), (1, 1, 1)),
    **dict.fromkeys("ADD SUB MUL DIV MEAN SUM REDUCE_MAX REDUCE_MIN PAD SPLIT GATHER TRANSPOSE "
                    "PRELU BATCH_MATMUL RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR SQUARED_DIFFERENCE "
                    "MAXIMUM MINIMUM".split(), (2, 2, 2)),
    "TRANSPOSE_CONV": (3, 4, 3), "RESHAPE": (1, 2, 1), "PADV2": (2, 3, 2), "SPLIT_V": (3, 3, 3),
    "SLICE": (3, 3, 3), "STRIDED_SLICE": (4, 4, 4), "CONCATENATION": (1, None, None),
    "PACK": (1, None, None)}
# builtins whose options table is not named after them (the rest: CONV_2D -> Conv2DOptions)
_SHARED_OPTIONS = {**dict.fromkeys("MAX_POOL_2D AVERAGE_POOL_2D L2_POOL_2D".split(),
                                   "Pool2DOptions"),
                   **dict.fromkeys("MEAN SUM REDUCE_MAX REDUCE_MIN REDUCE_PROD REDUCE_ANY "
                                   "REDUCE_ALL"
                                   .split(), "ReducerOptions"),
                   "MAXIMUM": "MaximumMinimumOptions", "MINIMUM": "MaximumMinimumOptions"}


@cache
def schema() -> ModuleType:
    """The generated schema module (ai_edge_litert's copy: never TensorFlow's)."""
    try:
        # lazy: a missing binding is one error line (below), not an ImportError at import
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise InvalidModelError("reading .tflite files needs the TFLite schema binding: "
                                "pip install ai-edge-litert") from exc
    return schema_py_generated


@cache
def _enum_names(enum_name: str) -> dict[int, str]:
    enum = getattr(schema(), enum_name)
    return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}


_NUMPY_DTYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
    "INT64": np.int64, "BOOL": np.bool_, "INT16": np.int16, "INT8": np.int8,
    "FLOAT64": np.float64, "UINT64": np.uint64, "UINT32": np.uint32, "UINT16": np.uint16,
}
_DTYPE_BYTES = {k: np.dtype(v).itemsize for k, v in _NUMPY_DTYPES.items()} | {
    "COMPLEX64": 8, "COMPLEX128": 16, "BFLOAT16": 2, "FLOAT8_E4M3FN": 1, "FLOAT8_E5M2": 1}


@dataclass(frozen=True)
class Quantization:
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    buffer: int
    constant_bytes: int  # bytes of constant data stored for this tensor (0 for activations)
    quantization: Quantization | None

    @property
    def is_constant(self) -> bool:
        return self.constant_bytes > 0

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def to_json(self) -> JsonDict:
        return {
            "index": self.index, "name": self.name, "shape": list(self.shape),
            "dtype": self.dtype, "buffer": self.buffer, "constant_bytes": self.constant_bytes,
            "quantization": self.quantization.to_json() if self.quantization else None,
        }


@dataclass(frozen=True)
class Operator:
    index: int
    op: str  # builtin name as the schema spells it, or CUSTOM:<custom_code>
    inputs: tuple[int, ...]  # -1 marks an omitted optional input
    outputs: tuple[int, ...]
    activation: str = "NONE"  # the fused activation function, where the options carry one

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class Subgraph:
    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]

    def to_json(self) -> JsonDict:
        return {"index": self.index, "name": self.name, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "operators": [op.to_json() for op in self.operators]}


@dataclass(frozen=True)
class Signature:
    key: str
    subgraph: int
    inputs: dict[str, int]
    outputs: dict[str, int]


@dataclass(frozen=True)
class TFLiteModel:
    """A parsed .tflite file: its graph, and access to its constant buffers."""

    path: str
    size_bytes: int
    version: int
    subgraphs: tuple[Subgraph, ...]
    signatures: tuple[Signature, ...]
    weight_bytes: int  # bytes of constant buffers; the rest of the file is graph and metadata
    _buffers: tuple[tuple[int, int], ...] = field(repr=False)  # (start, length) into _data
    _data: bytes = field(repr=False)

    @property
    def data(self) -> bytes:
        """The file's bytes, as parsed (an interpreter can load them without reading again)."""
        return self._data

    @property
    def graph_bytes(self) -> int:
        return self.size_bytes - self.weight_bytes

    @property
    def buffer_count(self) -> int:
        return len(self._buffers)

    def buffer_bytes(self, index: int) -> bytes:
        """Buffer ``index``'s bytes (empty for a tensor the runtime computes), wherever stored."""
        start, length = self._buffers[index]
        return self._data[start:start + length]

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.op for sg in self.subgraphs for op in sg.operators).items()))

    def constant(self, tensor: Tensor) -> np.ndarray | None:
        """The tensor's constant value as stored (quantized values stay quantized), or None."""
        if not tensor.is_constant or tensor.dtype not in _NUMPY_DTYPES:
            return None
        start, length = self._buffers[tensor.buffer]
        dtype = np.dtype(_NUMPY_DTYPES[tensor.dtype]).newbyteorder("<")
        if length != tensor.num_elements * dtype.itemsize:
            return None
        return np.frombuffer(self._data, dtype=dtype, count=tensor.num_elements,
                             offset=start).reshape(tensor.shape)


class _Budget:
    """Caps the number of vector elements decoded, so aliased tables cannot multiply work."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.left = 4 * size + 4096

    def length(self, n: int, elem_size: int, what: str) -> int:
        if n < 0 or n * elem_size > self.size:
            raise InvalidModelError(f"{what} claims {n} entries, more than the file can hold")
        self.left -= n
        if self.left < 0:
            raise InvalidModelError(f"{what}: more entries than the file size allows (aliased "
                                    "offsets?)")
        return n


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8") if raw else ""


def _ints(n: int, get, budget: _Budget, what: str) -> tuple[int, ...]:
    return tuple(int(get(j)) for j in range(budget.length(n, 4, what)))


def as_tflite(model: TFLiteModel | str | Path) -> TFLiteModel:
    """``model`` parsed: as given when it already is, else read from its path."""
    return model if isinstance(model, TFLiteModel) else read_tflite(model)


def _check_head(head: bytes, size: int, name: str) -> None:
    """Refuse what is not a TFLite flatbuffer from its first 8 bytes and its size."""
    if size < _MIN_SIZE or len(head) < _MIN_SIZE:
        raise InvalidModelError(f"{name}: not a TFLite model ({size} bytes, too short)")
    if head[4:8] != FILE_IDENTIFIER:
        raise InvalidModelError(f"{name}: not a TFLite model (file identifier {head[4:8]!r}, "
                                f"expected {FILE_IDENTIFIER!r})")
    if size > MAX_FILE_BYTES:
        raise InvalidModelError(f"{name}: {size} bytes; edgebn reads TFLite models of at most "
                                f"{MAX_FILE_BYTES} bytes (2 GiB)")


def read_tflite(path: str | Path) -> TFLiteModel:
    """Parse ``path`` as a TFLite flatbuffer; raise InvalidModelError if it is not one."""
    p = Path(path)
    if not p.exists():
        raise InvalidModelError(f"{p}: no such file")
    if not p.is_file():
        raise InvalidModelError(f"{p}: not a regular file")
    try:
        with p.open("rb") as f:
            head = f.read(_MIN_SIZE)
            _check_head(head, os.fstat(f.fileno()).st_size, str(p))
            data = head + f.read(MAX_FILE_BYTES + 1 - len(head))
    except OSError as exc:
        raise InvalidModelError(f"{p}: cannot read ({exc.strerror})") from exc
    return parse_tflite(data, str(p))


def parse_tflite(data: bytes, name: str = "<bytes>") -> TFLiteModel:
    """Parse TFLite flatbuffer bytes; ``name`` is used in messages and in the result."""
    _check_head(data[:_MIN_SIZE], len(data), name)
    try:
        return _parse(data, name)
    except InvalidModelError as exc:
        raise InvalidModelError(f"{name}: invalid TFLite model: {exc}") from None
    except (struct.error, IndexError, ValueError, TypeError, OverflowError,
            UnicodeDecodeError, RecursionError, MemoryError) as exc:
        raise InvalidModelError(f"{name}: invalid TFLite model: {type(exc).__name__} while "
                                f"decoding ({exc})") from None


def _parse(data: bytes, name: str) -> TFLiteModel:
    sch = schema()
    size = len(data)
    budget = _Budget(size)
    root = struct.unpack_from("<I", data, 0)[0]
    if root + 4 > size:
        raise InvalidModelError(f"root offset {root} is past the end of the file")
    model = sch.Model.GetRootAs(data, 0)
    op_codes = _op_codes(model, sch, budget)
    buffers = _buffers(model, size, budget)
    subgraphs = [_subgraph(model.Subgraphs(s), s, op_codes, buffers, budget)
                 for s in range(budget.length(model.SubgraphsLength(), 4, "subgraphs"))]
    signatures = _signatures(model, budget)
    _check_signatures(signatures, subgraphs)
    # Weight bytes: constant buffers referenced by tensors (each buffer counted once).
    used = {t.buffer for sg in subgraphs for t in sg.tensors if t.constant_bytes}
    return TFLiteModel(name, size, model.Version(), tuple(subgraphs), signatures,
                       sum(buffers[b][1] for b in used), tuple(buffers), data)


def _check_signatures(signatures: tuple[Signature, ...], subgraphs: list[Subgraph]) -> None:
    """Each signature's subgraph exists and its tensors are that subgraph's."""
    for sig in signatures:
        if not 0 <= sig.subgraph < len(subgraphs):
            raise InvalidModelError(f"signature {sig.key!r} names subgraph {sig.subgraph}; there "
                                    f"are {len(subgraphs)}")
        count = len(subgraphs[sig.subgraph].tensors)
        for name, index in (*sig.inputs.items(), *sig.outputs.items()):
            if not 0 <= index < count:
                raise InvalidModelError(f"signature {sig.key!r} maps {name!r} to tensor {index}; "
                                        f"subgraph {sig.subgraph} has {count}")


def _op_codes(model, schema, budget: _Budget) -> list[str]:
    ops_names = _enum_names("BuiltinOperator")
    op_codes = []
    for i in range(budget.length(model.OperatorCodesLength(), 4, "operator_codes")):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            op_codes.append(f"CUSTOM:{_text(oc.CustomCode())}")
        else:
            op_codes.append(ops_names.get(code, f"BUILTIN_{code}"))
    return op_codes


def _buffers(model, size: int, budget: _Budget) -> list[tuple[int, int]]:
    buffers: list[tuple[int, int]] = []
    for i in range(budget.length(model.BuffersLength(), 4, "buffers")):
        buf = model.Buffers(i)
        if buf.Offset() > 1:  # large models keep data after the flatbuffer, addressed by offset
            start, length = buf.Offset(), buf.Size()
        else:
            length = buf.DataLength()
            start = buf._tab.Vector(buf._tab.Offset(4)) if length else 0
        if start < 0 or length < 0 or start + length > size:
            raise InvalidModelError(f"buffer {i} ({length} bytes at {start}) lies outside the file")
        buffers.append((start, length))
    return buffers


def _subgraph(sg, s: int, op_codes: list[str], buffers, budget: _Budget) -> Subgraph:
    dtype_names = _enum_names("TensorType")
    tensors = tuple(_tensor(sg.Tensors(t), t, buffers, dtype_names, budget)
                    for t in range(budget.length(sg.TensorsLength(), 4, f"subgraph {s} tensors")))

    def refs(n, get, what, optional=False):
        idx = _ints(n, get, budget, what)
        low = -1 if optional else 0
        for v in idx:
            if not low <= v < len(tensors):
                raise InvalidModelError(f"{what} refers to tensor {v}; there are {len(tensors)}")
        return idx

    operators = []
    for o in range(budget.length(sg.OperatorsLength(), 4, f"subgraph {s} operators")):
        op = sg.Operators(o)
        code = op.OpcodeIndex()
        if not 0 <= code < len(op_codes):
            raise InvalidModelError(f"subgraph {s} operator {o} uses opcode {code}; "
                                    f"there are {len(op_codes)}")
        where = f"subgraph {s} operator {o}"
        operator = Operator(o, op_codes[code],
                            refs(op.InputsLength(), op.Inputs, f"{where} inputs", optional=True),
                            refs(op.OutputsLength(), op.Outputs, f"{where} outputs", optional=True))
        refs(op.IntermediatesLength(), op.Intermediates, f"{where} intermediates")
        _check_operator(operator, op.BuiltinOptionsType(), where)
        activation = _activation(op, op.BuiltinOptionsType())
        operators.append(operator if activation == "NONE"
                         else replace(operator, activation=activation))
    return Subgraph(s, _text(sg.Name()) or ("main" if s == 0 else f"subgraph_{s}"),
                    refs(sg.InputsLength(), sg.Inputs, f"subgraph {s} inputs"),
                    refs(sg.OutputsLength(), sg.Outputs, f"subgraph {s} outputs"),
                    tensors, tuple(operators))


def _activation(op, options_type: int) -> str:
    """The fused activation an operator's options table names ("NONE" when it has none)."""
    cls = getattr(schema(), _enum_names("BuiltinOptions").get(options_type, ""), None)
    table = op.BuiltinOptions() if options_type else None
    if table is None or cls is None or not hasattr(cls, "FusedActivationFunction"):
        return "NONE"
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    code = opts.FusedActivationFunction()
    return _enum_names("ActivationFunctionType").get(code, f"activation {code}")


def _check_operator(op: Operator, options_type: int, where: str) -> None:
    """A builtin's input count, required inputs, outputs and options table, per the schema."""
    if op.op in _INPUTS:
        fewest, most, required = _INPUTS[op.op]
        n = len(op.inputs)
        if n < fewest or (most is not None and n > most):
            allowed = f"{fewest}" if most == fewest else f"{fewest} to {most or 'any'}"
            raise InvalidModelError(f"{where} ({op.op}) has {n} inputs; {op.op} takes {allowed}")
        missing = [i for i, t in enumerate(op.inputs[:required]) if t < 0]
        if missing or not op.outputs or -1 in op.outputs:
            raise InvalidModelError(f"{where} ({op.op}) omits a tensor it needs (-1): inputs "
                                    f"{list(op.inputs)}, outputs {list(op.outputs)}")
    names = _enum_names("BuiltinOptions")  # CONV_2D -> Conv2DOptions, unless shared
    given = names.get(options_type, f"options type {options_type}")
    expected = _SHARED_OPTIONS.get(op.op) or next(
        (n for n in names.values() if n.lower() == op.op.replace("_", "").lower() + "options"),
        None)
    if options_type and expected is not None and given != expected:
        raise InvalidModelError(f"{where} ({op.op}) carries {given}; {op.op} takes {expected}")


def _signatures(model, budget: _Budget) -> tuple[Signature, ...]:
    signatures = []
    for i in range(budget.length(model.SignatureDefsLength(), 4, "signature_defs")):
        sd = model.SignatureDefs(i)
        n_in = budget.length(sd.InputsLength(), 4, "signature inputs")
        n_out = budget.length(sd.OutputsLength(), 4, "signature outputs")
        ins = {_text(m.Name()): m.TensorIndex() for m in map(sd.Inputs, range(n_in))}
        outs = {_text(m.Name()): m.TensorIndex() for m in map(sd.Outputs, range(n_out))}
        signatures.append(Signature(_text(sd.SignatureKey()), sd.SubgraphIndex(), ins, outs))
    return tuple(signatures)


def _tensor(t, index: int, buffers, dtype_names, budget: _Budget) -> Tensor:
    shape = _ints(t.ShapeLength(), t.Shape, budget, f"tensor {index} shape")
    buffer = t.Buffer()
    if not 0 <= buffer < max(len(buffers), 1):
        raise InvalidModelError(f"tensor {index} uses buffer {buffer}; there are {len(buffers)}")
    constant_bytes = buffers[buffer][1] if buffers else 0
    quant = None
    q = t.Quantization()
    if q is not None and q.ScaleLength():
        n = budget.length(q.ScaleLength(), 4, f"tensor {index} scales")
        zp = budget.length(q.ZeroPointLength(), 8, f"tensor {index} zero points")
        quant = Quantization(tuple(float(q.Scale(j)) for j in range(n)),
                             tuple(int(q.ZeroPoint(j)) for j in range(zp)), q.QuantizedDimension())
        if n > 1 and not 0 <= quant.quantized_dimension < max(len(shape), 1):
            raise InvalidModelError(f"tensor {index} is quantized per channel along dimension "
                                    f"{quant.quantized_dimension}; it has {len(shape)}")
    return Tensor(index, _text(t.Name()), shape, dtype_names.get(t.Type(), f"TYPE_{t.Type()}"),
                  buffer, constant_bytes, quant)


def tensor_bytes(tensor: Tensor) -> int:
    """Bytes of the tensor's data at its stored shape (dynamic dims count as 1)."""
    return max(tensor.num_elements, 0) * _DTYPE_BYTES.get(tensor.dtype, 0)
