"""Quantized tensors and the inputs an input tensor takes (edgebn.tflite.quantization)."""

import numpy as np
import pytest

from edgebn.errors import DatasetError
from edgebn.tflite.quantization import dequantize, make_inputs, quantize


def test_quantize_and_dequantize_hand_worked():
    """scale 0.5, zero point 10: 1.0 -> 1/0.5 + 10 = 12; 100.0 -> 210, clipped to int8's 127."""
    q = quantize(np.array([1.0, -3.0, 100.0]), (0.5, 10), np.int8)
    assert q.tolist() == [12, 4, 127] and q.dtype == np.int8
    assert dequantize(q, (0.5, 10)).tolist() == [1.0, -3.0, 58.5]
    assert quantize(np.array([1.4]), None, np.uint8).tolist() == [1]  # no scale: as it is
    assert dequantize(np.array([0.25], np.float64), (0.5, 10)).dtype == np.float32  # floats pass


def test_real_samples_are_batched_in_turn_and_quantized_for_an_integer_input():
    data = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    batches = make_inputs((2, 2), np.int8, (1.0, 0), count=2, data=data)
    assert [b.tolist() for b in batches] == [[[0, 1], [2, 3]], [[4, 5], [0, 1]]]


def test_random_inputs_span_the_dtype_and_data_must_fit():
    x = make_inputs((1, 4), np.float32, None, count=1, seed=3)[0]
    assert x.shape == (1, 4) and (0 <= x).all() and (x < 1).all()
    y = make_inputs((1, 4096), np.uint8, (1.0, 0), count=1)[0]
    assert y.min() == 0 and y.max() == 255
    with pytest.raises(DatasetError, match="per sample; the model's input takes"):
        make_inputs((1, 4), np.float32, None, 1, data=np.zeros((2, 5), np.float32))
    with pytest.raises(DatasetError, match="the inputs given are empty"):
        make_inputs((1, 4), np.float32, None, 1, data=np.zeros((0, 4), np.float32))
    with pytest.raises(DatasetError, match="a scalar"):
        make_inputs((), np.float32, None, 1, data=np.zeros((1,), np.float32))
