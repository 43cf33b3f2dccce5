"""Datasets -> stratified train/val/test splits plus the preprocessing spec.

Every image is fed to Keras and to TFLite through the same ``Preprocessing``:
``x = raw * scale + offset`` on float32, NHWC.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class Color(str, Enum):
    grayscale = "grayscale"
    rgb = "rgb"

    @property
    def pil_mode(self) -> str:
        return "L" if self is Color.grayscale else "RGB"

    @property
    def channels(self) -> int:
        return 1 if self is Color.grayscale else 3


class Resize(str, Enum):
    """The filter that resizes an image to the model's input; the device uses the same one."""

    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"
    lanczos = "lanczos"
    box = "box"
    hamming = "hamming"


@dataclass(frozen=True)
class Preprocessing:
    """How raw pixels become model inputs: ``x = raw * scale + offset``.

    An image file is first converted to ``color`` and resized to the input's height and
    width with ``resize`` (Pillow's filter of that name) on the training machine and on
    the device alike; its 8-bit pixels are mapped onto ``[0, raw_max]``.
    """

    input_shape: tuple[int, int, int]
    raw_max: float  # the largest raw pixel value (16 for digits, 255 for 8-bit images)
    scale: float
    offset: float = 0.0
    color: Color = Color.grayscale
    resize: Resize = Resize.bilinear

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return (raw.astype(np.float32) * np.float32(self.scale) + np.float32(self.offset)).astype(
            np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "raw_max": self.raw_max,
                "scale": self.scale, "offset": self.offset, "color": self.color.value,
                "resize": self.resize.value}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Preprocessing:
        return cls(tuple(doc["input_shape"]), float(doc["raw_max"]), float(doc["scale"]),
                   float(doc.get("offset", 0.0)), Color(doc.get("color", "grayscale")),
                   Resize(doc.get("resize", "bilinear")))


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
    seed: int = 0  # the split's seed; training uses it too

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


@dataclass(frozen=True)
class DataSpec:
    """Where the samples come from and how they are split: everything ``load()`` needs."""

    dataset: DatasetName = DatasetName.digits
    data_dir: Path | None = None  # an image folder, one sub-folder per class (wins over dataset)
    image_size: int = 32  # side of the images read from data_dir
    color: Color = Color.grayscale  # of the images read from data_dir
    resize: Resize = Resize.bilinear  # filter for the images read from data_dir
    seed: int = 0  # the split's seed (and the model's, in training)
    limit: int | None = None  # use at most this many samples (stratified), for quick runs
    test_fraction: float = 0.2
    val_fraction: float = 0.2

    @property
    def name(self) -> str:
        return f"folder:{Path(self.data_dir).name}" if self.data_dir is not None else \
            DatasetName(self.dataset).value

    def load(self) -> Dataset:
        """Load the samples and split them, stratified, with ``seed``."""
        name = DatasetName.folder if self.data_dir is not None else DatasetName(self.dataset)
        if name is DatasetName.digits:
            x, y, classes, pre = _digits()
            split = _split(x, y, self, fixed_test=None)
        elif name in (DatasetName.mnist, DatasetName.fashion_mnist):
            (x_tr, y_tr), (x_te, y_te), classes = _keras_dataset(name)
            pre = Preprocessing((28, 28, 1), 255.0, 1 / 255.0)
            # Keep the publisher's test set as test; carve validation out of its train set.
            x = np.concatenate([x_tr, x_te])[..., None]
            y = np.concatenate([y_tr, y_te]).astype(np.int64)
            split = _split(x, y, self, fixed_test=np.arange(len(y_tr), len(y)))
        else:
            if self.data_dir is None:
                raise DatasetError("the folder dataset needs an image directory "
                                   "(one sub-folder per class)")
            x, y, classes, pre = _folder(Path(self.data_dir), self.image_size,
                                         Color(self.color), Resize(self.resize))
            split = _split(x, y, self, fixed_test=None)
        x_train, y_train, x_val, y_val, x_test, y_test = split
        return Dataset(self.name, tuple(classes), pre, pre.apply(x_train), y_train,
                       pre.apply(x_val), y_val, pre.apply(x_test), y_test, self.seed)


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
            f"dataset {name.value}: cannot load through keras.datasets "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    classes = [str(i) for i in range(10)] if name is DatasetName.mnist else list(_FASHION)
    return train, test, classes


def read_image(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """One image file -> raw pixels (H, W, C) float32 on [0, 255], as ``pre`` sizes them.

    The device's predict.py does the same steps (convert, resize with the same filter).
    """
    from PIL import Image

    h, w, _ = pre.input_shape
    with Image.open(path) as im:
        im = im.convert(pre.color.pil_mode).resize((w, h), _pil_filter(pre.resize))
        arr = np.asarray(im, dtype=np.float32)
    return arr if arr.ndim == 3 else arr[..., None]


def _pil_filter(resize: Resize) -> int:
    from PIL import Image

    return getattr(Image, resize.value.upper())


def _folder(root: Path, image_size: int, color: Color, resize: Resize):
    from PIL import Image, UnidentifiedImageError

    if image_size < 4:
        raise DatasetError(f"image size must be >= 4. Received: {image_size}")
    if not root.exists():
        raise DatasetError(f"{root}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
             for d in class_dirs}
    files = {k: v for k, v in files.items() if v}
    if not files:
        raise DatasetError(f"{root}: no images found (expected one sub-folder of "
                           f"images per class, suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) < 2:
        raise DatasetError(f"{root}: only one class ({next(iter(files))}) has images; "
                           "a classifier needs at least two")
    pre = Preprocessing((image_size, image_size, color.channels), 255.0, 1 / 255.0, color=color,
                        resize=resize)
    xs, ys = [], []
    for label, paths in enumerate(files.values()):
        for f in paths:
            try:
                xs.append(read_image(f, pre))
            except (UnidentifiedImageError, OSError, ValueError,
                    Image.DecompressionBombError) as exc:
                raise DatasetError(f"cannot read image {f} ({exc})") from exc
            ys.append(label)
    return np.stack(xs), np.array(ys, dtype=np.int64), list(files), pre


def _split(x, y, spec: DataSpec, fixed_test=None):
    from sklearn.model_selection import train_test_split

    seed, limit = spec.seed, spec.limit
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
        rest, test_idx = train_test_split(idx, test_size=spec.test_fraction, stratify=y[idx],
                                          random_state=seed)
    train_idx, val_idx = train_test_split(rest, test_size=spec.val_fraction, stratify=y[rest],
                                          random_state=seed)
    return (x[train_idx], y[train_idx], x[val_idx], y[val_idx], x[test_idx], y[test_idx])
