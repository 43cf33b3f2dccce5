"""Pretrained backbones from ``keras.applications`` with a new head: transfer learning.

The model is built as Keras' transfer-learning guide builds it, because Batch
Normalization is where transfer learning goes wrong: the backbone is frozen and called
with ``training=False``, so that its BN layers normalize with their moving statistics
and never update them, in the head's training and in fine-tuning alike.

The call's ``training=False`` alone does not hold in Keras 3.15: a functional model
passes its own ``training`` flag down to every nested model, over what the node was
called with (keras/src/models/functional.py, ``operation_fn``; measured: a Dropout
inside ``inner(x, training=False)`` drops when the outer model trains). What does hold
is the layer's flag: a Keras 3 BatchNormalization with ``trainable=False`` always runs
in inference mode. So every BN layer of the backbone stays ``trainable=False``, and
fine-tuning unfreezes the top of the backbone except its BN layers.

Every backbone takes raw pixels (0..255): EfficientNet and MobileNetV3 rescale
inside the application; MobileNetV2 gets a ``Rescaling`` to [-1, 1] in front.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgebn.data.dataset import DataSpec
from edgebn.data.images import Color
from edgebn.errors import EdgebnError
from edgebn.zoo.models import BACKBONES, Arch  # the backbones are rows of edgebn.zoo.models

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

FINE_TUNE_FRACTION = 0.3  # the top share of the backbone's layers that fine-tuning unfreezes
FINE_TUNE_LR_DIVISOR = 30.0  # fine-tuning's learning rate: the head's over this
BACKBONE_NAME = "backbone"  # the nested application model's name inside the built model


def data_for(arch: Arch, data: DataSpec) -> DataSpec:
    """The data spec a backbone needs: RGB, its size unless given, raw pixels unless declared."""
    spec = BACKBONES[Arch(arch)]
    if data.color is Color.grayscale:
        raise EdgebnError(f"{arch.value} takes RGB images. Received: {data.color.value}",
                          option="color")
    size = data.image_size or spec.image_size
    if not spec.min_size <= size <= spec.max_size:
        raise EdgebnError(f"{arch.value}: must be {spec.min_size} to {spec.max_size}. "
                          f"Received: {size}", option="image_size")
    if data.npz is None and data.data_dir is None:
        raise EdgebnError(f"{arch.value} trains on RGB images: give a folder of them (one "
                          "sub-folder per class) or an .npz", option="data_dir")
    return replace(data, image_size=size, color=Color.rgb,
                   scale=1.0 if data.scale is None else data.scale)


def check_weights(weights: str) -> None:
    """``none``, ``imagenet`` or an existing .h5 weights file (refused before any training)."""
    if weights in ("none", "imagenet"):
        return
    path = Path(weights)
    if not path.is_file():
        raise EdgebnError(f"{weights}: no such file (none, imagenet or a .h5 file)",
                          option="weights")
    if path.suffix != ".h5":
        raise EdgebnError(f"{weights}: expected a Keras .h5 weights file (a .weights.h5 or an "
                          "application's .h5)", option="weights")


def build_backbone(arch: Arch, input_shape: tuple[int, ...], alpha: float = 1.0,
                   weights: str = "none") -> keras.Model:
    """The application without its top, weights loaded, named :data:`BACKBONE_NAME`."""
    import keras  # lazy: Keras imports TensorFlow (seconds)

    spec = BACKBONES[arch]
    check_weights(weights)
    kwargs: dict[str, object] = {"input_shape": tuple(input_shape), "include_top": False,
                              "weights": None if weights == "none" else weights}
    if spec.alpha:
        kwargs["alpha"] = alpha
    elif alpha != 1.0:
        raise EdgebnError(f"{arch.value} has no width multiplier. Received: {alpha}",
                          option="alpha")
    try:
        model = getattr(keras.applications, spec.application)(**kwargs)
    except Exception as exc:  # download, shape or weights mismatch: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = "imagenet weights" if weights == "imagenet" else f"weights {weights}"
        raise EdgebnError(f"{arch.value}: cannot build with {what} ({first[:300]})") from exc
    model.name = BACKBONE_NAME
    return model


def build_transfer(arch: Arch, input_shape, classes: int, alpha: float = 1.0,
                   weights: str = "none") -> keras.Model:
    """Input -> [Rescaling] -> backbone -> GAP -> Dropout -> Dense.

    With pretrained weights (imagenet or a file) the backbone is frozen and called in
    inference mode; with ``weights="none"`` there is nothing to keep, and the whole
    model trains from scratch, its BN layers learning their statistics.
    """
    import keras  # lazy: Keras imports TensorFlow (seconds)
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    backbone = build_backbone(arch, input_shape, alpha, weights)
    pretrained = weights != "none"
    backbone.trainable = not pretrained
    if pretrained:
        _dropout_off(backbone)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    if BACKBONES[arch].rescale:
        x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(x)
    # training=False states the intent; BN's trainable=False is what enforces it (above)
    x = backbone(x, training=False) if pretrained else backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name=arch.value.replace("-", "_"))


def _dropout_off(backbone: keras.Model) -> None:
    """Rate 0 for the backbone's own Dropout layers (EfficientNet's stochastic depth).

    Keras 3 passes the outer ``training`` flag into the backbone (see above), so they
    would drop while the head trains; at rate 0 they are what inference sees, in
    training too. Inference is unchanged: Dropout is the identity there at any rate.
    """
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    for layer in backbone.layers:
        if isinstance(layer, layers.Dropout):
            layer.rate = 0.0


def find_backbone(model: keras.Model) -> keras.Model:
    """The nested application inside a built model (inside an augmentation wrapper too)."""
    for layer in model.layers:
        if layer.name == BACKBONE_NAME:
            return layer
        if hasattr(layer, "layers"):
            found = find_backbone(layer)
            if found is not None:
                return found
    return None


def unfreeze_top(model: keras.Model, fraction: float = FINE_TUNE_FRACTION) -> int:
    """Make the top ``fraction`` of the backbone's layers trainable, never its BN layers.

    A BN layer with ``trainable=False`` runs in inference mode in Keras 3: its statistics
    stay as they are. For a backbone trained from scratch (``--weights none``) this
    freezes what the first epochs learned: its BN statistics and its bottom 70 %; the
    top is then tuned at the lower rate. Returns the number of layers made trainable.
    """
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    backbone = find_backbone(model)
    backbone.trainable = True
    cut = int(len(backbone.layers) * (1 - fraction))
    unfrozen = 0
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= cut and not isinstance(layer, layers.BatchNormalization)
        unfrozen += bool(layer.trainable and layer.weights)
    return unfrozen


def augmentation(seed: int) -> list[keras.layers.Layer]:
    """Flip, small rotation, zoom: Keras preprocessing layers, identity at inference."""
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    return [layers.RandomFlip("horizontal", seed=seed, name="augment_flip"),
            layers.RandomRotation(0.05, seed=seed + 1, name="augment_rotate"),
            layers.RandomZoom(0.1, seed=seed + 2, name="augment_zoom")]


def with_augmentation(model: keras.Model, seed: int) -> keras.Model:
    """``model`` behind the augmentation layers (active in training only)."""
    import keras  # lazy: Keras imports TensorFlow (seconds)

    inputs = keras.Input(model.input_shape[1:], name="image")
    x = inputs
    for layer in augmentation(seed):
        x = layer(x)
    return keras.Model(inputs, model(x), name=f"{model.name}_augmented")
