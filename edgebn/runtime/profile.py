"""``edgebn profile``: where a .tflite spends its time, operator by operator.

The Python runtimes expose no per-operator profiler (LiteRT's ``benchmark_model
--enable_op_profiling`` is a C++ binary the wheels do not ship; its Interpreter has no
profiler hook), so each operator is timed *isolated*: written as a one-operator model
with the same code, options, tensors, quantization and constants
(:func:`edgebn.tflite.writer.single_op`), loaded with the same runtime, threads and
delegate, and fed the values it sees in the whole model (one reference run with every
intermediate tensor preserved). All interpreters, the whole model's included, are
timed in rounds, block by block, so drift on a shared machine hits them alike.

Where XNNPACK fuses two operators into one node (:mod:`edgebn.runtime.fusion`), they are
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

In context (:mod:`edgebn.runtime.context`, unless ``context=False``): the model's prefixes
are timed too, and each row is its isolated time scaled to its segment's cost inside the
model (``method`` ``"in context"``; ``isolated_us`` keeps the isolated time). ``ops_sum_us``
then sums to about the whole model's p50 by construction; ``isolated_sum_us`` is what
isolation alone explains. A ``baseline`` is profiled isolated, and the diff compares the
two files' isolated times.

Residue cost: the whole model's p50 over the p50 of the same graph with its residual
BN chains bypassed (:func:`edgebn.tflite.writer.bypass_chains`), both timed interleaved in
rounds by :func:`edgebn.runtime.timing.latency_ratio`, with the ratio's interval ("not
significant" when it holds 1). The bypassed graph computes different outputs, so the
ratio is an estimate of what the residue costs, not a model one could ship. When the
bypassed graph cannot be loaded (XNNPACK refuses an int8 MAX_POOL_2D whose input scale
is no longer its output's), the profile stands without it: ``residue_cost`` is null and
``residue_skipped`` says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError
from edgebn.runtime.context import Segment, context_unsupported, prefix_fractions, segment_cuts, segments_of
from edgebn.runtime.fusion import fused_pads
from edgebn.runtime.op_timing import AT_LOAD, ROUNDS, Timed, capture, captured
from edgebn.runtime.opdiff import OpDiff, diff_operators
from edgebn.runtime.timing import BenchSettings, Latency, RatioEstimate, latency_ratio
from edgebn.tflite.reader import TFLiteModel, as_tflite, parse_tflite
from edgebn.tflite.residue import BNAnalysis
from edgebn.tflite.writer import bypass_chains, empty_model, op_group, unpack

METHOD = "isolated ops"
OP_MIN_TIME_S = 0.01  # timed seconds per operator at the least
ISOLATED, WITH_PAD, FUSED, AT_LOAD_METHOD, NOT_TIMED = (
    "isolated", "with the PAD before it", "fused", "at load", "not timed")
IN_CONTEXT = "in context"  # an isolated time scaled to its segment's (edgebn.runtime.context)
CONSTANT_NOTE = "only constant inputs: the runtime computes it once, when the model is loaded"
MAX_OPERATORS = 5000  # one interpreter each is alive at once: refuse what would exhaust memory
RESIDUE_NOTE = "an estimate: the bypassed graph computes different outputs"


@dataclass(frozen=True)
class ProfileSettings(BenchSettings):
    """What ``edgebn bench`` takes (one type: the same fields and checks), plus ``residue``.

    ``threads``, ``backend``, ``xnnpack`` and ``min_time_s`` (timed seconds for the whole
    model; the operators share as much) set the profile; the residue cost is timed with
    these and ``warmup``. A profile times one sample at a time, by the clock, in this
    process: ``batch``, ``runs`` and ``isolate`` other than their defaults are refused.
    """

    cost: bool = False  # a profile reports no ceiling: no probe is run
    residue: bool = True  # time the graph with its residual BN chains bypassed (residue cost)
    context: bool = True  # time the model's prefixes: each segment's cost inside the model

    def validate(self) -> None:
        super().validate()
        for name, allowed in (("batch", 1), ("runs", None), ("isolate", False)):
            if getattr(self, name) != allowed:
                raise EdgebnError(f"a profile times with {name}={allowed}. "
                                  f"Received: {getattr(self, name)}")

    def bench_settings(self) -> BenchSettings:
        """The same settings as a plain BenchSettings (without ``residue``)."""
        return BenchSettings(**{f.name: getattr(self, f.name) for f in fields(BenchSettings)})


@dataclass(frozen=True)
class OpTime:
    """One operator: its isolated p50 (None when it cannot run alone, with the reason)."""

    subgraph: int
    index: int
    op: str
    shape: tuple[int, ...]  # its first output's
    time_us: float | None
    runs: int
    macs: int
    weight_bytes: int
    residual_bn: bool  # one operator of a BN chain the converter could not fold
    share: float | None = None  # of the operators' sum
    note: str | None = None
    measured_us: float | None = None  # p50 of the one-op model's invoke(), before the overhead
    method: str = ISOLATED  # how the row was timed: isolated, with the PAD before it, fused, at load
    isolated_us: float | None = None  # the isolated time, before its segment's scaling
    segment: int | None = None  # its segment (ProfileResult.segments), when timed in context

    @property
    def gmacs_per_s(self) -> float | None:
        return self.macs / self.time_us / 1e3 if self.macs and self.time_us else None

    def to_json(self) -> dict[str, Any]:
        return {"subgraph": self.subgraph, "index": self.index, "op": self.op,
                "shape": list(self.shape), "time_us": self.time_us, "share": self.share,
                "macs": self.macs, "gmacs_per_s": self.gmacs_per_s,
                "weight_bytes": self.weight_bytes, "residual_bn": self.residual_bn,
                "measured_us": self.measured_us, "runs": self.runs, "method": self.method,
                "isolated_us": self.isolated_us, "segment": self.segment} | (
                    {"note": self.note} if self.note else {})


@dataclass(frozen=True)
class ResidueCost:
    """The model's p50 against the same graph with its residual BN chains bypassed."""

    pairs: int
    model_p50_us: float
    bypassed_p50_us: float
    estimate: RatioEstimate | None = None  # the rounds' ratio with its interval
    partitions: tuple[int | None, int | None] | None = None  # XNNPACK partitions: model, bypassed

    @property
    def ratio(self) -> float:
        if self.estimate is not None:
            return self.estimate.ratio
        return self.model_p50_us / self.bypassed_p50_us

    @property
    def significant(self) -> bool | None:
        return None if self.estimate is None else self.estimate.significant

    def to_json(self) -> dict[str, Any]:
        doc = {"pairs": self.pairs, "model_p50_us": self.model_p50_us,
               "bypassed_p50_us": self.bypassed_p50_us, "ratio": self.ratio, "note": RESIDUE_NOTE}
        if self.estimate is not None:
            doc |= self.estimate.interval_json()
        if self.partitions is not None:
            doc["delegate_partitions"] = {"model": self.partitions[0], "bypassed": self.partitions[1]}
        return doc

    @property
    def lost_delegation(self) -> bool:
        """The bypassed copy has more XNNPACK partitions: an operator fell out of the delegate."""
        p = self.partitions
        return p is not None and None not in p and p[1] > p[0]


@dataclass(frozen=True)
class ProfileResult:
    model: str
    backend: str
    threads: int
    xnnpack: bool
    latency_us: Latency  # the whole model, timed in the same rounds as its operators
    operators: tuple[OpTime, ...]
    residue: ResidueCost | None = None
    baseline: ProfileResult | None = None
    diff: tuple[OpDiff, ...] = ()
    residue_skipped: str | None = None  # why the residue cost was not measured, when it was not
    invoke_overhead_us: float = 0.0  # an empty invoke(), taken off each operator's time
    method: str = METHOD
    residual_count: int = 0  # residual BN chains; their operators are marked residual_bn
    segments: tuple[Segment, ...] = ()  # the model's prefixes timed in it (edgebn.runtime.context)
    context_skipped: str | None = None  # why there are no segments, when there are none

    @property
    def ops_sum_us(self) -> float:
        return sum(o.time_us for o in self.operators if o.time_us is not None)

    @property
    def explained(self) -> float:
        """The operators' sum over the whole model's p50."""
        return self.ops_sum_us / self.latency_us.p50

    @property
    def isolated_sum_us(self) -> float:
        """The operators' isolated times, before any scaling in context."""
        return sum(o.isolated_us if o.isolated_us is not None else (o.time_us or 0.0)
                   for o in self.operators)

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.operators)

    @property
    def residue_cost(self) -> float | None:
        return self.residue.ratio if self.residue is not None else None

    def top(self, n: int) -> list[OpTime]:
        """The ``n`` slowest operators, slowest first."""
        return sorted(self.operators, key=lambda o: -(o.time_us or 0.0))[:n]

    def methods(self) -> dict[str, int]:
        """How many rows each timing method gave."""
        out: dict[str, int] = {}
        for o in self.operators:
            out[o.method] = out.get(o.method, 0) + 1
        return out

    def residual_pairs(self) -> int:
        """How many residual BN chains the model has (each of two or more operators)."""
        return self.residual_count

    def by_op(self) -> dict[str, dict[str, Any]]:
        """Per operator type: how many, their summed time and share, slowest type first."""
        out: dict[str, dict[str, Any]] = {}
        for o in self.operators:
            row = out.setdefault(o.op, {"count": 0, "time_us": 0.0, "macs": 0})
            row["count"] += 1
            row["time_us"] += o.time_us or 0.0
            row["macs"] += o.macs
        total = self.ops_sum_us or 1.0
        return {k: v | {"share": v["time_us"] / total}
                for k, v in sorted(out.items(), key=lambda kv: -kv[1]["time_us"])}

    def grown(self, n: int = 5) -> list[OpDiff]:
        """Against the baseline: the ``n`` operators whose time grew most."""
        return sorted((d for d in self.diff if d.delta_us > 0), key=lambda d: -d.delta_us)[:n]

    def to_json(self) -> dict[str, Any]:
        p50 = self.latency_us.p50
        doc = {"model": self.model, "method": self.method, "methods": self.methods(), "backend": self.backend,
               "threads": self.threads, "xnnpack": self.xnnpack,
               "latency_us": asdict(self.latency_us), "ops_sum_us": self.ops_sum_us,
               "invoke_overhead_us": self.invoke_overhead_us,
               "explained": self.explained, "isolated_sum_us": self.isolated_sum_us,
               "isolated_explained": self.isolated_sum_us / p50 if p50 else None,
               "segments": [g.to_json() for g in self.segments],
               "context_skipped": self.context_skipped, "macs": self.macs,
               "gmacs_per_s": self.macs / p50 / 1e3 if p50 else None,
               "operators": [o.to_json() for o in self.operators], "by_op": self.by_op(),
               "residual_pairs": self.residual_pairs(), "residual_chains": self.residual_count,
               "residue_cost": self.residue_cost,
               "residue": self.residue.to_json() if self.residue is not None else None,
               "residue_skipped": self.residue_skipped}
        if self.baseline is not None:
            base = self.baseline
            doc["baseline"] = {"model": base.model, "latency_us": asdict(base.latency_us),
                               "ops_sum_us": base.ops_sum_us,
                               "operators": [o.to_json() for o in base.operators]}
            doc["diff"] = [d.to_json() for d in self.diff]
        return doc


# ---------------------------------------------------------------- the profile


def chains_of(analysis: BNAnalysis) -> list[tuple[int, ...]]:
    """(subgraph, *ops) of each residual BN chain of an analysis."""
    return [(r.subgraph, *r.ops) for r in analysis.residual if r.affine]


def residual_chains(model: TFLiteModel) -> list[tuple[int, ...]]:
    """(subgraph, op, op, ...) of each BN the converter left as a chain of per-channel steps
    (a MUL+ADD pair, SUB → MUL → MUL → ADD, ...): every operator of it."""
    from edgebn.tflite import residue  # looked up when called: a build's count of inspections

    return chains_of(residue.analyse_bn(model))


@dataclass
class _Op:
    """One operator waiting for the rounds: its cost, and its interpreter or why it has none."""

    cost: Any  # edgebn.runtime.cost.OpCost
    shape: tuple[int, ...]
    residual: bool
    timed: Timed | None = None
    note: str | None = None
    method: str = ISOLATED

    def row(self, overhead_us: float) -> OpTime:
        c, measured = self.cost, self.timed.latency().p50 if self.timed is not None else None
        time_us = None if measured is None else max(measured - overhead_us, 0.0)
        method = self.method if self.timed is not None or self.method in (FUSED, AT_LOAD_METHOD) \
            else NOT_TIMED
        if self.method in (FUSED, AT_LOAD_METHOD):
            time_us = 0.0
        return OpTime(c.subgraph, c.index, c.op, self.shape, time_us,
                      len(self.timed.samples) if self.timed is not None else 0, c.macs,
                      c.weight_bytes, self.residual, note=self.note, measured_us=measured,
                      method=method)


@dataclass
class _Prepared:
    """A model's interpreters, loaded and fed, waiting for the timing rounds."""

    model: TFLiteModel
    whole: Timed
    reference: Any  # the run that kept every tensor: the operators' and prefixes' inputs
    unpacked: Any
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


def _static(sg: Any) -> set[int]:
    """Tensors fixed before the first inference: constants, and what operators of constants
    compute from them (once, at load: a DEQUANTIZE of float16 weights)."""
    static = {t.index for t in sg.tensors if t.is_constant}
    for op in sg.operators:  # execution order: producers first
        if op.op in AT_LOAD and op.inputs and all(t in static for t in op.inputs if t >= 0):
            static |= {t for t in op.outputs if t >= 0}
    return static


def _prepare(model: TFLiteModel, settings: ProfileSettings,
             pairs: list[tuple[int, ...]]) -> _Prepared:
    from edgebn.tflite.macs import model_cost

    n_inputs = len(model.subgraphs[0].inputs) if model.subgraphs else 0
    whole = Timed(model, settings, [None] * n_inputs, settings.min_time_s, whole=True)
    reference = capture(model, settings, whole.inputs())
    residual = {(s, i) for s, *ops in pairs for i in ops}
    costs = model_cost(model).ops
    budget = max(settings.min_time_s / max(len(costs), 1), OP_MIN_TIME_S)
    unpacked = unpack(model)
    static = {sg.index: _static(sg) for sg in model.subgraphs}
    pads = {sg.index: fused_pads(model, sg.index) if settings.xnnpack else {}
            for sg in model.subgraphs}
    padded = {(s, conv): pad for s, fused in pads.items() for pad, conv in fused.items()}
    prepared = _Prepared(model, whole, reference if settings.context else None, unpacked,
                         pads.get(0, {}))
    for cost in costs:
        sg = model.subgraphs[cost.subgraph]
        op = sg.operators[cost.index]
        shape = sg.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
        entry = _Op(cost, shape, (cost.subgraph, cost.index) in residual)
        prepared.ops.append(entry)
        if op.op in AT_LOAD and all(t in static[sg.index] for t in op.outputs if t >= 0):
            entry.note, entry.method = CONSTANT_NOTE, AT_LOAD_METHOD
            continue
        if cost.index in pads[cost.subgraph]:
            conv = pads[cost.subgraph][cost.index]
            entry.method = FUSED
            entry.note = f"XNNPACK makes it the padding of the {sg.operators[conv].op} #{conv}: timed with it"
            continue
        group = (cost.index,)
        if (cost.subgraph, cost.index) in padded:
            group = (padded[(cost.subgraph, cost.index)], cost.index)
            entry.method = WITH_PAD
        group_inputs = {t for i in group for t in sg.operators[i].inputs}
        frozen = {t: captured(reference, sg.index, t) for t in group_inputs
                  if t in static[sg.index] and not sg.tensors[t].is_constant}
        try:
            one = op_group(model, unpacked, cost.subgraph, group,
                           {t: v for t, v in frozen.items() if v is not None})
            feeds = [captured(reference, cost.subgraph, t) for t in one.inputs]
            entry.timed = Timed(parse_tflite(one.data, f"{model.path} operator {cost.index}"),
                                settings, feeds, budget, checked=False)  # a preflighted node
        except (EdgebnError, ValueError, RuntimeError) as exc:
            entry.note = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return prepared


def in_context(result: ProfileResult, prepared: _Prepared, settings: ProfileSettings,
               overhead_us: float) -> ProfileResult:
    """``result`` with each row scaled to its segment's time inside the model (the module
    :mod:`edgebn.runtime.context`), or unchanged with ``context_skipped`` saying why."""
    model = prepared.model
    why = context_unsupported(model, prepared.unpacked)
    if why is None and prepared.reference is None:
        why = "the reference run that feeds the prefixes failed"
    if why is not None:
        return replace(result, context_skipped=why)
    n_ops = len(model.subgraphs[0].operators)
    cuts = segment_cuts(n_ops, prepared.pads)
    budget = max(settings.min_time_s / len(cuts), OP_MIN_TIME_S)
    try:
        fractions = prefix_fractions(model, prepared.unpacked, settings, prepared.whole,
                                     prepared.reference, cuts, budget)
    except (EdgebnError, ValueError, RuntimeError) as exc:
        return replace(result, context_skipped="a prefix of the model cannot be timed: " + (
            str(exc).strip().splitlines() or [type(exc).__name__])[0])
    segments = segments_of(cuts, fractions, result.latency_us.p50, overhead_us)
    of = {i: k for k, g in enumerate(segments) for i in range(g.first, g.last + 1)}
    isolated = [0.0] * len(segments)
    for o in result.operators:
        isolated[of[o.index]] += o.time_us or 0.0
    segments = [replace(g, isolated_us=iso) for g, iso in zip(segments, isolated, strict=True)]
    rows = []
    for o in result.operators:
        g = segments[of[o.index]]
        if o.time_us is None or o.method in (FUSED, AT_LOAD_METHOD) or g.factor is None:
            rows.append(replace(o, isolated_us=o.time_us, segment=of[o.index]))
            continue
        method = IN_CONTEXT if o.method == ISOLATED else f"{IN_CONTEXT}, {o.method}"
        rows.append(replace(o, time_us=o.time_us * g.factor, isolated_us=o.time_us,
                            segment=of[o.index], method=method))
    total = sum(r.time_us for r in rows if r.time_us is not None) or 1.0
    rows = [replace(r, share=r.time_us / total) if r.time_us is not None else r for r in rows]
    return replace(result, operators=tuple(rows), segments=tuple(segments))


def residue_cost(model: TFLiteModel | str | Path, settings: ProfileSettings = ProfileSettings(),
                 pairs: list[tuple[int, ...]] | None = None) -> ResidueCost | None:
    """p50 of ``model`` over p50 of it with its residual BN chains bypassed; None without residue."""

    model = as_tflite(model)
    pairs = residual_chains(model) if pairs is None else pairs
    if not pairs:
        return None
    bypassed = parse_tflite(bypass_chains(model, pairs), f"{model.path} (residual BN bypassed)")
    est = latency_ratio(model, bypassed, settings, width=0.02)
    partitions = None
    if settings.xnnpack:  # a ratio below 1 would mean the bypassed copy ran slower: is it delegated?
        from edgebn.runtime.backends import delegate_partitions, load_interpreter

        partitions = tuple(delegate_partitions(load_interpreter(m, settings.backend, settings.threads,
                                                                checked=False)[0])
                           for m in (model, bypassed))
    return ResidueCost(len(pairs), est.current_p50_us, est.baseline_p50_us, est, partitions)


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
    del prepared[1:], empty  # free the baseline's interpreters, and the operators', before the prefixes
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
