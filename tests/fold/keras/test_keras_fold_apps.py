"""edgebn fold on keras.applications: every family folds what can fold, exactly (slow).

Each family is built with ``weights=None`` at a small input, its BN statistics randomised
(so no fold is trivially the identity), folded, and the folded float32 model compared here
with the original run in float64 (built under a float64 dtype policy, the same weights):
it must be as close to those outputs as the original float32 model is.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from patterns import randomise_bn_statistics

from edgebn.errors import FoldError
from edgebn.fold.keras.keras_fold import all_bn_layer_names, bn_layer_paths, fold_model

pytestmark = pytest.mark.slow

# family -> (input size, BN layers, BN kept)
FAMILIES = {
    "MobileNetV2": (32, 52, 0),
    "MobileNetV3Small": (32, 34, 0),
    "MobileNetV3Large": (32, 46, 0),
    "ResNet50": (32, 53, 0),
    "ResNet50V2": (32, 49, 17),  # pre-activation: Add -> BN -> ReLU
    "DenseNet121": (32, 121, 62),  # Concatenate (read by later layers too) -> BN -> ReLU
    "EfficientNetB0": (32, 49, 0),
    "EfficientNetV2B0": (32, 59, 0),
    "InceptionV3": (75, 94, 0),  # BN(scale=False) after every convolution
    "Xception": (71, 40, 0),  # 34 of them after a SeparableConv2D
    "NASNetMobile": (32, 192, 0),  # SeparableConv2D, and Concatenate of two convolutions
    "ConvNeXtTiny": (32, 0, 0),  # LayerNormalization only
}
# Where no exact fold exists: the BN reads an Add, a Concatenate or a pool (no linear layer
# owns its input) and a ReLU reads it (nothing linear to absorb it forward).
NO_EXACT_FOLD = re.compile(r"^backward: its input comes from \S+ \((Add|Concatenate|MaxPooling2D|"
                           r"AveragePooling2D)\).*; forward: \S+ after it \(Activation\) applies "
                           r"relu$")
SAMPLES = 4


def _build(family: str, dtype: str = "float32"):
    """``family`` without its head, average-pooled, at its small input, in ``dtype``."""
    import keras

    size = FAMILIES[family][0]
    policy, floatx = keras.config.dtype_policy(), keras.config.floatx()
    keras.config.set_dtype_policy(dtype)
    keras.config.set_floatx(dtype)
    try:
        keras.utils.set_random_seed(0)
        build = getattr(keras.applications, family)
        return build(include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
    finally:
        keras.config.set_dtype_policy(policy)
        keras.config.set_floatx(floatx)


def _inputs(size: int, n: int = SAMPLES) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_application_folds_exactly(family):
    size, bn_count, kept_count = FAMILIES[family]
    model = _build(family)
    assert randomise_bn_statistics(model, seed=1) == bn_count
    x = _inputs(size)
    result = fold_model(model, x)

    assert sorted(f.bn for f in result.layers) == sorted(bn_layer_paths(model))
    assert len(result.kept) == kept_count
    for fold in result.kept:
        assert NO_EXACT_FOLD.match(fold.reason), (fold.bn, fold.reason)
    assert sorted(all_bn_layer_names(result.model)) == sorted(f.bn for f in result.kept)
    assert result.measure == "float64 reference" or bn_count == 0
    if family == "Xception":
        into = [type(result.model.get_layer(f.into)).__name__ for f in result.layers]
        assert into.count("SeparableConv2D") == 34

    # Independent of the library's check: the original in float64 is the truth.
    original64 = _build(family, "float64")
    original64.set_weights(model.get_weights())
    y64 = np.asarray(original64(x.astype(np.float64), training=False), np.float64)
    y32 = np.asarray(model(x, training=False), np.float64)
    f32 = np.asarray(result.model(x, training=False), np.float64)
    peak = np.max(np.abs(y64))
    noise = np.max(np.abs(y32 - y64)) / peak  # the original's own float32 rounding
    error = np.max(np.abs(f32 - y64)) / peak
    assert error <= 4 * noise + 1e-7, (error, noise)
    assert np.max(np.abs(f32 - y32)) / peak <= 1e-5


def test_a_wrong_fold_deep_in_a_network_is_refused(monkeypatch):
    """One channel's scale off by 1e-3 in one of 52 BN: float32 alone would not tell."""
    import edgebn.fold.keras.graph as fold_graph

    right = fold_graph.bn_affine

    def wrong(bn):
        s, t = right(bn)
        if bn.name == "block_16_project_BN":
            s = s.copy()
            s[0] *= 1 + 1e-3
        return s, t

    model = _build("MobileNetV2")
    randomise_bn_statistics(model, seed=1)
    x = _inputs(32)
    assert fold_model(model, x).fold_rel_diff < 1e-12
    monkeypatch.setattr(fold_graph, "bn_affine", wrong)
    with pytest.raises(FoldError, match=r"^the fold is not exact: in float64"):
        fold_model(model, x)


def test_a_transfer_learning_model_folds_its_backbone_completely():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None,
                                              input_shape=(96, 96, 3))
    model = keras.Sequential([keras.Input((96, 96, 3)), L.Rescaling(1 / 127.5, offset=-1), backbone,
                              L.GlobalAveragePooling2D(), L.Dropout(0.2), L.Dense(5)])
    assert randomise_bn_statistics(model, seed=2) == 52
    x = np.random.default_rng(0).uniform(0, 255, (SAMPLES, 96, 96, 3)).astype(np.float32)
    result = fold_model(model, x)
    assert result.all_folded and len(result.layers) == 52
    assert all(f.bn.startswith("mobilenetv2_1.00_96/") and f.into.startswith("mobilenetv2_1.00_96/")
               for f in result.layers)
    assert all_bn_layer_names(result.model) == []
    inner = result.model.get_layer(backbone.name)
    kept_names = {la.name for la in backbone.layers} - set(all_bn_layer_names(backbone))
    assert {la.name for la in inner.layers} == kept_names  # the converter's names map back
    y, f = (np.asarray(m(x, training=False), np.float64) for m in (model, result.model))
    assert np.max(np.abs(f - y)) / np.max(np.abs(y)) <= 1e-5
    assert result.fold_rel_diff < 1e-12
