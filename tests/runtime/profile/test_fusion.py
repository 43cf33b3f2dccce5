"""What XNNPACK fuses across operators (edgebn.runtime.profile.fusion): a PAD into its conv."""

import numpy as np

from edgebn.runtime.profile.fusion import fused_pads
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.writer import Graph


def _pad_conv(paddings, readers: int = 1, op: str = "PAD"):
    g = Graph()
    x = g.tensor([1, 4, 4, 2])
    p = g.tensor([4, 2], "INT32", np.array(paddings, np.int32))
    padded = g.tensor([1, 6, 6, 2])
    inputs = [x, p]
    if op == "PADV2":
        inputs.append(g.tensor([1], data=np.zeros(1, np.float32)))
    g.operator(op, inputs, [padded])
    w = g.tensor([2, 3, 3, 2], data=np.zeros((2, 3, 3, 2), np.float32))
    outs = []
    for _ in range(readers):
        y = g.tensor([1, 4, 4, 2])
        g.operator("CONV_2D", [padded, w], [y])
        outs.append(y)
    return parse_tflite(g.pack([x], outs), "pad_conv.tflite")


SPATIAL = [[0, 0], [1, 1], [1, 1], [0, 0]]


def test_a_spatial_zero_pad_read_by_its_conv_alone_is_fused_into_it():
    assert fused_pads(_pad_conv(SPATIAL), 0) == {0: 1}
    assert fused_pads(_pad_conv(SPATIAL, op="PADV2"), 0) == {0: 1}  # a zero pad value


def test_no_fusion_for_channel_padding_negative_padding_or_a_shared_pad():
    assert fused_pads(_pad_conv([[0, 0], [1, 1], [1, 1], [0, 1]]), 0) == {}
    assert fused_pads(_pad_conv([[0, 0], [-1, 0], [1, 1], [0, 0]]), 0) == {}
    assert fused_pads(_pad_conv(SPATIAL, readers=2), 0) == {}
