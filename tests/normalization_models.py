"""Issue 27's models: an adapted Keras ``Normalization`` first, then conv -> BN, on a small task
whose class is one channel's brightness (shared by the fold, inspect and .h5 tests)."""

from __future__ import annotations

import numpy as np


def task(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16x16x3 inputs around 100 (raw-pixel scale), the class in one channel's brightness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 16, 16, 3)).astype(np.float32) * 20 + 100
    for c in range(3):
        x[y == c, :, :, c] += 30
    return x, y


def fit(model, x: np.ndarray, y: np.ndarray):
    """Two epochs of Adam: enough for BN statistics and weights that are not the initial ones."""
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    return model


def sequential(padding: str = "valid", use_bias: bool = True):
    """The issue's model, trained: Normalization (adapted) -> Conv2D(8, 3) -> BN -> ReLU ->
    GAP -> Dense(3)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x, y = task()
    norm = layers.Normalization()
    norm.adapt(x)
    model = keras.Sequential([keras.Input((16, 16, 3)), norm,
                              layers.Conv2D(8, 3, padding=padding, use_bias=use_bias),
                              layers.BatchNormalization(), layers.ReLU(),
                              layers.GlobalAveragePooling2D(),
                              layers.Dense(3, activation="softmax")])
    return fit(model, x, y)
