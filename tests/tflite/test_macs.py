"""Multiply-accumulates per inference, counted from the file (edgebn.tflite.macs)."""

import numpy as np

from edgebn.tflite.macs import model_cost
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.writer import Graph


def test_a_conv_and_a_dense_hand_counted():
    """CONV_2D 3x3, 2 -> 4 channels, 6x6 output: 6·6·4 outputs × 3·3·2 = 2,592 MACs;
    FULLY_CONNECTED 144 -> 10: 10 × 144 = 1,440. The ADD counts none."""
    g = Graph()
    x = g.tensor([1, 8, 8, 2])
    w = g.tensor([4, 3, 3, 2], data=np.zeros((4, 3, 3, 2), np.float32))
    b = g.tensor([4], data=np.zeros(4, np.float32))
    y = g.tensor([1, 6, 6, 4])
    g.operator("CONV_2D", [x, w, b], [y])
    flat = g.tensor([1, 144])
    g.operator("RESHAPE", [y], [flat])
    fw = g.tensor([10, 144], data=np.zeros((10, 144), np.float32))
    out = g.tensor([1, 10])
    g.operator("FULLY_CONNECTED", [flat, fw], [out])
    z = g.tensor([1, 10])
    g.operator("ADD", [out, out], [z])
    cost = model_cost(parse_tflite(g.pack([x], [z]), "hand.tflite"))
    assert [(o.op, o.macs) for o in cost.ops] == [("CONV_2D", 2592), ("RESHAPE", 0),
                                                   ("FULLY_CONNECTED", 1440), ("ADD", 0)]
    assert cost.macs == 4032
    assert cost.ops[0].weight_bytes == (4 * 3 * 3 * 2 + 4) * 4
    assert [o["op"] for o in cost.to_json()["ops"]] == ["CONV_2D", "FULLY_CONNECTED"]
