"""What the residual BN costs a .tflite: its p50 against the same graph with the chains bypassed.

The bypassed graph (:func:`edgebn.tflite.writer.bypass_chains`) computes different outputs,
so the ratio, timed interleaved by :func:`edgebn.runtime.ratio.latency_ratio`, is an estimate
of what the residue costs, not a model one could ship.
"""

from __future__ import annotations

from pathlib import Path

from edgebn.runtime.backends import delegate_partitions, load_interpreter
from edgebn.runtime.profile.result import ProfileSettings, ResidueCost
from edgebn.runtime.ratio import latency_ratio

# residue.analyse_bn looked up when called: a test counts the inspections
from edgebn.tflite import residue
from edgebn.tflite.reader import TFLiteModel, as_tflite, parse_tflite
from edgebn.tflite.residue import BNAnalysis
from edgebn.tflite.writer import bypass_chains


def chains_of(analysis: BNAnalysis) -> list[tuple[int, ...]]:
    """(subgraph, *ops) of each residual BN chain of an analysis."""
    return [(r.subgraph, *r.ops) for r in analysis.residual if r.affine]


def residual_chains(model: TFLiteModel) -> list[tuple[int, ...]]:
    """(subgraph, op, op, ...) of each BN the converter left as a chain of per-channel steps
    (a MUL+ADD pair, SUB → MUL → MUL → ADD, ...): every operator of it."""
    return chains_of(residue.analyse_bn(model))



def residue_cost(model: TFLiteModel | str | Path, settings: ProfileSettings = ProfileSettings(),
                 pairs: list[tuple[int, ...]] | None = None) -> ResidueCost | None:
    """p50 of ``model`` over p50 of it with its residual BN chains bypassed; None without
    residue."""

    model = as_tflite(model)
    pairs = residual_chains(model) if pairs is None else pairs
    if not pairs:
        return None
    bypassed = parse_tflite(bypass_chains(model, pairs), f"{model.path} (residual BN bypassed)")
    est = latency_ratio(model, bypassed, settings, width=0.02)
    partitions = None
    # a ratio below 1 would mean the bypassed copy ran slower: is it delegated?
    if settings.xnnpack:
        partitions = tuple(delegate_partitions(load_interpreter(m, settings.backend,
                                                                settings.threads,
                                                                checked=False)[0])
                           for m in (model, bypassed))
    return ResidueCost(len(pairs), est.current_p50_us, est.baseline_p50_us, est, partitions)
