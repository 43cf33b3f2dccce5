"""Synthetic inputs for smoke tests and measurements: image folders and backbone weights.

Nothing here downloads: the folder is generated, and the "pretrained" weights are a
backbone trained here on such a folder, saved in the legacy .h5 format of the
keras.applications ImageNet files. They are not ImageNet's, but a frozen backbone with
them gives features a new head can learn from (measured: logistic regression on them,
0.96 on the colour folder; on a randomly initialized backbone's, 0.375, its features
near 1e-11 since its BN statistics are still 0 and 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASS_COLORS = ("red", "green", "blue")


def write_image_folder(root: str | Path, per_class: int = 30, size: int = 64, seed: int = 0,
                       classes: tuple[str, ...] = CLASS_COLORS) -> Path:
    """A learnable folder: class k has its k-th colour channel raised (mod 3), over noise.

    Files alternate PNG and JPEG, and sizes vary by a few pixels, as real folders do.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = size + int(rng.integers(0, 5)), size + int(rng.integers(0, 5))
            arr = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
            arr[..., k % 3] += 120
            Image.fromarray(arr).save(root / name / f"{i:05d}.{'png' if i % 2 else 'jpg'}")
    return root


def pretrained_weights(out: str | Path, images: np.ndarray, labels: np.ndarray,
                       arch: str = "mobilenet-v2", alpha: float = 1.0, epochs: int = 5,
                       seed: int = 0) -> Path:
    """A backbone pretrained here on ``images`` (raw pixels 0..255, N x S x S x 3), saved
    without its top as a legacy .h5, the format of the keras.applications ImageNet files.

    After training, one training-mode pass with momentum 0 sets every BN's moving
    statistics to the data's (Keras' momentum of 0.999 would take thousands of steps).
    """
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    from edgebn.zoo.backbones import BACKBONES, build_backbone
    from edgebn.zoo.models import Arch

    arch = Arch(arch)
    keras.utils.set_random_seed(seed)
    size = images.shape[1]
    backbone = build_backbone(arch, (size, size, 3), alpha if BACKBONES[arch].alpha else 1.0)
    x = images.astype(np.float32) / 127.5 - 1.0 if BACKBONES[arch].rescale else \
        images.astype(np.float32)
    inputs = keras.Input((size, size, 3))
    head = keras.layers.Dense(int(labels.max()) + 1, activation="softmax")
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(backbone(inputs))))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    if epochs:  # 0: random filters, only the BN statistics set from the images
        model.fit(x, labels, epochs=epochs, batch_size=16, verbose=0)
    bns = [layer for layer in backbone.layers
           if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    backbone(x[:64], training=True)
    for layer, m in zip(bns, momenta, strict=True):
        layer.momentum = m
    out = Path(out)
    with h5py.File(out, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, backbone)
    return out
