import pytest
from patterns import PATTERNS

from edgebn.analysis import inspect_tflite


@pytest.mark.parametrize("stripped", [False, True], ids=["named", "stripped"])
@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_verdict_and_residual_count(pattern_files, pattern, quantize, stripped):
    expected = PATTERNS[pattern][1]
    result = inspect_tflite(pattern_files[(pattern, quantize, stripped)])
    assert len(result.bn.residual) == expected
    assert result.bn.verdict == ("residual" if expected else "clean")
    for r in result.bn.residual:
        assert r.kind == "decomposed"
        assert len(r.ops) == 2
        ops = [result.model.subgraphs[0].operators[i].op for i in r.ops]
        assert ops[0] == "MUL" and ops[1] in ("ADD", "SUB")
        assert r.channels in (3, 4)
        assert r.cost_elements > 0
        assert (r.source is None) == stripped


def test_rescaling_is_a_scalar_affine_not_bn(pattern_files):
    result = inspect_tflite(pattern_files[("rescaling", "none", False)])
    assert {"MUL", "ADD"} <= set(result.model.op_counts())
    assert result.bn.verdict == "clean"


def test_provenance_names_the_folded_and_residual_layers(pattern_files):
    folded = inspect_tflite(pattern_files[("conv_bn_relu", "none", False)])
    assert [(f.into, f.op) for f in folded.bn.folded] == [("CONV_2D", 0)]
    assert folded.bn.folded[0].source.startswith("batch_normalization")
    residual = inspect_tflite(pattern_files[("relu_bn_pool", "none", False)])
    assert residual.bn.folded == ()
    assert residual.bn.residual[0].source.startswith("batch_normalization")


def test_stripped_names_leave_folded_empty_but_verdict_intact(pattern_files):
    result = inspect_tflite(pattern_files[("conv_bn_relu", "none", True)])
    assert result.bn.folded == ()
    assert result.bn.verdict == "clean"


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_textbook_mlp_after_fit_folds_clean(mlp_fitted, quantize):
    result = inspect_tflite(mlp_fitted["paths"][quantize], mlp_fitted["result"].bn_layers)
    assert result.bn.verdict == "clean"
    assert sorted(f.source for f in result.bn.folded) == ["bn1", "bn2", "bn3"]


def test_default_cnn_folds_every_bn_into_its_conv(cnn):
    result = inspect_tflite(cnn["tflite"], cnn["result"].bn_layers)
    assert result.clean
    assert {f.source: f.into for f in result.bn.folded} == {
        "bn1": "CONV_2D", "bn2": "DEPTHWISE_CONV_2D", "bn3": "CONV_2D", "bn4": "CONV_2D"}


def test_inspect_json_has_the_contract_fields(pattern_files):
    doc = inspect_tflite(pattern_files[("relu_bn_pool", "none", False)]).to_json()
    assert {"path", "size_bytes", "subgraphs", "op_counts", "bn"} <= set(doc)
    sg = doc["subgraphs"][0]
    assert {"index", "name", "inputs", "outputs", "operators"} <= set(sg)
    assert [o["index"] for o in sg["operators"]] == list(range(len(sg["operators"])))
    assert {"index", "op", "inputs", "outputs"} <= set(sg["operators"][0])
    assert doc["bn"]["verdict"] == "residual"
    r = doc["bn"]["residual"][0]
    assert {"subgraph", "ops", "kind", "channels", "source"} <= set(r)
    assert doc["op_counts"] == {"ADD": 1, "CONV_2D": 1, "MAX_POOL_2D": 1, "MUL": 1}
