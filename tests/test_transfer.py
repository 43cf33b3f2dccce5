"""Transfer learning on an image folder: a frozen backbone whose BN statistics never move,
fine-tuning of its top, and the issue's three builds (weights file, from scratch, int8).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.backbones import find_backbone
from edgebn.cli import app
from edgebn.data import Color, DataSpec
from edgebn.models import Arch
from edgebn.synthetic import pretrained_weights, write_image_folder
from edgebn.train import TrainConfig, train

runner = CliRunner()
SIZE = 64
ALPHA = 0.35


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "photos", per_class=40,
                              size=SIZE)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """'Pretrained' MobileNetV2 weights: trained on another folder of the same kind."""
    other = write_image_folder(tmp_path_factory.mktemp("pre") / "other", per_class=30,
                               size=SIZE, seed=1)
    ds = DataSpec(data_dir=other, image_size=SIZE, color=Color.rgb, scale=1.0).load()
    return pretrained_weights(tmp_path_factory.mktemp("w") / "W.h5", ds.x_train, ds.y_train,
                              "mobilenet-v2", ALPHA)


def _bn_state(backbone) -> dict[str, list[np.ndarray]]:
    import keras

    return {layer.name: [np.array(w) for w in layer.weights] for layer in backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)}


def _kernels(backbone) -> list[np.ndarray]:
    return [np.array(layer.kernel) for layer in backbone.layers if hasattr(layer, "kernel")]


def test_frozen_backbone_keeps_bn_statistics_through_training_and_fine_tuning(folder, weights):
    from edgebn.backbones import build_backbone

    spec = DataSpec(data_dir=folder, image_size=SIZE, color=Color.rgb, scale=1.0)
    ds = spec.load(stream=True)
    assert ds.streams is not None and len(ds.x_val) == 0  # streamed: nothing decoded but a sample
    before = build_backbone(Arch.mobilenet_v2, (SIZE, SIZE, 3), ALPHA, str(weights))
    config = TrainConfig(arch=Arch.mobilenet_v2, alpha=ALPHA, weights=str(weights), epochs=8,
                         fine_tune_epochs=2, batch_size=16, patience=8)
    result = train(ds, config)
    after = find_backbone(result.model)
    assert result.fine_tune_epochs_run >= 1
    moved = {name: [np.abs(a - b).max() for a, b in zip(ws, _bn_state(after)[name], strict=True)]
             for name, ws in _bn_state(before).items()}
    assert len(moved) == 52 and all(max(d) == 0.0 for d in moved.values()), moved
    # Fine-tuning did train the backbone's top, and only its top.
    k0, k1 = _kernels(before), _kernels(after)
    changed = [not np.array_equal(a, b) for a, b in zip(k0, k1, strict=True)]
    assert changed[-1] and not changed[0]
    assert result.test_accuracy > 0.5  # three classes: chance is 1/3


def test_build_mobilenet_v2_with_weights_fine_tuned_bundled(folder, weights, tmp_path):
    """The issue's command: exit 0, a report, a clean BN verdict, a bundle that self-tests."""
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--arch", "mobilenet-v2", "--alpha", str(ALPHA),
                            "--image-size", "96", "--data-dir", str(folder), "--weights",
                            str(weights), "--epochs", "2", "--fine-tune-epochs", "1", "--bundle",
                            "--bench-time", "0.05", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["model"]["arch"] == "mobilenet-v2" and report["model"]["bn_layers"] == 52
    assert report["model"]["fine_tune_epochs_run"] == 1
    assert report["dataset"]["streamed"] is True and report["dataset"]["input_shape"] == [96, 96, 3]
    assert report["twin"]["available"] is False and "folded" in report["twin"]["reason"]
    assert report["bundle"]["selftest_here"]["passed"] is True
    assert report["bench"]["fold_gain"]["keras_compiled"] > 0  # BN's cost: against the folded


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--weights", "none"], ["--quantize", "int8"]],
                         ids=["from-scratch", "int8"])
def test_build_mobilenet_v2_variants(folder, weights, tmp_path, extra):
    args = ["--weights", str(weights)] if "--weights" not in extra else []
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--arch", "mobilenet-v2", "--alpha", str(ALPHA),
                            "--image-size", "96", "--data-dir", str(folder), "--epochs", "1",
                            "--fine-tune-epochs", "1", "--bundle", "--no-bench", "--out",
                            str(out), *args, *extra])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["bundle"]["selftest_here"]["passed"] is True
    assert report["tflite"]["quantize"] == ("int8" if "int8" in extra else "none")
