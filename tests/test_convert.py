"""Round trips per architecture x quantize mode, at tiny epochs (Ultralytics-style matrix)."""

import itertools

import numpy as np
import pytest

from edgebn.convert import ConvertOptions, Quantize, convert_file
from edgebn.convert import to_tflite as convert
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.runtime.accuracy import predict_tflite, verify
from edgebn.tflite.residue import inspect_tflite
from edgebn.train.training import TrainConfig, train
from edgebn.zoo.keras_io import load_keras
from edgebn.zoo.models import BACKBONE_ARCHS, ZOO, Arch, build_model

MATRIX = [(a, q) for a, q in itertools.product(ZOO, Quantize)
          if not (a is Arch.mlp_prebn and q is Quantize.float16)]  # keep the suite small


@pytest.fixture(scope="module")
def trained(digits, cnn):
    """Each zoo arch trained briefly; the default cnn is the session's (trained once)."""
    return {a: cnn["result"] if a is Arch.cnn else train(
        digits, TrainConfig(arch=a, epochs=2, patience=2)) for a in ZOO}


@pytest.mark.parametrize("arch, quantize", MATRIX, ids=[f"{a.value}-{q.value}" for a, q in MATRIX])
def test_round_trip(trained, digits, tmp_path, arch, quantize):
    result = trained[arch]
    out = convert(result.model, tmp_path / "m.tflite", quantize, digits.x_train[:100])
    assert out.path.stat().st_size == out.size_bytes
    v = verify(out.model, digits.x_test, digits.y_test, result.model)
    assert v.samples == len(digits.y_test)
    assert v.top1_agreement >= (0.99 if quantize in (Quantize.none, Quantize.float16) else 0.9)
    if quantize is Quantize.none:
        assert v.max_abs_diff < 1e-4
        assert v.tflite_accuracy == pytest.approx(v.keras_accuracy, abs=0.005)
    assert inspect_tflite(out.path, result.bn_layers).bn.verdict == "clean"
    if quantize is Quantize.int8:
        inp = inspect_tflite(out.path).model.subgraphs[0]
        assert inp.tensors[inp.inputs[0]].dtype == "INT8"


@pytest.mark.parametrize("arch", list(ZOO))
def test_twin_has_no_bn_and_same_widths(arch):
    with_bn = build_model(arch, (8, 8, 1), 10, bn=True)
    twin = build_model(arch, (8, 8, 1), 10, bn=False)
    assert bn_layer_names(twin) == [] and len(bn_layer_names(with_bn)) >= 2
    widths = lambda m: [getattr(x, "units", None) or getattr(x, "filters", None)  # noqa: E731
                        for x in m.layers if hasattr(x, "kernel")]
    assert widths(twin) == widths(with_bn)
    assert set(ZOO) | BACKBONE_ARCHS == set(Arch) and not set(ZOO) & BACKBONE_ARCHS


def bn_layer_names(model) -> list[str]:
    """The model's own BatchNormalization layers, by name (the test's independent look)."""
    from keras import layers

    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def test_convert_file_round_trips_a_saved_model(cnn, tmp_path):
    res = convert_file(cnn["keras"], tmp_path / "again.tflite")
    assert res.inspected.clean
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    a, _ = predict_tflite(res.converted.path, x)
    b, _ = predict_tflite(cnn["tflite"], x)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_convert_file_int8_calibrates_on_the_dataset(cnn, tmp_path):
    res = convert_file(cnn["keras"], tmp_path / "q.tflite", ConvertOptions(Quantize.int8))
    assert res.inspected.clean and res.converted.quantize is Quantize.int8


def test_int8_without_calibration_samples_is_refused(cnn, tmp_path):
    for empty in (None, np.zeros((0, 8, 8, 1), np.float32)):
        with pytest.raises(EdgebnError, match="int8 quantization needs representative samples"):
            convert(cnn["result"].model, tmp_path / "q.tflite", Quantize.int8, empty)
    assert not (tmp_path / "q.tflite").exists()


def test_int8_calibration_data_of_another_shape_is_refused(cnn, tmp_path):
    from edgebn.data.dataset import DataSpec

    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((4, 28, 28, 1), np.float32), y=np.zeros(4, np.int64))
    int8 = ConvertOptions(Quantize.int8)
    with pytest.raises(EdgebnError,
                       match=r"inputs of shape \[28, 28, 1\], the model expects \[8, 8, 1\]"):
        convert_file(cnn["keras"], tmp_path / "q.tflite", int8, DataSpec(npz=npz))
    with pytest.raises(EdgebnError,
                       match=r"the model's input is 8x8x1: image size 28 does not fit"):
        convert_file(cnn["keras"], tmp_path / "q.tflite", int8,
                     DataSpec(data_dir=_folder(tmp_path, 40), image_size=28))
    # Without a size, the folder's images are read at the model's: they calibrate it.
    fitted = convert_file(cnn["keras"], tmp_path / "q.tflite", int8,
                          DataSpec(data_dir=tmp_path / "imgs"))
    assert fitted.converted.quantize is Quantize.int8


def _folder(tmp_path, size):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    return tmp_path / "imgs"


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".keras", "no such file"),
    (b"not a zip", ".keras", "not a Keras model"),
    (b"PK\x05\x06" + b"\x00" * 18, ".keras", "cannot load as a Keras model"),
    (b"x", ".h5", "not an HDF5 file"),
    (b"x", ".pb", "expected a .keras or .h5 Keras model"),
])
def test_bad_keras_files_are_refused(tmp_path, content, suffix, message):
    path = tmp_path / f"m{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidModelError, match=message):
        load_keras(path)


def test_convert_out_must_be_tflite(cnn, tmp_path):
    with pytest.raises(EdgebnError, match="must end in .tflite"):
        convert_file(cnn["keras"], tmp_path / "x.bin")


def test_convert_model_is_the_builds_conversion_its_stages_and_its_files(cnn, digits, tmp_path):
    """What ``edgebn build`` converts with: fold, convert, inspect timed as its stages, the
    folded model and the converter-only file kept where asked; calibration is the caller's."""
    from edgebn.convert import convert_model
    from edgebn.progress import Stages

    stages = Stages()
    res = convert_model(cnn["result"].model, tmp_path / "m.tflite", ConvertOptions(Quantize.int8),
                        digits.x_train[:50], (digits.x_test[:50], "digits test split"),
                        converter_only_out=tmp_path / "only.tflite",
                        folded_out=tmp_path / "folded.keras", stages=stages)
    assert list(stages.seconds) == ["fold", "convert", "inspect"]
    assert bn_layer_names(load_keras(tmp_path / "folded.keras")) == []
    assert res.fold is not None and res.fold.model is not None
    assert res.converter_only.model.size_bytes == (tmp_path / "only.tflite").stat().st_size
    assert res.inspected.clean and res.converted.quantize is Quantize.int8
    with pytest.raises(EdgebnError, match="int8 quantization needs representative samples"):
        convert_model(cnn["result"].model, tmp_path / "n.tflite", ConvertOptions(Quantize.int8))
