"""Datasets -> stratified train/val/test splits plus the preprocessing spec.

Every image is fed to Keras and to TFLite through the same ``Preprocessing``:
``x = raw * scale + offset`` on float32, NHWC.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import DatasetError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DatasetName(str, Enum):
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    folder = "folder"  # --data-dir


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model inputs: ``x = raw * scale + offset``."""

    input_shape: tuple[int, int, int]
    raw_max: float  # the largest raw pixel value (16 for digits, 255 for 8-bit images)
    scale: float
    offset: float = 0.0
    color: str = "grayscale"  # or "rgb"

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (raw.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(
            np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"input_shape": list(self.input_shape)}


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.input_shape

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "train": len(self.y_train), "val": len(self.y_val),
                "test": len(self.y_test), "classes": self.classes,
                "input_shape": list(self.input_shape), "class_names": list(self.class_names),
                "preprocessing": self.preprocessing.to_json()}


def load_dataset(
    name: DatasetName | str = DatasetName.digits,
    data_dir: str | Path | None = None,
    image_size: int = 32,
    color: str = "grayscale",
    seed: int = 0,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    limit: int | None = None,
) -> Dataset:
    """Load ``name`` (or the image folder ``data_dir``) and split it, stratified, with ``seed``.

    ``limit`` caps the number of samples used (stratified), for quick runs on big sets.
    """
    if data_dir is not None:
        name = DatasetName.folder
    name = DatasetName(name)
    if name is DatasetName.digits:
        x, y, classes, pre = _digits()
        split = _split(x, y, seed, test_fraction, val_fraction, limit)
    elif name in (DatasetName.mnist, DatasetName.fashion_mnist):
        (x_tr, y_tr), (x_te, y_te), classes = _keras_dataset(name)
        pre = Preprocessing((28, 28, 1), 255.0, 1 / 255.0)
        # Keep the publisher's test set as test; carve validation out of its train set.
        x = np.concatenate([x_tr, x_te])[..., None]
        y = np.concatenate([y_tr, y_te]).astype(np.int64)
        split = _split(x, y, seed, test_fraction, val_fraction, limit,
                       fixed_test=np.arange(len(y_tr), len(y)))
    else:
        if data_dir is None:
            raise DatasetError("--dataset folder needs --data-dir DIR (one sub-folder per class)")
        x, y, classes, pre = _folder(Path(data_dir), image_size, color)
        split = _split(x, y, seed, test_fraction, val_fraction, limit)
    x_train, y_train, x_val, y_val, x_test, y_test = split
    return Dataset(name.value if data_dir is None else f"folder:{Path(data_dir).name}",
                   tuple(classes), pre, pre.apply(x_train), y_train, pre.apply(x_val), y_val,
                   pre.apply(x_test), y_test)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    return x, d.target.astype(np.int64), [str(c) for c in d.target_names], \
        Preprocessing((8, 8, 1), 16.0, 1 / 16.0)


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
            "Sneaker", "Bag", "Ankle boot")


def _keras_dataset(name: DatasetName):
    """keras.datasets loaders: they download into $KERAS_HOME/datasets on first use."""
    from keras import datasets

    loader = datasets.mnist if name is DatasetName.mnist else datasets.fashion_mnist
    try:
        train, test = loader.load_data()
    except Exception as exc:  # network, corrupt cache: one line for the user
        raise DatasetError(
            f"--dataset {name.value}: cannot load through keras.datasets "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    classes = [str(i) for i in range(10)] if name is DatasetName.mnist else list(_FASHION)
    return train, test, classes


def _folder(root: Path, image_size: int, color: str):
    from PIL import Image, UnidentifiedImageError

    if image_size < 4:
        raise DatasetError(f"--image-size must be >= 4. Received: {image_size}")
    if color not in ("grayscale", "rgb"):
        raise DatasetError(f"color must be grayscale or rgb. Received: {color}")
    if not root.exists():
        raise DatasetError(f"--data-dir {root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"--data-dir {root}: not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
             for d in class_dirs}
    files = {k: v for k, v in files.items() if v}
    if not files:
        raise DatasetError(f"--data-dir {root}: no images found (expected one sub-folder of "
                           f"images per class, suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) < 2:
        raise DatasetError(f"--data-dir {root}: only one class ({next(iter(files))}) has images; "
                           "a classifier needs at least two")
    mode = "L" if color == "grayscale" else "RGB"
    xs, ys = [], []
    for label, paths in enumerate(files.values()):
        for f in paths:
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DatasetError(f"--data-dir: cannot read image {f} ({exc})") from exc
            xs.append(arr if arr.ndim == 3 else arr[..., None])
            ys.append(label)
    x = np.stack(xs)
    channels = 1 if color == "grayscale" else 3
    return x, np.array(ys, dtype=np.int64), list(files), \
        Preprocessing((image_size, image_size, channels), 255.0, 1 / 255.0, color=color)


def _split(x, y, seed, test_fraction, val_fraction, limit, fixed_test=None):
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    if (counts[counts > 0] < 3).any():
        raise DatasetError(
            f"every class needs at least 3 samples for a train/val/test split. "
            f"Received per-class counts: {counts.tolist()}"
        )
    idx = np.arange(len(y))
    if limit is not None and limit < len(y):
        idx, _ = train_test_split(idx, train_size=limit, stratify=y, random_state=seed)
        fixed_test = None
    if fixed_test is not None:
        test_idx = fixed_test
        rest = np.setdiff1d(idx, fixed_test)
    else:
        rest, test_idx = train_test_split(idx, test_size=test_fraction, stratify=y[idx],
                                          random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=val_fraction, stratify=y[rest],
                                          random_state=seed)
    return (x[train_idx], y[train_idx], x[val_idx], y[val_idx], x[test_idx], y[test_idx])
