"""Loading, feeding and timing a profile's interpreters (edgebn.runtime.profile.op_timing)."""

import numpy as np

from edgebn.runtime.profile.op_timing import Timed, capture, captured
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.writer import Graph


def _double_then_relu():
    """y = relu(x + x): the reference run keeps the middle tensor."""
    g = Graph()
    x, mid, y = g.tensor([1, 4]), g.tensor([1, 4]), g.tensor([1, 4])
    g.operator("ADD", [x, x], [mid])
    g.operator("RELU", [mid], [y])
    return parse_tflite(g.pack([x], [y]), "double_relu.tflite"), x, mid, y


def test_the_reference_run_keeps_every_tensor():
    model, x, mid, y = _double_then_relu()
    feed = np.array([[1.0, -2.0, 3.0, -4.0]], np.float32)
    ref = capture(model, BenchSettings(), [feed])
    assert captured(ref, 0, mid).tolist() == [[2.0, -4.0, 6.0, -8.0]]
    assert captured(ref, 0, y).tolist() == [[2.0, 0.0, 6.0, 0.0]]
    assert captured(None, 0, y) is None and captured(ref, 0, 99) is None


def test_a_timed_interpreter_takes_its_blocks_and_says_its_latency():
    model, *_ = _double_then_relu()
    timed = Timed(model, BenchSettings(), [None], budget_s=0.02, whole=True)
    assert timed.block >= 2  # at least MIN_RUNS over the ROUNDS
    timed.run()
    timed.run(5)
    assert len(timed.samples) == timed.block + 5
    lat = timed.latency()
    assert 0 < lat.min <= lat.p50 <= lat.p99
    assert timed.inputs()[0].shape == (1, 4)
