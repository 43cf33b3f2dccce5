import pytest
from patterns import PATTERNS

from edgebn.tflite.residue import inspect_tflite


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


def _training_mode_bn_tflite(path):
    """A graph that normalizes with batch statistics (FusedBatchNormV3, is_training=True)."""
    import numpy as np
    import tensorflow as tf

    scale = tf.Variable(np.linspace(0.5, 2.0, 4).astype(np.float32))
    offset = tf.Variable(np.zeros(4, np.float32))

    @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 4], tf.float32)], autograph=False)
    def normalize(x):
        y, *_ = tf.raw_ops.FusedBatchNormV3(x=x, scale=scale, offset=offset, mean=[], variance=[],
                                            epsilon=1e-3, is_training=True)
        return y

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [normalize.get_concrete_function()])
    path.write_bytes(converter.convert())
    return path


def test_training_mode_bn_is_residue_of_kind_batch_stats(tmp_path):
    result = inspect_tflite(_training_mode_bn_tflite(tmp_path / "train_bn.tflite"))
    ops = [o.op for o in result.model.subgraphs[0].operators]
    assert "SQUARED_DIFFERENCE" in ops and "RSQRT" in ops  # lowered to builtins, no Flex op
    assert result.bn.verdict == "residual"
    [r] = result.bn.residual
    assert r.kind == "batch_stats" and r.channels == 4 and r.cost_elements == 144
    assert [ops[i] for i in r.ops] == ["MEAN", "SQUARED_DIFFERENCE", "MEAN"]


def test_layer_normalization_is_not_bn(tmp_path):
    import keras
    import numpy as np
    from keras import layers

    from edgebn.convert import to_tflite as convert

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, layers.LayerNormalization()(layers.Conv2D(4, 3)(inputs)))
    model.layers[-1].set_weights([np.array([1.5, -0.5, 2.0, 0.7], np.float32),
                                  np.array([0.1, 0.2, -0.3, 0.4], np.float32)])
    result = inspect_tflite(convert(model, tmp_path / "ln.tflite").path)
    assert "SQUARED_DIFFERENCE" in result.model.op_counts()  # it normalizes at runtime...
    assert result.bn.verdict == "clean"  # ...over the channel axis: not BN
