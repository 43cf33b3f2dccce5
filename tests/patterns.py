"""Small Keras models with BN in the positions the converter does and does not fold.

Each pattern is (builder, expected residual BN count after the TFLite converter).
BN statistics are set to random, non-trivial values (negative gamma included) so
that a fold that mixes up gamma, beta, mean or variance is visible numerically.
"""

from __future__ import annotations

import numpy as np

INPUT_SHAPE = (8, 8, 3)


def set_random_bn(model, seed: int = 0, positive: bool = False, negative: bool = False) -> None:
    """Random BN statistics; γ of random sign, or all > 0 (``positive``), or some < 0 for sure."""
    from keras import layers

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            magnitude = rng.uniform(0.5, 2.0, c)
            sign = np.ones(c) if positive else rng.choice([-1.0, 1.0], c)
            if negative:
                sign[0] = -1.0
            gamma = magnitude * sign
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


# ---------------------------------------------------------------- fold patterns
# name -> (builder, {"input_shape": ..., "positive": γ > 0 only}, expected outcome per BN
# in graph order: "backward", "forward", or a regex that the kept BN's reason must match)


def _fold_relu_bn_pool_dense(L, x):
    y = L.MaxPooling2D()(L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x)))
    return L.Dense(5)(L.Flatten()(y))


def _fold_add_bn_gap_dense(L, x):
    y = L.Conv2D(3, 3, padding="same")(x)
    return L.Dense(5)(L.GlobalAveragePooling2D()(L.BatchNormalization()(L.Add()([x, y]))))


def _fold_bn_before_conv_same(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.Conv2D(5, 3, padding="same")(y)


def _fold_bn_before_dwconv(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.DepthwiseConv2D(3, depth_multiplier=2)(y)


def _fold_input_bn_flatten_dense(L, x):
    return L.Dense(5, activation="softmax")(L.Dropout(0.5)(L.Flatten()(L.BatchNormalization()(x))))


def _fold_transpose_bn(L, x):
    return L.BatchNormalization()(L.Conv2DTranspose(4, 3, strides=2, use_bias=False)(x))


def _fold_bn_before_transpose(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.Conv2DTranspose(3, 3, strides=2)(y)


def _fold_conv_bn_bn(L, x):
    return L.BatchNormalization()(L.BatchNormalization()(L.Conv2D(4, 3)(x)))


def _fold_conv_branch_bn(L, x):
    y = L.Conv2D(3, 3, padding="same")(x)
    return L.Add()([y, L.BatchNormalization()(y)])


def _fold_channels_first(L, x):
    y = L.Conv2D(4, 3, data_format="channels_first", use_bias=False)(L.Permute((3, 1, 2))(x))
    return L.BatchNormalization(axis=1)(y)


def _fold_conv1d_bias_bn(L, x):
    return L.BatchNormalization()(L.Conv1D(4, 3)(L.Reshape((8, 24))(x)))


def _fold_dense3d_bn(L, x):
    return L.BatchNormalization(axis=-1)(L.Dense(4)(L.Reshape((8, 24))(x)))


def _fold_dense3d_bn_axis1(L, x):
    return L.BatchNormalization(axis=1)(L.Dense(4)(L.Reshape((8, 24))(x)))


def _fold_bn_relu_dense(L, x):
    return L.Dense(5)(L.ReLU()(L.BatchNormalization()(L.Flatten()(x))))


FOLD_PATTERNS = {
    "conv_bn_relu": (_conv_bn_relu, False, ["backward"]),
    "dwconv_bn": (_dwconv_bn, False, ["backward"]),
    "dense_bn": (_dense_bn, False, ["backward"]),
    "relu_bn_pool": (_relu_bn_pool, False, [r"max-pool .* channels have γ < 0"]),
    "add_bn": (_add_bn, False, [r"add\w* \(Add\), not a Dense.*reaches the model output"]),
    "bn_last": (_bn_last, False, [r"applies relu before the BN; forward: nothing linear follows"]),
    "bn_before_conv": (_bn_before_conv, False, ["forward"]),
    "relu_bn_pool_dense": (_fold_relu_bn_pool_dense, True, ["forward"]),
    "relu_bn_pool_dense_negative": (_fold_relu_bn_pool_dense, False,
                                    [r"negative scale cannot pass the max-pool"]),
    "add_bn_gap_dense": (_fold_add_bn_gap_dense, False, ["forward"]),
    "bn_before_conv_same": (_fold_bn_before_conv_same, False,
                            [r"shift cannot pass the zero padding of conv2d_\d+ "
                             r"\(padding='same'\)"]),
    "bn_before_dwconv": (_fold_bn_before_dwconv, False, ["forward"]),
    "input_bn_flatten_dense": (_fold_input_bn_flatten_dense, False, ["forward"]),
    "transpose_bn": (_fold_transpose_bn, False, ["backward"]),
    "bn_before_transpose": (_fold_bn_before_transpose, False,
                            [r"shift cannot pass the transposed convolution"]),
    "conv_bn_bn": (_fold_conv_bn_bn, False, ["backward", "backward"]),
    "conv_branch_bn": (_fold_conv_branch_bn, False,
                       [r"output of conv2d_\d+ also feeds add.*combines several inputs"]),
    "channels_first": (_fold_channels_first, False, ["backward"]),
    "conv1d_bias_bn": (_fold_conv1d_bias_bn, False, ["backward"]),
    "dense3d_bn": (_fold_dense3d_bn, False, ["backward"]),
    "dense3d_bn_axis1": (_fold_dense3d_bn_axis1, False,
                         [r"BN axis 1 is not the channel axis of dense_\d+; forward: nothing"]),
    "bn_relu_dense": (_fold_bn_relu_dense, False,
                      [r"its input comes from flatten.*re_lu\w* after it \(ReLU\)"]),
}


def build_fold_pattern(name: str, seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    builder, positive, _ = FOLD_PATTERNS[name]
    inputs = keras.Input(INPUT_SHAPE)
    model = keras.Model(inputs, builder(layers, inputs), name=name)
    set_random_bn(model, seed, positive=positive, negative=name.endswith("_negative"))
    return model


# ---------------------------------------------------------------- deep and nested models


def randomise_bn_statistics(model, seed: int = 0) -> int:
    """Non-trivial statistics for every BN at any depth; returns how many BN layers there are.

    μ ~ N(0, 0.1), var ~ U(0.5, 1.5), γ ~ U(0.5, 1.5), β ~ N(0, 0.1), for the weights a
    layer has (``scale=False`` has no γ, ``center=False`` no β).
    """
    from keras import layers

    rng = np.random.default_rng(seed)
    count = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        stack.extend(getattr(layer, "layers", []))
        if not isinstance(layer, layers.BatchNormalization):
            continue
        count += 1
        c = layer.moving_mean.shape[0]
        if layer.gamma is not None:
            layer.gamma.assign(rng.uniform(0.5, 1.5, c))
        if layer.beta is not None:
            layer.beta.assign(rng.normal(0, 0.1, c))
        layer.moving_mean.assign(rng.normal(0, 0.1, c))
        layer.moving_variance.assign(rng.uniform(0.5, 1.5, c))
    return count


def _fold_separable_bn(L, x):
    conv = L.SeparableConv2D(5, 3, depth_multiplier=2, use_bias=False)
    return L.ReLU()(L.BatchNormalization()(conv(x)))


def _fold_separable1d_bn(L, x):
    return L.BatchNormalization()(L.SeparableConv1D(4, 3)(L.Reshape((8, 24))(x)))


def _fold_bn_before_separable(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.SeparableConv2D(5, 3, depth_multiplier=2)(y)


def _fold_bn_before_separable_same(L, x):
    y = L.BatchNormalization()(L.Conv2D(4, 3, activation="relu")(x))
    return L.SeparableConv2D(5, 3, padding="same")(y)


def _fold_concat_bn(L, x):
    a = L.Conv2D(3, 3, use_bias=False)(x)
    b = L.DepthwiseConv2D(3)(x)
    return L.ReLU()(L.BatchNormalization()(L.Concatenate()([a, b])))


def _fold_concat_branch_bn(L, x):
    a = L.Conv2D(3, 3)(x)
    b = L.Conv2D(3, 3)(x)
    return L.Add()([L.Conv2D(6, 1)(a), L.ReLU()(L.BatchNormalization()(L.Concatenate()([a, b])))])


def _fold_concat_axis_bn(L, x):
    a = L.Conv2D(3, 1)(x)
    b = L.Conv2D(3, 1)(x)
    return L.ReLU()(L.BatchNormalization(axis=-1)(L.Concatenate(axis=1)([a, b])))


FOLD_PATTERNS.update({
    "separable_bn": (_fold_separable_bn, False, ["backward"]),
    "separable1d_bn": (_fold_separable1d_bn, False, ["backward"]),
    "bn_before_separable": (_fold_bn_before_separable, False, ["forward"]),
    "bn_before_separable_same": (_fold_bn_before_separable_same, False,
                                 [r"shift cannot pass the zero padding of separable_conv2d\w* "
                                  r"\(padding='same'\)"]),
    "concat_bn": (_fold_concat_bn, False, ["backward"]),
    "concat_branch_bn": (_fold_concat_branch_bn, False,
                         [r"Concatenate\), and the output of conv2d\w* also feeds conv2d"]),
    "concat_axis_bn": (_fold_concat_axis_bn, False,
                       [r"concatenate\w* concatenates axis 1, the BN normalizes axis 3"]),
})
