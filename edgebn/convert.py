"""Keras -> .tflite with the TFLite converter, one quantize mode at a time."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.stages import timed, write_atomic


class Quantize(str, Enum):
    none = "none"
    float16 = "float16"
    dynamic = "dynamic"
    int8 = "int8"


def _none(converter, representative) -> None:
    pass


def _float16(converter, representative) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic(converter, representative) -> None:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, representative) -> None:
    """Full integer: int8 weights, activations, input and output."""
    import tensorflow as tf

    if representative is None or len(representative) == 0:
        raise EdgebnError("--quantize int8 needs representative samples (the training split)")

    def gen():
        for x in representative:
            yield [x[None].astype(np.float32)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8


QUANTIZERS: dict[Quantize, Callable[[Any, np.ndarray | None], None]] = {
    Quantize.none: _none, Quantize.float16: _float16, Quantize.dynamic: _dynamic,
    Quantize.int8: _int8,
}

REPRESENTATIVE_SAMPLES = 200  # int8 calibration draws this many training samples


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    size_bytes: int
    quantize: str
    convert_s: float


def convert(model: Any, out: str | Path, quantize: Quantize | str = Quantize.none,
            representative: np.ndarray | None = None) -> ConvertResult:
    """Convert a Keras model with the TFLite converter and write ``out`` atomically."""
    quantize = Quantize(quantize)
    import tensorflow as tf

    with timed() as t, contextlib.redirect_stdout(io.StringIO()):  # Keras' export chatter
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        QUANTIZERS[quantize](converter, representative)
        flatbuffer = converter.convert()
    write_atomic(out, flatbuffer)
    return ConvertResult(Path(out), len(flatbuffer), quantize.value, t.seconds)


@dataclass(frozen=True)
class ConvertFileResult:
    converted: ConvertResult
    inspected: Any  # analysis.InspectResult


def convert_file(model_path: str | Path, out: str | Path, quantize: Quantize | str = Quantize.none,
                 dataset="digits", data_dir=None, image_size: int = 32, color: str = "grayscale",
                 seed: int = 0) -> ConvertFileResult:
    """``edgebn convert``: load a .keras (safe mode), convert, and inspect the result.

    int8 calibration draws from the training split of ``dataset`` (or ``data_dir``),
    which must have the model's input shape.
    """
    from edgebn.analysis import inspect_tflite
    from edgebn.models import bn_layer_names
    from edgebn.train import load_keras

    quantize = Quantize(quantize)
    if Path(out).suffix != ".tflite":
        raise EdgebnError(f"--out must end in .tflite. Received: {out}")
    model = load_keras(model_path)
    representative = None
    if quantize is Quantize.int8:
        from edgebn.data import load_dataset

        ds = load_dataset(dataset, data_dir, image_size, color, seed)
        want = tuple(model.input_shape[1:])
        if tuple(ds.input_shape) != want:
            raise EdgebnError(f"calibration data has input shape {list(ds.input_shape)}, the "
                              f"model expects {list(want)}: pass the dataset it was trained on")
        representative = ds.x_train[:REPRESENTATIVE_SAMPLES]
    converted = convert(model, out, quantize, representative)
    return ConvertFileResult(converted, inspect_tflite(converted.path, bn_layer_names(model)))
