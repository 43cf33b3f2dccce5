"""edgebn profile explains the model: XNNPACK's fusions timed as they run, segments timed in
context.

The models are written by tests/profile_models.py with edgebn's own writer. On the
MediaPipe-like model, timing each PAD alone (what profile did before) summed to 2.2-2.3 of
the whole model's p50 on a 2-core Intel Xeon: XNNPACK makes every PAD the padding of the
convolution after it, so inside the model it costs nothing.
"""

from __future__ import annotations

import json

import pytest
from profile_models import densenet_like, mediapipe_like, two_halves
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.runtime.profile.context import segment_cuts
from edgebn.runtime.profile.fusion import fused_pads
from edgebn.runtime.profile.operators import profile
from edgebn.runtime.profile.result import FUSED, IN_CONTEXT, ProfileSettings
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.residue import analyse_bn

FAST = ProfileSettings(min_time_s=0.3, residue=False)


@pytest.fixture(scope="module")
def mediapipe():
    return parse_tflite(mediapipe_like(), "mediapipe_like.tflite")


def test_isolated_sum_explains_a_mediapipe_like_model(mediapipe):
    pads = fused_pads(mediapipe, 0)
    assert len(pads) == 7 and all(mediapipe.subgraphs[0].operators[c].op in ("CONV_2D",
                                                                             "DEPTHWISE_CONV_2D")
                                  for c in pads.values())
    result = profile(mediapipe, FAST)
    rows = {o.index: o for o in result.operators}
    for pad, conv in pads.items():
        assert rows[pad].method == FUSED and rows[pad].time_us == 0.0
        # timed with its PAD; in context a segment's share can be 0 where the machine's noise
        # exceeds it (the prefixes' differences are clamped at 0), isolated it never is
        assert rows[conv].method.endswith("with the PAD before it") and rows[conv].isolated_us > 0
    assert 0.8 <= result.isolated_sum_us / result.latency_us.p50 <= 1.2, result.to_json()
    assert 0.8 <= result.explained <= 1.2


def test_without_the_delegate_nothing_is_fused(mediapipe):
    """XNNPACK fuses the PAD; the reference kernels run it: then it is timed alone."""
    result = profile(mediapipe, ProfileSettings(min_time_s=0.1, residue=False, context=False,
                                                xnnpack=False))
    assert {o.method for o in result.operators} == {"isolated"}
    assert all(o.time_us > 0 for o in result.operators if o.op == "PAD")


def test_a_densenet_like_model_is_explained_in_context():
    model = parse_tflite(densenet_like(), "densenet_like.tflite")
    assert len(analyse_bn(model).residual) == 8
    result = profile(model, FAST)
    assert len(result.segments) == 8 and result.context_skipped is None
    assert all(o.method == IN_CONTEXT and o.segment is not None and o.isolated_us is not None
               for o in result.operators)
    assert 0.8 <= result.explained <= 1.2, result.to_json()
    doc = result.to_json()
    assert doc["isolated_sum_us"] == pytest.approx(result.isolated_sum_us)
    assert [s["ops"][0] for s in doc["segments"]][0] == 0
    assert doc["segments"][-1]["ops"][1] == len(model.subgraphs[0].operators) - 1
    # a row's context time is its isolated time times its segment's factor
    for o in result.operators:
        factor = result.segments[o.segment].factor
        assert o.time_us == pytest.approx(o.isolated_us * factor)


def test_the_prefix_between_two_equal_halves_takes_half_the_time():
    """The independent truth: the same block twice costs the same twice."""
    model = parse_tflite(two_halves(), "two_halves.tflite")
    result = profile(model, FAST)
    middle = next(s for s in result.segments if s.last == 3)
    assert 0.4 <= middle.fraction <= 0.6, [s.to_json() for s in result.segments]
    first = sum(s.context_us for s in result.segments if s.last <= 3)
    second = sum(s.context_us for s in result.segments if s.first >= 4)
    assert 0.7 <= first / second <= 1.4


def test_cuts_keep_a_pad_with_its_convolution():
    assert segment_cuts(10, {}, 4) == [2, 5, 8, 10]
    assert segment_cuts(10, {4: 6}, 4) == [2, 7, 8, 10]
    assert segment_cuts(3, {}, 8) == [1, 2, 3]


def test_a_model_that_cannot_be_cut_keeps_its_isolated_rows():
    model = parse_tflite(_one_conv(), "one.tflite")
    result = profile(model, FAST)
    assert result.segments == () and "one operator" in result.context_skipped
    assert {o.method for o in result.operators} == {"isolated"}
    assert result.to_json()["context_skipped"] == result.context_skipped


def _one_conv() -> bytes:
    from profile_models import _Net

    n = _Net(0)
    x = n.g.tensor([1, 8, 8, 4])
    return n.g.pack([x], [n.conv(x, 4, 4, [1, 8, 8, 4], padding="SAME")])


def test_cli_shows_the_method_of_each_row(tmp_path):
    path = tmp_path / "mp.tflite"
    path.write_bytes(mediapipe_like())
    result = CliRunner().invoke(app, ["profile", str(path), "--json", "--min-time", "0.2",
                                      "--no-residue"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["method"] == "isolated ops" and doc["methods"]["fused"] == 7
    methods = {o["method"] for o in doc["operators"]}
    assert methods >= {"fused", "in context, with the PAD before it"}
    table = CliRunner().invoke(app, ["profile", str(path), "--min-time", "0.2", "--no-residue",
                                     "--no-context"])
    assert table.exit_code == 0, table.output
    assert "fused by XNNPACK" in table.output and "isolated" in table.output


def test_delegate_partitions_tell_an_operator_that_fell_out_of_xnnpack():
    """The residue cost's check that the bypassed copy is delegated as the model is: a CUMSUM
    (no XNNPACK kernel) between two convolutions splits the graph in two partitions."""
    import numpy as np
    from profile_models import _Net
    from tflite_forms import _opts

    from edgebn.runtime.backends import delegate_partitions, load_interpreter

    n = _Net(0)
    x = n.g.tensor([1, 8, 8, 4])
    y = n.conv(x, 4, 4, [1, 8, 8, 4], padding="SAME")
    axis = n.g.tensor([], "INT32", data=np.array(3, np.int32))
    y = n.op("CUMSUM", [y, axis], [1, 8, 8, 4], _opts("CumsumOptionsT"))
    split = parse_tflite(n.g.pack([x], [n.conv(y, 4, 4, [1, 8, 8, 4], padding="SAME")]), "split")
    assert delegate_partitions(load_interpreter(split)[0]) == 2
    assert delegate_partitions(load_interpreter(_one_conv_model())[0]) == 1


def _one_conv_model():
    return parse_tflite(_one_conv(), "one.tflite")


def test_the_residue_cost_says_the_bypassed_copy_keeps_its_delegation():
    model = parse_tflite(densenet_like(layers=3), "densenet_like.tflite")
    result = profile(model, ProfileSettings(min_time_s=0.2, context=False))
    assert result.residue is not None and result.residue.partitions == (1, 1)
    assert not result.residue.lost_delegation
    assert result.to_json()["residue"]["delegate_partitions"] == {"model": 1, "bypassed": 1}


def test_the_devices_operator_models_time_a_pad_with_its_convolution(tmp_path):
    """predict.py --profile's models (edgebn bundle --profile) follow the same fusion."""
    import numpy as np

    from edgebn.deploy.op_models import write_operator_models

    model = parse_tflite(mediapipe_like(size=32), "mediapipe_like.tflite")
    golden = np.random.default_rng(0).random((1, 32, 32, 3), dtype=np.float32)
    doc = write_operator_models(model, golden, tmp_path)
    rows = {r["index"]: r for r in doc["operators"]}
    for pad, conv in fused_pads(model, 0).items():
        assert rows[pad]["method"] == "fused" and "model" not in rows[pad]
        assert rows[conv]["method"] == "with the PAD before it"
        ops = parse_tflite((tmp_path / rows[conv]["model"]).read_bytes()).subgraphs[0].operators
        assert [o.op for o in ops] == ["PAD", model.subgraphs[0].operators[conv].op]


def test_a_wrong_prefix_fails_the_halves_check(monkeypatch):
    """The check has teeth: prefixes that leave out half their operators put the cut between
    the halves at about a quarter of the model, outside 0.4-0.6."""
    from edgebn.runtime.profile import context

    real = context.op_group

    def half(model, unpacked, subgraph, ops, *rest):
        return real(model, unpacked, subgraph, ops[:max(len(ops) // 2, 1)], *rest)

    monkeypatch.setattr(context, "op_group", half)
    result = profile(parse_tflite(two_halves(), "two_halves.tflite"), FAST)
    middle = next(s for s in result.segments if s.last == 3)
    assert not 0.4 <= middle.fraction <= 0.6
