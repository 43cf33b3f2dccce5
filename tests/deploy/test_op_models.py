"""The bundle's operator models (edgebn.deploy.op_models), for the device's per-operator profile."""

import json

import numpy as np
import pytest
from tflite_forms import conv_bn

from edgebn.deploy.op_models import INDEX, write_operator_models
from edgebn.errors import EdgebnError
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.writer import empty_model


def test_every_operator_gets_a_model_and_its_inputs_from_the_first_golden_input(tmp_path):
    model = parse_tflite(conv_bn(0), "conv_bn.tflite")
    golden = np.random.default_rng(0).random((2, 6, 6, 3), dtype=np.float32)
    doc = write_operator_models(model, golden, tmp_path)
    assert doc == json.loads((tmp_path / INDEX).read_text())
    ops = model.subgraphs[0].operators
    assert [r["op"] for r in doc["operators"]] == [op.op for op in ops]
    for row in doc["operators"]:
        one = read_tflite(tmp_path / row["model"])
        assert sum(len(sg.operators) for sg in one.subgraphs) == 1
        assert all(np.load(tmp_path / f).dtype == np.float32 for f in row["inputs"])
    conv = doc["operators"][0]
    assert conv["op"] == "CONV_2D" and conv["macs"] > 0
    assert np.load(tmp_path / conv["inputs"][0]).shape == (1, 6, 6, 3)


def test_a_model_of_two_inputs_gets_none(tmp_path):
    with pytest.raises(EdgebnError, match="operator models need a model with one input"):
        write_operator_models(parse_tflite(empty_model(), "empty.tflite"),
                              np.zeros((1, 1), np.float32), tmp_path)
