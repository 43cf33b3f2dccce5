"""What the residual BN costs a .tflite (edgebn.runtime.profile.residue_cost)."""

from tflite_forms import conv_bn

from edgebn.fold.tflite.tflite_fold import fold_tflite
from edgebn.runtime.profile.residue_cost import chains_of, residual_chains, residue_cost
from edgebn.runtime.profile.result import ProfileSettings
from edgebn.tflite.reader import parse_tflite
from edgebn.tflite.residue import analyse_bn

QUICK = ProfileSettings(min_time_s=0.05)


def test_the_chain_is_every_operator_of_the_residual_bn():
    model = parse_tflite(conv_bn(0, form="decomposed"), "pair.tflite")
    (chain,) = residual_chains(model)
    assert chain[0] == 0 and [model.subgraphs[0].operators[i].op for i in chain[1:]] == [
        "MUL", "ADD"]
    assert chains_of(analyse_bn(model)) == [chain]


def test_the_cost_is_the_models_p50_over_the_bypassed_graphs():
    model = parse_tflite(conv_bn(0), "conv_bn.tflite")
    cost = residue_cost(model, QUICK)
    assert cost.pairs == 1 and cost.model_p50_us > 0 and cost.bypassed_p50_us > 0
    assert cost.ratio == cost.estimate.ratio > 0 and cost.partitions is not None
    folded = parse_tflite(fold_tflite(model).data, "folded.tflite")
    assert residue_cost(folded, QUICK) is None  # no residue left to cost
