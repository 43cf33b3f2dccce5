"""The .tflite fold's proof (edgebn.fold.tflite.proof): two files run on the same inputs and
every tensor both compute compared, float ones relative to their largest value, quantized ones
in steps of their scale; the step bound of an int8 chain and the elements its removed clamps
leave out. Hand-worked on files of two or three operators written with edgebn's writer."""

from __future__ import annotations

import numpy as np
import pytest
from tflite_forms import _opts

from edgebn.errors import EdgebnError
from edgebn.fold.tflite.proof import (
    INT8_STEPS,
    Comparison,
    TensorDiff,
    _clipped,
    _downstream,
    compare,
    proof_inputs,
    step_bound,
)
from edgebn.fold.tflite.rewrite import ChainFold, Rewrite
from edgebn.tflite.reader import parse_tflite, schema
from edgebn.tflite.writer import Graph

NOTHING_CHANGED = Rewrite(b"", (), frozenset())


def _affine(mul, add) -> bytes:
    """x [1, 2] → m = x·mul → y = m + add (tensors x 0, mul 1, m 2, add 3, y 4)."""
    g = Graph()
    x = g.tensor([1, 2], name="x")
    mul_c = g.tensor([2], data=np.float32(mul))
    m = g.tensor([1, 2], name="m")
    g.operator("MUL", [x, mul_c], [m], _opts("MulOptionsT"))
    add_c = g.tensor([2], data=np.float32(add))
    y = g.tensor([1, 2], name="y")
    g.operator("ADD", [m, add_c], [y], _opts("AddOptionsT"))
    assert (x, mul_c, m, add_c, y) == (0, 1, 2, 3, 4)
    return g.pack([x], [y])


def _compare(original: bytes, folded: bytes, feeds, rewrite=NOTHING_CHANGED) -> Comparison:
    return compare(parse_tflite(original, "original.tflite"),
                   parse_tflite(folded, "folded.tflite"), rewrite, feeds)


X = [[np.float32([[1.0, 2.0]])]]  # one run, the one input


def test_every_computed_tensor_is_compared_relative_to_its_largest_value():
    # m = [2, 6] in both; y = [3, 5] against [3, 5.5]: 0.5 off a largest |y| of 5
    c = _compare(_affine([2, 3], [1, -1]), _affine([2, 3], [1, -0.5]), X)
    assert c == Comparison(2, TensorDiff(0, 4, "y", 0.5, 0.1), None, 0, 0, 0)
    assert c.worst.to_json() == {"subgraph": 0, "tensor": 4, "name": "y", "max_abs_diff": 0.5,
                                 "max_rel_diff": 0.1}


def test_the_worst_is_over_every_run_and_the_tensors_the_fold_changes_are_left_out():
    feeds = X + [[np.float32([[-4.0, 0.0]])]]  # y = [-7, -1] against [-7, -0.5]; |y| ≤ 7
    c = _compare(_affine([2, 3], [1, -1]), _affine([2, 3], [1, -0.5]), feeds)
    assert (c.worst.tensor, c.worst.max_abs_diff, c.worst.max_rel_diff) == (4, 0.5, 0.5 / 7)
    changed = Rewrite(b"", (), frozenset({(0, 4)}))
    c = _compare(_affine([2, 3], [1, -1]), _affine([2, 3], [1, -0.5]), X, changed)
    assert c == Comparison(1, TensorDiff(0, 2, "m", 0.0, 0.0), None, 0, 0, 0)


def test_a_tensor_of_zeros_is_measured_against_the_largest_value_compared():
    # original m = [0, 0], y = [4, −8]; folded m = [0, 0.5], y = [4, −8.5 + 0.5] = [4, −8]:
    # m's own largest is 0, so its 0.5 counts against y's 8
    c = _compare(_affine([0, 0], [4, -8]), _affine([0, 0.25], [4, -8.5]), X)
    assert c.compared == 2 and c.worst == TensorDiff(0, 2, "m", 0.5, 0.0625)


def test_where_everything_compared_is_zero_a_difference_is_infinite():
    c = _compare(_affine([0, 0], [0, 0]), _affine([0, 0.25], [0, -0.5]), X)
    assert c.worst == TensorDiff(0, 2, "m", 0.5, float("inf"))
    same = _compare(_affine([0, 0], [0, 0]), _affine([0, 0], [0, 0]), X)
    assert same.worst.max_rel_diff == 0.0


def _q(g: Graph, shape, dtype: str, scale: float, zero: int = 0, data=None, name="") -> int:
    t = schema().TensorT()
    t.shape, t.type, t.name = list(shape), getattr(schema().TensorType, dtype), name
    t.buffer = 0 if data is None else g.add_buffer(np.ascontiguousarray(data).tobytes())
    q = schema().QuantizationParametersT()
    q.scale, q.zeroPoint, q.quantizedDimension = [scale], [zero], 0
    t.quantization = q
    return g.add_tensor(t)


def _int8_add(c) -> bytes:
    """x int8 (scale 1/2) + c int8 (scale 1/2) → y int8 (scale 1/2, zero point 1)."""
    g = Graph()
    x = _q(g, [1, 2], "INT8", 0.5, name="x")
    const = _q(g, [2], "INT8", 0.5, data=np.int8(c))
    y = _q(g, [1, 2], "INT8", 0.5, 1, name="y")
    g.operator("ADD", [x, const], [y], _opts("AddOptionsT"))
    return g.pack([x], [y])


def test_a_quantized_tensor_is_compared_dequantized_in_steps_of_its_scale():
    # x = [2, 4]·½ = [1, 2]; y = x + [1, 2] = [2, 4] against x + [1, 3] = [2, 5]: 1.0 apart,
    # two steps of ½, a quarter of y's largest
    c = _compare(_int8_add([2, 4]), _int8_add([2, 6]), [[np.int8([[2, 4]])]])
    assert c == Comparison(1, None, TensorDiff(0, 2, "y", 1.0, 0.25, 2.0), 1, 0, 0)
    assert c.worst_quantized.to_json()["max_steps"] == 2.0


def _int8_chain(mul_scale: float = 0.25) -> bytes:
    """x int8 (1/2) → MUL c ([8, −12]·mul_scale) → m int8 (0.4) → ADD → y int8 (0.1)."""
    g = Graph()
    x = _q(g, [1, 2], "INT8", 0.5, name="x")
    mul_c = _q(g, [2], "INT8", mul_scale, data=np.int8([8, -12]))
    m = _q(g, [1, 2], "INT8", 0.4, name="m")
    add_c = _q(g, [2], "INT8", 0.5, data=np.int8([1, 2]))
    y = _q(g, [1, 2], "INT8", 0.1, name="y")
    g.operator("MUL", [x, mul_c], [m], _opts("MulOptionsT"))
    g.operator("ADD", [m, add_c], [y], _opts("AddOptionsT"))
    assert (x, m, y) == (0, 2, 4)
    return g.pack([x], [y])


def _chain(result: str = "folded") -> Rewrite:
    fold = ChainFold(0, (0, 1), "decomposed", 2, result, into=None, int8=True)
    return Rewrite(b"", (fold,), frozenset())


def test_the_step_bound_adds_half_a_step_of_each_removed_rounding_scaled_to_y():
    # ADD's input m: ½·0.4/0.1 = 2; MUL's input x, times max|c| = 12·¼ = 3: ½·0.5·3/0.1 = 7.5;
    # 1 + 2 + 7.5 = 10.5, rounded up
    assert step_bound(parse_tflite(_int8_chain()), _chain()) == 11.0
    # a MUL constant 8 times smaller: ½·0.5·(3/8)/0.1 = 0.9375; 1 + 2 + 0.9375 → 4
    assert step_bound(parse_tflite(_int8_chain(0.25 / 8)), _chain()) == 4.0
    assert step_bound(parse_tflite(_int8_chain()), _chain("kept")) == INT8_STEPS
    assert step_bound(parse_tflite(_affine([2, 3], [1, -1])), _chain()) == INT8_STEPS  # float


def test_elements_the_original_clamped_on_the_removed_tensors_are_left_out_of_y():
    model = parse_tflite(_int8_chain())
    run = {(0, 0): np.array([[1.0, 2.0]]), (0, 2): np.array([[0.4, 0.8]]),
           (0, 4): np.array([[1.0, 1.0]])}
    # run 1: m[0] = 50.8 stored 127 (clamped); run 2: x[1] = −64 stored −128 (clamped)
    clamped_m = run | {(0, 2): np.array([[50.8, 0.8]])}
    clamped_x = run | {(0, 0): np.array([[1.0, -64.0]])}
    masks, runs = _clipped(model, _chain(), [run, clamped_m, clamped_x])
    assert list(masks) == [(0, 4)]
    assert masks[(0, 4)].tolist() == [[[False, False]], [[True, False]], [[False, True]]]
    assert runs.tolist() == [False, True, True]
    assert _clipped(model, _chain(), [run])[0] == {}


def test_downstream_is_every_tensor_computed_from_the_given_ones():
    model = parse_tflite(_int8_chain())
    assert _downstream(model, {(0, 0)}) == {(0, 2), (0, 4)}
    assert _downstream(model, {(0, 2)}) == {(0, 4)}
    assert _downstream(model, {(0, 4)}) == set()


def test_proof_inputs_are_the_data_given_or_random_in_the_input_range():
    model = parse_tflite(_affine([2, 3], [1, -1]), "affine.tflite")
    data = np.float32([[1, 2], [3, 4], [5, 6]])
    feeds, where = proof_inputs(model, data, 4)
    assert where == "4 samples of --data"
    assert [f[0].tolist() for f in feeds] == [[[1, 2]], [[3, 4]], [[5, 6]], [[1, 2]]]
    feeds, where = proof_inputs(model, None, 3)
    assert where == "3 random inputs" and len(feeds) == 3
    values = np.stack([f[0] for f in feeds])
    assert values.dtype == np.float32 and values.shape == (3, 1, 2)
    assert ((0 <= values) & (values < 1)).all()


def test_proof_inputs_need_an_input_to_feed():
    g = Graph()
    y = g.tensor([1, 2])
    g.operator("ADD", [g.tensor([1, 2], data=np.float32([[1, 2]])),
                       g.tensor([1, 2], data=np.float32([[3, 4]]))], [y], _opts("AddOptionsT"))
    model = parse_tflite(g.pack([], [y]), "no_inputs.tflite")
    with pytest.raises(EdgebnError, match="no_inputs.tflite: the model has no inputs"):
        proof_inputs(model, None, 2)
