"""Writing .tflite flatbuffers without TensorFlow (edgebn.tflite.writer)."""

import numpy as np

from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.residue import analyse_bn
from edgebn.tflite.writer import strip_names


def test_strip_names_keeps_graph_and_drops_names(pattern_files):
    data = pattern_files[("relu_bn_pool", "none", False)].read_bytes()
    before, after = parse_tflite(data), parse_tflite(strip_names(data))
    assert [o.op for o in after.subgraphs[0].operators] == \
        [o.op for o in before.subgraphs[0].operators]
    assert all(t.name == "" for t in after.subgraphs[0].tensors)
    assert analyse_bn(after).verdict == analyse_bn(before).verdict == "residual"


def _constant_starts(model):
    return [(start, model.buffer_bytes(i)) for i, (start, length) in enumerate(model._buffers)
            if length]


def test_strip_names_keeps_every_constant_and_aligns_it(pattern_files):
    """The converter writes constants 16-byte aligned; so does edgebn's one writer."""
    data = pattern_files[("conv_bn_relu", "int8", False)].read_bytes()
    before, after = parse_tflite(data), parse_tflite(strip_names(data))
    assert [raw for _, raw in _constant_starts(after)] == \
        [raw for _, raw in _constant_starts(before)]
    assert _constant_starts(after) and all(start % 16 == 0 for start, _ in _constant_starts(after))


def test_empty_model_runs_and_adds():
    from edgebn.runtime.backends import load_interpreter
    from edgebn.tflite.writer import empty_model

    interp, _ = load_interpreter(parse_tflite(empty_model(), "empty"), "auto", 1, False,
                                 checked=False)
    a, b = interp.get_input_details()
    interp.set_tensor(a["index"], np.array([2.0], np.float32))
    interp.set_tensor(b["index"], np.array([3.5], np.float32))
    interp.invoke()
    assert interp.get_tensor(interp.get_output_details()[0]["index"]).tolist() == [5.5]
