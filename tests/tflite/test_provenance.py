"""Input normalization beside BN (issue 27): a Keras ``Normalization`` layer's adapted state
carried through the fold's rebuild and its float64 reference, the reference proven to be the
model, the normalization folded where that is exact and told apart from BN by inspect.

Truths: Keras itself (the written file loaded by ``keras.models.load_model``), the original
model's own outputs, and keras.applications' preprocessing layers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from normalization_models import fit, sequential, task
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn
from edgebn.tflite.writer import strip_names

runner = CliRunner()


def _mid_network():
    """A functional model with a Normalization between layers (adapted on what it reads)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x, y = task()
    inputs = keras.Input((16, 16, 3))
    h = layers.ReLU()(layers.Conv2D(8, 3, name="c1")(layers.Rescaling(1 / 255)(inputs)))
    norm = layers.Normalization(name="mid_norm")
    norm.adapt(keras.Model(inputs, h).predict(x, verbose=0))
    h = layers.BatchNormalization()(layers.Conv2D(8, 3, use_bias=False)(norm(h)))
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(layers.ReLU()(h)))
    return fit(keras.Model(inputs, out), x, y)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (.keras, .npz of its data)} for the three models, trained 2 epochs here."""
    root = tmp_path_factory.mktemp("norm")
    x, y = task()
    out = {}
    for name, make in (("valid", lambda: sequential("valid")),
                       ("same", lambda: sequential("same")),
                       ("mid", _mid_network)):
        path = root / f"{name}.keras"
        make().save(path)
        np.savez(root / f"{name}.npz", x=x, y=y)
        out[name] = (path, root / f"{name}.npz")
    return out


def _keras_rel_diff(original, folded, x) -> float:
    """Keras alone: both files loaded, both run, the largest |Δ| over the largest |output|."""
    import keras

    a = np.asarray(keras.models.load_model(original).predict(x, verbose=0), np.float64)
    b = np.asarray(keras.models.load_model(folded).predict(x, verbose=0), np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("name", ["valid", "same", "mid"])
def test_fold_carries_normalization_state(models, name, tmp_path):
    path, npz = models[name]
    out = tmp_path / "f.keras"
    r = runner.invoke(app, ["fold", str(path), "--out", str(out), "--data", str(npz), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["measure"] == "float64 reference"
    assert doc["max_rel_diff"] <= 1e-6 and doc["noise_rel_diff"] <= 1e-6  # float32 rounding
    x = np.load(npz)["x"][:64]
    assert _keras_rel_diff(path, out, x) <= 1e-5
    (norm,) = doc["other_affine"]
    assert norm["type"] == "Normalization" and norm["folded"] is (name != "same")
    if name == "same":
        assert "zero padding" in norm["reason"]


def _build(path, npz, tmp_path) -> dict:
    """``edgebn build --model PATH --data NPZ --no-bench --json``: exit 0, its document."""
    r = runner.invoke(app, ["build", "--model", str(path), "--data", str(npz), "--no-bench",
                            "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_build_with_valid_padding_folds_the_normalization(models, tmp_path):
    path, npz = models["valid"]
    doc = _build(path, npz, tmp_path)
    assert doc["tflite"]["top1_agreement"] >= 0.999 and doc["inspect"]["bn"]["verdict"] == "clean"
    assert doc["fold"]["other_affine"][0]["folded"] and doc["inspect"]["bn"]["not_bn"] == []
    assert "SUB" not in doc["inspect"]["op_counts"]  # nothing of the normalization is left


def test_build_with_same_padding_keeps_the_normalization_as_not_bn(models, tmp_path):
    """Before, this build said "clean" because the normalization was dropped (agreement 0.30)."""
    path, npz = models["same"]
    doc = _build(path, npz, tmp_path)
    assert doc["tflite"]["top1_agreement"] >= 0.999 and doc["inspect"]["bn"]["verdict"] == "clean"
    (chain,) = doc["inspect"]["bn"]["not_bn"]
    assert chain["source_type"] == "normalization" and chain["kind"] == "sub_mul"
    assert chain["rule"].startswith("names:") and chain["source"].startswith("normalization")


def test_build_of_the_mid_network_normalization_is_at_float32_rounding(models, tmp_path):
    path, npz = models["mid"]
    doc = _build(path, npz, tmp_path)
    assert doc["tflite"]["max_abs_diff"] <= 1e-5 and doc["verify"]["passed"]


def test_state_lost_in_the_rebuild_is_refused(models, tmp_path, monkeypatch):
    """The machinery that rebuilds the folded model and its float64 reference, broken on
    purpose: one layer's state (the Normalization's) dropped in both. The reference is no
    longer the model, and the folded model is not either: refused, nothing written."""
    import edgebn.fold.keras.keras_fold as keras_fold

    real = keras_fold.copy_state

    def dropping(source, target):
        real(source, target)
        for layer in (target, *getattr(target, "layers", [])):
            if type(layer).__name__ == "Normalization":
                layer.adapt_mean.assign(np.zeros(layer.adapt_mean.shape))
                layer.finalize_state()

    monkeypatch.setattr(keras_fold, "copy_state", dropping)
    path, npz = models["same"]  # its Normalization stays in the folded model
    out = tmp_path / "f.keras"
    r = runner.invoke(app, ["fold", str(path), "--out", str(out), "--data", str(npz)])
    assert r.exit_code == 2, r.output
    assert "the folded model differs from the original" in r.output
    assert "float64 reference differs from the original model" in r.output
    assert not out.exists()


def test_a_reference_that_is_not_the_model_is_not_used(models, tmp_path, monkeypatch):
    """Only the float64 twin broken: it is refused as the reference, the fold is checked
    against the original float32 model instead, and the output says so."""
    import edgebn.fold.keras.keras_fold as keras_fold

    real = keras_fold._float64_twin

    def broken(model):
        twin = real(model)
        for layer in twin.layers:
            if type(layer).__name__ == "Normalization":
                layer.adapt_variance.assign(np.ones(layer.adapt_variance.shape) * 4)
                layer.finalize_state()
        return twin

    monkeypatch.setattr(keras_fold, "_float64_twin", broken)
    path, npz = models["mid"]
    out = tmp_path / "f.keras"
    r = runner.invoke(app, ["fold", str(path), "--out", str(out), "--data", str(npz), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["measure"].startswith("float32 (the float64 reference differs from the original")
    assert doc["max_rel_diff"] <= 1e-5
    assert _keras_rel_diff(path, out, np.load(npz)["x"][:64]) <= 1e-5


def test_state_lost_from_the_reference_and_the_fold_alike_is_refused(models, tmp_path,
                                                                     monkeypatch):
    """The bug this issue found, put back: every rebuild copies weights with set_weights, so
    a Normalization's adapted mean and variance are lost from the float64 reference and the
    folded model alike. The reference is then not the model, the fold is measured against
    the original float32 model, and the fold is refused: exit 2, nothing written."""
    import edgebn.fold.keras.keras_fold as keras_fold

    def set_weights_only(source, target):
        for a, b in keras_fold._layer_pairs(source, target):
            if a.weights and not getattr(a, "layers", None):
                b.set_weights(a.get_weights())

    monkeypatch.setattr(keras_fold, "copy_state", set_weights_only)
    # the model whose Normalization stays a layer (first, SAME padding); where it folds into
    # the next conv (VALID padding, or mid-network) the fold reads the original's own state
    path, npz = models["same"]
    out = tmp_path / "same.keras"
    r = runner.invoke(app, ["fold", str(path), "--out", str(out), "--data", str(npz)])
    assert r.exit_code == 2, r.output
    assert "differs" in r.output and not out.exists(), r.output


# ---------------------------------------------------------------- inspect on keras.applications


@pytest.fixture(scope="module")
def applications(tmp_path_factory):
    """EfficientNetV2B0 and ConvNeXtTiny (weights=None, random BN statistics, 32 px), converted
    by TensorFlow's converter as they are: each keeps its input normalization."""
    import keras
    from patterns import randomise_bn_statistics

    from edgebn.convert import to_tflite

    root = tmp_path_factory.mktemp("apps")
    out = {}
    for family in ("EfficientNetV2B0", "ConvNeXtTiny"):
        keras.utils.set_random_seed(0)
        model = getattr(keras.applications, family)(include_top=False, weights=None,
                                                    input_shape=(32, 32, 3), pooling="avg")
        randomise_bn_statistics(model, seed=1)
        path = to_tflite(model, root / f"{family}.tflite").path
        stripped = root / f"{family}-stripped.tflite"
        stripped.write_bytes(strip_names(path.read_bytes()))
        out[family] = (path, stripped)
    return out


@pytest.mark.parametrize("family", ["EfficientNetV2B0", "ConvNeXtTiny"])
def test_inspect_tells_input_normalization_from_bn(applications, family):
    path, stripped = applications[family]
    r = runner.invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    bn = json.loads(r.stdout)["bn"]
    assert bn["verdict"] == "clean" and bn["residual"] == [] and bn["names"] is True
    (chain,) = bn["not_bn"]
    assert chain["source_type"] == "normalization" and "normalization" in chain["source"]
    assert chain["rule"] == "names: a Keras Normalization's Sub and truediv"
    text = runner.invoke(app, ["inspect", str(path)]).stdout
    assert "per-channel affine, not BN" in text and "names stripped" not in text
    # names stripped: rule 4 (SUB then MUL on the model input, behind a scalar rescale
    # for EfficientNetV2) decides, and the output says so
    r = runner.invoke(app, ["inspect", str(stripped), "--json"])
    assert r.exit_code == 0, r.output
    bn = json.loads(r.stdout)["bn"]
    assert bn["verdict"] == "clean" and bn["names"] is False
    (chain,) = bn["not_bn"]
    assert chain["source"] is None and chain["rule"].startswith("form: x − c then · c")
    assert "no tensor names" in runner.invoke(app, ["inspect", str(stripped)]).stdout


def test_a_stripped_bn_chain_mid_network_still_counts():
    """Rule 5: without names, a SUB+MUL chain that is not on the model input counts as BN."""
    from tflite_forms import conv_bn

    data = conv_bn(3, form="sub_mul", activation="NONE")  # Conv -> SUB -> MUL -> Conv
    for blob in (data, strip_names(data)):
        bn = analyse_bn(parse_tflite(blob))
        assert bn.verdict == "residual" and [r.source_type for r in bn.residual] == ["bn"]
        assert [r.kind for r in bn.residual] == ["sub_mul"] and bn.not_bn == ()


def test_torch_module_names_are_read(tmp_path):
    """litert-torch names each tensor by module path: ``…BatchNorm2d_bn`` is BN ``bn``."""
    from edgebn.tflite.provenance import _bn_scope

    assert _bn_scope("m.DenseBlock/torch.nn.modules.batchnorm.BatchNorm2d_bn") == "bn"
    assert _bn_scope("torchvision.models.densenet.DenseNet/torch.nn.modules.container."
                     "Sequential_features/torchvision.models.densenet._DenseBlock_denseblock1/"
                     "torch.nn.modules.batchnorm.BatchNorm2d_norm1") == "features/denseblock1/norm1"
    assert _bn_scope("m.Net/torch.nn.modules.conv.Conv2d_conv") is None
    assert read_tflite  # the module's reader is what inspect uses


@pytest.mark.parametrize("name", ["valid", "same"])
def test_the_tflite_fold_folds_input_normalization_where_exact(models, name, tmp_path):
    """The converter's file as it is (no Keras fold first): ``edgebn fold model.tflite`` folds
    the normalization forward into a VALID convolution; before a SAME one it stays, and as it
    is not BN the fold still exits 0."""
    import keras

    from edgebn.convert import to_tflite

    path, npz = models[name]
    source = to_tflite(keras.models.load_model(path), tmp_path / "m.tflite").path
    x = np.load(npz)["x"][:16]
    inputs = tmp_path / "x.npy"
    np.save(inputs, x)
    out = tmp_path / "f.tflite"
    r = runner.invoke(app, ["fold", str(source), "--out", str(out), "--data", str(inputs),
                            "--json"])
    assert r.exit_code == 0, r.output
    norm = [c for c in json.loads(r.stdout)["bn"] if c["source_type"] == "normalization"]
    assert [c["result"] for c in norm] == (["folded"] if name == "valid" else ["kept"])
    if name == "valid":
        assert norm[0]["into"]["type"] == "CONV_2D" and norm[0]["direction"] == "forward"
    else:
        assert "zero padding" in norm[0]["reason"] or "SAME" in norm[0]["reason"]
