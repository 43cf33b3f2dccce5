"""A fold fuzz over layer types (issue 27): seeded small models that put each layer an image
classifier may hold next to a BN, in several positions; whenever ``edgebn fold`` writes a
model (exit 0 or 1), that file's outputs must equal the original's within the tolerance,
measured here by Keras alone (the file loaded with ``keras.models.load_model``).

The layers: Normalization (adapted), Rescaling, Resizing, CenterCrop, Dropout,
GaussianNoise, LayerNormalization, GroupNormalization, UnitNormalization, activations,
pooling, Concatenate and Add, beside Conv2D, DepthwiseConv2D and Dense with and without a
bias, and BN before, after and between them with random statistics (γ of either sign).
"""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

pytestmark = pytest.mark.heavy  # scheduled first (tests/conftest.py)

runner = CliRunner()
# 100 seeded models in the suite (its 10-minute budget); EDGEBN_FOLD_FUZZ_CASES=200 runs the
# issue's full count (its outcome counts are in the note)
CASES = int(os.environ.get("EDGEBN_FOLD_FUZZ_CASES", "100"))
SHAPE = (8, 8, 3)
TOLERANCE = 1e-5  # fold's default: beyond float32 rounding, relative to the largest output


def _bn(L, rng, x):
    return L.BatchNormalization(center=bool(rng.random() < 0.9), scale=bool(rng.random() < 0.9))(x)


def _linear(L, rng, x, channels):
    kind = rng.choice(["conv_valid", "conv_same", "depthwise", "conv1"])
    bias = bool(rng.random() < 0.5)
    if kind == "depthwise":
        return L.DepthwiseConv2D(3, padding=str(rng.choice(["valid", "same"])), use_bias=bias)(x)
    size = 1 if kind == "conv1" else 3
    return L.Conv2D(channels, size, padding="same" if kind == "conv_same" else "valid",
                    use_bias=bias)(x)


_ACTIVATIONS = ("relu", "tanh", "leaky", "linear")


def _activation(L, rng, x):
    kind = rng.choice(_ACTIVATIONS)
    if kind == "leaky":
        return L.LeakyReLU(negative_slope=0.1)(x)
    return L.Activation(str(kind))(x)


def _between(L, rng, x, data):
    """One of the layers that sit next to a BN and are not linear."""
    kind = rng.choice(["normalization", "rescaling", "dropout", "noise", "layernorm", "groupnorm",
                       "unitnorm", "maxpool", "avgpool", "activation"])
    if kind == "normalization":
        layer = L.Normalization(axis=-1)
        layer.adapt(data(x))
        return layer(x)
    if kind == "rescaling":
        return L.Rescaling(float(rng.uniform(0.5, 2)), offset=float(rng.normal(0, 1)))(x)
    if kind == "dropout":
        return L.Dropout(0.3)(x)
    if kind == "noise":
        return L.GaussianNoise(0.5)(x)
    if kind == "layernorm":
        return L.LayerNormalization()(x)
    if kind == "groupnorm":
        return L.GroupNormalization(groups=int(x.shape[-1]) if x.shape[-1] % 2 else 2)(x)
    if kind == "unitnorm":
        return L.UnitNormalization()(x)
    if kind in ("maxpool", "avgpool") and min(x.shape[1:3]) >= 4:
        return (L.MaxPooling2D if kind == "maxpool" else L.AveragePooling2D)(2)(x)
    return _activation(L, rng, x)


def _front(L, rng, x, sample):
    """The input side: an adapted Normalization, a Rescaling, a Resizing or a CenterCrop."""
    front = rng.choice(["normalization", "rescaling", "resizing", "centercrop", "none"])
    if front == "normalization":
        norm = L.Normalization(axis=-1)
        norm.adapt(sample)
        return norm(x)
    if front == "rescaling":
        return L.Rescaling(1 / 127.5, offset=-1.0)(x)
    if front == "resizing":
        return L.Rescaling(1 / 255)(L.Resizing(10, 10)(x))
    if front == "centercrop":
        return L.Rescaling(1 / 255)(L.CenterCrop(6, 6)(x))
    return x


def _block(L, rng, x, data):
    """Linear then BN, BN then linear, a layer between, or two branches joined, then BN."""
    block = rng.choice(["linear_bn", "bn_linear", "between", "concat", "add"])
    channels = int(rng.integers(3, 6))
    if block == "linear_bn":
        x = _bn(L, rng, _linear(L, rng, x, channels))
        return _activation(L, rng, x) if rng.random() < 0.6 else x
    if block == "bn_linear":
        return _linear(L, rng, _bn(L, rng, x), channels)
    if block == "between":
        return _between(L, rng, _bn(L, rng, x) if rng.random() < 0.5 else x, data)
    a = L.Conv2D(channels, 1, use_bias=bool(rng.random() < 0.5))(x)
    b = L.Conv2D(channels, 1)(x)
    x = _bn(L, rng, L.Concatenate()([a, b]) if block == "concat" else L.Add()([a, b]))
    return _activation(L, rng, x) if rng.random() < 0.5 else x


def build_case(seed: int):
    """One seeded model: a front end, three blocks, a head, BN statistics random."""
    import keras
    from keras import layers as L
    from patterns import randomise_bn_statistics

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    sample = rng.uniform(0, 255, (64, *SHAPE)).astype(np.float32)
    inputs = keras.Input(SHAPE)

    def data(tensor):  # the values a layer reading ``tensor`` sees, for Normalization.adapt
        return keras.Model(inputs, tensor).predict(sample, verbose=0)

    x = _front(L, rng, inputs, sample)
    for _ in range(3):
        x = _block(L, rng, x, data)
    x = L.GlobalAveragePooling2D()(x) if rng.random() < 0.5 else L.Flatten()(x)
    if rng.random() < 0.5:
        x = _bn(L, rng, x)
    x = L.Dense(6, use_bias=bool(rng.random() < 0.5))(x)
    if rng.random() < 0.5:
        x = _bn(L, rng, L.Dropout(0.2)(x))
    model = keras.Model(inputs, L.Dense(3)(x))
    randomise_bn_statistics(model, seed=seed)
    for layer in model.layers:  # γ of either sign: a fold that loses a sign shows
        if isinstance(layer, L.BatchNormalization) and layer.gamma is not None:
            gamma = layer.gamma.numpy()
            layer.gamma.assign(gamma * rng.choice([-1.0, 1.0], gamma.shape))
    return model, sample[:16]


def _outputs(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False), np.float64)


@pytest.mark.slow
def test_keras_fold_fuzz_over_layer_types(tmp_path):
    import keras

    outcomes: collections.Counter = collections.Counter()
    types: collections.Counter = collections.Counter()
    for seed in range(CASES):
        model, x = build_case(seed)
        types.update({type(layer).__name__ for layer in model.layers})
        src, out, inputs = (tmp_path / f"{seed}.keras", tmp_path / f"{seed}-f.keras",
                            tmp_path / f"{seed}.npy")
        model.save(src)
        np.save(inputs, x)
        r = runner.invoke(app, ["fold", str(src), "--out", str(out), "--data", str(inputs)])
        outcomes[r.exit_code] += 1
        assert r.exit_code in (0, 1, 2), (seed, r.output)
        if r.exit_code == 2:
            assert not out.exists(), seed
            outcomes["refused: " + r.output.strip().split(":")[1].strip()[:40]] += 1
            continue
        folded = keras.models.load_model(out)  # Keras alone from here
        y, f = _outputs(model, x), _outputs(folded, x)
        rel = np.max(np.abs(f - y)) / max(np.max(np.abs(y)), 1e-30)
        assert rel <= TOLERANCE + 1e-6, (seed, rel, r.output)
    print(f"\nkeras fold fuzz, {CASES} models: {dict(outcomes)}\nlayer types: {dict(types)}")
    # most models fold: a fuzz that folds nothing proves nothing
    assert outcomes[0] + outcomes[1] >= CASES // 2
    wanted = {"Normalization", "Rescaling", "Resizing", "CenterCrop", "Dropout", "GaussianNoise",
              "LayerNormalization", "GroupNormalization", "UnitNormalization", "Concatenate", "Add",
              "MaxPooling2D", "AveragePooling2D", "BatchNormalization", "DepthwiseConv2D"}
    assert wanted <= set(types), wanted - set(types)
