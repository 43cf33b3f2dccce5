"""Keras -> .tflite with the TFLite converter, one quantize mode at a time."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebn.choices import Quantize, QuantizeSpec, quantize_spec
from edgebn.data.dataset import CHECK_SAMPLES, DataSpec, sample_inputs
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError, FoldError
from edgebn.files import write_atomic
from edgebn.fold.keras.keras_fold import FoldResult, all_bn_layer_names, fold_model
from edgebn.fold.keras.stats_check import StatsCheck, StatsPolicy, bn_statistics, statistics_json
from edgebn.fold.tflite.tflite_fold import TFLiteFoldResult, fold_tflite
from edgebn.progress import Stages, timed
from edgebn.tflite.reader import TFLiteModel, parse_tflite
from edgebn.tflite.residue import InspectResult, inspect_model
from edgebn.zoo.keras_io import load_keras, save_keras
from edgebn.zoo.models import fit_data

if TYPE_CHECKING:  # named in annotations only: importing TensorFlow takes seconds (edgebn.cli.app)
    import keras
    import tensorflow as tf


def _configure(converter: tf.lite.TFLiteConverter, spec: QuantizeSpec, representative: np.ndarray
               | None) -> None:
    """Set the converter up as the mode's row says (edgebn.choices.QUANTIZE_MODES)."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    if spec.calibrate and (representative is None or len(representative) == 0):
        raise EdgebnError(f"{spec.name} quantization needs representative samples for "
                          "calibration (the training split); none were given")
    if spec.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if spec.supported_types:
        converter.target_spec.supported_types = [getattr(tf, t) for t in spec.supported_types]
    if spec.calibrate:
        def gen():
            for x in representative:
                yield [x[None].astype(np.float32)]

        converter.representative_dataset = gen
    if spec.ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, o) for o in spec.ops]
    if spec.io_type is not None:
        converter.inference_input_type = converter.inference_output_type = getattr(tf, spec.io_type)


REPRESENTATIVE_SAMPLES = 200  # a calibrating mode (int8) draws this many training samples


@dataclass(frozen=True)
class ConvertOptions:
    quantize: Quantize = Quantize.none
    fold: bool = True  # fold BN in Keras first; the converter-only file is made beside it
    tolerance: float = 1e-5  # the fold's max |Δ|, relative to the largest output
    bn_stats: StatsPolicy = StatsPolicy()  # recompute BN statistics first; refuse stale ones

    def __post_init__(self) -> None:  # "int8" as well as Quantize.int8; any other refused
        object.__setattr__(self, "quantize", Quantize(quantize_spec(self.quantize).name))


@dataclass(frozen=True)
class Converted:
    """One converter run: the file's bytes, parsed (``model.path`` is where they were written)."""

    model: TFLiteModel
    quantize: Quantize
    convert_s: float

    @property
    def path(self) -> Path:
        return Path(self.model.path)

    @property
    def size_bytes(self) -> int:
        return self.model.size_bytes


def to_tflite(model: keras.Model, out: str | Path, quantize: Quantize | str = Quantize.none,
              representative: np.ndarray | None = None) -> Converted:
    """Convert a Keras model with the TFLite converter and write ``out`` atomically."""
    spec = quantize_spec(quantize)
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    with timed() as t, contextlib.redirect_stdout(io.StringIO()):  # Keras' export chatter
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        _configure(converter, spec, representative)
        flatbuffer = converter.convert()
    write_atomic(out, flatbuffer)
    return Converted(parse_tflite(flatbuffer, str(out)), Quantize(spec.name), t.seconds)


@dataclass(frozen=True)
class ConversionResult:
    """The written file and its inspection; with a fold, also what the converter alone made."""

    converted: Converted
    inspected: InspectResult  # of the written file
    fold: FoldResult | None = None  # when the model was folded in Keras first
    converter_only: InspectResult | None = None  # of the unfolded model's conversion
    source: str | None = None  # the .keras it came from
    # the residue the converter left, folded in the file
    tflite_fold: TFLiteFoldResult | None = None
    # why that fold's proof refused it (the file is as converted)
    tflite_fold_refused: str | None = None
    bn_statistics: StatsCheck | str | None = None  # the BN statistics on the data; a str: why not

    def fold_json(self) -> JsonDict | None:
        """The fold and the two verdicts side by side, for reports and --json."""
        if self.fold is None or self.converter_only is None:
            return None
        return {**self.fold.to_json(),
                "converter_only": _verdict_json(self.converter_only),
                "pre_folded": _verdict_json(self.inspected)}

    def to_json(self) -> JsonDict:
        """``edgebn convert --json``."""
        return {"model": self.source, "out": str(self.converted.path),
                "size_bytes": self.converted.size_bytes,
                "quantize": self.converted.quantize.value, "fold": self.fold_json(),
                "tflite_fold": self.tflite_fold_json(),
                "bn_statistics": statistics_json(self.bn_statistics),
                "inspect": self.inspected.to_json()}

    def tflite_fold_json(self) -> JsonDict | None:
        """What ``edgebn fold`` did to the converter's file: each chain, the proof; or why not."""
        if self.tflite_fold_refused is not None:
            return {"refused": self.tflite_fold_refused}
        if self.tflite_fold is None:
            return None
        doc = self.tflite_fold.to_json()
        return {k: doc[k] for k in ("measure", "max_rel_diff", "tolerance", "bn", "counts")}


def _verdict_json(inspected: InspectResult) -> JsonDict:
    bn = inspected.bn
    return {"verdict": bn.verdict, "residual": len(bn.residual),
            "residual_sources": [r.source for r in bn.residual],
            "folded_by_converter": len(bn.folded),  # BN layers traced into an operator by name
            "size_bytes": inspected.model.size_bytes}


def convert_model(model: keras.Model, out: str | Path, options: ConvertOptions = ConvertOptions(),  # noqa: PLR0913
                  representative: np.ndarray | None = None,
                  fold_inputs: tuple[np.ndarray, str] | None = None,
                  converter_only_out: str | Path | None = None,
                  folded_out: str | Path | None = None,
                  stages: Stages | None = None,
                  also: Callable[[keras.Model], None] | None = None) -> ConversionResult:
    """Convert ``model`` to ``out`` and inspect it; fold its BN in Keras first when asked.

    ``representative`` is the caller's calibration policy: the samples a calibrating
    mode (int8) calibrates on. The fold is checked on ``fold_inputs`` (inputs, where they
    came from) and the folded model saved at ``folded_out`` when given. The unfolded
    model is converted too, so the caller sees the converter's own verdict beside the
    pre-folded one; that file is kept at ``converter_only_out`` or discarded. ``stages``
    times the fold, convert and inspect stages (a build's); ``also`` runs inside the convert
    stage with the model that was converted (folded or not): a build's further conversions.
    """
    stages = stages or Stages()
    bn_layers = all_bn_layer_names(model)
    folded = None
    if options.fold and fold_inputs is not None and bn_layers:
        x, where = fold_inputs
        with stages.stage("fold", f"{len(bn_layers)} BN layers, checked on {where}"):
            folded = fold_model(model, x, options.tolerance, inputs=where)
            if folded_out is not None:
                save_keras(folded.model, folded_out)
    with stages.stage("convert", f"quantize {Quantize(options.quantize).value}"), \
            tempfile.TemporaryDirectory(prefix="edgebn-") as tmp:
        only = None if folded is None else to_tflite(
            model, converter_only_out or Path(tmp) / "converter_only.tflite", options.quantize,
            representative)
        converted = to_tflite(model if folded is None else folded.model, out, options.quantize,
                              representative)
        if also is not None:
            also(model if folded is None else folded.model)
    with stages.stage("inspect", f"BN residue in {Path(out).name}"):
        inspected = inspect_model(converted.model, bn_layers)
    result = ConversionResult(converted, inspected, folded,
                              None if only is None else inspect_model(only.model, bn_layers))
    if options.fold and any(r.affine for r in inspected.bn.residual):
        result = _refold(result, bn_layers, fold_inputs[0] if fold_inputs else None, stages)
    return result


def _refold(result: ConversionResult, bn_layers: list[str], x: np.ndarray | None,
            stages: Stages) -> ConversionResult:
    """The BN the converter still left, folded in the .tflite itself (edgebn fold model.tflite);
    the file is replaced only when the fold removed something and its proof passed."""
    converted = result.converted
    n = len(result.inspected.bn.residual)
    with stages.stage("refold", f"{n} residual BN folded in the .tflite"):
        try:
            refold = fold_tflite(converted.model, x, bench=None)
        except FoldError as exc:
            return replace(result, tflite_fold_refused=str(exc))
        if not any(c.result in ("folded", "collapsed") for c in refold.chains):
            return replace(result, tflite_fold=refold)
        write_atomic(converted.path, refold.data)
        converted = replace(converted, model=parse_tflite(refold.data, str(converted.path)))
        return replace(result, converted=converted, tflite_fold=refold,
                       inspected=inspect_model(converted.model, bn_layers))


def convert_file(model_path: str | Path, out: str | Path,
                 options: ConvertOptions = ConvertOptions(), data: DataSpec = DataSpec()
                 ) -> ConversionResult:
    """``edgebn convert``: load a .keras (safe mode), fold (default), convert, inspect.

    Calibration (int8) draws from ``data`` (its .npz/.npy inputs, else its training split),
    which must have the model's input shape. The fold is checked on the same inputs
    (the test split) when they fit the model, else on random inputs (said so).
    """
    if Path(out).suffix != ".tflite":
        raise EdgebnError(f"the output path must end in .tflite. Received: {out}")
    model = load_keras(model_path)
    want = tuple(model.input_shape[1:])
    if data.data_dir is not None:  # its images at the model's size, scaled as it expects

        data = fit_data(data, model)[0]
    calibrate = quantize_spec(options.quantize).calibrate
    pool, fold_pool = None, None  # calibration samples; (inputs, name) for the fold's check
    ds = None
    if data.npz is not None:
        x, where = sample_inputs(want, data.npz, samples=REPRESENTATIVE_SAMPLES)
        pool, fold_pool = x, (x, where)
    elif calibrate or options.fold or all_bn_layer_names(model):
        ds = data.load()  # once: calibration, the fold's check, the BN statistics
        if tuple(ds.input_shape) == want:
            pool, fold_pool = ds.x_train, (ds.x_test, f"{ds.name} test split")
        elif calibrate:
            raise EdgebnError(f"calibration data {ds.name} has input shape "
                              f"{list(ds.input_shape)}, the model expects {list(want)}: "
                              "give the data it was trained on")
    statistics = bn_statistics(model, data, options.bn_stats, ds)  # before the fold bakes them in
    representative = pool[:REPRESENTATIVE_SAMPLES] if calibrate else None
    fold_inputs = None
    if options.fold:
        fold_inputs = fold_pool or sample_inputs(want, None, None, seed=data.seed)
        fold_inputs = (fold_inputs[0][:CHECK_SAMPLES], fold_inputs[1])
    result = convert_model(model, out, options, representative, fold_inputs)
    return replace(result, source=str(model_path), bn_statistics=statistics)
