"""The models people already have (issue 32): legacy ``.h5`` files and TensorFlow SavedModel
directories through build, convert, fold and check.

A .h5 takes the Keras route (loaded in safe mode after edgebn's own checks, folded, proven
against the loaded model); a SavedModel takes the .tflite route (TensorFlow's converter,
the flatbuffer fold), verified against the SavedModel's own outputs computed by TensorFlow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from normalization_models import sequential, task
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_npz(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("fmt") / "digits.npz"
    np.savez(path, x=digits.x_test, y=digits.y_test)
    return path


@pytest.fixture(scope="module")
def cnn_h5(cnn, tmp_path_factory):
    """The session's cnn, saved by Keras 3 in the legacy .h5 format."""
    from edgebn.zoo.keras_io import load_keras

    path = tmp_path_factory.mktemp("h5") / "cnn.h5"
    load_keras(cnn["keras"]).save(path)
    return path


@pytest.fixture(scope="module")
def normalized_h5(tmp_path_factory):
    """Normalization (adapted) -> Conv2D -> BN -> ReLU -> GAP -> Dense, trained 2 epochs, .h5."""
    x, y = task()
    model = sequential("valid", use_bias=False)
    root = tmp_path_factory.mktemp("h5n")
    model.save(root / "norm.h5")
    np.savez(root / "norm.npz", x=x, y=y)
    return root / "norm.h5", root / "norm.npz"


@pytest.fixture(scope="module")
def saved_model_dir(cnn, tmp_path_factory):
    """The session's cnn exported as a TensorFlow SavedModel (``model.export``)."""
    import contextlib
    import io

    from edgebn.zoo.keras_io import load_keras

    path = tmp_path_factory.mktemp("sm") / "cnn_saved"
    with contextlib.redirect_stdout(io.StringIO()):
        load_keras(cnn["keras"]).export(path)
    return path


def _build(tmp_path, *args):
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", *args, "--no-bench", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def _gate_passes(out) -> None:
    """``edgebn check`` on the build, against itself: no regression."""
    r = runner.invoke(app, ["check", str(out / "report.json"), "--baseline",
                            str(out / "report.json"), "--bench-time", "0.05", "--json"])
    failed = [m["metric"] for m in json.loads(r.stdout)["metrics"] if not m["passed"]]
    assert r.exit_code == 0 and failed == [], r.output


def test_build_a_keras3_h5(cnn_h5, digits_npz, tmp_path):
    out, doc = _build(tmp_path, "--model", str(cnn_h5), "--data", str(digits_npz))
    assert doc["route"]["format"] == "h5"
    assert doc["inspect"]["bn"]["verdict"] == "clean" and doc["verify"]["passed"]
    t = doc["tflite"]
    assert t["top1_agreement"] >= 0.999 and t["max_abs_diff"] <= 1e-5  # float32 rounding
    assert doc["fold"]["folded"] == 4 and doc["fold"]["measure"] == "float64 reference"
    _gate_passes(out)


def test_build_an_h5_with_normalization_and_bn(normalized_h5, tmp_path):
    path, npz = normalized_h5
    out, doc = _build(tmp_path, "--model", str(path), "--data", str(npz))
    assert doc["inspect"]["bn"]["verdict"] == "clean"
    t = doc["tflite"]
    assert t["top1_agreement"] >= 0.999 and t["max_abs_diff"] <= 1e-5
    assert doc["fold"]["other_affine"][0]["folded"] is True  # the Normalization, into the conv
    _gate_passes(out)


def test_convert_and_fold_take_an_h5(cnn_h5, digits_npz, tmp_path):
    r = runner.invoke(app, ["convert", str(cnn_h5), "--out", str(tmp_path / "m.tflite"),
                            "--data", str(digits_npz), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inspect"]["bn"]["verdict"] == "clean"
    r = runner.invoke(app, ["fold", str(cnn_h5), "--out", str(tmp_path / "f.keras"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["folded"] == 4
    r = runner.invoke(app, ["fold", str(cnn_h5), "--out", str(tmp_path / "f.h5")])
    assert r.exit_code == 2 and "--out must end in .keras" in r.output


def test_build_a_saved_model(saved_model_dir, digits_npz, tmp_path):
    out, doc = _build(tmp_path, "--model", str(saved_model_dir), "--data", str(digits_npz))
    route = doc["route"]
    assert route["format"] == "saved_model" and route["signature"] == "serving_default"
    assert route["verified_against"] == "the SavedModel's own outputs (TensorFlow)"
    assert doc["inspect"]["bn"]["verdict"] == "clean" and doc["verify"]["passed"]
    t = doc["tflite"]
    assert t["top1_agreement"] >= 0.999 and t["max_abs_diff"] <= 1e-5
    assert (out / "original.tflite").is_file() and (out / "model.tflite").is_file()
    _gate_passes(out)
    r = runner.invoke(app, ["build", "--model", str(saved_model_dir), "--data", str(digits_npz),
                            "--signature", "nope", "--no-bench", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "no signature 'nope'" in r.output and "serve" in r.output


# ---------------------------------------------------------------- hostile .h5


def _refused(tmp_path, path, message: str) -> None:
    for args in (["build", "--model", str(path), "--out", str(tmp_path / "b")],
                 ["convert", str(path), "--out", str(tmp_path / "m.tflite")],
                 ["fold", str(path), "--out", str(tmp_path / "f.keras")]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "f.keras").exists()


def test_an_h5_with_a_lambda_that_writes_a_file_runs_nothing(tmp_path):
    import keras
    from keras import layers

    marker = tmp_path / "ran"
    path = tmp_path / "lambda.h5"

    def touch(x):
        marker.write_text("the Lambda ran")
        return x

    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Lambda(touch, name="writer"),
                              layers.Flatten(), layers.Dense(3)])
    model.save(path)
    marker.unlink(missing_ok=True)  # saving may have traced it
    _refused(tmp_path, path, "holds a Lambda layer (writer)")
    assert not marker.exists()


def test_a_truncated_h5_is_refused(cnn_h5, tmp_path):
    path = tmp_path / "cut.h5"
    data = cnn_h5.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _refused(tmp_path, path, "cut.h5: not a readable HDF5 file")


def test_an_hdf5_file_that_is_no_keras_model_is_refused(tmp_path):
    import h5py

    path = tmp_path / "data.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(10))
    _refused(tmp_path, path, "without a model_config attribute: not a Keras model")
    weights = tmp_path / "weights.h5"
    with h5py.File(weights, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
    _refused(tmp_path, weights, "a weights file (save_weights), not a model")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all" * 100)
    _refused(tmp_path, junk, "not an HDF5 file")
