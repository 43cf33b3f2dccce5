"""Bring your own model: a transfer-learning classifier edgebn did not train, on the user's data.

The model is the canonical Keras transfer-learning shape (Rescaling, a MobileNetV2 backbone
used as one nested layer, pooling, dropout, a Dense head), with random BN statistics so that
every fold is a real one. The data is a generated image folder and an .npz of the same
pixels. Each build runs the real pipeline: fold, convert, verify, inspect, bench, bundle;
then the bundle's own predict.py self-tests on this machine and `edgebn check` gates it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()
SIZE, CLASSES = 32, 3


def randomize_bn(model, seed: int = 0) -> None:
    """Moving statistics, γ and β away from their initial values, in every BN at any depth."""
    import keras

    rng = np.random.default_rng(seed)

    def walk(layer):
        yield layer
        for sub in getattr(layer, "layers", []):
            yield from walk(sub)

    for layer in walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.gamma is not None:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            if layer.beta is not None:
                layer.beta.assign(rng.normal(0, 0.1, n).astype("float32"))


def transfer_model(size: int = SIZE, classes: int = CLASSES, alpha: float = 0.35):
    import keras

    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=alpha,
                                              input_shape=(size, size, 3))
    model = keras.Sequential([keras.Input((size, size, 3)),
                              keras.layers.Rescaling(1 / 127.5, offset=-1),
                              backbone,
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dropout(0.2),
                              keras.layers.Dense(classes, activation="softmax")])
    randomize_bn(model)
    return model


def image_folder(root, classes: int = CLASSES, per_class: int = 8, size: int = 40):
    """Photos of sorts: each class its own colour cast, with noise; PNG and JPEG mixed."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        tint = np.roll(np.array([200, 60, 60]), c)
        for i in range(per_class):
            arr = np.clip(rng.normal(tint, 40, (size, size + 6, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class_{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    from edgebn.zoo.keras_io import save_keras

    root = tmp_path_factory.mktemp("byom")
    model_path = save_keras(transfer_model(), root / "transfer.keras")
    return {"model": model_path, "folder": image_folder(root / "photos"), "root": root}


def _build_bundle_selftest_check(byom, out, *extra):
    result = runner.invoke(app, ["build", "--model", str(byom["model"]), "--out", str(out),
                                 "--bundle", *extra])
    assert result.exit_code == 0, result.output
    selftest = subprocess.run([sys.executable, str(out / "bundle" / "predict.py"), "--selftest",
                               "--json"], capture_output=True, text=True, timeout=300)
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)["selftest"]["passed"]
    gate = runner.invoke(app, ["check", str(out / "report.json"), "--baseline",
                               str(out / "report.json"), "--bench-time", "0.1"])
    assert gate.exit_code == 0, gate.output
    return json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_build_a_users_nested_model_on_an_image_folder(byom):
    report = _build_bundle_selftest_check(byom, byom["root"] / "float", "--data-dir",
                                          str(byom["folder"]), "--bench-time", "0.05")
    ds, model, t = report["dataset"], report["model"], report["tflite"]
    assert ds["class_names"] == ["class_0", "class_1", "class_2"] and ds["test"] == 24
    assert ds["input_shape"] == [SIZE, SIZE, 3]
    pre = ds["preprocessing"]
    assert pre["scale"] == 1.0 and pre["offset"] == 0.0 and pre["color"] == "rgb"
    assert "the model normalizes them itself (rescaling" in pre["source"]
    assert model["arch"] == "custom" and model["source"] == str(byom["model"])
    assert model["bn_layers"] == 52 and report["twin"]["available"] is False
    fold = report["fold"]
    assert fold["folded"] == 52 and fold["kept"] == 0 and fold["measure"] == "float64 reference"
    assert fold["pre_folded"]["residual"] <= fold["converter_only"]["residual"]
    assert report["inspect"]["bn"]["verdict"] == "clean"
    # inspect's provenance traces every BN of the nested backbone into the converter's file
    assert fold["converter_only"]["folded_by_converter"] == 52
    assert t["top1_agreement"] == 1.0 and t["max_abs_diff"] < 1e-4
    assert report["keras"]["test_accuracy"] == t["test_accuracy"]
    assert "fold_gain" in report["bench"] and "bn_cost" not in report["bench"]


@pytest.mark.slow
def test_build_a_users_model_int8_calibrated_on_their_images(byom):
    report = _build_bundle_selftest_check(byom, byom["root"] / "int8", "--data-dir",
                                          str(byom["folder"]), "--quantize", "int8",
                                          "--no-bench")  # the float build above benches
    assert report["tflite"]["quantize"] == "int8"
    assert report["inspect"]["bn"]["verdict"] == "clean"
    bundle = json.loads((byom["root"] / "int8" / "bundle" / "bundle.json").read_text())
    assert bundle["input"]["dtype"] == "int8" and bundle["preprocessing"]["resize"] == "bilinear"


@pytest.mark.slow
def test_build_a_users_model_on_an_npz(byom):
    from edgebn.data.dataset import DataSpec
    from edgebn.data.images import Color

    folder = DataSpec(data_dir=byom["folder"], image_size=SIZE, color=Color.rgb, scale=1.0,
                      split=False).load()
    npz = byom["root"] / "eval.npz"
    np.savez(npz, x=folder.x_test, y=folder.y_test, labels=np.array(["a", "b", "c"]))
    report = _build_bundle_selftest_check(byom, byom["root"] / "npz", "--data", str(npz),
                                          "--no-bench")
    assert report["dataset"]["name"] == "npz:eval.npz"
    assert report["dataset"]["class_names"] == ["a", "b", "c"]
    assert report["tflite"]["top1_agreement"] == 1.0


def test_a_model_whose_input_does_not_fit_the_data_is_refused(byom, tmp_path):
    result = runner.invoke(app, ["build", "--model", str(byom["model"]), "--out",
                                 str(tmp_path / "o"), "--data-dir", str(byom["folder"]),
                                 "--image-size", "64"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert errors == ["Error: the model's input is 32x32x3: image size 64 does not fit it"]
    assert "Traceback" not in result.output
