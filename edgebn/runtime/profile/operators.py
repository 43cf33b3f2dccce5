"""``edgebn profile``: where a .tflite spends its time, operator by operator.

The Python runtimes expose no per-operator profiler (LiteRT's ``benchmark_model
--enable_op_profiling`` is a C++ binary the wheels do not ship; its Interpreter has no
profiler hook), so each operator is timed *isolated*: written as a one-operator model
with the same code, options, tensors, quantization and constants
(:func:`edgebn.tflite.writer.single_op`), loaded with the same runtime, threads and
delegate, and fed the values it sees in the whole model (one reference run with every
intermediate tensor preserved). All interpreters, the whole model's included, are
timed in rounds, block by block, so drift on a shared machine hits them alike.

Where XNNPACK fuses two operators into one node (:mod:`edgebn.runtime.profile.fusion`), they are
timed together: a PAD (constant,
spatial) read only by the CONV_2D or DEPTHWISE_CONV_2D after it becomes that convolution's
padding, so the pair is one two-operator model, its time the convolution's row (``method``
``"with the PAD before it"``), the PAD's row 0 (``"fused"``). Timed alone, the PAD copies
its whole padded output, which the model never does: MediaPipe's detectors pad before
nearly every strided convolution, and their isolated sum was 1.3 of the whole model.

Each operator's time is its one-op model's p50 less the p50 of an empty ``invoke()``
(one ADD of one element, timed in the same rounds): the whole model pays that overhead
once, not once per operator. An operator with only constant inputs (a DEQUANTIZE of
float16 weights) is computed once when the model is loaded, and counts 0 (``"at load"``).

In context (:mod:`edgebn.runtime.profile.context`, unless ``context=False``): the model's prefixes
are timed too, and each row is its isolated time scaled to its segment's cost inside the
model (``method`` ``"in context"``; ``isolated_us`` keeps the isolated time). ``ops_sum_us``
then sums to about the whole model's p50 by construction; ``isolated_sum_us`` is what
isolation alone explains. A ``baseline`` is profiled isolated, and the diff compares the
two files' isolated times.

Residue cost: the whole model's p50 over the p50 of the same graph with its residual
BN chains bypassed (:func:`edgebn.tflite.writer.bypass_chains`), both timed interleaved in
rounds by :func:`edgebn.runtime.ratio.latency_ratio`, with the ratio's interval ("not
significant" when it holds 1). The bypassed graph computes different outputs, so the
ratio is an estimate of what the residue costs, not a model one could ship. When the
bypassed graph cannot be loaded (XNNPACK refuses an int8 MAX_POOL_2D whose input scale
is no longer its output's), the profile stands without it: ``residue_cost`` is null and
``residue_skipped`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Interpreter
from edgebn.runtime.profile.context import (
    Segment,
    context_unsupported,
    prefix_fractions,
    segment_cuts,
    segments_of,
)
from edgebn.runtime.profile.fusion import fused_pads
from edgebn.runtime.profile.op_timing import AT_LOAD, ROUNDS, Timed, capture, captured
from edgebn.runtime.profile.opdiff import OpDiff, diff_operators
from edgebn.runtime.profile.residue_cost import chains_of, residual_chains, residue_cost
from edgebn.runtime.profile.result import (
    AT_LOAD_METHOD,
    FUSED,
    IN_CONTEXT,
    ISOLATED,
    NOT_TIMED,
    WITH_PAD,
    OpTime,
    ProfileResult,
    ProfileSettings,
)
from edgebn.tflite.macs import OpCost, model_cost
from edgebn.tflite.reader import Subgraph, TFLiteModel, as_tflite, parse_tflite
from edgebn.tflite.residue import BNAnalysis
from edgebn.tflite.writer import empty_model, op_group, unpack

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

OP_MIN_TIME_S = 0.01  # timed seconds per operator at the least
CONSTANT_NOTE = "only constant inputs: the runtime computes it once, when the model is loaded"
AT_OVERHEAD_NOTE = ("no slower than an empty invoke(): too short to tell apart from the "
                    "invoke overhead taken off every operator")
NO_CONTEXT_TIME_NOTE = ("its segment took no time that could be measured inside the whole "
                        "model: the two prefixes around it timed within noise of each other")
MAX_OPERATORS = 5000  # one interpreter each is alive at once: refuse what would exhaust memory




@dataclass
class _Op:
    """One operator waiting for the rounds: its cost, and its interpreter or why it has none."""

    cost: OpCost
    shape: tuple[int, ...]
    residual: bool
    timed: Timed | None = None
    note: str | None = None
    method: str = ISOLATED

    def row(self, overhead_us: float) -> OpTime:
        c, measured = self.cost, self.timed.latency().p50 if self.timed is not None else None
        time_us = None if measured is None else max(measured - overhead_us, 0.0)
        note = self.note
        if measured is not None and measured <= overhead_us and note is None:
            note = AT_OVERHEAD_NOTE  # said, not shown as an operator that takes no time
        method = self.method if self.timed is not None or self.method in (FUSED, AT_LOAD_METHOD) \
            else NOT_TIMED
        if self.method in (FUSED, AT_LOAD_METHOD):
            time_us = 0.0
        return OpTime(c.subgraph, c.index, c.op, self.shape, time_us,
                      len(self.timed.samples) if self.timed is not None else 0, c.macs,
                      c.weight_bytes, self.residual, note=note, measured_us=measured,
                      method=method)


@dataclass
class _Prepared:
    """A model's interpreters, loaded and fed, waiting for the timing rounds."""

    model: TFLiteModel
    whole: Timed
    # the run that kept every tensor: the operators' and prefixes' inputs
    reference: Interpreter | None
    unpacked: fb.ModelT
    pads: dict[int, int]  # subgraph 0's PAD -> the convolution XNNPACK fuses it into
    ops: list[_Op] = field(default_factory=list)

    def units(self) -> list[Timed]:
        return [self.whole, *(o.timed for o in self.ops if o.timed is not None)]

    def result(self, overhead_us: float) -> ProfileResult:
        rows = [o.row(overhead_us) for o in self.ops]
        total = sum(r.time_us for r in rows if r.time_us is not None) or 1.0
        rows = [replace(r, share=r.time_us / total) if r.time_us is not None else r
                for r in rows]
        info = self.whole.info
        return ProfileResult(self.model.path, str(info), info.threads, info.xnnpack,
                             self.whole.latency(), tuple(rows), invoke_overhead_us=overhead_us)


def _static(sg: Subgraph) -> set[int]:
    """Tensors fixed before the first inference: constants, and what operators of constants
    compute from them (once, at load: a DEQUANTIZE of float16 weights)."""
    static = {t.index for t in sg.tensors if t.is_constant}
    for op in sg.operators:  # execution order: producers first
        if op.op in AT_LOAD and op.inputs and all(t in static for t in op.inputs if t >= 0):
            static |= {t for t in op.outputs if t >= 0}
    return static


def _prepare(model: TFLiteModel, settings: ProfileSettings,
             pairs: list[tuple[int, ...]]) -> _Prepared:
    """The whole model's interpreter, its reference run, and each operator's, in file order."""
    n_inputs = len(model.subgraphs[0].inputs) if model.subgraphs else 0
    whole = Timed(model, settings, [None] * n_inputs, settings.min_time_s, whole=True)
    reference = capture(model, settings, whole.inputs())
    residual = {(s, i) for s, *ops in pairs for i in ops}
    costs = model_cost(model).ops
    unpacked = unpack(model)
    pads = {sg.index: fused_pads(model, sg.index) if settings.xnnpack else {}
            for sg in model.subgraphs}
    plan = _Plan(model, settings, unpacked, reference, pads,
                 {sg.index: _static(sg) for sg in model.subgraphs},
                 max(settings.min_time_s / max(len(costs), 1), OP_MIN_TIME_S))
    prepared = _Prepared(model, whole, reference if settings.context else None, unpacked,
                         pads.get(0, {}))
    for cost in costs:  # one at a time: each operator's interpreter is made in file order
        prepared.ops.append(plan.op(cost, (cost.subgraph, cost.index) in residual))
    return prepared


@dataclass
class _Plan:
    """What timing one operator needs of its model: the reference run that feeds it, XNNPACK's
    fused PADs, the tensors fixed at load, the seconds each operator gets."""

    model: TFLiteModel
    settings: ProfileSettings
    unpacked: fb.ModelT
    reference: Interpreter | None
    pads: dict[int, dict[int, int]]  # subgraph -> PAD -> the convolution it is fused into
    static: dict[int, set[int]]  # subgraph -> tensors fixed before the first inference
    budget_s: float

    def op(self, cost: OpCost, residual: bool) -> _Op:
        """The operator's row-to-be: computed at load, fused, or with its interpreter."""
        sg = self.model.subgraphs[cost.subgraph]
        op = sg.operators[cost.index]
        shape = sg.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
        entry = _Op(cost, shape, residual)
        fused = self.pads[cost.subgraph]
        if op.op in AT_LOAD and all(t in self.static[sg.index] for t in op.outputs if t >= 0):
            entry.note, entry.method = CONSTANT_NOTE, AT_LOAD_METHOD
        elif cost.index in fused:
            conv = fused[cost.index]
            entry.method = FUSED
            entry.note = (f"XNNPACK makes it the padding of the {sg.operators[conv].op} #{conv}: "
                          "timed with it")
        else:
            pad = next((p for p, conv in fused.items() if conv == cost.index), None)
            if pad is not None:
                entry.method = WITH_PAD
            self._time(entry, sg, (cost.index,) if pad is None else (pad, cost.index))
        return entry

    def _time(self, entry: _Op, sg: Subgraph, group: tuple[int, ...]) -> None:
        """``group`` as a model of its own, fed what it reads in the whole model; where it
        cannot be made or loaded, the first line of why."""
        index = group[-1]
        reads = {t for i in group for t in sg.operators[i].inputs}
        frozen = {t: captured(self.reference, sg.index, t) for t in reads
                  if t in self.static[sg.index] and not sg.tensors[t].is_constant}
        try:
            one = op_group(self.model, self.unpacked, sg.index, group,
                           {t: v for t, v in frozen.items() if v is not None})
            feeds = [captured(self.reference, sg.index, t) for t in one.inputs]
            entry.timed = Timed(parse_tflite(one.data, f"{self.model.path} operator {index}"),
                                self.settings, feeds, self.budget_s,
                                checked=False)  # a node of a preflighted model
        except (EdgebnError, ValueError, RuntimeError) as exc:
            entry.note = _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def in_context(result: ProfileResult, prepared: _Prepared, settings: ProfileSettings,
               overhead_us: float) -> ProfileResult:
    """``result`` with each row scaled to its segment's time inside the model (the module
    :mod:`edgebn.runtime.profile.context`), or unchanged with ``context_skipped`` saying why."""
    model = prepared.model
    why = context_unsupported(model, prepared.unpacked)
    if why is None and prepared.reference is None:
        why = "the reference run that feeds the prefixes failed"
    if why is not None:
        return replace(result, context_skipped=why)
    cuts = segment_cuts(len(model.subgraphs[0].operators), prepared.pads)
    budget = max(settings.min_time_s / len(cuts), OP_MIN_TIME_S)
    try:
        fractions = prefix_fractions(model, prepared.unpacked, settings, prepared.whole,
                                     prepared.reference, cuts, budget)
    except (EdgebnError, ValueError, RuntimeError) as exc:
        return replace(result, context_skipped="a prefix of the model cannot be timed: "
                       + _first_line(exc))
    segments = segments_of(cuts, fractions, result.latency_us.p50, overhead_us)
    of = {i: k for k, g in enumerate(segments) for i in range(g.first, g.last + 1)}
    isolated = [0.0] * len(segments)
    for o in result.operators:
        isolated[of[o.index]] += o.time_us or 0.0
    segments = [replace(g, isolated_us=iso) for g, iso in zip(segments, isolated, strict=True)]
    rows = [_in_segment(o, segments[of[o.index]], of[o.index]) for o in result.operators]
    total = sum(r.time_us for r in rows if r.time_us is not None) or 1.0
    rows = [replace(r, share=r.time_us / total) if r.time_us is not None else r for r in rows]
    return replace(result, operators=tuple(rows), segments=tuple(segments))


def _in_segment(o: OpTime, g: Segment, k: int) -> OpTime:
    """Row ``o`` of segment ``k``: its isolated time scaled by the segment's factor, where it
    has one (an operator fused or computed at load keeps its 0)."""
    if o.time_us is None or o.method in (FUSED, AT_LOAD_METHOD) or g.factor is None:
        return replace(o, isolated_us=o.time_us, segment=k)
    method = IN_CONTEXT if o.method == ISOLATED else f"{IN_CONTEXT}, {o.method}"
    time_us = o.time_us * g.factor
    note = NO_CONTEXT_TIME_NOTE if time_us <= 0 and o.note is None else o.note
    return replace(o, time_us=time_us, isolated_us=o.time_us, segment=k, method=method,
                   note=note)


def profile(model: TFLiteModel | str | Path, settings: ProfileSettings = ProfileSettings(),
            baseline: TFLiteModel | str | Path | None = None,
            analysis: BNAnalysis | None = None) -> ProfileResult:
    """Time every operator of ``model`` isolated, beside the whole model (and ``baseline``).

    ``analysis``: ``model``'s BN analysis when the caller has it (a build inspected the file).
    """
    settings.validate()
    models = [as_tflite(model)] + ([as_tflite(baseline)] if baseline is not None else [])
    for m in models:
        n = sum(len(sg.operators) for sg in m.subgraphs)
        if n > MAX_OPERATORS:
            raise EdgebnError(f"{m.path}: {n} operators; profile times at most "
                              f"{MAX_OPERATORS} (one interpreter each)")
    pairs = [residual_chains(m) for m in models[1:]]
    pairs.insert(0, residual_chains(models[0]) if analysis is None else chains_of(analysis))
    prepared = [_prepare(m, settings, p) for m, p in zip(models, pairs, strict=True)]
    empty = Timed(parse_tflite(empty_model(), "<empty invoke>"), settings, [None, None],
                  OP_MIN_TIME_S, checked=False)
    for _ in range(ROUNDS):  # every interpreter takes its turn, round after round
        for unit in (empty, *(u for p in prepared for u in p.units())):
            unit.run()
    overhead_us = empty.latency().p50
    results = [replace(p.result(overhead_us), residual_count=len(c))
               for p, c in zip(prepared, pairs, strict=True)]
    base = prepared[1:]
    # free the baseline's interpreters, and the operators', before the prefixes
    del prepared[1:], empty
    base.clear()
    main = prepared.pop()
    main.ops.clear()
    result = results[0]
    if settings.context:  # the model's rows in context; a baseline's stay isolated (the diff)
        result = in_context(result, main, settings, overhead_us)
    del main  # free the whole model's interpreter and its reference run before the residue
    if settings.residue:
        try:
            result = replace(result, residue=residue_cost(models[0], settings, pairs[0]))
        except EdgebnError as exc:  # the bypassed copy: the profile stands without it
            result = replace(result, residue_skipped=f"the graph with its residual BN bypassed "
                                                     f"cannot be timed: {exc}")
    if baseline is not None:
        isolated = [replace(o, time_us=o.isolated_us) if o.isolated_us is not None else o
                    for o in result.operators]  # both files' isolated times, side by side
        result = replace(result, baseline=results[1],
                         diff=diff_operators(isolated, results[1].operators))
    return result


def grown_operators(model: TFLiteModel | str | Path, baseline: TFLiteModel | str | Path,
                    settings: ProfileSettings = ProfileSettings(), top: int = 5) -> list[OpDiff]:
    """The ``top`` operators of ``model`` whose isolated time grew most over ``baseline``'s
    (isolated: the two files' operators side by side, without the prefixes' extra seconds)."""
    return profile(model, replace(settings, residue=False, context=False), baseline).grown(top)
