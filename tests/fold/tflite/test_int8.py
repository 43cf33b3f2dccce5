"""``edgebn fold model.tflite`` on int8 files: the chain folded backward into the int8 kernel
(per-channel scales × |s|, negative channels' weights flipped, the bias requantized), proven.

Forms written with edgebn's writer (tests/tflite_forms.py) and the TensorFlow converter's
int8 Conv3D → BN. Three checks: the proof's (every tensor in steps of its scale, the folded
kernel's parameters against ``s⊗W`` and ``s⊗b + t``); the real interpreter on both files on
inputs the proof did not see; and an independent truth, the original graph in float64 from its
dequantized constants, which the folded file must match at least as closely as the original.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from tflite_forms import INT8_FORMS, float64_run, int8_kernel_bn, wrong_scale
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import FoldError
from edgebn.fold.tflite import int8 as fold_int8
from edgebn.fold.tflite import rewrite as tflite_fold_algebra
from edgebn.fold.tflite import tflite_fold
from edgebn.runtime.backends import load_interpreter
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn

runner = CliRunner()


def _outputs(model, xs: list[np.ndarray]) -> tuple[np.ndarray, float, int]:
    """The int8 output on each input, and the output's scale and zero point."""
    interp, _ = load_interpreter(model, xnnpack=False, checked=False)
    out, got = interp.get_output_details()[0], []
    for x in xs:
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        got.append(interp.get_tensor(out["index"]).astype(np.float64))
    return np.stack(got), *out["quantization"]


def _errors(original, folded, truth, xs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|original − truth|, |folded − truth| (steps of the output's scale), |original − folded|."""
    a, scale, zero = _outputs(original, xs)
    b, _, _ = _outputs(folded, xs)
    want = np.clip(np.stack([truth(x) for x in xs]) / scale + zero, -128, 127)
    return np.abs(a - want), np.abs(b - want), np.abs(a - b)


def _inputs(model, n: int = 16, seed: int = 11) -> list[np.ndarray]:
    sg = model.subgraphs[0]
    rng = np.random.default_rng(seed)
    return [rng.integers(-128, 128, sg.tensors[sg.inputs[0]].shape).astype(np.int8)
            for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(INT8_FORMS))
def test_each_int8_form_folds_backward_and_beats_the_original_against_float64(name, seed):
    model = parse_tflite(INT8_FORMS[name](seed), name)
    result = tflite_fold.fold_tflite(model)
    (chain,) = result.chains
    assert (chain.result, chain.direction, chain.int8) == ("folded", "backward", True), chain
    assert result.compared_quantized >= 1 and result.max_steps <= result.step_tolerance
    check = result.parameters
    assert check.kernels == 1 and check.max_weight_rel_diff <= tflite_fold.SCALE_ROUNDING
    assert check.max_bias_steps <= 0.5 + 1e-6
    folded = parse_tflite(result.data)
    assert analyse_bn(folded).residual == ()
    # the real interpreter on inputs the proof did not see, against the float64 truth
    before, after, apart = _errors(model, folded, lambda x: float64_run(model, x), _inputs(model))
    assert after.max() <= 0.55  # one rounding, of y (and half a bias step): the truth rounded
    assert after.mean() <= before.mean()
    assert np.median(apart) <= 1


def test_a_wrong_int8_fold_fails_the_float64_truth(monkeypatch):
    """The truth check itself: one channel's s × 1.05 is seen on the outputs."""
    model = parse_tflite(INT8_FORMS["conv_bn"](0))
    real = tflite_fold_algebra.chain_affine

    def wrong(*args):
        s, t = real(*args)
        return s * np.r_[1.0, 1.05, np.ones(len(s) - 2)], t

    monkeypatch.setattr(tflite_fold_algebra, "chain_affine", wrong)
    folded = parse_tflite(tflite_fold_algebra.fold_chains(model).data)
    _, after, _ = _errors(model, folded, lambda x: float64_run(model, x), _inputs(model))
    assert after.max() > 1


def test_a_wrong_int8_fold_is_refused_and_nothing_is_written(monkeypatch, tmp_path):
    """One channel's s × (1 + 1e-3): a fraction of a step on the outputs, refused on the weights."""
    wrong = wrong_scale(tflite_fold_algebra.chain_affine)

    src = tmp_path / "conv_int8.tflite"
    src.write_bytes(INT8_FORMS["conv_sub_mul_mul_add"](0))
    out = tmp_path / "folded.tflite"
    assert tflite_fold.fold_tflite(read_tflite(src)).all_folded
    monkeypatch.setattr(tflite_fold_algebra, "chain_affine", wrong)
    with pytest.raises(FoldError, match=r"weights differ from s⊗W by .* nothing written"):
        tflite_fold.fold_tflite(read_tflite(src))
    result = runner.invoke(app, ["fold", str(src), "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "nothing written" in result.stderr


def test_a_negative_channel_holding_minus_128_is_kept_with_its_reason():
    model = parse_tflite(int8_kernel_bn(0, extreme=-1))  # channel 0: γ < 0 and a −128 weight
    (chain,) = tflite_fold.fold_tflite(model).chains
    assert chain.result == "kept"
    assert "channel 0 of the CONV_2D's int8 weights holds −128 and its s < 0" in chain.reason


def test_per_tensor_weights_fold_only_when_every_scale_is_the_same():
    q = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    kernel = fold_int8.Int8Kernel(q, np.array([0.01]), 0, np.arange(4), 0.5)
    reason = fold_int8.absorb(kernel, np.array([1.0, -2.0, 1.0, 1.0]), np.zeros(4),
                              "FULLY_CONNECTED")
    assert reason.startswith("the FULLY_CONNECTED's int8 weights share one scale (per tensor)")
    same = fold_int8.absorb(kernel, np.array([2.0, -2.0, 2.0, 2.0]), np.ones(4), "FULLY_CONNECTED")
    assert same.scale.tolist() == [np.float32(0.02)] and (same.q[1] == -q[1]).all()


def test_a_zero_scale_channel_outputs_its_shift():
    q = np.full((2, 3), 5, np.int8)
    kernel = fold_int8.Int8Kernel(q, np.array([0.1, 0.1]), 0, np.zeros(2, np.int64), 0.5)
    folded = fold_int8.absorb(kernel, np.array([0.0, 1.0]), np.array([0.25, 0.0]),
                              "FULLY_CONNECTED")
    assert (folded.q[0] == 0).all() and folded.real_bias[0] == pytest.approx(0.25)


# ---------------------------------------------------------------- the TensorFlow converter


@pytest.fixture(scope="module")
def conv3d_int8(tmp_path_factory):
    """Keras Conv3D → BN (→ ReLU), full-integer: the converter leaves a float CONV_3D between
    a DEQUANTIZE and a QUANTIZE, and the BN as int8 MUL+ADD after it."""
    import keras
    from keras import layers
    from patterns import set_random_bn

    from edgebn.convert import to_tflite

    rep = np.random.default_rng(0).random((32, 4, 6, 6, 3), dtype=np.float32)
    keras.utils.set_random_seed(int(os.environ.get("EDGEBN_TEST_SEED", "0")))  # the kernels' init
    out = {}
    for relu in (False, True):
        x = keras.Input((4, 6, 6, 3))
        y = layers.BatchNormalization()(layers.Conv3D(4, 3)(x))
        model = keras.Model(x, layers.ReLU()(y) if relu else y)
        set_random_bn(model, negative=True)
        path = tmp_path_factory.mktemp("conv3d") / f"conv3d_bn{'_relu' if relu else ''}.tflite"
        to_tflite(model, path, "int8", rep)
        out[relu] = (model, path)
    return out


@pytest.mark.parametrize("relu", [False, True], ids=["bn", "bn_relu"])
def test_the_converters_int8_conv3d_bn_folds_through_its_quantize(conv3d_int8, relu):
    model, path = conv3d_int8[relu]
    original = read_tflite(path)
    assert [op.op for op in original.subgraphs[0].operators] == [
        "DEQUANTIZE", "CONV_3D", "QUANTIZE", "MUL", "ADD"]
    result = tflite_fold.fold_tflite(original)
    (chain,) = result.chains
    assert (chain.result, chain.direction, chain.into_type, chain.int8) == (
        "folded", "backward", "CONV_3D", False)
    assert result.max_steps <= result.step_tolerance and result.parameters.kernels == 1
    folded = parse_tflite(result.data)
    assert [op.op for op in folded.subgraphs[0].operators] == ["DEQUANTIZE", "CONV_3D", "QUANTIZE"]
    # the truth: the Keras model in float, on inputs in the calibrated range
    sg = original.subgraphs[0]
    q = sg.tensors[sg.inputs[0]].quantization
    scale, zero = q.scale[0], q.zero_point[0]
    xs = [np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)[None]
          for x in np.random.default_rng(5).random((8, 4, 6, 6, 3), dtype=np.float32)]
    truth = lambda x: model((x.astype(np.float32) - zero) * scale, training=False).numpy()[0]  # noqa: E731
    before, after, _ = _errors(original, folded, lambda x: truth(x)[None], xs)
    assert after.mean() <= before.mean()
