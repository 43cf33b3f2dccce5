"""Datasets -> stratified train/val/test splits plus the preprocessing spec.

Every image is fed to Keras and to TFLite through the same ``Preprocessing``:
``x = raw * scale + offset`` on float32, NHWC.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from edgebn.data.arrays import load_classified, load_samples
from edgebn.data.folder import ImageFiles, Streams, check_headers, list_folder, read_checked
from edgebn.data.images import Color, Preprocessing, Resize
from edgebn.documents import JsonDict
from edgebn.errors import DatasetError, path_text, reason

TRAIN_SAMPLE = 200  # a streamed folder keeps this many training inputs in memory (int8 calibration)
EVAL_SAMPLE = 256  # and this many test inputs, after training (fold check, bench, bundle)
class DatasetName(str, Enum):
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    folder = "folder"  # --data-dir


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
    streams: Streams | None = None  # a streamed folder: x_train is a sample, x_val/x_test empty

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> tuple[int, int, int]:
        """Samples in train, val, test (of the whole split when streamed)."""
        if self.streams is not None:
            return len(self.streams.train), len(self.streams.val), len(self.streams.test)
        return len(self.y_train), len(self.y_val), len(self.y_test)

    def with_test(self) -> Dataset:
        """A streamed folder's first test inputs in memory (the fold's check, bench, the
        bundle's golden samples); verify reads the whole split in chunks (:attr:`test_split`)."""
        if self.streams is None or len(self.y_test):
            return self
        head = self.streams.test.take(np.arange(min(EVAL_SAMPLE, len(self.streams.test))))
        return replace(self, x_test=head.load(), y_test=head.labels)

    @property
    def test_split(self) -> tuple[np.ndarray | ImageFiles, np.ndarray]:
        """The whole test split: (inputs, labels); a streamed folder's inputs as its files."""
        if self.streams is not None:
            return self.streams.test, self.streams.test.labels
        return self.x_test, self.y_test

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.input_shape

    def to_json(self) -> JsonDict:
        train, val, test = self.counts
        return {"name": self.name, "train": train, "val": val, "test": test,
                "streamed": self.streams is not None, "classes": self.classes,
                "input_shape": list(self.input_shape), "class_names": list(self.class_names),
                "preprocessing": self.preprocessing.to_json()}


@dataclass(frozen=True)
class DataSpec:
    """Where the samples come from, how images become inputs, how they are split.

    ``image_size`` and ``color`` left None mean 32 and grayscale for a zoo model, or the
    input shape of a model brought with ``edgebn build --model`` (:meth:`for_model`).
    """

    dataset: DatasetName = DatasetName.digits
    data_dir: Path | None = None  # an image folder, one sub-folder per class (wins over dataset)
    npz: Path | None = None  # preprocessed inputs: arrays x, y and optional labels (wins over all)
    labels: Path | None = None  # class names, one a line, for an npz without 'labels'
    image_size: int | None = None  # side of the images read from data_dir
    color: Color | None = None  # of the images read from data_dir
    resize: Resize = Resize.bilinear  # filter for the images read from data_dir
    scale: float | None = None  # images: x = raw * scale + offset (raw 0..255); None: 1/255
    offset: float = 0.0
    seed: int = 0  # the split's seed (and the model's, in training)
    limit: int | None = None  # use at most this many samples (stratified), for quick runs
    split: bool = True  # False: every sample is for evaluation (a model trained elsewhere)
    test_fraction: float = 0.2
    val_fraction: float = 0.2

    @property
    def name(self) -> str:
        if self.npz is not None:
            return f"npz:{path_text(Path(self.npz).name)}"
        return f"folder:{path_text(Path(self.data_dir).name)}" if self.data_dir is not None else \
            DatasetName(self.dataset).value

    def load(self, stream: bool = False) -> Dataset:
        """Load the samples and split them, stratified, with ``seed``.

        ``stream``: an image folder is split by file name and streamed by training
        (:mod:`edgebn.data.folder`); its test split is read later (:meth:`Dataset.with_test`).
        """
        if self.npz is not None:
            x, y, classes, pre = _npz(self)
            return self._dataset(x, y, classes, pre, None, applied=True)
        name = DatasetName.folder if self.data_dir is not None else DatasetName(self.dataset)
        if name is DatasetName.digits:
            return self._dataset(*_digits(), None)
        if name in (DatasetName.mnist, DatasetName.fashion_mnist):
            (x_tr, y_tr), (x_te, y_te), classes = _keras_dataset(name)
            # Keep the publisher's test set as test; carve validation out of its train set.
            x = np.concatenate([x_tr, x_te])[..., None]
            y = np.concatenate([y_tr, y_te]).astype(np.int64)
            return self._dataset(x, y, classes, Preprocessing((28, 28, 1), 255.0, 1 / 255.0),
                                 np.arange(len(y_tr), len(y)))
        if self.data_dir is None:
            raise DatasetError("the folder dataset needs an image directory "
                               "(one sub-folder per class)")
        if stream and self.split:
            return self._streamed()
        return self._dataset(*_folder(Path(self.data_dir), self.folder_preprocessing()), None)

    def folder_preprocessing(self) -> Preprocessing:
        size, color = self.image_size or 32, self.color or Color.grayscale
        if size < 4:
            raise DatasetError(f"image size must be >= 4. Received: {size}")
        return Preprocessing((size, size, color.channels), 255.0,
                             1 / 255.0 if self.scale is None else self.scale, self.offset,
                             color, self.resize)

    def _streamed(self) -> Dataset:
        """The folder split by file name; only a calibration sample is decoded now."""
        pre = self.folder_preprocessing()
        paths, labels, classes = list_folder(Path(self.data_dir))
        check_headers(paths)
        files = ImageFiles(tuple(str(p) for p in paths), labels, pre)
        idx = np.arange(len(labels))
        tr, _, va, _, te, _ = _split(idx, labels, self)
        streams = Streams(files.take(tr), files.take(va), files.take(te))
        sample = streams.train.take(np.arange(min(TRAIN_SAMPLE, len(tr))))
        empty = np.zeros((0, *pre.input_shape), np.float32), np.zeros(0, np.int64)
        return Dataset(self.name, tuple(classes), pre, sample.load(), sample.labels, *empty,
                       *empty, self.seed, streams)

    def _dataset(self, x, y, classes, pre: Preprocessing, fixed_test,
                 applied: bool = False) -> Dataset:
        def prep(a):
            return a.astype(np.float32) if applied else pre.apply(a)

        if not self.split:  # evaluate on everything; int8 calibration draws from it too
            idx = _limit(y, self.limit, self.seed)
            x, y = prep(x[idx]), y[idx]
            return Dataset(self.name, tuple(classes), pre, x, y, x[:0], y[:0], x, y, self.seed)
        x_train, y_train, x_val, y_val, x_test, y_test = _split(x, y, self, fixed_test)
        return Dataset(self.name, tuple(classes), pre, prep(x_train), y_train, prep(x_val), y_val,
                       prep(x_test), y_test, self.seed)

    def for_model(self, input_shape, normalizes: str | None) -> DataSpec:
        """The spec for a model trained elsewhere: its input shape decides size and colour.

        ``normalizes`` names the model's own first Rescaling/Normalization layer, if any:
        then images are fed as raw pixels (scale 1) unless a scale was declared.
        """
        h, w, c = (int(d) for d in input_shape)
        if self.data_dir is not None and h != w:
            raise DatasetError(f"the model takes {h}x{w} inputs; image folders are read as "
                               "squares: give preprocessed inputs as an .npz instead")
        if c not in (1, 3):
            raise DatasetError(f"the model takes {c}-channel inputs; images are 1 or 3 channels")
        color = Color.grayscale if c == 1 else Color.rgb
        for given, want, what in ((self.image_size, h, "image size"), (self.color, color, "color")):
            if given is not None and given != want:
                raise DatasetError(f"the model's input is {h}x{w}x{c}: {what} "
                                   f"{getattr(given, 'value', given)} does not fit it")
        scale = self.scale if self.scale is not None else (1.0 if normalizes else None)
        return replace(self, image_size=h, color=color, scale=scale, split=False)

    def preprocessing_source(self, normalizes: str | None) -> str:
        if self.scale is not None and not (normalizes and self.scale == 1.0):
            return "declared (--input-scale, --input-offset)"
        if normalizes:
            return f"raw pixels: the model normalizes them itself ({normalizes})"
        return "assumed raw / 255: declare --input-scale and --input-offset if the model " \
               "expects other values"


def _npz(spec: DataSpec):
    """Preprocessed inputs and labels from an .npz: x (N, H, W, C), y (N,), labels (K,)."""
    x, y, names = load_classified(spec.npz, spec.labels)
    h, w, c = x.shape[1:]
    pre = Preprocessing((h, w, c), 255.0, spec.scale if spec.scale is not None else 1 / 255,
                        spec.offset, Color.grayscale if c == 1 else Color.rgb, spec.resize)
    return x, y, names, pre


def _digits():
    from sklearn.datasets import load_digits  # lazy: scikit-learn takes most of a second to import

    d = load_digits()
    x = d.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    return x, d.target.astype(np.int64), [str(c) for c in d.target_names], \
        Preprocessing((8, 8, 1), 16.0, 1 / 16.0)


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
            "Sneaker", "Bag", "Ankle boot")


def _keras_dataset(name: DatasetName):
    """keras.datasets loaders: they download into $KERAS_HOME/datasets on first use."""
    from keras import datasets  # lazy: Keras imports TensorFlow (seconds)

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


def _folder(root: Path, pre: Preprocessing):
    """Every image of the folder in memory: inputs (raw pixels), labels, class names."""
    paths, labels, classes = list_folder(root)
    return np.stack([read_checked(f, pre) for f in paths]), labels, classes, pre


def _limit(y, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` samples, stratified."""
    # lazy: scikit-learn takes most of a second to import
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if limit is None or limit >= len(y):
        return idx
    return train_test_split(idx, train_size=limit, stratify=y, random_state=seed)[0]


def _split(x, y, spec: DataSpec, fixed_test=None):
    # lazy: scikit-learn takes most of a second to import
    from sklearn.model_selection import train_test_split

    seed, limit = spec.seed, spec.limit
    counts = np.bincount(y)
    if (counts[counts > 0] < 3).any():
        raise DatasetError(
            f"every class needs at least 3 samples for a train/val/test split. "
            f"Received per-class counts: {counts.tolist()}"
        )
    idx = np.arange(len(y))
    try:  # too few samples for a class in every split: sklearn says how many it needs
        if limit is not None and limit < len(y):
            idx, _ = train_test_split(idx, train_size=limit, stratify=y, random_state=seed)
            fixed_test = None
        if fixed_test is not None:
            test_idx = fixed_test
            rest = np.setdiff1d(idx, fixed_test)
        else:
            rest, test_idx = train_test_split(idx, test_size=spec.test_fraction,
                                              stratify=y[idx], random_state=seed)
        train_idx, val_idx = train_test_split(rest, test_size=spec.val_fraction,
                                              stratify=y[rest], random_state=seed)
    except ValueError as exc:
        raise DatasetError(f"{len(idx)} samples in {int((counts > 0).sum())} classes cannot be "
                           f"split into train/val/test with every class in each ({reason(exc)})"
                           ) from exc
    return (x[train_idx], y[train_idx], x[val_idx], y[val_idx], x[test_idx], y[test_idx])


CHECK_SAMPLES = 64  # inputs for a fold's equivalence check: enough to see any wrong channel


def sample_inputs(input_shape, npy: str | Path | None, dataset: Dataset | None = None,
                  samples: int = CHECK_SAMPLES,
                  seed: int = 0) -> tuple[np.ndarray, str]:
    """Real inputs of ``input_shape`` (without the batch axis), and where they came from.

    ``npy`` (a file of inputs) first; else ``dataset``'s test split when its shape is
    ``input_shape``; else uniform random values in [0, 1), said so in the second value.
    """
    want = tuple(input_shape)
    if npy is not None:
        x = load_samples(npy)
        if tuple(x.shape[1:]) != want:
            raise DatasetError(f"{path_text(npy)}: inputs of shape {list(x.shape[1:])}, the model "
                               f"expects {list(want)}")
        return x[:samples], f"{path_text(Path(npy).name)} ({min(len(x), samples)})"
    if dataset is not None and tuple(dataset.input_shape) == want:
        return dataset.x_test[:samples], f"{dataset.name} test split"
    rng = np.random.default_rng(seed)
    return rng.random((samples, *want), dtype=np.float32), "random uniform [0, 1)"
