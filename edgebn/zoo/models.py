"""The archs, one :class:`ArchSpec` row each: the small zoo models and the backbones.

Adding an arch is one row in :data:`ARCHS`: the :class:`Arch` enum (the CLI's ``--arch``
choices), ``ZOO``, ``BACKBONES``, the size limits and the option checks derive from it.
A small zoo model has a builder, and a BN-free twin of the same widths.

BN layers are named ``bn1``, ``bn2``, ... so that the converter's tensor names
map back to them unambiguously. The twin (``bn=False``) drops every BN and gives
the layer before it a bias, so it computes what the folded model computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from edgebn.choices import by_name, choice_enum, pick
from edgebn.data.dataset import DataSpec
from edgebn.errors import EdgebnError

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras


def _namer():
    counts: dict[str, int] = {}

    def name(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}{counts[kind]}"

    return name


def _mlp(input_shape: tuple[int, ...], classes: int, bn: bool) -> keras.Model:
    """The textbook model: Flatten, BN, Dense(300, relu), BN, Dense(100, relu), BN, softmax."""
    from keras import Input, Model, layers  # lazy: Keras imports TensorFlow (seconds)

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


def _mlp_prebn(input_shape: tuple[int, ...], classes: int, bn: bool) -> keras.Model:
    """Dense(use_bias=False) -> BN -> ReLU for each hidden layer (the folding-friendly order)."""
    from keras import Input, Model, layers  # lazy: Keras imports TensorFlow (seconds)

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


def _cnn(input_shape: tuple[int, ...], classes: int, bn: bool) -> keras.Model:
    """Conv(no bias) -> BN -> ReLU blocks, one depthwise-separable, global pooling, Dense head."""
    from keras import Input, Model, layers  # lazy: Keras imports TensorFlow (seconds)

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


@dataclass(frozen=True)
class Backbone:
    """A keras.applications backbone with a new head (built by edgebn.zoo.backbones)."""

    application: str  # the keras.applications function
    alpha: bool = False  # takes a width multiplier
    rescale: bool = False  # needs a Rescaling to [-1, 1] in front (it does not normalize itself)
    image_size: int = 96  # the default side of its RGB images
    min_size: int = 32  # the sides it is built at
    max_size: int = 224


@dataclass(frozen=True)
class ArchSpec:
    """One arch: a small zoo model (``build``, with a BN-free twin) or a ``backbone``."""

    name: str
    summary: str
    build: Callable[[tuple[int, ...], int, bool], keras.Model] | None = None  # (shape, classes, bn)
    backbone: Backbone | None = None

    @property
    def twin(self) -> bool:
        """Has a BN-free twin of the same widths (``bn=False``): the small zoo models."""
        return self.build is not None


ARCHS: tuple[ArchSpec, ...] = (
    ArchSpec("mlp", "Flatten, BN, Dense(300, relu), BN, Dense(100, relu), BN, softmax", _mlp),
    ArchSpec("mlp-prebn", "Dense(no bias) -> BN -> ReLU x2, softmax", _mlp_prebn),
    ArchSpec("cnn", "Conv(no bias)-BN-ReLU, depthwise-separable block, Conv, GAP, Dense", _cnn),
    ArchSpec("mobilenet-v2", "MobileNetV2 backbone (keras.applications), GAP, Dropout, Dense",
             backbone=Backbone("MobileNetV2", alpha=True, rescale=True)),
    ArchSpec("mobilenet-v3-small", "MobileNetV3Small backbone, GAP, Dropout, Dense",
             backbone=Backbone("MobileNetV3Small", alpha=True)),
    ArchSpec("efficientnet-b0", "EfficientNetB0 backbone, GAP, Dropout, Dense",
             backbone=Backbone("EfficientNetB0")),
)
ARCH = by_name(ARCHS)
Arch = choice_enum("Arch", ARCHS, __name__)
DEFAULT_ARCH = Arch.cnn
ZOO: dict[Enum, ArchSpec] = {Arch(s.name): s for s in ARCHS if s.backbone is None}
BACKBONES: dict[Enum, Backbone] = {Arch(s.name): s.backbone for s in ARCHS if s.backbone}
BACKBONE_ARCHS = frozenset(BACKBONES)
BACKBONE_NAMES = ", ".join(s.name for s in ARCHS if s.backbone)  # for help and errors


def arch_spec(arch: str | Enum) -> ArchSpec:
    """The row of ``arch`` (a name or an :class:`Arch`); EdgebnError for any other."""
    return pick(ARCH, arch, "arch")


def is_backbone(arch: str | Enum) -> bool:
    """A pretrained keras.applications backbone with a new head (edgebn.zoo.backbones)."""
    return arch_spec(arch).backbone is not None


def build_model(arch: str | Enum, input_shape: tuple[int, ...], classes: int, bn: bool = True
                ) -> keras.Model:
    """A fresh, uncompiled Keras model of ``arch`` (its BN-free twin when ``bn`` is False).

    The backbones are built by :func:`edgebn.zoo.backbones.build_transfer`.
    """
    spec = arch_spec(arch)
    if spec.build is None:
        raise EdgebnError(f"{spec.name} is a backbone: edgebn.zoo.backbones builds it")
    return spec.build(tuple(input_shape), classes, bn)


def input_normalizer(model: keras.Model) -> str | None:
    """The name of the Rescaling/Normalization layer a model starts with (at any nesting), if any.

    Such a model takes raw pixels; without one, its inputs must be scaled before it.
    """
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    def first(m: keras.Model) -> keras.layers.Layer | None:
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


def fit_data(data: DataSpec, model: keras.Model) -> tuple[DataSpec, str]:
    """``data`` (a DataSpec) made to fit a model trained elsewhere, and who decided the scale."""
    normalizer = input_normalizer(model)
    shape = tuple(model.input_shape[1:])
    return data.for_model(shape, normalizer), data.preprocessing_source(normalizer)
