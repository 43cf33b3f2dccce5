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

**Not every per-channel scale and shift is a BN.** A Keras ``Normalization`` layer (Keras'
guides put one first in an image model; EfficientNetV2 and ConvNeXt carry one) converts to
``SUB(mean) → MUL(1/std)``, a per-channel ``Rescaling`` to MUL and ADD. Each chain is
attributed (:func:`attribute`), first rule that applies:

1. names: a BN's scope (``batchnorm``, ``FusedBatchNorm``, a ``batch_normalization`` layer)
   or a PyTorch ``BatchNorm1d/2d/3d`` module (litert-torch's names) → BN, that layer;
2. names: a Keras Normalization's own operators, ``<layer>/Sub`` and ``<layer>/truediv`` →
   Normalization, that layer;
3. names: a ``rescaling`` layer's scope → Rescaling, that layer;
4. form, when the names do not tell: ``SUB`` then ``MUL`` with no shift after the scale,
   on a model input (directly or behind a scalar rescale, a TRANSPOSE or a RESHAPE) →
   input normalization (a BN shifts after it scales: TensorFlow writes it as MUL+ADD,
   litert-torch as SUB, MUL, MUL, ADD);
5. form: anything else → BN when the file has no names at all; ``unknown`` when it has
   names that do not say what the chain is.

Only BN and ``unknown`` count toward the verdict (a chain nothing rules out as BN counts);
Normalization and Rescaling chains are listed apart (``not_bn``), with their cost.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.tflite.chains import affine_chains, chain_kind, consumers
from edgebn.tflite.provenance import (
    COUNTED,
    attribute,
    bn_sources,
    has_names,
)
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel, read_tflite, tensor_bytes


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
    source_type: str = "bn"  # "bn" | "normalization" | "rescaling" | "unknown"
    rule: str | None = None  # how the source was decided (names, or the chain's form)

    @property
    def affine(self) -> bool:
        """A chain of per-channel MUL/ADD/SUB steps (what a bypass or a fold can remove)."""
        return self.kind not in ("flex", "batch_stats")

    def to_json(self) -> JsonDict:
        flops = len(self.ops) * self.cost_elements if self.affine else 2 * self.cost_elements
        return {"subgraph": self.subgraph, "ops": list(self.ops), "kind": self.kind,
                "channels": self.channels, "axis": self.axis, "cost_elements": self.cost_elements,
                "cost_flops": flops, "source": self.source, "source_type": self.source_type,
                "rule": self.rule}


@dataclass(frozen=True)
class FoldedBN:
    source: str
    subgraph: int
    op: int
    into: str

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class BNAnalysis:
    residual: tuple[ResidualBN, ...]  # BN, and chains nothing rules out as BN
    folded: tuple[FoldedBN, ...]
    not_bn: tuple[ResidualBN, ...] = ()  # per-channel affine chains that are not BN
    names: bool = True  # the file has tensor names (False: stripped)

    @property
    def verdict(self) -> str:
        return "residual" if self.residual else "clean"

    def to_json(self) -> JsonDict:
        return {"verdict": self.verdict,
                "residual_count": len(self.residual),
                "residual": [r.to_json() for r in self.residual],
                "folded": [f.to_json() for f in self.folded],
                "not_bn": [r.to_json() for r in self.not_bn], "names": self.names}


@dataclass(frozen=True)
class InspectResult:
    model: TFLiteModel
    bn: BNAnalysis
    elapsed_ms: float = field(default=0.0, compare=False)

    @property
    def clean(self) -> bool:
        return self.bn.verdict == "clean"

    def to_json(self) -> JsonDict:
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
        return json.dumps({"path": self.model.path, "size_bytes": self.model.size_bytes,
                           "op_counts": self.model.op_counts(), "bn": self.bn.to_json()})


def inspect_files(paths: list[Path]) -> tuple[list[InspectResult], list[EdgebnError]]:
    """Inspect several files (a model directory's audit): results, and each unreadable file's
    error."""
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
    not_bn: list[ResidualBN] = []
    folded: list[FoldedBN] = []
    names = has_names(model)
    for sg in model.subgraphs:
        found = _residual_in(model, sg, bn_layers, names) + _batch_stats_in(model, sg, bn_layers)
        sg_residual = [r for r in found if r.source_type in COUNTED]
        not_bn.extend(r for r in found if r.source_type not in COUNTED)
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
    return BNAnalysis(tuple(residual), tuple(folded), tuple(not_bn), names)


def _residual_in(model: TFLiteModel, sg: Subgraph, bn_layers, names: bool) -> list[ResidualBN]:
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
        who = attribute(model, sg, chain, bn_layers, names)
        found.append(ResidualBN(sg.index, tuple(st.op.index for st in chain), chain_kind(chain),
                                data.shape[chain[0].axis], cost_elements=data.num_elements,
                                source=who.layer, axis=chain[0].axis,
                                source_type=who.source_type, rule=who.rule))
    return sorted(found, key=lambda r: r.ops)


def _batch_stats_in(model: TFLiteModel, sg: Subgraph, bn_layers) -> list[ResidualBN]:
    """Training-mode BN: mean and variance over the batch (and spatial) axes, per channel."""
    producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
    readers = consumers(sg)
    found = []
    for op in sg.operators:
        if (op.op != "SQUARED_DIFFERENCE" or len(op.inputs) != 2 or min(op.inputs) < 0
                or len(op.outputs) != 1):
            continue
        for x, m in (op.inputs, op.inputs[::-1]):
            ops = _batch_moments(model, sg, producer.get(m), x, op,
                                 readers.get(op.outputs[0], []))
            if ops is not None:
                data = sg.tensors[x]
                source = _first([n for o in ops
                                 for n in bn_sources(sg, sg.operators[o], bn_layers)])
                found.append(ResidualBN(sg.index, ops, "batch_stats", data.shape[-1],
                                        cost_elements=data.num_elements, source=source))
                break
    return found


def _batch_moments(model: TFLiteModel, sg: Subgraph, mean: Operator | None, x: int,
                   diff: Operator, readers: list[Operator]) -> tuple[int, int, int] | None:
    """(MEAN, SQUARED_DIFFERENCE, MEAN) when ``mean`` averages ``x`` over the batch axis (and
    others, not the channels) and a MEAN reads the squared difference: a batch's variance."""
    if mean is None or mean.op != "MEAN" or len(mean.inputs) != 2 or mean.inputs[0] != x:
        return None
    rank = len(sg.tensors[x].shape)
    axes = _axes(model, sg, mean.inputs[1], rank)
    if axes is None or 0 not in axes or rank - 1 in axes:
        return None
    var = [u for u in readers if u.op == "MEAN"]
    return (mean.index, diff.index, var[0].index) if var else None


def _axes(model: TFLiteModel, sg: Subgraph, index: int, rank: int) -> set[int] | None:
    if index < 0 or rank == 0:
        return None
    values = model.constant(sg.tensors[index])
    if values is None or values.dtype.kind not in "iu":
        return None
    return {int(a) % rank for a in values.reshape(-1)}


def _first(items: list[str]) -> str | None:
    return items[0] if items else None
