"""Backbone options: augmentation that vanishes in conversion, one-line refusals, mirrored
training on two logical CPUs, imagenet weights through Keras from a fake network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from synthetic import pretrained_weights, write_image_folder
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.train.training import TrainConfig, train
from edgebn.zoo.models import Arch

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "photos", per_class=10, size=64)


def test_augmentation_layers_vanish_in_conversion(digits, tmp_path):
    from edgebn.convert import to_tflite

    ops = {}
    for augment in (False, True):
        result = train(digits, TrainConfig(arch=Arch.cnn, epochs=1, augment=augment))
        names = [layer.name for layer in result.model.layers]
        assert any(n.startswith("augment_") for n in names) is augment
        ops[augment] = to_tflite(result.model, tmp_path / f"{augment}.tflite").model.op_counts()
    assert ops[True] == ops[False]
    x = digits.x_test[:8]  # inactive at inference in Keras too: the model behind them, exactly
    np.testing.assert_array_equal(result.model(x, training=False),
                                  result.model.layers[-1](x, training=False))


def test_a_frozen_backbone_is_deterministic_in_training_mode(tmp_path):
    """EfficientNet's stochastic-depth Dropout would drop while the head trains (Keras 3 passes
    the outer training flag down): edgebn sets it to rate 0, BN stays frozen."""
    import keras

    from edgebn.zoo.backbones import build_transfer, find_backbone

    images = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3))
    w = pretrained_weights(tmp_path / "eff.h5", images, np.zeros(8, np.int64), "efficientnet-b0",
                           epochs=0)
    model = build_transfer(Arch.efficientnet_b0, (32, 32, 3), 3, weights=str(w))
    backbone = find_backbone(model)
    dropouts = [la for la in backbone.layers if isinstance(la, keras.layers.Dropout)]
    assert dropouts and all(la.rate == 0.0 for la in dropouts)
    x = images.astype(np.float32)
    a, b = (np.asarray(backbone(x, training=True)) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.asarray(backbone(x, training=False)))


def test_a_model_build_refuses_training_options(cnn, tmp_path):
    r = runner.invoke(app, ["build", "--model", str(cnn["keras"]), "--augment", "--strategy",
                            "mirrored", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0] == ("Error: --model: builds a model as it is, untrained "
                                            "here: "
                                            "the training options augment, strategy cannot apply")


@pytest.mark.parametrize("args, message", [
    (["--arch", "cnn", "--alpha", "0.5"], "--alpha: applies to the backbones only"),
    (["--arch", "cnn", "--fine-tune-epochs", "1"], "--fine-tune-epochs: applies to the backbones"),
    (["--arch", "mobilenet-v2", "--weights", "nope.h5"], "--weights: nope.h5: no such file"),
    (["--arch", "mobilenet-v2", "--no-bn"], "--no-bn: mobilenet-v2 is a pretrained backbone: it "
                                             "has no BN-free baseline"),
    (["--arch", "efficientnet-b0", "--alpha", "0.5"], "--alpha: efficientnet-b0 has no width "
                                                       "multiplier"),
    (["--arch", "mobilenet-v2", "--color", "grayscale"], "--color: mobilenet-v2 takes RGB images"),
    (["--arch", "mobilenet-v2", "--image-size", "300"], "--image-size: mobilenet-v2: must be 32 to "
                                                         "224. Received: 300"),
    (["--replicas", "2"], "--replicas: needs strategy mirrored"),
])
def test_bad_training_options_are_one_line(folder, tmp_path, args, message):
    r = runner.invoke(app, ["train", "--data-dir", str(folder), "--epochs", "1",
                            "--out", str(tmp_path / "m.keras"), *args])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not (tmp_path / "m.keras").exists()


def _run(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python (TensorFlow not yet started), with ``args`` as sys.argv[1:]."""
    env = {"PATH": os.environ["PATH"], "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(sys.path), **env}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_mirrored_strategy_trains_on_two_logical_cpus_and_records_them(tmp_path):
    """A fresh process: logical devices exist only if made before TensorFlow starts."""
    code = textwrap.dedent(f"""
        from edgebn.cli.app import main
        import sys
        sys.argv = ["edgebn", "build", "--arch", "mlp-prebn", "--strategy", "mirrored",
                    "--replicas", "2", "--epochs", "3", "--no-bench", "--no-twin",
                    "--out", {str(tmp_path)!r}]
        main()
    """)
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    strategy = report["model"]["strategy"]
    assert strategy["name"] == "mirrored" and strategy["replicas"] == 2
    assert len(strategy["devices"]) == 2 and all("CPU" in d for d in strategy["devices"])
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["keras"]["test_accuracy"] > 0.8  # digits: it learned on two replicas (0.96)
    assert "mirrored on 2 replicas" in (tmp_path / "report.md").read_text()


_IMAGENET = textwrap.dedent("""
    import json, shutil, sys
    import keras.src.utils.file_utils as fu
    served, folder, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    calls = []
    def fake_urlretrieve(origin, target, *a, **k):
        calls.append(origin)
        if mode == "offline":
            raise OSError("network unreachable")
        shutil.copy(served, target)
    fu.urlretrieve = fake_urlretrieve
    from edgebn.cli.app import main
    sys.argv = ["edgebn", "train", "--arch", "mobilenet-v2", "--alpha", "0.35",
                "--image-size", "64", "--data-dir", folder, "--weights", "imagenet",
                "--epochs", "1", "--out", sys.argv[4], "--json"]
    try:
        main()
    finally:
        print("CALLS " + json.dumps(calls), file=sys.stderr)
""")


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_imagenet_weights_come_through_keras_from_a_fake_network(folder,
                                                                 mobilenet_weights_untrained,
                                                                 tmp_path,
                                                                 mode):
    out = tmp_path / "m.keras"
    proc = _run(_IMAGENET, str(mobilenet_weights_untrained), str(folder), mode, str(out),
                KERAS_HOME=str(tmp_path / "keras"))
    calls = json.loads(proc.stderr.split("CALLS ")[-1])
    assert len(calls) == 1
    assert calls[0].endswith("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    if mode == "offline":
        assert proc.returncode == 2 and not out.exists()
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "imagenet weights" in errors[0], proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["config"]["weights"] == "imagenet"
    assert (tmp_path / "keras" / "models").is_dir()  # Keras' cache: the next run is offline
