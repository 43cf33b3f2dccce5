"""Which layer a .tflite operator came from, and what a per-channel chain was: BN,
Normalization, Rescaling or unknown (the rules: :mod:`edgebn.tflite.residue`).

Provenance comes from tensor names where they survive: the converter joins the names of
fused ops with ';' (``.../batch_normalization_3/batchnorm/...``), and litert-torch names each
tensor by its PyTorch module path (``…/torch.nn.modules.batchnorm.BatchNorm2d_bn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgebn.tflite.chains import AFFINE_OPS, Step, chain_kind, constant_source
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel

_BN_MARKERS = ("batchnorm", "FusedBatchNorm")
_BN_LAYER = re.compile(r"^batch_normalization(_\d+)*$")


SOURCE_TYPES = ("bn", "normalization", "rescaling", "unknown")
COUNTED = ("bn", "unknown")  # what counts toward the verdict


@dataclass(frozen=True)
class Attribution:
    """What a per-channel chain was in the model it came from, and which rule said so."""

    source_type: str  # one of SOURCE_TYPES
    layer: str | None  # the layer's name, when the names tell it
    rule: str  # the rule that decided (the module docstring)


def has_names(model: TFLiteModel) -> bool:
    """Whether any tensor of the file has a name (a stripped file has none)."""
    return any(t.name for sg in model.subgraphs for t in sg.tensors)


# ---------------------------------------------------------------- attribution


_TORCH_BN = re.compile(r"(?:^|\.)BatchNorm[123]d_")
_RESCALING = re.compile(r"^rescaling(_\d+)*$")


def attribute(model: TFLiteModel, sg: Subgraph, chain: tuple[Step, ...], bn_layers=None,
              names: bool = True) -> Attribution:
    """What ``chain`` was: BN, Normalization, Rescaling or unknown (the module docstring)."""
    named = _named(sg, chain, bn_layers)
    if named is not None:
        return named
    told = any(part for st in chain for t in (*st.op.outputs, *st.op.inputs) if t >= 0
               for part in sg.tensors[t].name.split(";"))
    if chain_kind(chain) == "sub_mul" and _on_model_input(model, sg, chain[0].data):
        return Attribution("normalization", None, "form: x − c then · c, with no shift after "
                           "the scale, on a model input (input normalization)")
    if names and told:
        return Attribution("unknown", None, "form: a per-channel scale and shift whose names do "
                           "not tell what it was: counted as BN")
    return Attribution("bn", None, "form: a per-channel scale and shift, as converters write "
                       "BN (the file has no names)")


def _named(sg: Subgraph, chain: tuple[Step, ...], bn_layers) -> Attribution | None:
    """What the chain's tensor names say it was (a BN layer's scope, a Keras Normalization's
    Sub and truediv, a Rescaling's scope), or None where they say none of these."""
    bn = _first([n for st in chain for n in bn_sources(sg, st.op, bn_layers)])
    if bn is not None:
        return Attribution("bn", bn, "names: a BN layer's scope")
    scopes: dict[str, set[str]] = {}
    for part in (part for st in chain for t in st.op.outputs if t >= 0
                 for part in sg.tensors[t].name.split(";") if part):
        *path, leaf = part.split("/")
        if path:
            scopes.setdefault(path[-1], set()).add(leaf)
    for scope, leaves in scopes.items():
        if {"Sub", "truediv"} <= leaves:
            return Attribution("normalization", _resolve(scope, None),
                               "names: a Keras Normalization's Sub and truediv")
        if _RESCALING.match(scope):
            return Attribution("rescaling", _resolve(scope, None),
                               "names: a Rescaling layer's scope")
    return None


_THROUGH = ("TRANSPOSE", "RESHAPE", "DEQUANTIZE", "QUANTIZE")


def _on_model_input(model: TFLiteModel, sg: Subgraph, tensor: int) -> bool:
    """``tensor`` is a subgraph input, or made from one by layout changes and scalar
    rescaling only (a MUL/ADD/SUB by a one-value constant)."""
    producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
    inputs = set(sg.inputs)
    for _ in range(16):
        if tensor in inputs:
            return True
        op = producer.get(tensor)
        if op is None or not op.inputs or op.inputs[0] < 0:
            return False
        if op.op in AFFINE_OPS:
            data = [t for t in op.inputs if t >= 0
                    and constant_source(model, sg, t, producer) is None]
            consts = [t for t in op.inputs if t >= 0 and t not in data]
            if len(data) != 1 or len(consts) != 1 or sg.tensors[consts[0]].num_elements != 1:
                return False
            tensor = data[0]
        elif op.op in _THROUGH:
            tensor = op.inputs[0]
        else:
            return False
    return False


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
    for i, part in enumerate(parts):  # litert-torch: <module class>_<attribute> components
        if _TORCH_BN.search(part):
            return _torch_path(parts[:i + 1])
    for i, part in enumerate(parts):
        if i > 0 and any(part.startswith(m) for m in _BN_MARKERS):
            return parts[i - 1]
    for part in parts[:-1]:
        if _BN_LAYER.match(part):
            return part
    return None


def _torch_path(parts: list[str]) -> str:
    """A PyTorch module's attribute path from litert-torch's names, whose components are
    ``<module class>_<attribute>`` (``torch.nn.modules.batchnorm.BatchNorm2d_bn``): ``bn``,
    or ``features/denseblock1/denselayer1/norm1`` when nested."""
    attrs = []
    for part in parts:
        tail = part.rsplit(".", 1)[-1]
        match = re.match(r"(_?[^_]+)_(.+)$", tail)
        if match:
            attrs.append(match.group(2))
    return "/".join(attrs)


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
