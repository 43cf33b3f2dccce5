"""Tensor helpers every stage shares: (de)quantization, input batches, arrays from files.

A quantized tensor stores ``q = round(x / scale + zero_point)`` clipped to its integer
type; ``x ≈ (q − zero_point) · scale``. A missing or zero scale means no quantization.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebn.errors import DatasetError

QuantParams = tuple[float, int] | None  # (scale, zero_point) as the interpreter reports it


def quantize(x: np.ndarray, quant: QuantParams, dtype) -> np.ndarray:
    scale, zero_point = quant if quant and quant[0] else (1.0, 0)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, quant: QuantParams) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    scale, zero_point = quant if quant and quant[0] else (1.0, 0)
    return (y.astype(np.float32) - zero_point) * scale


def make_inputs(shape, dtype, quant: QuantParams, count: int,
                data: np.ndarray | None = None, seed: int = 0) -> list[np.ndarray]:
    """``count`` input tensors of ``shape``: real samples when ``data`` is given, else random.

    Real samples are float (preprocessed) and get quantized for an int8/uint8 input;
    random ones span the dtype's range (integers) or [0, 1) (floats).
    """
    rng = np.random.default_rng(seed)
    batch = int(shape[0])
    dtype = np.dtype(dtype)
    out = []
    for i in range(count):
        if data is not None and len(data):
            idx = (np.arange(batch) + i * batch) % len(data)
            x = data[idx].reshape(shape)
            if np.issubdtype(dtype, np.integer):
                x = quantize(x, quant, dtype)
            out.append(x.astype(dtype))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))
        else:
            out.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return out


def load_samples(path: str | Path) -> np.ndarray:
    """Preprocessed float samples (N, ...) from a .npy file, or the array ``x`` of a .npz.

    Object arrays are refused (never unpickled); so are non-numeric and non-finite ones.
    """
    return load_labelled(path)[0]


def load_labelled(path: str | Path, extra: tuple[str, ...] = ()
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The samples of :func:`load_samples`, and the arrays named in ``extra`` that a .npz
    holds besides ``x`` (``y``, ``labels``), read in the same pass over the file."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: no such file")
    others: dict[str, np.ndarray] = {}
    try:
        loaded = np.load(p, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                if "x" not in loaded.files:
                    raise DatasetError(f"{p}: a .npz of samples needs an array 'x'. "
                                       f"Received arrays: {sorted(loaded.files)}")
                others = {name: loaded[name] for name in extra if name in loaded.files}
                loaded = loaded["x"]
    except (ValueError, OSError, EOFError) as exc:
        raise DatasetError(f"{p}: not a readable .npy/.npz file ({exc})") from exc
    arr = np.asarray(loaded)
    if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.number):
        raise DatasetError(f"{p}: expected numeric samples (N, ...). "
                           f"Received: shape={arr.shape}, dtype={arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DatasetError(f"{p}: the samples contain NaN or infinity")
    return arr, others


CHUNK_BYTES = 4 * 2**20  # inputs per batch that a check runs at once: activations grow with it


def rows_per_chunk(sample_elements: int, most: int) -> int:
    """How many float32 samples of ``sample_elements`` values to run at once: at most ``most``, and
    at most CHUNK_BYTES of inputs. MobileNetV2 at 224 px run 64 (or 256) at a time took a
    build to 6 GB of resident memory; 6 at a time, under 2."""
    return max(1, min(most, CHUNK_BYTES // (sample_elements * 4)))


CHECK_SAMPLES = 64  # inputs for a fold's equivalence check: enough to see any wrong channel


def sample_inputs(input_shape, npy: str | Path | None, dataset=None, samples: int = CHECK_SAMPLES,
                  seed: int = 0) -> tuple[np.ndarray, str]:
    """Real inputs of ``input_shape`` (without the batch axis), and where they came from.

    ``npy`` (a file of inputs) first; else ``dataset``'s test split when its shape is
    ``input_shape``; else uniform random values in [0, 1), said so in the second value.
    """
    want = tuple(input_shape)
    if npy is not None:
        x = load_samples(npy)
        if tuple(x.shape[1:]) != want:
            raise DatasetError(f"{npy}: inputs of shape {list(x.shape[1:])}, the model "
                               f"expects {list(want)}")
        return x[:samples], f"{Path(npy).name} ({min(len(x), samples)})"
    if dataset is not None and tuple(dataset.input_shape) == want:
        return dataset.x_test[:samples], f"{dataset.name} test split"
    rng = np.random.default_rng(seed)
    return rng.random((samples, *want), dtype=np.float32), "random uniform [0, 1)"
