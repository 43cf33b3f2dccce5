"""What a model costs in multiply-accumulates, and how close the runtime gets to this CPU's peak.

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

The ceiling is a compute-bound probe: three 1x1 convolutions of 256 channels on a
28x28 map, built in memory, timed with the same runtime, threads and delegate,
taking its fastest run (a peak: on a shared machine the probe's p50 wanders
well below it), and cached per machine in ``~/.cache/edgebn/`` (``EDGEBN_CACHE`` overrides it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.tflite import Operator, Subgraph, TFLiteModel

PROBE_SIZE = 28  # height and width of the probe's feature map
PROBE_CHANNELS = 256
PROBE_LAYERS = 3
PROBE_VERSION = 2  # part of the cache key: bump when the probe changes
PROBE_MIN_TIME_S = 1.0
PROBE_WARMUP = 50  # runs before timing: the first ones fault in pages and warm caches


@dataclass(frozen=True)
class OpCost:
    subgraph: int
    index: int
    op: str
    macs: int
    weight_bytes: int  # bytes of the operator's constant inputs (filter, bias)

    def to_json(self) -> dict[str, Any]:
        return {"subgraph": self.subgraph, "index": self.index, "op": self.op,
                "macs": self.macs, "weight_bytes": self.weight_bytes}


@dataclass(frozen=True)
class ModelCost:
    ops: tuple[OpCost, ...]
    macs: int  # per inference at the file's input shape
    weight_bytes: int  # constant buffers of the whole model, each counted once

    def to_json(self) -> dict[str, Any]:
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


# ---------------------------------------------------------------- the ceiling


def probe_model(seed: int = 0) -> bytes:
    """A compute-bound .tflite: PROBE_LAYERS 1x1 CONV_2D, float32, seeded random weights."""
    import flatbuffers

    from edgebn.tflite import FILE_IDENTIFIER, _schema

    s = _schema()
    rng = np.random.default_rng(seed)
    c, hw = PROBE_CHANNELS, PROBE_SIZE
    buffers, tensors, operators = [s.BufferT()], [], []  # buffer 0: the empty one

    def tensor(shape, data=None):
        t = s.TensorT()
        t.shape, t.type, t.buffer = list(shape), s.TensorType.FLOAT32, 0
        if data is not None:
            buffers.append(s.BufferT())
            buffers[-1].data = np.frombuffer(data.astype("<f4").tobytes(), dtype=np.uint8)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    x = tensor((1, hw, hw, c))
    for _ in range(PROBE_LAYERS):
        w = tensor((c, 1, 1, c), rng.standard_normal((c, 1, 1, c)) / np.sqrt(c))
        b = tensor((c,), np.zeros(c))
        y = tensor((1, hw, hw, c))
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, [x, w, b], [y]
        op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.Conv2DOptions, s.Conv2DOptionsT()
        op.builtinOptions.padding, op.builtinOptions.strideH, op.builtinOptions.strideW = (
            s.Padding.VALID, 1, 1)
        operators.append(op)
        x = y
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = tensors, operators, [0], [x]
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CONV_2D
    code.version = 1
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [sg], buffers
    builder = flatbuffers.Builder(4 * PROBE_LAYERS * c * c + 4096)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEBN_CACHE") or Path.home() / ".cache" / "edgebn")


def _probe_key(threads: int, backend: Any, xnnpack: bool) -> str:
    from edgebn.machine import cpu_model, version
    from edgebn.runtime import _MODULES, resolve_backend

    chosen = resolve_backend(backend)
    runtime = f"{chosen.value} {version(_MODULES[chosen][1])}"
    return (f"probe{PROBE_VERSION}|{cpu_model()}|{os.cpu_count()} cores|{runtime}"
            f"|threads={threads}|xnnpack={xnnpack}")


def probe_ceiling(threads: int = 1, backend: Any = "auto", xnnpack: bool = True) -> float:
    """GMAC/s of the compute-bound probe here, measured once per machine and runtime."""
    from edgebn.bench import BenchSettings, bench_tflite
    from edgebn.stages import write_atomic
    from edgebn.tflite import parse_tflite

    path = cache_dir() / "ceiling.json"
    key = _probe_key(threads, backend, xnnpack)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    probe = parse_tflite(probe_model(), "<edgebn ceiling probe>")
    settings = BenchSettings(threads=threads, backend=backend, xnnpack=xnnpack,
                             warmup=PROBE_WARMUP, min_time_s=PROBE_MIN_TIME_S)
    stats, _ = bench_tflite(probe, settings)
    gmacs = model_cost(probe).macs / stats.latency_us.min / 1e3  # a peak: the fastest run
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(cached | {key: gmacs}, indent=2, sort_keys=True))
    return gmacs


@dataclass(frozen=True)
class CostStats:
    """MACs per inference, the rate achieved at p50, and this machine's ceiling."""

    macs: int
    gmacs_per_s: float
    ceiling_gmacs_per_s: float

    @property
    def efficiency(self) -> float:
        return self.gmacs_per_s / self.ceiling_gmacs_per_s if self.ceiling_gmacs_per_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"macs": self.macs, "gmacs_per_s": self.gmacs_per_s,
                "ceiling_gmacs_per_s": self.ceiling_gmacs_per_s, "efficiency": self.efficiency}


def with_cost(stats: Any, model: TFLiteModel, settings: Any) -> Any:
    """``stats`` (a TFLiteStats) with its cost: the batch's MACs over p50, against the probe."""
    macs = model_cost(model).macs
    achieved = macs * stats.batch / stats.latency_us.p50 / 1e3
    ceiling = probe_ceiling(stats.threads, settings.backend, stats.xnnpack)
    return replace(stats, cost=CostStats(macs, achieved, ceiling))
