"""Edits of an unpacked model (edgebn.tflite.edit): new tensors and constants, set_builtin,
prune."""

import numpy as np

from edgebn.tflite.edit import new_const, new_tensor, prune, set_builtin
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.writer import Graph, buffers_of, pack, unpack


def _unpacked(g: Graph, inputs: list[int], outputs: list[int]):
    model = parse_tflite(g.pack(inputs, outputs), "hand.tflite")
    m = unpack(model)
    m.buffers = buffers_of(model)
    return m


def test_a_new_constant_and_an_operator_made_another_builtin_round_trip():
    g = Graph()
    x, y = g.tensor([1, 2]), g.tensor([1, 2])
    g.operator("RELU", [x], [y])
    m = _unpacked(g, [x], [y])
    usg = m.subgraphs[0]
    c = new_const(m, usg, np.array([1.5, -2.0], np.float32), "scale")
    t = new_tensor(usg, [1, 2], "FLOAT32", "computed")
    set_builtin(m, usg.operators[0], "RELU6", None)
    set_builtin(m, usg.operators[0], "RELU6", None)  # its code is added once
    assert len(m.operatorCodes) == 2  # RELU's stays, unused
    again = parse_tflite(pack(m), "edited.tflite")
    sg = again.subgraphs[0]
    assert again.constant(sg.tensors[c]).tolist() == [1.5, -2.0]
    assert sg.tensors[t].name == "computed" and not sg.tensors[t].is_constant
    assert again.op_counts() == {"RELU6": 1}


def test_prune_drops_an_unread_dequantize_and_empties_the_constants_nothing_reads():
    """x + DEQUANTIZE(float16 c): once the ADD reads a new float32 constant instead, nothing
    reads the DEQUANTIZE's output; prune drops it, then empties c's buffer."""
    g = Graph()
    x = g.tensor([1, 2])
    half = g.tensor([2], "FLOAT16", np.array([0.5, 0.25], np.float16))
    d, y = g.tensor([2]), g.tensor([1, 2])
    g.operator("DEQUANTIZE", [half], [d])
    g.operator("ADD", [x, d], [y])
    m = _unpacked(g, [x], [y])
    usg = m.subgraphs[0]
    add = usg.operators[1]
    add.inputs = [x, new_const(m, usg, np.array([0.5, 0.25], np.float32), "c")]
    before = len(m.buffers[usg.tensors[half].buffer].raw)
    prune(m)
    pruned = parse_tflite(pack(m), "pruned.tflite")
    assert before == 4 and pruned.op_counts() == {"ADD": 1}
    assert len(m.buffers[usg.tensors[half].buffer].raw) == 0 and usg.tensors[half].buffer == 0
