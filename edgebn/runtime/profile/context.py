"""Operators in context: what each segment of a model costs inside it, by differences of prefixes.

An isolated operator (:mod:`edgebn.runtime.profile.operators`) is timed on its own, invoke after
invoke, so its weights stay in the cache between runs. Inside the whole model the other
operators pass through the cache in between: a model whose weights exceed it streams every
convolution's weights from memory on each inference (ResNet50V2's isolated operators sum
to about half of its p50 on a 2-core Xeon). Nothing in the Python runtimes can time an
operator inside a model, but a *prefix* of the model can be timed: its first ``k``
operators as a model of their own (:func:`edgebn.tflite.writer.op_group`; its outputs are
what the rest of the model would read). So the model is cut into ``SEGMENTS`` runs of
operators and the prefix ending at each cut is timed against the whole model, the two
taking turns in rounds: ``f_k = p50(prefix_k) / p50(whole)`` (a ratio, so drift on a shared
machine cancels). A segment's time in context is ``(f_k − f_(k−1)) · p50(whole)``, its
weights as cold and its fusions as they are in the model.

Each operator's row then keeps its isolated time as ``isolated_us`` and shows, as
``time_us``, that time scaled by its segment's factor ``context / Σ isolated``: the
segment's measured cost shared in proportion to what isolation found. The rows so sum to
the whole model's p50 up to the prefixes' noise (and the cost of writing out the tensors
live at each cut); the isolated sum is reported beside it (``isolated_sum_us``), since
that is what isolation alone explains.

Cuts never separate a PAD from the convolution XNNPACK fuses it into. Models with more than
one subgraph, or whose operators call others, get no segments (the rows stay isolated and
``context_skipped`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgebn.documents import JsonDict
from edgebn.runtime.backends import Interpreter
from edgebn.runtime.profile.op_timing import AT_LOAD, ROUNDS, Timed, captured
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel, parse_tflite
from edgebn.tflite.writer import calls_subgraphs, op_group

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

SEGMENTS = 8  # prefixes timed: more resolve finer, each difference is noisier


@dataclass(frozen=True)
class Segment:
    """Operators ``first``..``last`` (execution order), their time inside the whole model."""

    first: int
    last: int
    context_us: float  # (f_k − f_(k−1)) · whole p50
    fraction: float  # f_k: the prefix ending here over the whole model, p50 against p50
    isolated_us: float = 0.0  # the segment's operators' isolated sum

    @property
    def factor(self) -> float | None:
        """context / isolated: how much slower the segment runs inside the model."""
        return self.context_us / self.isolated_us if self.isolated_us > 0 else None

    def to_json(self) -> JsonDict:
        return {"ops": [self.first, self.last], "context_us": self.context_us,
                "prefix_fraction": self.fraction, "isolated_us": self.isolated_us,
                "factor": self.factor}


def segment_cuts(n_ops: int, fused: dict[int, int], segments: int = SEGMENTS) -> list[int]:
    """Where the prefixes end (exclusive), evenly by operator count; the last is ``n_ops``.
    A cut between a PAD and the convolution that absorbs it moves past the convolution."""
    cuts = []
    for k in range(1, segments):
        cut = round(k * n_ops / segments)
        for pad, conv in fused.items():
            if pad < cut <= conv:
                cut = conv + 1
        if 0 < cut < n_ops and (not cuts or cut > cuts[-1]):
            cuts.append(cut)
    return [*cuts, n_ops]


def context_unsupported(model: TFLiteModel, unpacked: fb.ModelT) -> str | None:
    """Why a model cannot be cut into prefixes, or None."""
    if len(model.subgraphs) != 1:
        return f"{len(model.subgraphs)} subgraphs: prefixes are cut from a single subgraph"
    if any(calls_subgraphs(op) for op in unpacked.subgraphs[0].operators):
        return "an operator runs other subgraphs"
    if len(model.subgraphs[0].operators) < 2:
        return "one operator: it is the whole model"
    return None


def prefix_fractions(model: TFLiteModel, unpacked: fb.ModelT, settings: BenchSettings,  # noqa: PLR0913
                     whole: Timed, reference: Interpreter | None, cuts: list[int], budget_s: float
                     ) -> list[float]:
    """``f_k`` for each cut but the last (which is the whole model, 1): each prefix timed in
    blocks against the whole model, taking turns ``ROUNDS`` times, ``budget_s`` each (the
    whole model as long); one prefix alive at a time."""
    fractions = []
    whole_runs = max(int(budget_s / ROUNDS / max(whole.warm_ns / 1e9, 1e-7)), 2)
    sg = model.subgraphs[0]
    for cut in cuts[:-1]:
        read = {t for op in sg.operators[:cut] for t in op.inputs}
        # a DEQUANTIZE of weights read only after the cut would be a constant output: left out
        ops = tuple(i for i in range(cut) if not _at_load(sg, sg.operators[i])
                    or set(sg.operators[i].outputs) & read)
        if not ops:  # only weights made at load: the prefix costs nothing at inference
            fractions.append(0.0)
            continue
        one = op_group(model, unpacked, 0, ops)
        feeds = [captured(reference, 0, t) for t in one.inputs]
        prefix = Timed(parse_tflite(one.data, f"{model.path} operators 0-{cut - 1}"), settings,
                       feeds, budget_s, checked=False)  # the first operators of a preflighted model
        start = len(whole.samples)
        for _ in range(ROUNDS):
            whole.run(whole_runs)
            prefix.run()
        mine = np.median(prefix.samples)
        theirs = np.median(whole.samples[start:])
        fractions.append(float(mine / theirs) if theirs > 0 else 0.0)
        del prefix, one
    return fractions


def _at_load(sg: Subgraph, op: Operator) -> bool:
    """An operator of constants only (a DEQUANTIZE of float16 weights): computed once, at load."""
    return op.op in AT_LOAD and all(sg.tensors[t].is_constant for t in op.inputs if t >= 0)


def segments_of(cuts: list[int], fractions: list[float], whole_p50_us: float,
                overhead_us: float) -> list[Segment]:
    """Each segment's time in context from the prefixes' fractions (the first pays no empty
    invoke: the whole model pays it once). A negative difference (noise) counts 0."""
    out, before, first = [], overhead_us / whole_p50_us if whole_p50_us > 0 else 0.0, 0
    for cut, f in zip(cuts, [*fractions, 1.0], strict=True):
        out.append(Segment(first, cut - 1, max(f - before, 0.0) * whole_p50_us, f))
        before, first = max(before, f), cut
    return out

