"""BN statistics (edgebn.fold.keras.statistics): drift measured against the data, recomputed
layer by layer, proven on held-out inputs; stale MobileNetV2 statistics found and fixed.

Truths: hand-worked drift figures, NumPy's mean and variance of each BN input computed by
the test itself with a Keras model cut at that BN, and held-out accuracy measured by Keras.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.fold.keras import statistics as S
from edgebn.fold.keras import stats_check as C

runner = CliRunner()


# ---------------------------------------------------------------- the measure, by hand


def test_channel_drift_hand_worked():
    # stored μ 0, var 1; population μ 0.5, var 0.25, ε 0: σ_p/σ_s = 0.5, shift 0.5
    d = S.channel_drift([0.0, 1.0], [1.0, 4.0], [0.5, 1.0], [0.25, 4.0], 0.0)
    np.testing.assert_allclose(d, [np.sqrt(0.25 + 0.25), 0.0])
    # ε enters both spreads: var 0 against var 0 is no drift whatever the means' agreement
    assert S.channel_drift([1.0], [0.0], [1.0], [0.0], 1e-3)[0] == 0.0


def test_moments_merge_equals_numpy():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, (1000, 5))
    m = S._Moments()
    for part in np.array_split(values, 7):
        m.add(part)
    np.testing.assert_allclose(m.mean, values.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.var, values.var(0), rtol=1e-10)


# ---------------------------------------------------------------- a small model, exactly


def _small_model(seed: int = 0):
    """Conv -> BN -> ReLU -> nested (Conv -> BN) -> GAP -> Dense, BN statistics wrong."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((6, 6, 4))
    inner = keras.Model(inner_in, layers.BatchNormalization(name="bn_inner")(
        layers.Conv2D(5, 3, name="conv_inner")(inner_in)), name="inner")
    x_in = keras.Input((8, 8, 3))
    h = layers.ReLU(name="relu")(layers.BatchNormalization(name="bn_outer")(
        layers.Conv2D(4, 3, name="conv_outer")(x_in)))
    out = layers.Dense(3)(layers.GlobalAveragePooling2D()(inner(h)))
    model = keras.Model(x_in, out)
    for layer in (model.get_layer("bn_outer"), inner.get_layer("bn_inner")):
        c = layer.moving_mean.shape[0]
        layer.moving_mean.assign(np.full(c, 5.0, np.float32))  # far from anything the data gives
        layer.moving_variance.assign(np.full(c, 0.01, np.float32))
    return model


def _inputs(n: int = 400, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)


def test_recompute_sets_each_bn_to_its_inputs_population_layer_by_layer():
    import keras

    model = _small_model()
    x = _inputs()
    S.recompute(model, x)
    # the truth, computed here: the outer BN's input, then the inner BN's input through the
    # outer BN with its new statistics (what "layer by layer" means)
    outer_in = keras.Model(model.input, model.get_layer("conv_outer").output)(x).numpy()
    bn = model.get_layer("bn_outer")
    np.testing.assert_allclose(bn.moving_mean.numpy(), outer_in.mean((0, 1, 2)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), outer_in.var((0, 1, 2)), rtol=1e-4)
    h = keras.Model(model.input, model.get_layer("relu").output)(x).numpy()
    inner = model.get_layer("inner")
    inner_in = keras.Model(inner.input, inner.get_layer("conv_inner").output)(h).numpy()
    bn = inner.get_layer("bn_inner")
    np.testing.assert_allclose(bn.moving_mean.numpy(), inner_in.mean((0, 1, 2)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), inner_in.var((0, 1, 2)), rtol=1e-4)


def test_stale_statistics_found_and_recalibration_proven():
    model = _small_model()
    x, held = _inputs(), _inputs(300, seed=2)
    before = S.measure_drift(model, held)
    assert [d.bn for d in before.layers] == ["bn_outer", "inner/bn_inner"]
    assert len(before.stale) == 2 and before.max_drift > 1
    done = S.recalibrate(model, x, held)
    assert done.after.stale == [] and done.after.max_drift < 0.1
    assert all(d.drift <= S.NOISE_FACTOR * d.noise or d.drift <= S.AT_NOISE_FLOOR
               for d in done.after.layers)


def test_statistics_from_the_wrong_layers_input_are_caught():
    """A deliberately wrong recalibration: each BN given the statistics its neighbour's input
    has (same channel count). The drift check must refuse it."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x_in = keras.Input((8, 8, 3))
    h = layers.BatchNormalization(name="bn1")(layers.Conv2D(4, 3, name="c1")(x_in))
    h = layers.BatchNormalization(name="bn2")(layers.Conv2D(4, 3, name="c2")(layers.ReLU()(h)))
    model = keras.Model(x_in, layers.Dense(2)(layers.GlobalAveragePooling2D()(h)))
    x, held = _inputs(), _inputs(300, seed=2)
    done = S.recompute(model, x)
    right = done.stats
    S.check_recalibrated(S.measure_drift(model, held), done.noise)  # the right ones pass
    S.set_statistics(model, {"bn1": right["bn2"], "bn2": right["bn1"]})
    with pytest.raises(S.StatisticsError, match="do not describe the held-out data"):
        S.check_recalibrated(S.measure_drift(model, held), done.noise)


def test_policy_refuses_fewer_than_two_samples_naming_its_option():
    with pytest.raises(S.StatisticsError) as info:
        C.StatsPolicy(recalibrate=1)
    assert info.value.option == "recalibrate_bn"


# ---------------------------------------------------------------- a stale MobileNetV2


@pytest.fixture(scope="module")
def stale_mobilenet(digits_rgb_npz, tmp_path_factory):
    """A Keras MobileNetV2 (alpha 0.35, 32 px) trained 3 epochs here at its own BN momentum
    0.999: its moving statistics are still nearly their initial values."""
    import keras

    from edgebn.data.arrays import load_labelled

    x, arrays = load_labelled(digits_rgb_npz, ("y",))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    base = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False,
                                          weights=None, alpha=0.35)
    assert {layer.momentum for layer in base.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.999}
    out = keras.layers.Dense(10, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(base(h)))
    model = keras.Model(inputs, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:1000], arrays["y"][:1000], epochs=3, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("stale") / "stale.keras"
    model.save(path)
    return path


def _held_out_accuracy(path, npz) -> float:
    """Keras' own accuracy on the half of the .npz that edgebn holds out (its seed 0 split)."""
    import keras

    from edgebn.data.arrays import load_labelled

    x, arrays = load_labelled(npz, ("y",))
    held = C.split_samples(x, arrays["y"], "x")
    model = keras.models.load_model(path)
    p = model.predict(held.held_out[:S.DRIFT_SAMPLES], verbose=0)
    return float((p.argmax(1) == held.labels[:S.DRIFT_SAMPLES]).mean())


def test_fold_reports_stale_statistics_per_bn(stale_mobilenet, digits_rgb_npz, tmp_path):
    r = runner.invoke(app, ["fold", str(stale_mobilenet), "--out", str(tmp_path / "f.keras"),
                            "--data", str(digits_rgb_npz), "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.stdout)["bn_statistics"]
    layers = stats["drift"]["layers"]
    assert len(layers) == 52 and all({"bn", "drift", "noise", "stale"} <= set(d) for d in layers)
    assert stats["drift"]["stale"] >= 40 and stats["warning"] and "52 BN layers" in stats["warning"]
    assert stats["recalibration"] is None
    strict = runner.invoke(app, ["fold", str(stale_mobilenet), "--out", str(tmp_path / "s.keras"),
                                 "--data", str(digits_rgb_npz), "--strict-bn-stats"])
    assert strict.exit_code == 2 and "--strict-bn-stats:" in strict.output
    assert not (tmp_path / "s.keras").exists()


def test_recalibrate_bn_raises_held_out_accuracy_and_the_fold_stays_exact(
        stale_mobilenet, digits_rgb_npz, tmp_path):
    out = tmp_path / "f.keras"
    before_bytes = stale_mobilenet.read_bytes()
    r = runner.invoke(app, ["fold", str(stale_mobilenet), "--out", str(out), "--data",
                            str(digits_rgb_npz), "--recalibrate-bn", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    recal = doc["bn_statistics"]["recalibration"]
    assert recal["samples"] == S.RECALIBRATE_SAMPLES and recal["after"]["stale"] == 0
    assert doc["measure"] == "float64 reference" and doc["fold_rel_diff"] <= 1e-9
    assert stale_mobilenet.read_bytes() == before_bytes  # the original is never changed
    before = _held_out_accuracy(stale_mobilenet, digits_rgb_npz)
    after = _held_out_accuracy(out, digits_rgb_npz)  # the folded, recalibrated file
    assert after >= before + 0.20, (before, after)
    assert recal["accuracy_after"] == pytest.approx(after, abs=0.01)


def test_recalibrate_command_writes_a_proven_model(stale_mobilenet, digits_rgb_npz, tmp_path):
    out = tmp_path / "r.keras"
    r = runner.invoke(app, ["recalibrate", str(stale_mobilenet), "--data", str(digits_rgb_npz),
                            "--out", str(out), "--samples", "300", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["samples"] == 300 and doc["after"]["stale"] == 0 and out.exists()
    assert doc["accuracy_after"] > doc["accuracy_before"] + 0.2


def test_a_model_with_right_statistics_is_not_stale(cnn, digits):
    """The default cnn trained here: training recomputed its statistics; none is stale."""
    from edgebn.zoo.keras_io import load_keras

    report = S.measure_drift(load_keras(cnn["keras"]), digits.x_val, "val")
    assert report.stale == [] and report.max_drift < S.STALE_DRIFT
    stats = cnn["result"].bn_statistics
    assert stats.check.recalibration is not None and stats.check.recalibration.after.stale == []


def test_recalibrate_option_takes_an_optional_count():
    from edgebn.cli.options import with_optional_values

    assert with_optional_values(["fold", "--recalibrate-bn", "m.keras"]) == \
        ["fold", "--recalibrate-bn", "600", "m.keras"]
    assert with_optional_values(["fold", "--recalibrate-bn", "50", "m.keras"]) == \
        ["fold", "--recalibrate-bn", "50", "m.keras"]
    assert with_optional_values(["build", "--recalibrate-bn"]) == ["build", "--recalibrate-bn",
                                                                   "600"]


def test_one_pass_and_per_bn_probes_recompute_the_same(monkeypatch):
    """The one-pass recompute (the graph node by node over all samples) against its fallback
    (each BN probed from the input): the same statistics, to float64 rounding."""
    from edgebn.fold.keras import recompute as one_pass

    x = _inputs()
    fast, slow = _small_model(), _small_model()
    assert one_pass.fits(fast, len(x))
    a = S.recompute(fast, x)
    monkeypatch.setattr(one_pass, "fits", lambda *args, **kwargs: False)
    b = S.recompute(slow, x)
    assert set(a.stats) == set(b.stats) == {"bn_outer", "inner/bn_inner"}
    for path in a.stats:
        np.testing.assert_allclose(a.stats[path][0], b.stats[path][0], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.stats[path][1], b.stats[path][1], rtol=1e-9)
    assert not one_pass.fits(fast, len(x), budget=1000)  # a budget it cannot keep: refused
