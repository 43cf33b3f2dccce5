"""The model zoo: name -> builder, each with a BN-free twin of the same widths.

BN layers are named ``bn1``, ``bn2``, ... so that the converter's tensor names
map back to them unambiguously. The twin (``bn=False``) drops every BN and gives
the layer before it a bias, so it computes what the folded model computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Arch(str, Enum):
    mlp = "mlp"
    mlp_prebn = "mlp-prebn"
    cnn = "cnn"
    mobilenet_v2 = "mobilenet-v2"  # keras.applications backbones: edgebn.zoo.backbones
    mobilenet_v3_small = "mobilenet-v3-small"
    efficientnet_b0 = "efficientnet-b0"


DEFAULT_ARCH = Arch.cnn
BACKBONE_ARCHS = frozenset({Arch.mobilenet_v2, Arch.mobilenet_v3_small, Arch.efficientnet_b0})


def is_backbone(arch: Arch | str) -> bool:
    """A pretrained keras.applications backbone with a new head (edgebn.zoo.backbones)."""
    return Arch(arch) in BACKBONE_ARCHS


@dataclass(frozen=True)
class ArchSpec:
    build: Callable[..., Any]
    summary: str


def _namer():
    counts: dict[str, int] = {}

    def name(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}{counts[kind]}"

    return name


def _mlp(input_shape, classes: int, bn: bool):
    """The textbook model: Flatten, BN, Dense(300, relu), BN, Dense(100, relu), BN, softmax."""
    from keras import Input, Model, layers

    n = _namer()
    inputs = Input(input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    for width in (300, 100):
        if bn:
            x = layers.BatchNormalization(name=n("bn"))(x)
        x = layers.Dense(width, activation="relu", name=n("fc"))(x)
    if bn:
        x = layers.BatchNormalization(name=n("bn"))(x)
    outputs = layers.Dense(classes, activation="softmax", name="head")(x)
    return Model(inputs, outputs, name="mlp" if bn else "mlp_nobn")


def _mlp_prebn(input_shape, classes: int, bn: bool):
    """Dense(use_bias=False) -> BN -> ReLU for each hidden layer (the folding-friendly order)."""
    from keras import Input, Model, layers

    n = _namer()
    inputs = Input(input_shape, name="image")
    x = layers.Flatten(name="flatten")(inputs)
    for width in (300, 100):
        x = layers.Dense(width, use_bias=not bn, name=n("fc"))(x)
        if bn:
            x = layers.BatchNormalization(name=n("bn"))(x)
        x = layers.ReLU(name=n("relu"))(x)
    outputs = layers.Dense(classes, activation="softmax", name="head")(x)
    return Model(inputs, outputs, name="mlp_prebn" if bn else "mlp_prebn_nobn")


def _cnn(input_shape, classes: int, bn: bool):
    """Conv(no bias) -> BN -> ReLU blocks, one depthwise-separable, global pooling, Dense head."""
    from keras import Input, Model, layers

    n = _namer()

    def block(x, layer):
        x = layer(x)
        if bn:
            x = layers.BatchNormalization(name=n("bn"))(x)
        return layers.ReLU(name=n("relu"))(x)

    inputs = Input(input_shape, name="image")
    x = block(inputs, layers.Conv2D(64, 3, padding="same", use_bias=not bn, name=n("conv")))
    x = block(x, layers.DepthwiseConv2D(3, padding="same", use_bias=not bn, name=n("dwconv")))
    x = block(x, layers.Conv2D(64, 1, use_bias=not bn, name=n("conv")))
    if input_shape[0] >= 16:
        x = layers.MaxPooling2D(2, name="pool")(x)
    x = block(x, layers.Conv2D(64, 3, padding="same", use_bias=not bn, name=n("conv")))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(classes, activation="softmax", name="head")(x)
    return Model(inputs, outputs, name="cnn" if bn else "cnn_nobn")


ZOO: dict[Arch, ArchSpec] = {
    Arch.mlp: ArchSpec(_mlp, "Flatten, BN, Dense(300, relu), BN, Dense(100, relu), BN, softmax"),
    Arch.mlp_prebn: ArchSpec(_mlp_prebn, "Dense(no bias) -> BN -> ReLU x2, softmax"),
    Arch.cnn: ArchSpec(_cnn, "Conv(no bias)-BN-ReLU, depthwise-separable block, Conv, GAP, Dense"),
}


def build_model(arch: Arch | str, input_shape, classes: int, bn: bool = True):
    """A fresh, uncompiled Keras model of ``arch`` (its BN-free twin when ``bn`` is False).

    The backbones are built by :func:`edgebn.zoo.backbones.build_transfer`.
    """
    return ZOO[Arch(arch)].build(tuple(input_shape), classes, bn)


def bn_layer_names(model) -> list[str]:
    from keras import layers

    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def input_normalizer(model) -> str | None:
    """The name of the Rescaling/Normalization layer a model starts with (at any nesting), if any.

    Such a model takes raw pixels; without one, its inputs must be scaled before it.
    """
    from keras import layers

    def first(m):
        inputs = {id(t) for t in m.inputs}
        for layer in m.layers:
            if isinstance(layer, layers.InputLayer):
                continue
            node_inputs = [t for n in layer._inbound_nodes for t in n.input_tensors]
            if any(id(t) in inputs for t in node_inputs) or not hasattr(m, "_inbound_nodes"):
                return layer
        return None

    layer = first(model)
    while layer is not None and hasattr(layer, "layers") and hasattr(layer, "inputs"):
        layer = first(layer)  # a nested model: look at its own first layer
    if isinstance(layer, (layers.Rescaling, layers.Normalization)):
        return layer.name
    return None


def fit_data(data, model):
    """``data`` (a DataSpec) made to fit a model trained elsewhere, and who decided the scale."""
    normalizer = input_normalizer(model)
    shape = tuple(model.input_shape[1:])
    return data.for_model(shape, normalizer), data.preprocessing_source(normalizer)
