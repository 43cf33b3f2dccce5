"""Image folders: one sub-folder per class, listed once, then read in memory or streamed.

Training streams a folder through ``tf.data``: file names are shuffled, each image is
decoded and resized by Pillow with the filter the device bundle uses (the same
:func:`edgebn.data.dataset.read_image` as predict.py), batched and prefetched. A split whose
decoded tensors fit :data:`CACHE_BYTES` is cached in memory after the first epoch (and
shuffled from a buffer as large, so up to twice that per split); a larger one is read
from disk every epoch, so memory stays bounded by the batches in flight, whatever the
folder's size. Verify reads the test split in chunks (:meth:`ImageFiles.chunks`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgebn.data.images import IMAGE_SUFFIXES, Preprocessing, read_image
from edgebn.errors import DatasetError, path_text, reason

if TYPE_CHECKING:  # named in annotations only: importing TensorFlow takes seconds (edgebn.cli.app)
    import tensorflow as tf

CACHE_BYTES = 256 * 2**20  # decoded float32 tensors of a split cached in memory up to this

_read_errors: list[DatasetError] = []  # what the pipeline's reader hit, for the error line


def raise_read_error(exc: BaseException) -> None:
    """Re-raise a failure inside a tf.data pipeline as the DatasetError that caused it."""
    if _read_errors:
        error = _read_errors[-1]
        _read_errors.clear()
        raise error from exc


def list_folder(root: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every image under ``root/<class>/``: paths, class indices, class names (sorted)."""
    if not root.exists():
        raise DatasetError(f"{path_text(root)}: no such directory")
    if not root.is_dir():
        raise DatasetError(f"{path_text(root)}: not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in class_dirs:  # a class's folder name is its label: in reports, on the device
        if path_text(d.name) != d.name:
            raise DatasetError(f"{path_text(d)}: a class folder's name must be UTF-8 text "
                               "without control characters (it becomes the class's label); "
                               "rename the folder")
    files = {d.name: sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
                            and f.is_file()) for d in class_dirs}
    files = {k: v for k, v in files.items() if v}
    if not files:
        raise DatasetError(f"{path_text(root)}: no images found (expected one sub-folder of "
                           f"images per class, suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(files) < 2:
        raise DatasetError(f"{path_text(root)}: only one class ({next(iter(files))}) has images; "
                           "a classifier needs at least two")
    paths = [f for fs in files.values() for f in fs]
    labels = np.concatenate([np.full(len(fs), i, np.int64) for i, fs in enumerate(files.values())])
    return paths, labels, list(files)


def read_checked(path: str | Path, pre: Preprocessing) -> np.ndarray:
    """One image as raw pixels, or a DatasetError naming the file."""
    try:
        return read_image(path, pre)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {path_text(path)} ({reason(exc)})") from exc


def check_headers(paths: list[Path]) -> None:
    """Open every file's header (cheap: no pixels decoded) so a bad file fails before training."""
    for p in paths:
        try:
            with Image.open(p):
                pass
        except (UnidentifiedImageError, OSError, ValueError,
                Image.DecompressionBombError) as exc:
            raise DatasetError(f"cannot read image {path_text(p)} ({reason(exc)})") from exc


@dataclass(frozen=True)
class ImageFiles:
    """Some images of a folder with their labels, read the way ``pre`` says."""

    paths: tuple[str, ...]
    labels: np.ndarray
    pre: Preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One sample's shape, as the model takes it."""
        return self.pre.input_shape

    def take(self, idx: np.ndarray) -> ImageFiles:
        return ImageFiles(tuple(self.paths[i] for i in idx), self.labels[idx], self.pre)

    def load(self) -> np.ndarray:
        """Every image as model inputs (float32 NHWC), in memory."""
        if not self.paths:
            return np.zeros((0, *self.pre.input_shape), np.float32)
        return np.stack([self.pre.apply(read_checked(p, self.pre)) for p in self.paths])

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The images as model inputs, ``size`` at a time: memory for one chunk only."""
        for start in range(0, len(self.paths), size):
            yield self.take(np.arange(start, min(start + size, len(self.paths)))).load()

    @property
    def decoded_bytes(self) -> int:
        return len(self.paths) * int(np.prod(self.pre.input_shape)) * 4

    def tf_dataset(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of (inputs, labels) batches, decoded in parallel, prefetched."""
        import tensorflow as tf  # lazy: TensorFlow takes seconds to import

        pre, shape = self.pre, self.pre.input_shape

        def read(path: bytes) -> np.ndarray:
            try:
                return pre.apply(read_checked(os.fsdecode(path), pre))
            except DatasetError as exc:  # TensorFlow rewraps it: keep it for the error line
                _read_errors.append(exc)
                raise

        def decode(path, label):
            x = tf.numpy_function(read, [path], tf.float32, stateful=False)
            return tf.ensure_shape(x, shape), label

        # File names as the bytes the OS holds: TensorFlow would take text as UTF-8, which
        # a name read with surrogateescape (bytes that are not UTF-8) is not.
        names = [os.fsencode(p) for p in self.paths]
        ds = tf.data.Dataset.from_tensor_slices((names, self.labels))
        cache = self.decoded_bytes <= CACHE_BYTES
        if shuffle and not cache:  # shuffle names (cheap), decode only what the batch needs
            ds = ds.shuffle(len(self.paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if cache:
            ds = ds.cache()
            if shuffle:
                ds = ds.shuffle(len(self.paths), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclass(frozen=True)
class Streams:
    """A folder's train/val/test splits, as files: what training streams."""

    train: ImageFiles
    val: ImageFiles
    test: ImageFiles
