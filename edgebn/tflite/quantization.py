"""Quantized tensors, and the inputs a .tflite's input tensor takes.

A quantized tensor stores ``q = round(x / scale + zero_point)`` clipped to its integer
type; ``x ≈ (q − zero_point) · scale``. A missing or zero scale means no quantization.
"""

from __future__ import annotations

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
    batch = int(shape[0]) if len(shape) else 1  # a scalar input: one value, no batch axis
    dtype = np.dtype(dtype)
    if data is not None:
        if not len(shape):
            raise DatasetError("the model's input is a scalar: samples of data cannot feed it")
        _check_fits(data, shape)
    out = []
    for i in range(count):
        if data is not None:
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


def _check_fits(data: np.ndarray, shape) -> None:
    want = [int(d) for d in shape[1:]]
    if len(data) == 0:
        raise DatasetError(f"no samples to feed the model: the inputs given are empty "
                           f"(shape {list(data.shape)})")
    if list(data.shape[1:]) != want:
        raise DatasetError(f"inputs of shape {list(data.shape[1:])} per sample; the model's "
                           f"input takes {want}")
