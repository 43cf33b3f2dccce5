"""Find BatchNorm that survived conversion, and where the folded ones went.

TFLite has no BatchNorm builtin, so residue is found from structure:

* a chain of per-channel steps ``y = x − c``, ``x · c``, ``x + c`` (``c`` a constant, or
  what a DEQUANTIZE makes of a float16 one, with one value per channel of one axis:
  ``[C]`` or ``[1, 1, 1, C]`` on NHWC data, ``[C, 1, 1]`` on NCHW data), each read only by
  the next, that scales and shifts. The MUL+ADD pair the TensorFlow converter leaves is
  kind ``decomposed``; other forms are named by their operators: ``sub_mul_mul_add`` is
  what litert-torch writes, ``(x − μ)·(1/σ)·γ + β``. A scalar affine (a Rescaling layer)
  is not BN;
* a Flex or custom op whose code names FusedBatchNorm (kind ``flex``);
* BN still in training mode, normalizing with the batch's own statistics:
  ``MEAN(x)`` over axes that include the batch axis but not the channel axis,
  ``SQUARED_DIFFERENCE(x, that mean)``, ``MEAN`` of it (kind ``batch_stats``). It
  cannot be folded, and at batch 1 it computes something else than the trained
  model. A LayerNormalization reduces over the channel axis and is not BN.

Provenance comes from tensor names where they survive: the converter joins the
names of fused ops with ';', so a BN layer's scope (``.../batch_normalization_3/
batchnorm/...``) in the names around an operator tells which BN it was folded
into, or which BN a chain was.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError
from edgebn.tflite.reader import Operator, Subgraph, Tensor, TFLiteModel, read_tflite, tensor_bytes

_BN_MARKERS = ("batchnorm", "FusedBatchNorm")
_BN_LAYER = re.compile(r"^batch_normalization(_\d+)*$")


@dataclass(frozen=True)
class ResidualBN:
    subgraph: int
    ops: tuple[int, ...]
    kind: str  # "decomposed" (MUL+ADD), another chain's operators ("sub_mul_mul_add"),
    # "flex", or "batch_stats" (training-mode BN)
    channels: int | None
    cost_elements: int  # elements of the tensor the BN normalizes, per inference
    source: str | None
    axis: int | None = None  # the channel axis of a chain (3 in NHWC, 1 in NCHW)

    @property
    def affine(self) -> bool:
        """A chain of per-channel MUL/ADD/SUB steps (what a bypass or a fold can remove)."""
        return self.kind not in ("flex", "batch_stats")

    def to_json(self) -> dict[str, Any]:
        flops = len(self.ops) * self.cost_elements if self.affine else 2 * self.cost_elements
        return {"subgraph": self.subgraph, "ops": list(self.ops), "kind": self.kind,
                "channels": self.channels, "axis": self.axis, "cost_elements": self.cost_elements,
                "cost_flops": flops, "source": self.source}


@dataclass(frozen=True)
class FoldedBN:
    source: str
    subgraph: int
    op: int
    into: str

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "subgraph": self.subgraph, "op": self.op, "into": self.into}


@dataclass(frozen=True)
class BNAnalysis:
    residual: tuple[ResidualBN, ...]
    folded: tuple[FoldedBN, ...]

    @property
    def verdict(self) -> str:
        return "residual" if self.residual else "clean"

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict,
                "residual_count": len(self.residual),
                "residual": [r.to_json() for r in self.residual],
                "folded": [f.to_json() for f in self.folded]}


@dataclass(frozen=True)
class InspectResult:
    model: TFLiteModel
    bn: BNAnalysis
    elapsed_ms: float = field(default=0.0, compare=False)

    @property
    def clean(self) -> bool:
        return self.bn.verdict == "clean"

    def to_json(self) -> dict[str, Any]:
        m = self.model
        subgraphs = []
        for sg in m.subgraphs:
            doc = sg.to_json()
            doc["tensors"] = [t.to_json() | {"bytes": tensor_bytes(t)} for t in sg.tensors]
            subgraphs.append(doc)
        return {
            "path": m.path,
            "size_bytes": m.size_bytes,
            "weight_bytes": m.weight_bytes,
            "graph_bytes": m.graph_bytes,
            "version": m.version,
            "signatures": [{"key": s.key, "subgraph": s.subgraph, "inputs": s.inputs,
                            "outputs": s.outputs} for s in m.signatures],
            "subgraphs": subgraphs,
            "op_counts": m.op_counts(),
            "bn": self.bn.to_json(),
        }

    def to_json_line(self) -> str:
        """One compact JSON line per file (``edgebn inspect A B ... --json``): the verdict."""
        import json

        return json.dumps({"path": self.model.path, "size_bytes": self.model.size_bytes,
                           "op_counts": self.model.op_counts(), "bn": self.bn.to_json()})


def inspect_files(paths: list[Path]) -> tuple[list[InspectResult], list[EdgebnError]]:
    """Inspect several files (a model directory's audit): results, and each unreadable file's error."""
    results, errors = [], []
    for path in paths:
        try:
            results.append(inspect_tflite(path))
        except EdgebnError as exc:
            errors.append(exc)
    return results, errors


def inspect_tflite(path: str | Path, bn_layers: list[str] | None = None) -> InspectResult:
    """Read ``path`` and analyse it for BN residue (``edgebn inspect``)."""
    start = time.perf_counter()
    result = inspect_model(read_tflite(path), bn_layers)
    return replace(result, elapsed_ms=(time.perf_counter() - start) * 1e3)


def inspect_model(model: TFLiteModel, bn_layers: list[str] | None = None) -> InspectResult:
    """Analyse a parsed model for BN residue.

    ``bn_layers`` (the Keras model's BN layer names, when known) lets provenance
    report real layer names instead of the export's name scopes.
    """
    start = time.perf_counter()
    bn = analyse_bn(model, bn_layers)
    return InspectResult(model, bn, elapsed_ms=(time.perf_counter() - start) * 1e3)


def analyse_bn(model: TFLiteModel, bn_layers: list[str] | None = None) -> BNAnalysis:
    residual: list[ResidualBN] = []
    folded: list[FoldedBN] = []
    for sg in model.subgraphs:
        sg_residual = _residual_in(model, sg, bn_layers) + _batch_stats_in(model, sg, bn_layers)
        residual.extend(sg_residual)
        claimed = {r.source for r in sg_residual if r.source}
        claimed_ops = {i for r in sg_residual for i in r.ops}
        seen: set[str] = set()
        for op in sg.operators:
            if op.index in claimed_ops:
                continue
            for source in bn_sources(sg, op, bn_layers):
                if source not in claimed and source not in seen:
                    seen.add(source)
                    folded.append(FoldedBN(source, sg.index, op.index, op.op))
    return BNAnalysis(tuple(residual), tuple(folded))


# the per-channel steps a BN is written as, once unfolded: y = x - c, x * c, x + c
AFFINE_OPS = ("SUB", "MUL", "ADD")


@dataclass(frozen=True)
class Step:
    """One operator of an unfolded BN: ``y = x <op> c`` with ``c`` one value per channel."""

    op: Operator
    data: int  # the tensor x it reads
    const: int  # the tensor c: a constant, or a DEQUANTIZE's output of one
    axis: int  # the channel axis of x that c runs along


def channel_axis(const_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> int | None:
    """The axis of ``data_shape`` along which a constant of ``const_shape`` gives one value
    per channel (broadcast from the right: ``[C]``, ``[1, 1, 1, C]``, ``[C, 1, 1]`` of NCHW
    data), or None: a scalar, or more than one axis, is not per channel."""
    if not const_shape or len(const_shape) > len(data_shape):
        return None
    offset = len(data_shape) - len(const_shape)
    axes = [offset + i for i, d in enumerate(const_shape) if d != 1]
    if len(axes) != 1 or const_shape[axes[0] - offset] != data_shape[axes[0]] or data_shape[axes[0]] < 2:
        return None
    return axes[0]


def constant_source(model: TFLiteModel, sg: Subgraph, tensor: int,
                    producer: dict[int, Operator]) -> int | None:
    """The stored constant behind ``tensor``: itself, or the input of the DEQUANTIZE that makes
    it (float16 weights); None when the runtime computes it."""
    if tensor < 0:
        return None
    if sg.tensors[tensor].is_constant:
        return tensor
    maker = producer.get(tensor)
    if maker is not None and maker.op == "DEQUANTIZE" and maker.inputs and maker.inputs[0] >= 0 \
            and sg.tensors[maker.inputs[0]].is_constant:
        return maker.inputs[0]
    return None


def _step(model: TFLiteModel, sg: Subgraph, op: Operator, producer: dict[int, Operator]) -> Step | None:
    if op.op not in AFFINE_OPS or len(op.inputs) != 2 or len(op.outputs) != 1 or min(op.inputs) < 0:
        return None
    for data, const in (op.inputs, op.inputs[::-1]):
        if op.op == "SUB" and data != op.inputs[0]:
            continue  # c - x negates x: not a step of the BN form
        d = sg.tensors[data]
        if constant_source(model, sg, data, producer) is not None or \
                constant_source(model, sg, const, producer) is None:
            continue
        axis = channel_axis(sg.tensors[const].shape, d.shape)
        if axis is not None and sg.tensors[op.outputs[0]].shape == d.shape:
            return Step(op, data, const, axis)
    return None


def affine_chains(model: TFLiteModel, sg: Subgraph) -> list[tuple[Step, ...]]:
    """Every maximal run of per-channel steps, each read only by the next, that scales and
    shifts (a MUL and an ADD or SUB among them): the forms an unfolded BN takes."""
    producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
    consumers = _consumers(sg)
    outputs = set(sg.outputs)
    steps = {op.index: st for op in sg.operators if (st := _step(model, sg, op, producer))}

    def successor(st: Step) -> Step | None:
        out = st.op.outputs[0]
        users = consumers.get(out, [])
        if len(users) != 1 or out in outputs or st.op.activation != "NONE":
            return None
        nxt = steps.get(users[0].index)
        return nxt if nxt is not None and nxt.data == out and nxt.axis == st.axis else None

    followers = {n.op.index for st in steps.values() if (n := successor(st)) is not None}
    chains = []
    for index, st in steps.items():
        if index in followers:
            continue
        chain = [st]
        while (nxt := successor(chain[-1])) is not None and len(chain) < 64:
            chain.append(nxt)
        names = {s.op.op for s in chain}
        if len(chain) >= 2 and "MUL" in names and names & {"ADD", "SUB"}:
            chains.append(tuple(chain))
    return chains


def chain_kind(chain: tuple[Step, ...]) -> str:
    """``decomposed`` for the MUL+ADD pair; other forms by their operators: ``sub_mul_mul_add``."""
    names = [s.op.op for s in chain]
    return "decomposed" if names == ["MUL", "ADD"] else "_".join(n.lower() for n in names)


def _residual_in(model: TFLiteModel, sg: Subgraph, bn_layers) -> list[ResidualBN]:
    found = []
    for op in sg.operators:
        if "BatchNorm" in op.op and op.op.startswith("CUSTOM:"):
            out = sg.tensors[op.outputs[0]] if op.outputs else None
            found.append(ResidualBN(
                sg.index, (op.index,), "flex",
                channels=out.shape[-1] if out is not None and out.shape else None,
                cost_elements=out.num_elements if out is not None else 0,
                source=_first(bn_sources(sg, op, bn_layers))))
    for chain in affine_chains(model, sg):
        data = sg.tensors[chain[0].data]
        source = _first([n for st in chain for n in bn_sources(sg, st.op, bn_layers)])
        found.append(ResidualBN(sg.index, tuple(st.op.index for st in chain), chain_kind(chain),
                                data.shape[chain[0].axis], cost_elements=data.num_elements,
                                source=source, axis=chain[0].axis))
    return sorted(found, key=lambda r: r.ops)


def _consumers(sg: Subgraph) -> dict[int, list[Operator]]:
    """Tensor index -> the operators that read it."""
    consumers: dict[int, list[Operator]] = {}
    for op in sg.operators:
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op)
    return consumers


def _batch_stats_in(model: TFLiteModel, sg: Subgraph, bn_layers) -> list[ResidualBN]:
    """Training-mode BN: mean and variance over the batch (and spatial) axes, per channel."""
    producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
    consumers = _consumers(sg)
    found = []
    for op in sg.operators:
        if (op.op != "SQUARED_DIFFERENCE" or len(op.inputs) != 2 or min(op.inputs) < 0
                or len(op.outputs) != 1):
            continue
        for x, m in (op.inputs, op.inputs[::-1]):
            mean = producer.get(m)
            if mean is None or mean.op != "MEAN" or len(mean.inputs) != 2 or mean.inputs[0] != x:
                continue
            data = sg.tensors[x]
            axes = _axes(model, sg, mean.inputs[1], len(data.shape))
            if axes is None or 0 not in axes or len(data.shape) - 1 in axes:
                continue
            var = [u for u in consumers.get(op.outputs[0], []) if u.op == "MEAN"]
            if not var:
                continue
            ops = (mean.index, op.index, var[0].index)
            source = _first([n for o in ops for n in bn_sources(sg, sg.operators[o], bn_layers)])
            found.append(ResidualBN(sg.index, ops, "batch_stats", data.shape[-1],
                                    cost_elements=data.num_elements, source=source))
            break
    return found


def _axes(model: TFLiteModel, sg: Subgraph, index: int, rank: int) -> set[int] | None:
    if index < 0 or rank == 0:
        return None
    values = model.constant(sg.tensors[index])
    if values is None or values.dtype.kind not in "iu":
        return None
    return {int(a) % rank for a in values.reshape(-1)}


def _data_and_channel_const(sg: Subgraph, inputs) -> tuple[Tensor, Tensor] | None:
    if any(i < 0 for i in inputs):
        return None
    a, b = (sg.tensors[i] for i in inputs)
    for data, const in ((a, b), (b, a)):
        if not data.is_constant and data.shape and _is_channel_const(const, data.shape[-1]):
            return data, const
    return None


def _is_channel_const(t: Tensor, channels: int) -> bool:
    """A constant with one value per channel: shape [C] or [1, ..., 1, C], C > 1."""
    if not t.is_constant or channels <= 1 or not t.shape:
        return False
    *lead, last = t.shape
    return last == channels and all(d == 1 for d in lead)


def bn_sources(sg: Subgraph, op: Operator, bn_layers) -> list[str]:
    """BN layer names mentioned in the names of an operator's tensors, in order."""
    names: list[str] = []
    for t in (*op.outputs, *op.inputs):
        if t < 0:
            continue
        for part in sg.tensors[t].name.split(";"):
            scope = _bn_scope(part)
            if scope:
                name = _resolve(scope, bn_layers)
                if name not in names:
                    names.append(name)
    return names


def _bn_scope(name: str) -> str | None:
    parts = name.split("/")
    for i, part in enumerate(parts):
        if i > 0 and any(part.startswith(m) for m in _BN_MARKERS):
            return parts[i - 1]
    for part in parts[:-1]:
        if _BN_LAYER.match(part):
            return part
    return None


def _resolve(scope: str, bn_layers) -> str:
    """Map an export scope to a known layer name.

    Keras 3's export appends one ``_N`` to every name scope (layer ``bn1`` is
    traced as ``bn1_1``), so the once-stripped name is tried first.
    """
    if not bn_layers:
        return scope
    once = re.sub(r"_\d+$", "", scope)
    for candidate in (once, scope):
        if candidate in bn_layers:
            return candidate
    return scope


def _first(items: list[str]) -> str | None:
    return items[0] if items else None
