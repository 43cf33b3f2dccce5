"""``edgebn fold model.tflite``: every residue form found whole, folded on the flatbuffer, proven.

The forms are written with edgebn's own writer (tests/tflite_forms.py, no TensorFlow) and
come from the TensorFlow converter (the Keras patterns that leave residue). The proof compares
every tensor the two files share; here the folded file's output is also checked against the
original's output computed by NumPy in float64 from the original file's own constants.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tflite_forms import FORMS, Form, conv_bn, relu_bn_pool_dense, wrong_scale
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import FoldError
from edgebn.fold.tflite import rewrite as tflite_fold_algebra
from edgebn.fold.tflite import tflite_fold
from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.profile.operators import profile
from edgebn.runtime.profile.residue_cost import residual_chains
from edgebn.runtime.profile.result import ProfileSettings
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn
from edgebn.tflite.writer import bypass_chains

runner = CliRunner()


def _run(data: bytes, x: np.ndarray) -> np.ndarray:
    interp, _ = load_interpreter(parse_tflite(data), xnnpack=False)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.mark.parametrize("float16", [False, True], ids=["float32", "float16"])
@pytest.mark.parametrize("name", list(FORMS))
def test_each_form_is_found_whole_and_folded_collapsed_or_kept(name, float16):
    build, expected, kind = FORMS[name]
    data = build(3, float16)
    model = parse_tflite(data, name)
    residual = analyse_bn(model).residual
    assert [r.kind for r in residual] == [kind]
    assert len(residual[0].ops) == (len(kind.split("_")) if kind != "decomposed" else 2)
    result = tflite_fold.fold_tflite(model)
    (chain,) = result.chains
    assert chain.result == expected, chain
    assert (chain.reason is None) == (expected == "folded")
    assert result.compared >= 1 and result.max_rel_diff <= result.tolerance
    left = analyse_bn(parse_tflite(result.data)).residual
    assert [r.kind for r in left] == ([] if expected == "folded" else ["decomposed"])
    # the output against the original's, on inputs the proof did not see
    shape = model.subgraphs[0].tensors[0].shape
    x = np.random.default_rng(9).normal(0, 1, shape).astype(np.float32)
    want, got = _run(data, x), _run(result.data, x)
    rounding = 2e-3 if float16 and expected == "folded" else 1e-5
    assert np.abs(got - want).max() <= rounding * np.abs(want).max()


def test_the_nchw_layout_is_found_on_the_model_input():
    """litert-torch keeps NCHW: a BN on the input has [C, 1, 1] constants, before the TRANSPOSE."""
    (r,) = analyse_bn(parse_tflite(FORMS["nchw_input_bn"][0](0))).residual
    assert (r.kind, r.axis, r.channels, r.ops) == ("sub_mul_mul_add", 1, 4, (0, 1, 2, 3))


def test_a_scalar_affine_is_not_bn():
    f = Form(0)
    x = f.data([1, 4, 4, 3])
    y = f.op("MUL", [x, f.const([2.0], [1])], [1, 4, 4, 3])
    y = f.op("ADD", [y, f.const([1.0], [1])], [1, 4, 4, 3])
    assert analyse_bn(parse_tflite(f.pack(x, y))).residual == ()


def test_a_max_pool_stops_a_negative_scale_and_passes_a_positive_one():
    (chain,) = tflite_fold.fold_tflite(parse_tflite(relu_bn_pool_dense(0))).chains
    assert chain.result == "kept" and "MAX_POOL_2D on the way and a scale ≤ 0" in chain.reason
    result = tflite_fold.fold_tflite(parse_tflite(relu_bn_pool_dense(0, positive=True)))
    (chain,) = result.chains
    assert (chain.result, chain.direction, chain.into_type) == ("folded", "forward",
                                                                "FULLY_CONNECTED")
    assert result.max_rel_diff <= result.tolerance


def test_a_wrong_fold_is_refused_and_nothing_is_written(monkeypatch, tmp_path):
    """One channel's scale × (1 + 1e-3): the proof sees it."""
    wrong = wrong_scale(tflite_fold_algebra.chain_affine)

    src = tmp_path / "conv.tflite"
    src.write_bytes(conv_bn(0))
    out = tmp_path / "folded.tflite"
    assert tflite_fold.fold_tflite(read_tflite(src)).all_folded
    monkeypatch.setattr(tflite_fold_algebra, "chain_affine", wrong)
    with pytest.raises(FoldError, match="differs from the original at tensor"):
        tflite_fold.fold_tflite(read_tflite(src))
    result = runner.invoke(app, ["fold", str(src), "--out", str(out)])
    assert result.exit_code == 2 and not out.exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "nothing written" in result.stderr


def test_the_cli_json_and_exit_codes(tmp_path):
    folded, collapsed = tmp_path / "a.tflite", tmp_path / "b.tflite"
    folded.write_bytes(conv_bn(0))
    collapsed.write_bytes(FORMS["concat_bn_relu"][0](0))
    result = runner.invoke(app, ["fold", str(folded), "--out", str(tmp_path / "a.folded.tflite"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    for key in ("model", "out", "measure", "max_rel_diff", "bn", "latency_us"):
        assert key in doc
    assert doc["bn"][0]["result"] == "folded" and doc["bn"][0]["into"]["type"] == "CONV_2D"
    assert doc["bn"][0]["kind"] == "sub_mul_mul_add" and doc["latency_us"]["ratio"] > 0
    assert analyse_bn(read_tflite(tmp_path / "a.folded.tflite")).residual == ()
    result = runner.invoke(app, ["fold", str(collapsed), "--out",
                                 str(tmp_path / "b.folded.tflite")])
    assert result.exit_code == 1 and "collapsed" in result.stdout
    result = runner.invoke(app, ["fold", str(folded), "--out", str(tmp_path / "x.keras")])
    assert result.exit_code == 2


def test_inspect_and_the_residue_cost_take_the_whole_chain():
    data = FORMS["concat_bn_relu"][0](0)
    model = parse_tflite(data)
    chains = residual_chains(model)
    assert chains == [(0, 2, 3, 4, 5)]
    bypassed = parse_tflite(bypass_chains(model, chains))
    assert residual_chains(bypassed) == []
    assert [op.op for op in bypassed.subgraphs[0].operators] == ["CONV_2D", "CONCATENATION", "RELU",
                                                                 "CONV_2D"]
    result = profile(model, ProfileSettings(min_time_s=0.05))
    assert sum(o.residual_bn for o in result.operators) == 4 and result.residual_pairs() == 1
    assert result.residue is not None and result.residue.pairs == 1


# ---------------------------------------------------------------- the TensorFlow converter


@pytest.fixture(scope="module")
def float16_patterns(tmp_path_factory):
    """The Keras patterns that leave residue, converted with float16 weights."""
    from patterns import build_pattern, representative

    from edgebn.convert import to_tflite

    out = {}
    for name in RESIDUE_PATTERNS:
        path = tmp_path_factory.mktemp("f16") / f"{name}.tflite"
        to_tflite(build_pattern(name), path, "float16", representative())
        out[name] = path
    return out


RESIDUE_PATTERNS = {"relu_bn_pool": "kept", "add_bn": "kept", "bn_last": "kept",
                    "bn_before_conv": "folded"}
INT8_REASONS = {"relu_bn_pool": "backward: a RELU fused into the CONV_2D stands between",
                "add_bn": "backward: it follows a ADD, not a linear operator; forward: it makes a "
                          "model output",
                "bn_last": "forward: it makes a model output",
                "bn_before_conv": "forward: the CONV_2D after it is int8: a scale per input "
                                  "channel would "
                                  "requantize its int8 weights, quantized per output channel (not "
                                  "exact)"}


@pytest.mark.parametrize("quantize", ["none", "float16", "int8"])
@pytest.mark.parametrize("pattern", list(RESIDUE_PATTERNS))
def test_the_converters_residue_folds_where_an_exact_fold_exists(pattern_files, float16_patterns,
                                                                   pattern, quantize):
    path = float16_patterns[pattern] if quantize == "float16" else pattern_files[(pattern, quantize,
                                                                                  False)]
    model = read_tflite(path)
    before = analyse_bn(model).residual
    assert len(before) == 1
    result = tflite_fold.fold_tflite(model)
    (chain,) = result.chains
    if quantize == "int8":  # no exact fold: what stands before and after it, in the reason
        assert chain.result == "kept" and INT8_REASONS[pattern] in chain.reason, chain.reason
        assert result.data != model.data and result.max_steps == 0  # the same graph, rewritten
        assert len(analyse_bn(parse_tflite(result.data)).residual) == 1
        return
    expected = RESIDUE_PATTERNS[pattern]
    if pattern == "relu_bn_pool":  # forward through the max-pool only when every γ/σ > 0
        expected = "folded" if chain.direction == "forward" else "kept"
    assert chain.result == expected, chain
    assert chain.float16 == (quantize == "float16" and expected == "folded")
    assert result.max_rel_diff <= result.tolerance
    left = analyse_bn(parse_tflite(result.data)).residual
    assert len(left) == (0 if expected == "folded" else 1)


def test_convert_folds_what_the_converter_left_in_the_tflite(tmp_path):
    """No Keras fold (no check inputs): the converter leaves the BN before a VALID conv as
    MUL+ADD; convert folds it in the .tflite, proves it, and writes the folded file."""
    from patterns import build_pattern

    from edgebn.convert import ConvertOptions, convert_model, to_tflite

    model = build_pattern("bn_before_conv")
    only = to_tflite(model, tmp_path / "only.tflite")
    assert len(analyse_bn(only.model).residual) == 1
    result = convert_model(model, tmp_path / "m.tflite", ConvertOptions())
    assert result.fold is None and result.inspected.clean
    (chain,) = result.tflite_fold.chains
    assert (chain.result, chain.direction, chain.into_type) == ("folded", "forward", "CONV_2D")
    assert analyse_bn(read_tflite(tmp_path / "m.tflite")).residual == ()
    doc = result.to_json()["tflite_fold"]
    assert doc["counts"] == {"folded": 1, "collapsed": 0, "kept": 0}
    x = np.random.default_rng(2).random((1, 8, 8, 3), dtype=np.float32)
    want = model(x, training=False).numpy()
    got = _run((tmp_path / "m.tflite").read_bytes(), x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    none = convert_model(model, tmp_path / "n.tflite", ConvertOptions(fold=False))
    assert none.tflite_fold is None and len(none.inspected.bn.residual) == 1
