"""How a tensor of one file differs from the same tensor of another, as the .tflite fold's
proof measures it (edgebn.fold.tflite.tensor_diff)."""

import numpy as np

from edgebn.fold.tflite.tensor_diff import activation_scale, difference


def test_the_largest_difference_and_the_largest_finite_value_hand_worked():
    a = np.array([1.0, -4.0, 2.0], np.float32)
    b = np.array([1.5, -4.0, 1.0], np.float32)
    assert difference(a, b) == (1.0, 4.0)
    assert difference(np.zeros(0, np.float32), np.zeros(0, np.float32)) == (0.0, 0.0)


def test_equal_infinities_are_equal_and_one_sided_ones_are_infinitely_apart():
    pad = np.array([-np.inf, 3.0], np.float32)  # litert-torch's max-pool padding, in both
    assert difference(pad, pad.copy()) == (0.0, 3.0)
    assert difference(np.array([np.inf, 1.0]), np.array([1.0, 1.0]))[0] == np.inf
    assert difference(np.array([np.nan, 1.0]), np.array([1.0, 1.0]))[0] == np.inf


def test_the_activation_scale_is_the_largest_finite_value_of_any_compared_tensor():
    runs = [{(0, 1): np.array([0.0, 0.0]), (0, 2): np.array([-7.0, 2.0, np.inf])},
            {(0, 1): np.array([0.0, 0.0]), (0, 2): np.array([5.0, 1.0, -np.inf])}]
    assert activation_scale(runs, [(0, 1), (0, 2)]) == 7.0
    assert activation_scale(runs, [(0, 1)]) == 0.0
