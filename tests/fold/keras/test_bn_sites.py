"""Where the BNs of a Keras model are (edgebn.fold.keras.bn_sites): found at any depth with
their path, axis and route, the ones left out with why (a shared layer, several axes, a
nested model called twice, a subclassed model), and the probe's BN inputs on data, hand-worked on
tiny models with 4x4x1 inputs."""

from __future__ import annotations

import numpy as np
import pytest

from edgebn.fold.keras.bn_sites import (
    Probe,
    Skipped,
    bn_layers_of,
    bn_sites,
    chunks,
    is_bn,
)


def _conv_bn_nested():
    """4x4x1 → 3x3 conv of ones, bias [0, 1] → BN (μ [1, 2], σ [2, 4], γ [1, −1], β [0, .5])
    → a nested model of one BN: on an input of ones the conv gives [9, 10] at each of its 2x2
    positions, the first BN (9 − 1)/2 = 4 and −(10 − 2)/4 + 0.5 = −1.5."""
    import keras
    from keras import layers

    inner_in = keras.Input((2, 2, 2))
    inner = keras.Model(inner_in, layers.BatchNormalization(name="inner_bn")(inner_in),
                        name="inner")
    x = keras.Input((4, 4, 1))
    conv = layers.Conv2D(2, 3, name="conv")
    bn = layers.BatchNormalization(name="bn", epsilon=1e-12)  # vanishes beside σ² in float32
    model = keras.Model(x, inner(bn(conv(x))), name="outer")
    conv.set_weights([np.ones((3, 3, 1, 2), np.float32), np.float32([0, 1])])
    bn.set_weights([np.float32([1, -1]), np.float32([0, 0.5]), np.float32([1, 2]),
                    np.float32([4, 16])])
    return model


def test_every_bn_is_found_with_its_path_axis_and_route():
    model = _conv_bn_nested()
    sites, skipped = bn_sites(model)
    assert [s.path for s in sites] == ["bn", "inner/inner_bn"] and skipped == []
    assert [s.axis for s in sites] == [3, 3]
    assert [s.layer.name for s in sites] == ["bn", "inner_bn"]
    # the outer BN reads a tensor of the outer graph; the inner one, through the nested model
    assert [len(s.route) for s in sites] == [1, 2]
    assert sites[0].route[0][0] is model and sites[1].route[1][0].name == "inner"
    assert is_bn(sites[0].layer) and not is_bn(model.get_layer("conv"))


def test_the_probe_reads_each_bn_input_in_inference_mode():
    model = _conv_bn_nested()
    found = Probe(bn_sites(model)[0])(np.ones((3, 4, 4, 1), np.float32))
    assert set(found) == {"bn", "inner/inner_bn"}
    np.testing.assert_array_equal(found["bn"], np.broadcast_to([9.0, 10.0], (3, 2, 2, 2)))
    np.testing.assert_allclose(found["inner/inner_bn"],
                               np.broadcast_to([4.0, -1.5], (3, 2, 2, 2)), rtol=1e-6)


def test_a_shared_bn_is_left_out_at_each_call_and_counted_once_as_a_layer():
    import keras
    from keras import layers

    x = keras.Input((4, 4, 1))
    shared = layers.BatchNormalization(name="shared")
    own = layers.BatchNormalization(name="own")
    model = keras.Model(x, own(shared(shared(x))))
    sites, skipped = bn_sites(model)
    assert [s.path for s in sites] == ["own"]
    assert skipped == [Skipped("shared", "called 2 times (a shared layer)")] * 2
    assert skipped[0].to_json() == {"bn": "shared", "reason": "called 2 times (a shared layer)"}
    assert [b.name for b in bn_layers_of(model)] == ["shared", "own"]  # each once


def test_a_bn_over_several_axes_is_left_out():
    """Keras 3's BatchNormalization takes one axis (``int(axis)``); a layer that reports a list
    (tf_keras' could) is set up here after its graph was built."""
    import keras
    from keras import layers

    x = keras.Input((4, 4, 1))
    bn = layers.BatchNormalization(name="two_axes")
    model = keras.Model(x, bn(x))
    bn.axis = [1, 3]
    assert bn_sites(model) == ([], [Skipped("two_axes",
                                            "normalizes over several axes ([1, 3])")])


def test_bns_inside_a_nested_model_called_twice_or_a_subclassed_one_are_left_out():
    import keras
    from keras import layers

    class Block(keras.Model):
        def __init__(self):
            super().__init__(name="block")
            self.norm = layers.BatchNormalization(name="hidden_bn")

        def call(self, x):
            return self.norm(x)

    inner_in = keras.Input((4, 4, 1))
    inner = keras.Model(inner_in, layers.BatchNormalization(name="inner_bn")(inner_in),
                        name="inner")
    x = keras.Input((4, 4, 1))
    model = keras.Model(x, Block()(inner(inner(x))))
    sites, skipped = bn_sites(model)
    assert sites == []
    assert skipped == [Skipped("inner/inner_bn", "inside inner, called 2 times"),
                       Skipped("inner/inner_bn", "inside inner, called 2 times"),
                       Skipped("block/hidden_bn", "inside block (Block), whose graph is not "
                                                  "visible")]
    assert sorted(b.name for b in bn_layers_of(model)) == ["hidden_bn", "inner_bn"]


def test_chunks_cut_the_batch_into_float32_pieces_of_at_most_most_rows():
    x = np.arange(10 * 16, dtype=np.float64).reshape(10, 4, 4, 1)
    pieces = list(chunks(x, most=4))
    assert [len(p) for p in pieces] == [4, 4, 2]
    assert all(p.dtype == np.float32 for p in pieces)
    np.testing.assert_array_equal(np.concatenate(pieces), x)
    assert [len(p) for p in chunks(x)] == [10]


@pytest.mark.parametrize("sequential", [False, True])
def test_a_sequential_model_is_walked_as_its_functional_graph(sequential):
    import keras
    from keras import layers

    stack = [layers.Conv2D(2, 3, name="c"), layers.BatchNormalization(name="b"),
             layers.ReLU(name="r")]
    if sequential:
        model = keras.Sequential([keras.Input((4, 4, 1)), *stack])
    else:
        x = keras.Input((4, 4, 1))
        y = x
        for layer in stack:
            y = layer(y)
        model = keras.Model(x, y)
    sites, skipped = bn_sites(model)
    assert [(s.path, s.axis) for s in sites] == [("b", 3)] and skipped == []
