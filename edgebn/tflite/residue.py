"""Find BatchNorm that survived conversion, and where the folded ones went.

TFLite has no BatchNorm builtin, so residue is found from structure:

* a MUL of a data tensor by a constant with one value per channel of the last
  axis, whose output feeds, as its only consumer, an ADD (or SUB) of a constant
  of the same per-channel shape: ``y = x * scale + shift`` is an unfolded BN
  (kind ``decomposed``); a scalar affine such as a Rescaling layer is not BN;
* a Flex or custom op whose code names FusedBatchNorm (kind ``flex``);
* BN still in training mode, normalizing with the batch's own statistics:
  ``MEAN(x)`` over axes that include the batch axis but not the channel axis,
  ``SQUARED_DIFFERENCE(x, that mean)``, ``MEAN`` of it (kind ``batch_stats``). It
  cannot be folded, and at batch 1 it computes something else than the trained
  model. A LayerNormalization reduces over the channel axis and is not BN.

Provenance comes from tensor names where they survive: the converter joins the
names of fused ops with ';', so a BN layer's scope (``.../batch_normalization_3/
batchnorm/...``) in the names around an operator tells which BN it was folded
into, or which BN a MUL+ADD pair was.
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
    kind: str  # "decomposed" (MUL+ADD), "flex", or "batch_stats" (training-mode BN)
    channels: int | None
    cost_elements: int  # elements multiplied and added per inference
    source: str | None

    def to_json(self) -> dict[str, Any]:
        return {"subgraph": self.subgraph, "ops": list(self.ops), "kind": self.kind,
                "channels": self.channels, "cost_elements": self.cost_elements,
                "cost_flops": 2 * self.cost_elements, "source": self.source}


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
        sg_residual = _residual_in(sg, bn_layers) + _batch_stats_in(model, sg, bn_layers)
        residual.extend(sg_residual)
        claimed = {r.source for r in sg_residual if r.source}
        claimed_ops = {i for r in sg_residual for i in r.ops}
        seen: set[str] = set()
        for op in sg.operators:
            if op.index in claimed_ops:
                continue
            for source in _sources(sg, op, bn_layers):
                if source not in claimed and source not in seen:
                    seen.add(source)
                    folded.append(FoldedBN(source, sg.index, op.index, op.op))
    return BNAnalysis(tuple(residual), tuple(folded))


def _residual_in(sg: Subgraph, bn_layers) -> list[ResidualBN]:
    consumers = _consumers(sg)
    graph_outputs = set(sg.outputs)
    found = []
    for op in sg.operators:
        if "BatchNorm" in op.op and op.op.startswith("CUSTOM:"):
            out = sg.tensors[op.outputs[0]] if op.outputs else None
            found.append(ResidualBN(
                sg.index, (op.index,), "flex",
                channels=out.shape[-1] if out is not None and out.shape else None,
                cost_elements=out.num_elements if out is not None else 0,
                source=_first(_sources(sg, op, bn_layers))))
            continue
        if op.op != "MUL" or len(op.inputs) != 2 or len(op.outputs) != 1:
            continue
        split = _data_and_channel_const(sg, op.inputs)
        if split is None:
            continue
        data, _scale = split
        channels = data.shape[-1]
        out = op.outputs[0]
        users = consumers.get(out, [])
        if len(users) != 1 or out in graph_outputs:
            continue
        nxt = users[0]
        if nxt.op not in ("ADD", "SUB") or len(nxt.inputs) != 2 or len(nxt.outputs) != 1:
            continue
        other = nxt.inputs[1] if nxt.inputs[0] == out else nxt.inputs[0]
        if nxt.op == "SUB" and nxt.inputs[0] != out:
            continue  # c - x*s negates x: not an affine of the BN form
        shift = sg.tensors[other] if other >= 0 else None
        if shift is None or not _is_channel_const(shift, channels):
            continue
        source = _first(_sources(sg, op, bn_layers) + _sources(sg, nxt, bn_layers))
        found.append(ResidualBN(sg.index, (op.index, nxt.index), "decomposed", channels,
                                cost_elements=sg.tensors[out].num_elements, source=source))
    return found


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
            source = _first([n for o in ops for n in _sources(sg, sg.operators[o], bn_layers)])
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


def _sources(sg: Subgraph, op: Operator, bn_layers) -> list[str]:
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
