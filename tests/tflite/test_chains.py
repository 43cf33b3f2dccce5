"""Per-channel affine chains in a .tflite (edgebn.tflite.chains): the forms an unfolded BN takes."""

from tflite_forms import conv_bn

from edgebn.tflite.chains import affine_chains, chain_kind, channel_axis, consumers
from edgebn.tflite.reader import parse_tflite


def test_the_channel_axis_of_a_constant_broadcast_from_the_right():
    assert channel_axis((4,), (1, 6, 6, 4)) == 3
    assert channel_axis((1, 1, 1, 4), (1, 6, 6, 4)) == 3
    assert channel_axis((4, 1, 1), (1, 4, 6, 6)) == 1  # NCHW
    assert channel_axis((1,), (1, 6, 6, 4)) is None  # a scalar is not per channel
    assert channel_axis((6, 4), (1, 6, 6, 4)) is None  # two axes
    assert channel_axis((3,), (1, 6, 6, 4)) is None  # not the data's channel count


def test_each_form_is_one_chain_named_by_its_operators():
    for form, kind in (("decomposed", "decomposed"), ("sub_mul_mul_add", "sub_mul_mul_add")):
        model = parse_tflite(conv_bn(0, form=form), f"{form}.tflite")
        sg = model.subgraphs[0]
        (chain,) = affine_chains(model, sg)
        assert chain_kind(chain) == kind
        want = ["MUL", "ADD"] if kind == "decomposed" else kind.upper().split("_")
        assert [s.op.op for s in chain] == want
        first = chain[0]
        assert consumers(sg)[first.data] == [first.op]  # the chain's input feeds its first step
