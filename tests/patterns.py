"""Small Keras models with BN in the positions the converter does and does not fold.

Each pattern is (builder, expected residual BN count after the TFLite converter).
BN statistics are set to random, non-trivial values (negative gamma included) so
that a fold that mixes up gamma, beta, mean or variance is visible numerically.
"""

from __future__ import annotations

import numpy as np

INPUT_SHAPE = (8, 8, 3)


def set_random_bn(model, seed: int = 0) -> None:
    from keras import layers

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
            layer.set_weights([gamma, rng.normal(0, 1, c), rng.normal(0, 1, c),
                               rng.uniform(0.2, 2.0, c)])


def _conv_bn_relu(L, x):
    return L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3, use_bias=False)(x)))


def _dwconv_bn(L, x):
    return L.BatchNormalization()(L.DepthwiseConv2D(3)(x))


def _dense_bn(L, x):
    return L.BatchNormalization()(L.Dense(6, use_bias=False)(L.Flatten()(x)))


def _relu_bn_pool(L, x):
    return L.MaxPooling2D()(L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x)))


def _add_bn(L, x):
    y = L.Conv2D(3, 3, padding="same")(x)
    return L.BatchNormalization()(L.Add()([x, y]))


def _bn_last(L, x):
    return L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))


def _bn_before_conv(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.Conv2D(5, 3)(y)


def _rescaling(L, x):
    y = L.Conv2D(4, 3, activation="relu")(x)
    return L.Rescaling(2.0, offset=-1.0)(y)


# name -> (builder, residual BN count expected from the converter alone)
PATTERNS = {
    "conv_bn_relu": (_conv_bn_relu, 0),
    "dwconv_bn": (_dwconv_bn, 0),
    "dense_bn": (_dense_bn, 0),
    "relu_bn_pool": (_relu_bn_pool, 1),
    "add_bn": (_add_bn, 1),
    "bn_last": (_bn_last, 1),
    "bn_before_conv": (_bn_before_conv, 1),
    "rescaling": (_rescaling, 0),  # a scalar MUL+ADD: not BN
}


def build_pattern(name: str, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    builder, _ = PATTERNS[name]
    inputs = keras.Input(INPUT_SHAPE)
    model = keras.Model(inputs, builder(layers, inputs), name=name)
    set_random_bn(model, seed)
    return model


def representative(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *INPUT_SHAPE), dtype=np.float32)
