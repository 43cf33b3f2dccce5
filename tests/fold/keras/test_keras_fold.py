"""edgebn fold: exact on the zoo and every foldable pattern, refused with reasons elsewhere."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patterns import (
    FOLD_PATTERNS,
    INPUT_SHAPE,
    build_fold_pattern,
    randomise_bn_statistics,
    representative,
    set_random_bn,
)
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import FoldError
from edgebn.fold.keras.keras_fold import (
    all_bn_layer_names,
    bn_layer_paths,
    fold_file,
    fold_model,
    plan_fold,
)
from edgebn.zoo.models import ZOO, build_model

runner = CliRunner()
EXACT = 1e-5  # max |Δ| relative to the largest output, float32


def bn_layer_names(model) -> list[str]:
    """The model's own BatchNormalization layers, by name (the test's independent look)."""
    from keras import layers

    return [layer.name for layer in model.layers if isinstance(layer, layers.BatchNormalization)]


def _outputs(model, x):
    return np.asarray(model(x, training=False), np.float64)


def _relative_diff(original, folded, x) -> float:
    a, b = _outputs(original, x), _outputs(folded, x)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.parametrize("name", [n for n in FOLD_PATTERNS if n != "channels_first"])
def test_fold_patterns(name):
    model = build_fold_pattern(name)
    x = representative(64)
    result = fold_model(model, x)
    expected = FOLD_PATTERNS[name][2]
    assert [f.bn for f in result.layers] == bn_layer_names(model)
    assert len(result.layers) == len(expected)
    for fold, want in zip(result.layers, expected, strict=True):
        if want in ("backward", "forward"):
            assert fold.folded and fold.direction == want, fold
            assert set(fold.into.split(", ")) <= {la.name for la in result.model.layers}
        else:
            assert not fold.folded and re.search(want, fold.reason), fold.reason
    kept = {f.bn for f in result.layers if not f.folded}
    assert set(bn_layer_names(result.model)) == kept  # folded BNs are gone, kept ones stay
    # Independent of the library's own check: the folded model computes the same function.
    assert _relative_diff(model, result.model, x) <= EXACT
    assert result.max_rel_diff <= EXACT


@pytest.mark.parametrize("arch", list(ZOO))
def test_every_zoo_architecture_folds_exactly(arch):
    import keras

    keras.utils.set_random_seed(1)
    model = build_model(arch, (8, 8, 3), 10)
    set_random_bn(model, seed=1)
    x = representative(64)
    result = fold_model(model, x)
    assert result.all_folded, [f.reason for f in result.layers if not f.folded]
    assert len(result.layers) == len(bn_layer_names(model)) >= 2
    assert bn_layer_names(result.model) == []
    assert _relative_diff(model, result.model, x) <= EXACT
    assert result.model.count_params() < model.count_params()


def test_trained_model_folds_exactly_on_real_data(cnn, digits):
    model = cnn["result"].model
    result = fold_model(model, digits.x_test)
    assert result.all_folded
    assert [f.direction for f in result.layers] == ["backward"] * 4
    assert [f.into for f in result.layers] == ["conv1", "dwconv1", "conv2", "conv3"]
    assert _relative_diff(model, result.model, digits.x_test) <= EXACT
    assert result.model.inputs[0].name == "image"  # names survive the rebuild


def test_sequential_models_fold():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), layers.Dense(5, use_bias=False),
                              layers.BatchNormalization(), layers.Dense(3)])
    set_random_bn(model)
    x = np.random.default_rng(0).random((32, 6), dtype=np.float32)
    result = fold_model(model, x)
    assert result.all_folded and _relative_diff(model, result.model, x) <= EXACT


def test_channels_first_is_planned_backward():
    """TensorFlow's CPU kernels have no NCHW Conv2D, so this one is planned and checked, not run."""
    model = build_fold_pattern("channels_first")
    plan = plan_fold(model)
    [fold] = plan.folds
    assert fold.folded and fold.direction == "backward"
    conv = model.get_layer(fold.into)
    bn = model.get_layer(fold.bn)
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    sigma = np.sqrt(var + bn.epsilon)
    np.testing.assert_allclose(plan.state[conv.name]["kernel"],
                               conv.get_weights()[0] * gamma / sigma)
    np.testing.assert_allclose(plan.state[conv.name]["bias"], gamma * (0 - mean) / sigma + beta)


def _wrong_in_one_channel(monkeypatch, bn_name: str) -> None:
    """Make the fold of ``bn_name`` wrong: one channel's scale off by 1e-3."""
    import edgebn.fold.keras.graph as fold_graph

    right = fold_graph.bn_affine

    def wrong(bn):
        s, t = right(bn)
        if bn.name == bn_name:
            s = s.copy()
            s[0] *= 1 + 1e-3
        return s, t

    monkeypatch.setattr(fold_graph, "bn_affine", wrong)


def test_a_wrong_fold_is_refused_and_nothing_is_written(cnn, tmp_path, monkeypatch):
    _wrong_in_one_channel(monkeypatch, "bn3")
    out = tmp_path / "folded.keras"
    with pytest.raises(FoldError,
                       match=r"^the fold is not exact: in float64 the folded model differs "
                                        r"from the original by \S+ relative on 16 inputs \(a "
                                        r"correct "
                                        r"fold: ≤ 1e-09\): nothing written$"):
        fold_file(cnn["keras"], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_correct_fold_is_exact_in_float64_below_any_tolerance(cnn, digits):
    """float32 rounding (the old check's 'difference') is not held against an exact fold."""
    result = fold_model(cnn["result"].model, digits.x_test, tolerance=1e-12)
    assert result.measure == "float64 reference"
    assert result.fold_rel_diff < 1e-13 < result.max_rel_diff  # exact; float32 rounds
    assert 0 < result.noise_rel_diff < 1e-6
    assert result.folded_rel_error <= 4 * result.noise_rel_diff + 1e-12
    doc = result.to_json()
    assert doc["measure"] == "float64 reference" and doc["fold_rel_diff"] == result.fold_rel_diff


def test_a_folded_float32_model_that_drifts_is_refused(cnn, digits, monkeypatch):
    import edgebn.fold.keras.keras_fold

    # no room for float32 rounding at all
    monkeypatch.setattr(edgebn.fold.keras.keras_fold, "FLOAT32_SLACK", 0.0)
    with pytest.raises(FoldError, match=r"^the folded float32 model is \S+ \(relative\) from the "
                                        r"float64 outputs on 16 inputs, the original \S+: above 0x "
                                        r"that plus the tolerance 1e-12: nothing written$"):
        fold_model(cnn["result"].model, digits.x_test, tolerance=1e-12)


def test_a_tolerance_must_be_positive(cnn, digits):
    with pytest.raises(FoldError, match=r"^the tolerance must be > 0\. Received: tolerance=0$"):
        fold_model(cnn["result"].model, digits.x_test[:4], tolerance=0)


def test_without_float64_the_check_is_float32_against_the_tolerance(cnn, digits, monkeypatch):
    import edgebn.fold.keras.keras_fold

    def no_float64(model):
        raise TypeError("no float64 here")

    monkeypatch.setattr(edgebn.fold.keras.keras_fold, "_float64_twin", no_float64)
    model = cnn["result"].model
    result = fold_model(model, digits.x_test)
    assert result.measure == "float32 (no float64 run: TypeError: no float64 here)"
    assert result.fold_rel_diff is None and result.max_rel_diff <= EXACT
    with pytest.raises(FoldError, match=r"\(\S+ relative\) on 360 inputs, above the tolerance "
                                        r"1e-12, measured in float32 \(no float64 run: "
                                        r"TypeError: no float64 here\): nothing written$"):
        fold_model(model, digits.x_test, tolerance=1e-12)


# ---------------------------------------------------------------- the algebra, as properties

_LAYERS = {
    "dense": lambda L: L.Dense(4, use_bias=True),
    "conv": lambda L: L.Conv2D(4, 3, use_bias=False),
    "depthwise": lambda L: L.DepthwiseConv2D(3, depth_multiplier=2, use_bias=True),
    "transpose": lambda L: L.Conv2DTranspose(4, 3, strides=2, use_bias=True),
    "separable": lambda L: L.SeparableConv2D(4, 3, depth_multiplier=2, use_bias=False),
}


@pytest.fixture(scope="module")
def backward_models():
    import keras
    from keras import layers

    models = {}
    for kind, make in _LAYERS.items():
        inputs = keras.Input((5, 5, 3))
        x = layers.Flatten()(inputs) if kind == "dense" else inputs
        linear = make(layers)
        models[kind] = (keras.Model(inputs, layers.BatchNormalization(epsilon=1e-3)(linear(x))),
                        linear)
    return models


def _random_bn(rng, c, log_var_min):
    gamma = rng.uniform(0.1, 3.0, c) * rng.choice([-1.0, 1.0], c)
    var = 10.0 ** rng.uniform(log_var_min, 1.0, c)  # down to 1e-6: tiny variances
    return gamma, rng.normal(0, 1, c), rng.normal(0, 1, c), var


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(_LAYERS)), seed=st.integers(0, 2**31 - 1),
       log_var_min=st.floats(-6.0, 0.0))
def test_backward_fold_is_the_seed_formula(backward_models, kind, seed, log_var_min):
    """W' = γ⊗W/σ and b' = γ⊗(b − μ)/σ + β, σ = sqrt(var + ε), in each kernel layout."""
    model, linear = backward_models[kind]
    bn = model.layers[-1]
    rng = np.random.default_rng(seed)
    gamma, beta, mean, var = _random_bn(rng, bn.gamma.shape[0], log_var_min)
    bn.set_weights([gamma, beta, mean, var])
    weights = [rng.normal(0, 1, w.shape) for w in linear.get_weights()]
    linear.set_weights(weights)
    depthwise = weights.pop(0) if kind == "separable" else None  # the pointwise kernel absorbs it
    kernel = weights[0]
    bias = weights[1] if len(weights) > 1 else np.zeros(bn.gamma.shape[0])

    x = rng.random((16, 5, 5, 3), dtype=np.float32)
    result = fold_model(model, x)
    assert result.all_folded and result.layers[0].direction == "backward"
    folded = result.model.get_layer(linear.name).get_weights()
    if depthwise is not None:
        np.testing.assert_array_equal(folded.pop(0), depthwise.astype(np.float32))

    sigma = np.sqrt(var + bn.epsilon)
    scale = gamma / sigma
    if kind == "depthwise":  # (kh, kw, in, multiplier): output channel = in * multiplier + m
        want_kernel = kernel * scale.reshape(kernel.shape[-2:])
    elif kind == "transpose":  # (kh, kw, out, in)
        want_kernel = kernel * scale[:, None]
    else:  # dense, conv, separable's pointwise (1, 1, in * m, out)
        want_kernel = kernel * scale
    want_bias = gamma * (bias - mean) / sigma + beta
    np.testing.assert_allclose(folded[0], want_kernel, rtol=1e-6,
                               atol=1e-6 * np.abs(want_kernel).max())
    np.testing.assert_allclose(folded[1], want_bias, rtol=1e-6, atol=1e-6 * np.abs(want_bias).max())
    assert _relative_diff(model, result.model, x) <= EXACT


@pytest.fixture(scope="module")
def forward_models():
    import keras
    from keras import layers

    models = {}
    inputs = keras.Input((6, 6, 3))
    y = layers.Dense(5)(layers.Flatten()(layers.BatchNormalization()(layers.ReLU()(inputs))))
    models["dense"] = keras.Model(inputs, y)
    inputs = keras.Input((6, 6, 3))
    y = layers.Conv2D(4, 3)(layers.BatchNormalization()(layers.ReLU()(inputs)))
    models["conv"] = keras.Model(inputs, y)
    inputs = keras.Input((6, 6, 3))
    y = layers.DepthwiseConv2D(3, depth_multiplier=2)(layers.BatchNormalization()(inputs))
    models["depthwise"] = keras.Model(inputs, y)
    inputs = keras.Input((6, 6, 3))
    y = layers.SeparableConv2D(4, 3, depth_multiplier=2)(layers.BatchNormalization()(inputs))
    models["separable"] = keras.Model(inputs, y)
    return models


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["dense", "conv", "depthwise", "separable"]),
       seed=st.integers(0, 2**31 - 1),
       log_var_min=st.floats(-6.0, 0.0))
def test_forward_fold_is_exact(forward_models, kind, seed, log_var_min):
    model = forward_models[kind]
    bn = next(la for la in model.layers if type(la).__name__ == "BatchNormalization")
    rng = np.random.default_rng(seed)
    bn.set_weights(list(_random_bn(rng, bn.gamma.shape[0], log_var_min)))
    x = rng.random((16, 6, 6, 3), dtype=np.float32)
    result = fold_model(model, x)
    assert result.all_folded and result.layers[0].direction == "forward"
    assert _relative_diff(model, result.model, x) <= EXACT


# ---------------------------------------------------------------- the converter, before and after


@pytest.mark.parametrize("name", ["bn_before_conv", "add_bn_gap_dense", "relu_bn_pool_dense"])
def test_converter_residue_converts_clean_after_fold(name, tmp_path):
    from edgebn.zoo.keras_io import save_keras

    keras_path = save_keras(build_fold_pattern(name), tmp_path / "m.keras")
    out = tmp_path / "m.tflite"
    res = runner.invoke(app, ["convert", str(keras_path), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["fold"]["converter_only"]["verdict"] == "residual"
    assert doc["fold"]["converter_only"]["residual"] == 1
    assert doc["fold"]["pre_folded"] == {**doc["fold"]["pre_folded"], "verdict": "clean",
                                         "residual": 0}
    assert doc["fold"]["inputs"].startswith("random")  # digits do not fit an 8x8x3 input
    proof = runner.invoke(app, ["inspect", str(out), "--json"])
    assert proof.exit_code == 0 and json.loads(proof.stdout)["bn"]["verdict"] == "clean"
    unfolded = runner.invoke(app, ["convert", str(keras_path), "--out", str(tmp_path / "u.tflite"),
                                   "--no-fold"])
    assert unfolded.exit_code == 1  # the converter alone leaves the MUL+ADD


# ---------------------------------------------------------------- the command


def test_fold_cli_json_is_the_contract_document(cnn, tmp_path):
    out = tmp_path / "folded.keras"
    res = runner.invoke(app, ["fold", str(cnn["keras"]), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == str(cnn["keras"]) and doc["out"] == str(out)
    assert 0 <= doc["max_abs_diff"] < 1e-5
    assert doc["inputs"] == "digits test split"
    assert [la["folded"] for la in doc["layers"]] == [True] * 4
    assert {"bn", "folded", "into", "direction"} <= set(doc["layers"][0])
    from edgebn.zoo.keras_io import load_keras

    assert bn_layer_names(load_keras(out)) == []


def test_fold_cli_exits_1_when_some_bn_stays(tmp_path):
    from edgebn.zoo.keras_io import save_keras

    keras_path = save_keras(build_fold_pattern("bn_before_conv_same"), tmp_path / "m.keras")
    out = tmp_path / "f.keras"
    res = runner.invoke(app, ["fold", str(keras_path), "--out", str(out), "--json"])
    assert res.exit_code == 1
    layer = json.loads(res.stdout)["layers"][0]
    assert layer["folded"] is False and "padding='same'" in layer["reason"]
    assert out.exists()  # the output is written; the kept BN is in it
    table = runner.invoke(app, ["fold", str(keras_path), "--out", str(out)])
    assert table.exit_code == 1 and "kept" in table.stdout


@pytest.mark.parametrize("args, wrong, needle", [
    ([], True, "the fold is not exact: in float64"),
    (["--tolerance", "0"], False, "--tolerance"),
    (["--out", "x.h5"], False, "must end in .keras. Received: x.h5"),
])
def test_fold_cli_refusals_are_one_line_exit_2(cnn, tmp_path, monkeypatch, args, wrong, needle):
    if wrong:
        _wrong_in_one_channel(monkeypatch, "bn3")
    argv = ["fold", str(cnn["keras"]), "--out", str(tmp_path / "f.keras"), *args]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not (tmp_path / "f.keras").exists()


def test_fold_data_must_fit_the_model(cnn, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.zeros((4, *INPUT_SHAPE), np.float32))
    res = runner.invoke(app, ["fold", str(cnn["keras"]), "--out", str(tmp_path / "f.keras"),
                              "--data", str(data)])
    assert res.exit_code == 2 and "the model expects [8, 8, 1]" in res.stderr


def test_nested_models_and_several_inputs():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inner_in = keras.Input((6, 6, 3))
    y = L.BatchNormalization(name="inner_bn")(L.Conv2D(4, 3, name="inner_conv")(inner_in))
    inner = keras.Model(inner_in, y, name="inner")
    x_in = keras.Input((6, 6, 3))
    y = L.BatchNormalization(name="outer_bn")(L.Conv2D(2, 1, name="outer_conv")(inner(x_in)))
    model = keras.Model(x_in, L.GlobalAveragePooling2D()(y))
    set_random_bn(inner)
    set_random_bn(model)
    x = np.random.default_rng(0).random((8, 6, 6, 3), dtype=np.float32)
    result = fold_model(model, x)
    assert [(f.bn, f.into) for f in result.layers] == [("inner/inner_bn", "inner/inner_conv"),
                                                        ("outer_bn", "outer_conv")]
    assert result.all_folded and all_bn_layer_names(result.model) == []
    assert _relative_diff(model, result.model, x) <= EXACT

    a, b = keras.Input((5,)), keras.Input((5,))
    h = L.BatchNormalization()(L.Dense(4, use_bias=False)(L.Concatenate()([a, b])))
    two = keras.Model([a, b], [L.Dense(2)(h), L.Dense(3)(L.ReLU()(h))])
    set_random_bn(two)
    xa = np.random.default_rng(1).random((8, 5), dtype=np.float32)
    result = fold_model(two, [xa, xa])
    assert result.all_folded and result.samples == 8
    for got, want in zip(result.model([xa, xa]), two([xa, xa]), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _block(name: str, shape, inner=None):
    """Conv -> BN -> ReLU, [inner model], Conv -> BN: a model to nest, named ``name``."""
    import keras
    from keras import layers as L

    x_in = keras.Input(shape, name=f"{name}_in")
    y = L.Conv2D(4, 3, name=f"{name}_conv1")(x_in)
    y = L.ReLU()(L.BatchNormalization(name=f"{name}_bn1")(y))
    y = inner(y) if inner is not None else y
    y = L.Conv2D(4, 1, use_bias=False, name=f"{name}_conv2")(y)
    y = L.BatchNormalization(name=f"{name}_bn2")(y)
    return keras.Model(x_in, y, name=name)


def test_models_nested_at_any_depth_fold_on_their_own_graphs():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    deep = _block("deep", (6, 6, 4))
    mid = keras.Sequential([keras.Input((8, 8, 4)), _block("mid", (8, 8, 4), deep)], name="seq")
    x_in = keras.Input((10, 10, 3), name="image")
    y = L.ReLU()(L.BatchNormalization(name="top_bn")(L.Conv2D(4, 3, name="top_conv")(x_in)))
    y = L.GlobalAveragePooling2D()(L.ReLU()(mid(y)))
    model = keras.Model(x_in, L.Dense(3, name="head")(L.Dropout(0.2)(y)), name="top")
    assert randomise_bn_statistics(model) == 5
    x = np.random.default_rng(0).random((8, 10, 10, 3), dtype=np.float32)
    result = fold_model(model, x)
    assert [(f.bn, f.into) for f in result.layers] == [
        ("top_bn", "top_conv"), ("seq/mid/mid_bn1", "seq/mid/mid_conv1"),
        ("seq/mid/deep/deep_bn1", "seq/mid/deep/deep_conv1"),
        ("seq/mid/deep/deep_bn2", "seq/mid/deep/deep_conv2"),
        ("seq/mid/mid_bn2", "seq/mid/mid_conv2")]
    assert sorted(bn_layer_paths(model)) == sorted(f.bn for f in result.layers)
    assert set(all_bn_layer_names(model)) == {"top_bn", "mid_bn1", "mid_bn2", "deep_bn1",
                                              "deep_bn2"}
    assert all_bn_layer_names(result.model) == []
    # the same names at every depth, for the converter's tensor names to map back
    names = [p for p, _ in _paths(result.model)]
    bn_names = all_bn_layer_names(model)
    assert [p for p, _ in _paths(model) if p.rsplit("/", 1)[-1] not in bn_names] == names
    assert result.measure == "float64 reference" and result.fold_rel_diff < 1e-12
    assert _relative_diff(model, result.model, x) <= EXACT


def _paths(model, prefix=""):
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":  # a Sequential lists none, a functional model all
            continue
        yield prefix + layer.name, layer
        yield from _paths(layer, f"{prefix}{layer.name}/") if hasattr(layer, "layers") else ()


def test_a_bn_at_a_nested_model_boundary_stays_with_its_reason():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    first, shared = _block("first", (6, 6, 3)), _block("shared", (6, 6, 3))
    x_in = keras.Input((6, 6, 3))
    y = first(L.BatchNormalization(name="before")(L.ReLU(name="relu")(x_in)))
    y = shared(L.Conv2DTranspose(3, 3)(y))
    y = shared(L.Conv2DTranspose(3, 3)(y))  # one rebuilt model serves both calls
    model = keras.Model(x_in, L.Dense(2)(L.Flatten()(y)))
    randomise_bn_statistics(model)
    x = np.random.default_rng(0).random((8, 6, 6, 3), dtype=np.float32)
    result = fold_model(model, x)
    assert [f.bn for f in result.kept] == ["before"]
    assert result.kept[0].reason == ("backward: its input comes from relu (ReLU), not a Dense or "
                                     "convolution; forward: first after it is a nested model (a BN "
                                     "folds within its own model)")
    assert [f.bn for f in result.layers if f.folded] == [
        "first/first_bn1", "first/first_bn2", "shared/shared_bn1", "shared/shared_bn2"]
    assert all_bn_layer_names(result.model) == ["before"]
    assert _relative_diff(model, result.model, x) <= EXACT


@pytest.mark.parametrize("scale, center", [(False, True), (True, False), (False, False)])
@pytest.mark.parametrize("direction", ["backward", "forward"])
def test_bn_without_gamma_or_beta_folds_exactly(scale, center, direction):
    """γ absent (``scale=False``) is 1 and β absent (``center=False``) is 0: s = 1/σ, t = −μ/σ."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    x_in = keras.Input(INPUT_SHAPE)
    bn = L.BatchNormalization(scale=scale, center=center)
    if direction == "backward":
        y = L.ReLU()(bn(L.Conv2D(4, 3, use_bias=False)(x_in)))
    else:
        y = L.Conv2D(5, 3)(bn(L.Conv2D(4, 3, activation="relu")(x_in)))
    model = keras.Model(x_in, y)
    randomise_bn_statistics(model)
    assert (bn.gamma is None) != scale and (bn.beta is None) != center
    x = representative(32)
    result = fold_model(model, x)
    assert result.all_folded and result.layers[0].direction == direction
    linear = result.model.get_layer(result.layers[0].into)
    before = model.get_layer(linear.name).get_weights()[0]
    mean, var = (np.asarray(v, np.float64) for v in (bn.moving_mean, bn.moving_variance))
    sigma = np.sqrt(var + bn.epsilon)
    beta = np.asarray(bn.beta, np.float64) if center else 0.0
    gamma = np.asarray(bn.gamma, np.float64) if scale else 1.0
    if direction == "backward":
        np.testing.assert_allclose(linear.get_weights()[1], gamma * (0 - mean) / sigma + beta,
                                   rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_allclose(linear.get_weights()[0], before * (gamma / sigma)[:, None],
                                   rtol=1e-6, atol=1e-7)
    assert _relative_diff(model, result.model, x) <= EXACT


def test_a_refused_forward_fold_leaves_the_next_layer_untouched():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inputs = keras.Input(INPUT_SHAPE)
    y = L.BatchNormalization()(L.ReLU()(inputs))
    conv = L.Conv2D(5, 3, padding="same", use_bias=False)
    model = keras.Model(inputs, conv(y))
    set_random_bn(model)
    result = fold_model(model, representative(16))
    assert not result.layers[0].folded and "padding='same'" in result.layers[0].reason
    folded_conv = result.model.get_layer(conv.name)
    assert not folded_conv.use_bias and folded_conv.count_params() == conv.count_params()
    np.testing.assert_array_equal(folded_conv.get_weights()[0], conv.get_weights()[0])


@pytest.mark.parametrize("command", ["fold", "recalibrate"])
def test_fold_and_recalibrate_never_write_over_their_input(cnn, tmp_path, command):
    """`--out` naming the model itself: one line, exit 2, the file byte for byte as it was."""
    model = tmp_path / "m.keras"
    model.write_bytes(cnn["keras"].read_bytes())
    before = model.read_bytes()
    r = runner.invoke(app, [command, str(model), "--out", str(tmp_path / "." / "m.keras"),
                            "--dataset", "digits"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "is the input model itself" in r.output and model.read_bytes() == before
