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
class FoldedConversion:
    """The file at ``out`` and its inspection; with a fold, also what the converter alone made."""

    converted: ConvertResult
    inspected: Any  # analysis.InspectResult of the written file
    fold: Any = None  # fold.FoldResult, when the model was folded in Keras first
    converter_only: Any = None  # analysis.InspectResult of the unfolded model's conversion

    def fold_json(self) -> dict[str, Any] | None:
        """The fold and the two verdicts side by side, for reports and --json."""
        if self.fold is None:
            return None
        only, pre = self.converter_only.bn, self.inspected.bn
        return {**self.fold.to_json(),
                "converter_only": {"verdict": only.verdict, "residual": len(only.residual),
                                   "residual_sources": [r.source for r in only.residual],
                                   "size_bytes": self.converter_only.model.size_bytes},
                "pre_folded": {"verdict": pre.verdict, "residual": len(pre.residual),
                               "residual_sources": [r.source for r in pre.residual],
                               "size_bytes": self.inspected.model.size_bytes}}


def convert_model(model: Any, out: str | Path, quantize: Quantize | str = Quantize.none,
                  representative: np.ndarray | None = None, fold_inputs: np.ndarray | None = None,
                  tolerance: float | None = None, fold_source: str = "given",
                  converter_only_out: str | Path | None = None) -> FoldedConversion:
    """Convert ``model`` to ``out``; with ``fold_inputs``, fold its BN in Keras first.

    The fold is checked on ``fold_inputs`` (FoldError above ``tolerance``). The unfolded
    model is converted too, so the caller sees the converter's own verdict beside the
    pre-folded one; that file is kept at ``converter_only_out`` or discarded.
    """
    import tempfile

    from edgebn.analysis import inspect_tflite
    from edgebn.models import bn_layer_names

    bn_layers = bn_layer_names(model)
    if fold_inputs is None or not bn_layers:
        converted = convert(model, out, quantize, representative)
        return FoldedConversion(converted, inspect_tflite(converted.path, bn_layers))
    from edgebn.fold import DEFAULT_TOLERANCE, fold_model

    folded = fold_model(model, fold_inputs, tolerance or DEFAULT_TOLERANCE, inputs=fold_source)
    with tempfile.TemporaryDirectory(prefix="edgebn-") as tmp:
        only_path = converter_only_out or Path(tmp) / "converter_only.tflite"
        convert(model, only_path, quantize, representative)
        converter_only = inspect_tflite(only_path, bn_layers)
    converted = convert(folded.model, out, quantize, representative)
    return FoldedConversion(converted, inspect_tflite(converted.path, bn_layers), folded,
                            converter_only)


def convert_file(model_path: str | Path, out: str | Path, quantize: Quantize | str = Quantize.none,
                 dataset="digits", data_dir=None, image_size: int = 32, color: str = "grayscale",
                 seed: int = 0, fold: bool = True, tolerance: float | None = None,
                 data: str | Path | None = None) -> FoldedConversion:
    """``edgebn convert``: load a .keras (safe mode), fold (default), convert, inspect.

    int8 calibration draws from the training split of ``dataset`` (or ``data_dir``),
    which must have the model's input shape. The fold is checked on ``data`` (a .npy),
    else that dataset's test split when it fits the model, else random inputs.
    """
    from edgebn.train import load_keras

    quantize = Quantize(quantize)
    if Path(out).suffix != ".tflite":
        raise EdgebnError(f"--out must end in .tflite. Received: {out}")
    model = load_keras(model_path)
    representative, ds = None, None
    if quantize is Quantize.int8:
        from edgebn.data import load_dataset

        ds = load_dataset(dataset, data_dir, image_size, color, seed)
        want = tuple(model.input_shape[1:])
        if tuple(ds.input_shape) != want:
            raise EdgebnError(f"calibration data has input shape {list(ds.input_shape)}, the "
                              f"model expects {list(want)}: pass the dataset it was trained on")
        representative = ds.x_train[:REPRESENTATIVE_SAMPLES]
    fold_inputs, source = None, "given"
    if fold:
        from edgebn.fold import equivalence_inputs

        fold_inputs, source = equivalence_inputs(model, data, dataset, data_dir, image_size,
                                                 color, seed=seed, loaded=ds)
    return convert_model(model, out, quantize, representative, fold_inputs, tolerance, source)
