"""Arrays from files the user gives: .npy and .npz read without trusting them.

Every header is checked before its array is allocated (:func:`read_arrays`); what comes out
is float32 samples (:func:`load_samples`), or images with their class indices and names
(:func:`load_classified`).
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from edgebn.errors import DatasetError, path_text, reason


def load_samples(path: str | Path) -> np.ndarray:
    """Preprocessed float samples (N, ...) from a .npy file, or the array ``x`` of a .npz.

    Refused, each with the file's name: object arrays (never unpickled), headers that
    declare more than :data:`MAX_ELEMENTS` values, :data:`MAX_ARRAY_BYTES` or more data
    than the file holds (checked before anything is allocated), no samples, complex,
    non-numeric and non-finite values.
    """
    return load_labelled(path)[0]


def load_labelled(path: str | Path, extra: tuple[str, ...] = ()
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The samples of :func:`load_samples`, and the arrays named in ``extra`` that a .npz
    holds besides ``x`` (``y``, ``labels``), read in the same pass over the file."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path_text(p)}: no such file")
    arrays = read_arrays(p, extra)
    return check_samples(arrays.pop("x"), path_text(p)), arrays


def check_samples(x: np.ndarray, where: str) -> np.ndarray:
    """``x`` as float32 samples (N, ...), or a DatasetError saying what is wrong with it."""
    kind = x.dtype.kind
    if kind == "c":
        raise DatasetError(f"{where}: complex samples ({x.dtype.name}) are refused: their "
                           "imaginary part would be dropped. Give real values")
    if x.ndim < 2 or kind not in "iuf":
        raise DatasetError(f"{where}: expected numeric samples (N, ...). "
                           f"Received: shape={x.shape}, dtype={x.dtype.name}")
    if x.size == 0:
        raise DatasetError(f"{where}: no samples in it. Received: shape={list(x.shape)}")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DatasetError(f"{where}: the samples contain NaN or infinity (as float32)")
    return x


MAX_ELEMENTS = 2**31  # an array read from a file holds at most this many values
MAX_ARRAY_BYTES = 2**33  # and at most 8 GiB (2**31 float32 values)
MAX_NPZ_MEMBERS = 1024
DEFLATE_MAX_RATIO = 1032  # deflate never inflates a byte into more than this many
_MAX_HEADER = 65536  # bytes of a .npy header (NumPy's own limit is 10000 characters)
_NPZ_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what np.savez(_compressed) write
# What reading damaged bytes raises (zipfile, zlib, NumPy's header parser, seeks past the end).
_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, struct.error,
                NotImplementedError, RuntimeError, OverflowError, SyntaxError, tokenize.TokenError)


def read_arrays(path: str | Path, names: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The array ``x`` and those of ``names`` that a .npz holds; a .npy's one array as ``x``.

    Each header is checked before its array is allocated: no Python objects, at most
    :data:`MAX_ELEMENTS` values and :data:`MAX_ARRAY_BYTES`, no more data than the file
    (or the archive's member, within deflate's ratio) holds.
    """
    p = Path(path)
    where = path_text(p)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(np.lib.format.MAGIC_PREFIX))
            f.seek(0)
            if head.startswith(b"PK"):
                return _npz_arrays(f, size, where, names)
            if head != np.lib.format.MAGIC_PREFIX:
                raise DatasetError(f"{where}: not a readable .npy/.npz file (it starts with "
                                   f"{head!r}, not NumPy's magic or a zip's 'PK')")
            return {"x": _read_npy(f, size, where)}
    except _READ_ERRORS as exc:
        raise DatasetError(f"{where}: not a readable .npy/.npz file ({reason(exc)})") from exc


def _npz_arrays(f, size: int, where: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        if len(infos) > MAX_NPZ_MEMBERS:
            raise DatasetError(f"{where}: {len(infos)} members; a .npz is read with at most "
                               f"{MAX_NPZ_MEMBERS}")
        members = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        if "x" not in members:
            raise DatasetError(f"{where}: a .npz of samples needs an array 'x'. "
                               f"Received arrays: {sorted(members)[:20]}")
        return {name: _read_member(z, members[name], size, f"{where}: array {name!r}")
                for name in ("x", *names) if name in members}


def _read_member(z: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, where: str) -> np.ndarray:
    if info.compress_type not in _NPZ_METHODS:
        raise DatasetError(f"{where}: zip compression method {info.compress_type}; a .npz "
                           "member is stored (0) or deflated (8)")
    if info.header_offset + info.compress_size > size:
        raise DatasetError(f"{where}: declares {info.compress_size} compressed bytes, past "
                           f"the end of the {size}-byte archive")
    ratio = DEFLATE_MAX_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1
    if info.file_size > info.compress_size * ratio + 1024:
        raise DatasetError(f"{where}: declares {info.file_size} bytes from "
                           f"{info.compress_size} compressed bytes, beyond what "
                           f"{'deflate' if ratio > 1 else 'storing'} can hold")
    with z.open(info) as member:
        return _read_npy(member, info.file_size, where)


def _read_npy(fp, size: int, where: str) -> np.ndarray:
    """One .npy stream of ``size`` bytes: its header checked (:func:`read_arrays`), then read."""
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    if version not in ((1, 0), (2, 0)):
        raise DatasetError(f"{where}: .npy format version {version[0]}.{version[1]}; "
                           "versions 1.0 and 2.0 are read")
    if version == (2, 0):  # a 4-byte header length: refuse a huge one before reading it
        length = int.from_bytes(fp.read(4), "little")
        if length > _MAX_HEADER:
            raise DatasetError(f"{where}: a .npy header of {length} bytes; at most "
                               f"{_MAX_HEADER} are read")
        fp.seek(fp.tell() - 4)
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read_header(fp)
    _check_header(shape, dtype, size - fp.tell(), where)
    fp.seek(0)
    return fmt.read_array(fp, allow_pickle=False)


def _check_header(shape: tuple[int, ...], dtype: np.dtype, available: int, where: str) -> None:
    if dtype.hasobject:
        raise DatasetError(f"{where}: holds Python objects ({dtype}); they are never unpickled")
    count = math.prod(shape)
    need = count * dtype.itemsize
    declared = f"declares shape {list(shape)} of {dtype.name} ({count} values, {need} bytes)"
    if min(shape, default=0) < 0 or count > MAX_ELEMENTS or need > MAX_ARRAY_BYTES:
        raise DatasetError(f"{where}: {declared}; arrays are read up to 2**31 values and "
                           f"{MAX_ARRAY_BYTES // 2**30} GiB")
    if need > available:
        raise DatasetError(f"{where}: {declared} but holds {max(available, 0)} bytes of data")


MAX_CLASSES = 100_000  # class indices of a labelled .npz are below this
MAX_LABELS_BYTES = 16 * 2**20  # a file of class names, one a line


def load_classified(path: str | Path, labels: str | Path | None = None
                    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images x (N, H, W, 1 or 3), class indices y (N,) and class names from an .npz: its
    array ``labels``, or the file ``labels`` (one a line), else the indices as names."""
    where = path_text(path)
    x, arrays = load_labelled(path, ("y", "labels"))  # one read of the file
    if "y" not in arrays:
        raise DatasetError(f"{where}: needs an integer array 'y' of class indices (an .npz "
                           "with x, y and optional labels)")
    y = np.asarray(arrays["y"])
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise DatasetError(f"{where}: 'y' must hold one class index >= 0 per sample. "
                           f"Received: shape={y.shape}, dtype={y.dtype.name} for {len(x)} samples")
    if y.max() >= MAX_CLASSES:
        raise DatasetError(f"{where}: class indices in 'y' must be below {MAX_CLASSES}. "
                           f"Received: up to {y.max()}")
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DatasetError(f"{where}: 'x' must be images (N, H, W, 1 or 3). "
                           f"Received: {list(x.shape)}")
    names = _npz_labels(arrays["labels"], where) if "labels" in arrays else None
    if labels is not None:
        names = _labels_file(Path(labels))
    classes = int(y.max()) + 1
    names = names or [str(i) for i in range(classes)]
    if len(names) < classes:
        raise DatasetError(f"{where}: {len(names)} labels for class indices up to {classes - 1}")
    return x, y.astype(np.int64), names


def _npz_labels(labels: np.ndarray, where: str) -> list[str]:
    if labels.ndim != 1 or len(labels) > MAX_CLASSES:
        raise DatasetError(f"{where}: 'labels' must be a list of at most {MAX_CLASSES} class "
                           f"names (K,). Received: shape={list(labels.shape)}")
    return [str(n) for n in labels]


def _labels_file(path: Path) -> list[str]:
    """Class names, one a line, from a UTF-8 text file."""
    where = path_text(path)
    try:
        if path.stat().st_size > MAX_LABELS_BYTES:
            raise DatasetError(f"{where}: {path.stat().st_size} bytes; a file of class names "
                               f"is read up to {MAX_LABELS_BYTES // 2**20} MiB")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{where}: class names must be UTF-8 text, one a line "
                           f"({reason(exc)})") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]
