"""The int8 backward fold checked on its parameters (edgebn.fold.tflite.parameters): the folded
kernel's weights against ``s⊗W`` and its bias against ``s⊗b + t``, from the original's own
constants, hand-worked on an int8 FULLY_CONNECTED → MUL → ADD written with edgebn's writer.

All scales are powers of two, so every real value below is exact in float32::

    x: int8, scale 1/2         W: [[8, −16], [5, 4]] at [1/8, 1/2] → [[1, −2], [2.5, 2]]
    b: int32 [4, −6] at ½·[1/8, 1/2] = [1/16, 1/4] → [0.25, −1.5]
    MUL [2, −1] (scale 1), ADD [2, 3] (scale 1/2) → s = [2, −1], t = [1, 1.5]
    s⊗W = [[2, −4], [−2.5, −2]];  s⊗b + t = [1.5, 3]

The folded kernel stores its weights at |s|·[1/8, 1/2] = [1/4, 1/2] (negative channels'
signs flipped) and its bias at ½·[1/4, 1/2] = [1/8, 1/4]: exactly [[8, −16], [−5, −4]] and
[12, 12].
"""

from __future__ import annotations

import numpy as np
import pytest
from tflite_forms import _opts

from edgebn.fold.tflite.parameters import ParameterCheck, _chain_affine, _real, check_parameters
from edgebn.fold.tflite.proof import SCALE_ROUNDING
from edgebn.fold.tflite.rewrite import ChainFold, Rewrite, fold_chains
from edgebn.tflite.reader import parse_tflite, schema
from edgebn.tflite.writer import Graph

X_SCALE = 0.5
W = np.array([[8, -16], [5, 4]], np.int8)
W_SCALES = [0.125, 0.5]
B = np.array([4, -6], np.int32)
FOLDED_W = np.array([[8, -16], [-5, -4]], np.int8)
FOLDED_W_SCALES = [0.25, 0.5]
FOLDED_B = np.array([12, 12], np.int32)
# the chain's operators in the original file, and the kernel that takes them
CHAIN = ChainFold(subgraph=0, ops=(1, 2), kind="decomposed", channels=2, result="folded",
                  into=0, into_type="FULLY_CONNECTED", direction="backward", int8=True)


def _tensor(g: Graph, shape, dtype: str, scale, zero=0, data=None, axis: int = 0,
            name: str = "") -> int:
    """A quantized tensor: one scale or one per channel along ``axis``; a constant with
    ``data``."""
    t = schema().TensorT()
    t.shape, t.type, t.name = list(shape), getattr(schema().TensorType, dtype), name
    t.buffer = 0 if data is None else g.add_buffer(np.ascontiguousarray(data).tobytes())
    q = schema().QuantizationParametersT()
    q.scale = [float(v) for v in np.atleast_1d(scale)]
    q.zeroPoint = [int(v) for v in np.broadcast_to(zero, len(q.scale))]
    q.quantizedDimension = axis
    t.quantization = q
    return g.add_tensor(t)


def _model(folded_w=None, folded_b=None) -> bytes:
    """The original (FC → MUL → ADD), or with ``folded_w`` and ``folded_b`` the folded file:
    the same tensors (the fold keeps indices), one FC writing the chain's output ``y``."""
    g = Graph()
    x = _tensor(g, [1, 2], "INT8", X_SCALE, name="x")
    w = _tensor(g, [2, 2], "INT8", W_SCALES, data=W, name="w")
    b = _tensor(g, [2], "INT32", np.multiply(X_SCALE, W_SCALES), data=B, name="b")
    k = _tensor(g, [1, 2], "INT8", 0.25, name="k")
    mul_c = _tensor(g, [2], "INT8", 1.0, data=np.int8([2, -1]), name="mul_c")
    m = _tensor(g, [1, 2], "INT8", 0.25, name="m")
    add_c = _tensor(g, [2], "INT8", 0.5, data=np.int8([2, 3]), name="add_c")
    y = _tensor(g, [1, 2], "INT8", 0.25, name="y")
    if folded_w is None:
        g.operator("FULLY_CONNECTED", [x, w, b], [k], _opts("FullyConnectedOptionsT"))
        g.operator("MUL", [k, mul_c], [m], _opts("MulOptionsT"))
        g.operator("ADD", [m, add_c], [y], _opts("AddOptionsT"))
        return g.pack([x], [y])
    w2 = _tensor(g, [2, 2], "INT8", FOLDED_W_SCALES, data=folded_w, name="w_folded")
    b2 = _tensor(g, [2], "INT32", np.multiply(X_SCALE, FOLDED_W_SCALES), data=folded_b,
                 name="b_folded")
    g.operator("FULLY_CONNECTED", [x, w2, b2], [y], _opts("FullyConnectedOptionsT"))
    return g.pack([x], [y])


def _check(folded_w, folded_b, chains=(CHAIN,)) -> ParameterCheck | None:
    original = parse_tflite(_model(), "original.tflite")
    folded = parse_tflite(_model(folded_w, folded_b), "folded.tflite")
    return check_parameters(original, folded, Rewrite(folded.data, tuple(chains), frozenset()))


def test_an_exact_fold_has_no_difference():
    assert _check(FOLDED_W, FOLDED_B) == ParameterCheck(1, 0.0, 0.0)


def test_a_weight_off_is_measured_against_its_channels_largest():
    w = FOLDED_W.copy()
    w[0, 1] = -15  # −15/4 = −3.75 for −4: 0.25 off in a channel whose largest |w| is 4
    assert _check(w, FOLDED_B) == ParameterCheck(1, 0.0625, 0.0)


def test_a_bias_off_is_measured_in_steps_of_its_scale():
    b = FOLDED_B.copy()
    b[1] = 13  # 13/4 = 3.25 for 3: one step of 1/4
    c = _check(FOLDED_W, b)
    assert (c.kernels, c.max_weight_rel_diff, c.max_bias_steps) == (1, 0.0, 1.0)
    assert c.to_json() == {"kernels": 1, "max_weight_rel_diff": 0.0, "max_bias_steps": 1.0,
                           "weight_tolerance": SCALE_ROUNDING, "bias_tolerance_steps": 0.5}


def test_s_and_t_are_re_derived_from_the_stored_steps_and_constants_read_per_channel():
    g = Graph()
    x = g.tensor([1, 2])
    d = g.tensor([1, 2])
    y = g.tensor([1, 2])
    g.operator("SUB", [x, g.tensor([2], data=np.float32([1, 2]))], [d], _opts("SubOptionsT"))
    g.operator("MUL", [d, g.tensor([2], data=np.float32([2, 3]))], [y], _opts("MulOptionsT"))
    q = _tensor(g, [2, 2], "INT8", [0.5, 0.25], [0, 4], data=np.int8([[10, -20], [5, 4]]))
    model = parse_tflite(g.pack([x], [y]))
    s, t = _chain_affine(model, (0, 1), 0)  # (x − [1, 2])·[2, 3] = x·[2, 3] − [2, 6]
    assert (s.tolist(), t.tolist()) == ([2.0, 3.0], [-2.0, -6.0])
    # (q − zero point)·scale along axis 0: [10, −20]·0.5 and ([5, 4] − 4)·0.25
    real = _real(model, model.subgraphs[0].tensors[q])
    assert real.dtype == np.float64 and real.tolist() == [[5.0, -10.0], [0.25, 0.0]]


@pytest.mark.parametrize("change", [
    {"result": "kept", "into": None, "direction": None},
    {"direction": "forward"},
])
def test_only_backward_folds_are_checked(change):
    from dataclasses import replace

    assert _check(FOLDED_W, FOLDED_B, (replace(CHAIN, **change),)) is None
    assert _check(FOLDED_W, FOLDED_B, ()) is None


def test_the_fold_itself_passes_its_parameter_check():
    original = parse_tflite(_model(), "original.tflite")
    rewrite = fold_chains(original)
    (chain,) = rewrite.chains
    assert (chain.result, chain.direction, chain.into, chain.ops) == ("folded", "backward", 0,
                                                                        (1, 2))
    folded = parse_tflite(rewrite.data, "folded.tflite")
    sg = folded.subgraphs[0]
    (op,) = sg.operators  # the chain is gone; the kernel writes y (tensor 7)
    x, w, b = (sg.tensors[t] for t in op.inputs)
    assert (op.op, op.outputs) == ("FULLY_CONNECTED", (7,))
    np.testing.assert_array_equal(folded.constant(w), FOLDED_W)
    np.testing.assert_array_equal(folded.constant(b), FOLDED_B)
    assert (w.quantization.scale, b.quantization.scale) == ((0.25, 0.5), (0.125, 0.25))
    assert check_parameters(original, folded, rewrite) == ParameterCheck(1, 0.0, 0.0)
