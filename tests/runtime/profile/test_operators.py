"""edgebn profile: per-operator times, residual BN pairs, residue cost, the op-by-op diff.

Times are noise on a shared machine, so only structure and sanity are asserted: every
operator has a row, MACs equal a hand count, the rewrites produce models that run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.errors import EdgebnError
from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.profile.operators import AT_OVERHEAD_NOTE, NO_CONTEXT_TIME_NOTE, profile
from edgebn.runtime.profile.residue_cost import residual_chains, residue_cost
from edgebn.runtime.profile.result import ProfileSettings
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.writer import bypass_chains, single_op, unpack

runner = CliRunner()
QUICK = ProfileSettings(min_time_s=0.05)
PREACT_PAIRS = 3  # BNs in _preact(): one before each block, one after the max-pool


def _convert(model, path):
    from edgebn.convert import to_tflite

    return to_tflite(model, path).path


def _preact(bn: bool = True):
    """A tiny DenseNet: BN -> ReLU -> conv -> concat, then max-pool -> BN -> ReLU. No BN
    follows a layer it could fold into alone: three MUL+ADD pairs survive. ``bn=False``: the
    same graph without its BN layers (copy the weights over by layer name)."""
    import keras
    from keras import layers as L
    from patterns import set_random_bn

    keras.utils.set_random_seed(0)

    def norm(x):
        return L.BatchNormalization()(x) if bn else x

    inputs = keras.Input((12, 12, 3))
    x = L.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for i in range(2):
        y = L.Conv2D(4, 3, padding="same", name=f"conv{i}")(L.ReLU()(norm(x)))
        x = L.Concatenate()([x, y])
    x = L.GlobalAveragePooling2D()(L.ReLU()(norm(L.MaxPooling2D()(x))))
    model = keras.Model(inputs, L.Dense(5, name="head")(x))
    set_random_bn(model)
    return model


def _conv_model(filters: int):
    import keras

    return keras.Sequential([keras.Input((8, 8, 3)),
                             keras.layers.Conv2D(filters, 3, padding="same"),
                             keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D()])


@pytest.fixture(scope="module")
def preact_keras():
    return _preact()


@pytest.fixture(scope="module")
def files(tmp_path_factory, preact_keras):
    """{name: path}: the pre-activation model, one convolution, and a wider twin of the conv."""
    root = tmp_path_factory.mktemp("profile")
    without = _preact(bn=False)
    for name in ("stem", "conv0", "conv1", "head"):
        without.get_layer(name).set_weights(preact_keras.get_layer(name).get_weights())
    return {"preact": _convert(preact_keras, root / "preact.tflite"),
            "preact_without_bn": _convert(without, root / "preact_without_bn.tflite"),
            "conv": _convert(_conv_model(4), root / "conv.tflite"),
            "wide": _convert(_conv_model(64), root / "wide.tflite")}


@pytest.fixture(scope="module")
def preact_profile(files):
    return profile(files["preact"], QUICK)


def test_rows_cover_every_operator(files, preact_profile):
    model = read_tflite(files["preact"])
    expected = [(sg.index, op.index, op.op) for sg in model.subgraphs for op in sg.operators]
    result = preact_profile
    assert [(o.subgraph, o.index, o.op) for o in result.operators] == expected
    assert all(o.time_us is not None and o.runs > 0 for o in result.operators)
    # an operator whose time is lost in noise is said so, never shown as taking no time
    unclear = [o for o in result.operators
               if not (o.time_us > 0
                       or (o.time_us == 0 and o.note == AT_OVERHEAD_NOTE
                           and o.measured_us <= result.invoke_overhead_us)
                       or (o.time_us == 0 and o.note == NO_CONTEXT_TIME_NOTE
                           and result.segments[o.segment].context_us == 0))]
    assert not unclear, (unclear, result.invoke_overhead_us)
    assert sum(o.time_us > 0 for o in result.operators) >= len(result.operators) // 2
    assert result.ops_sum_us == pytest.approx(sum(o.time_us for o in result.operators))
    assert sum(o.share for o in result.operators) == pytest.approx(1.0)
    assert 0 < result.explained < 20 and result.latency_us.p50 > 0


def test_json_keeps_the_contract(preact_profile):
    doc = json.loads(json.dumps(preact_profile.to_json()))
    assert doc["method"] == "isolated ops"
    assert doc["latency_us"]["p50"] > 0 and doc["ops_sum_us"] > 0
    for row in doc["operators"]:
        assert {"subgraph", "index", "op", "time_us", "share", "macs", "residual_bn"} <= set(row)
    assert doc["residue_cost"] == doc["residue"]["ratio"] > 0
    assert "estimate" in doc["residue"]["note"]
    assert set(doc["by_op"]) == {row["op"] for row in doc["operators"]}


def test_macs_equal_a_hand_count(files):
    result = profile(files["conv"], QUICK)
    (conv,) = [o for o in result.operators if o.op == "CONV_2D"]
    assert conv.macs == 8 * 8 * 4 * (3 * 3 * 3)  # Ho Wo Co . Kh Kw Ci
    assert conv.gmacs_per_s == pytest.approx(conv.macs / conv.time_us / 1e3)
    assert result.macs == conv.macs and result.residue is None and result.residue_cost is None
    assert result.to_json()["residue_cost"] is None


def test_float16_weights_are_dequantized_once(tmp_path):
    """The DEQUANTIZE of each float16 weight runs at load: it counts 0, and its consumer is
    timed with the float32 weights as constants, as the runtime sees them."""
    from edgebn.convert import to_tflite
    from edgebn.runtime.profile.operators import CONSTANT_NOTE

    path = to_tflite(_conv_model(4), tmp_path / "f16.tflite", "float16").path
    result = profile(path, QUICK)
    assert len(result.operators) == sum(len(sg.operators) for sg in read_tflite(path).subgraphs)
    dequantize = [o for o in result.operators if o.op == "DEQUANTIZE"]
    assert dequantize and all(o.time_us == 0 and o.note == CONSTANT_NOTE for o in dequantize)
    (conv,) = [o for o in result.operators if o.op == "CONV_2D"]
    assert conv.time_us is not None and conv.note is None and conv.macs == 8 * 8 * 4 * 27


def test_residual_pairs_are_marked(files, preact_profile):
    pairs = residual_chains(read_tflite(files["preact"]))
    assert len(pairs) == PREACT_PAIRS
    marked = [(o.index, o.op) for o in preact_profile.operators if o.residual_bn]
    assert marked == sorted((i, op) for _, mul, add in pairs for i,
                            op in ((mul, "MUL"), (add, "ADD")))
    assert preact_profile.residual_pairs() == PREACT_PAIRS


def test_bypassed_model_drops_the_pairs_and_runs(files):
    model = read_tflite(files["preact"])
    bypassed = parse_tflite(bypass_chains(model, residual_chains(model)), "bypassed")
    before, after = model.op_counts(), bypassed.op_counts()
    assert after.get("MUL", 0) == before["MUL"] - PREACT_PAIRS
    assert after.get("ADD", 0) == before["ADD"] - PREACT_PAIRS
    # each BN's ReLU was fused into its ADD: it stays, fused into the max-pool (whose output
    # only the BN read) or as an operator of its own (the concat outputs are read twice)
    assert after.get("RELU", 0) == before.get("RELU", 0) + PREACT_PAIRS - 1
    # the converter makes the same graph of the model without its BN layers
    assert after == read_tflite(files["preact_without_bn"]).op_counts()
    assert residual_chains(bypassed) == []
    interp, _ = load_interpreter(bypassed)
    interp.set_tensor(interp.get_input_details()[0]["index"], np.ones((1, 12, 12, 3), np.float32))
    interp.invoke()
    assert np.isfinite(interp.get_tensor(interp.get_output_details()[0]["index"])).all()


def _run(model, x):
    interp, _ = load_interpreter(model)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


def test_bypassed_model_is_the_model_without_its_bn_layers(files):
    """Independent truth: the converter's .tflite of the Keras model without its BN layers
    (same weights) computes what the bypassed flatbuffer computes, ReLUs included."""
    model = read_tflite(files["preact"])
    bypassed = parse_tflite(bypass_chains(model, residual_chains(model)), "bypassed")
    x = np.random.default_rng(2).random((1, 12, 12, 3), dtype=np.float32)
    np.testing.assert_allclose(_run(bypassed, x), _run(read_tflite(files["preact_without_bn"]), x),
                               atol=1e-5, rtol=1e-5)


def test_bypassing_nothing_is_the_same_model(files):
    model = read_tflite(files["preact"])
    same = parse_tflite(bypass_chains(model, []), "same")
    x = np.random.default_rng(0).random((1, 12, 12, 3), dtype=np.float32)
    outputs = []
    for m in (model, same):
        interp, _ = load_interpreter(m)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        outputs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(*outputs)


def test_single_op_model_computes_what_the_whole_model_does(files):
    """The isolated CONV_2D, fed the model's input, gives the whole model's conv output."""
    model = read_tflite(files["conv"])
    sg = model.subgraphs[0]
    conv = next(op for op in sg.operators if op.op == "CONV_2D")
    one = single_op(model, unpack(model), 0, conv.index)
    assert one.inputs == (sg.inputs[0],)
    isolated = parse_tflite(one.data, "one")
    assert isolated.op_counts() == {"CONV_2D": 1}
    x = np.random.default_rng(1).random((1, 8, 8, 3), dtype=np.float32)
    interp, _ = load_interpreter(isolated, xnnpack=False)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    y = interp.get_tensor(interp.get_output_details()[0]["index"])
    filt = model.constant(sg.tensors[conv.inputs[1]])  # [Co, Kh, Kw, Ci]
    bias = model.constant(sg.tensors[conv.inputs[2]])
    padded = np.pad(x[0], ((1, 1), (1, 1), (0, 0)))
    want = np.stack([[np.tensordot(padded[i:i + 3, j:j + 3], filt, axes=([0, 1, 2], [1, 2, 3]))
                      for j in range(8)] for i in range(8)]) + bias
    fused = unpack(model).subgraphs[0].operators[conv.index].builtinOptions.fusedActivationFunction
    assert fused in (0, 1)  # NONE or RELU (the ReLU layer, fused by the converter)
    np.testing.assert_allclose(y[0], np.maximum(want, 0) if fused else want, atol=1e-5)


def test_residue_cost_is_a_positive_ratio(files):
    cost = residue_cost(files["preact"], QUICK)
    assert cost.pairs == PREACT_PAIRS
    assert cost.ratio > 0 and cost.model_p50_us > 0 and cost.bypassed_p50_us > 0
    assert residue_cost(files["conv"], QUICK) is None


def test_baseline_diff_rows(files):
    result = profile(files["wide"], ProfileSettings(min_time_s=0.05, residue=False), files["conv"])
    assert result.baseline is not None and result.baseline.model == str(files["conv"])
    n = len(read_tflite(files["wide"]).subgraphs[0].operators)
    assert len(result.diff) == n  # same structure: every operator matched once
    assert {d.status for d in result.diff} == {"matched"}
    conv = next(d for d in result.diff if d.op == "CONV_2D")
    assert conv.shape == (1, 8, 8, 64) and conv.baseline_shape == (1, 8, 8, 4)
    assert conv.delta_us == pytest.approx(conv.time_us - conv.baseline_time_us)
    assert result.grown(1)[0].op == "CONV_2D"  # sixteen times the arithmetic
    doc = result.to_json()
    assert len(doc["diff"]) == n and doc["baseline"]["model"] == str(files["conv"])


def test_diff_of_different_graphs_adds_and_removes(files, preact_profile):
    result = profile(files["conv"], ProfileSettings(min_time_s=0.05, residue=False),
                     files["preact"])
    statuses = {d.status for d in result.diff}
    assert "removed" in statuses  # the preact model's MUL+ADD pairs have no counterpart
    assert sum(d.status != "added" for d in result.diff) == len(result.baseline.operators)
    assert sum(d.status != "removed" for d in result.diff) == len(result.operators)


def test_cli_table_and_json(files):
    table = runner.invoke(app, ["profile", str(files["preact"]), "--min-time", "0.05",
                                "--top", "3"])
    assert table.exit_code == 0, table.output
    assert "isolated ops" in table.stdout and "residue cost" in table.stdout
    assert "beside the whole model's p50" in table.stdout
    doc = runner.invoke(app, ["profile", str(files["wide"]), "--min-time", "0.05", "--json",
                              "--baseline", str(files["conv"]), "--no-xnnpack"])
    assert doc.exit_code == 0, doc.output
    parsed = json.loads(doc.stdout)
    assert parsed["xnnpack"] is False and parsed["residue_cost"] is None and parsed["diff"]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 40)  # a forged header, then garbage
    for path in (bad, tmp_path / "notes.txt"):
        path.exists() or path.write_text("not a model")
        result = runner.invoke(app, ["profile", str(path)])
        assert result.exit_code == 2, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    with pytest.raises(EdgebnError, match="threads must be >= 1"):
        profile(bad, ProfileSettings(threads=0))


def test_profile_imports_no_tensorflow(files):
    import subprocess
    import sys

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom edgebn.cli.app import app\n"
            f"r = CliRunner().invoke(app, ['profile', {str(files['preact'])!r}, '--min-time', "
            "'0.05', '--json'])\nassert r.exit_code == 0, r.output\n"
            "print(sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_profile_settings_are_bench_settings_with_the_residue_switch():
    """profile and bench share one settings type: the same fields, the same checks."""
    from edgebn.runtime.timing import BenchSettings

    settings = ProfileSettings(threads=2, min_time_s=0.5, residue=False)
    assert isinstance(settings, BenchSettings)
    assert (settings.threads, settings.min_time_s, settings.residue) == (2, 0.5, False)
    assert not ProfileSettings().cost  # profile reports no ceiling: no probe is run
    for field, value in (("batch", 2), ("runs", 10), ("isolate", True)):
        with pytest.raises(EdgebnError, match=f"{field}.*Received: {value}"):
            ProfileSettings(**{field: value}).validate()


def test_an_operator_no_slower_than_an_empty_invoke_is_said_so(files):
    """Its time is the measured p50 less the empty invoke(): when that is not above zero the
    row says why (an operator too short to tell apart), not that it took no time."""
    from edgebn.runtime.profile.op_timing import Timed
    from edgebn.runtime.profile.operators import _Op
    from edgebn.tflite.macs import model_cost

    model = read_tflite(files["conv"])
    timed = Timed(model, QUICK.bench_settings(), [None], 0.01, whole=True)
    timed.run(20)
    measured = timed.latency().p50
    op = _Op(model_cost(model).ops[0], (1,), residual=False, timed=timed)
    seen = op.row(overhead_us=measured / 2)
    assert seen.time_us == pytest.approx(measured / 2) and seen.note is None
    hidden = op.row(overhead_us=measured + 1.0)
    assert hidden.time_us == 0.0 and hidden.note == AT_OVERHEAD_NOTE
    assert hidden.measured_us == measured
    # inside the model: a segment whose two prefixes timed within noise of each other
    from edgebn.runtime.profile.context import Segment
    from edgebn.runtime.profile.operators import _in_segment

    lost = _in_segment(seen, Segment(0, 0, 0.0, 0.5, isolated_us=seen.time_us), 0)
    assert lost.time_us == 0.0 and lost.note == NO_CONTEXT_TIME_NOTE
    assert lost.isolated_us == seen.time_us
    kept = _in_segment(seen, Segment(0, 0, 2 * seen.time_us, 0.5, isolated_us=seen.time_us), 0)
    assert kept.time_us == pytest.approx(2 * seen.time_us) and kept.note is None
