"""``edgebn profile``: where a .tflite spends its time, operator by operator.

The Python runtimes expose no per-operator profiler (LiteRT's ``benchmark_model
--enable_op_profiling`` is a C++ binary the wheels do not ship; its Interpreter has no
profiler hook), so each operator is timed *isolated*: written as a one-operator model
with the same code, options, tensors, quantization and constants
(:func:`edgebn.tflite.writer.single_op`), loaded with the same runtime, threads and
delegate, and fed the values it sees in the whole model (one reference run with every
intermediate tensor preserved). All interpreters, the whole model's included, are
timed in rounds, block by block, so drift on a shared machine hits them alike.

Each operator's time is its one-op model's p50 less the p50 of an empty ``invoke()``
(one ADD of one element, timed in the same rounds): the whole model pays that overhead
once, not once per operator. An operator with only constant inputs (a DEQUANTIZE of
float16 weights) is computed once when the model is loaded, and counts 0. Isolation
still leaves out what lies between operators: in the whole model an operator may find
its weights evicted by the others (isolated, they stay in cache), so ``ops_sum_us`` is
shown beside the whole model's p50, not instead of it.

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
from edgebn.runtime.op_timing import ROUNDS, Timed, capture, captured
from edgebn.runtime.opdiff import OpDiff, diff_operators
from edgebn.runtime.timing import BenchSettings, Latency, RatioEstimate, latency_ratio
from edgebn.tflite.reader import TFLiteModel, as_tflite, parse_tflite
from edgebn.tflite.writer import bypass_chains, empty_model, single_op, unpack

METHOD = "isolated ops"
OP_MIN_TIME_S = 0.01  # timed seconds per operator at the least
CONSTANT_NOTE = "only constant inputs: the runtime computes it once, when the model is loaded"
AT_LOAD = frozenset({"DEQUANTIZE", "DENSIFY"})  # kernels that compute constants once, cached
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

    @property
    def gmacs_per_s(self) -> float | None:
        return self.macs / self.time_us / 1e3 if self.macs and self.time_us else None

    def to_json(self) -> dict[str, Any]:
        return {"subgraph": self.subgraph, "index": self.index, "op": self.op,
                "shape": list(self.shape), "time_us": self.time_us, "share": self.share,
                "macs": self.macs, "gmacs_per_s": self.gmacs_per_s,
                "weight_bytes": self.weight_bytes, "residual_bn": self.residual_bn,
                "measured_us": self.measured_us, "runs": self.runs} | (
                    {"note": self.note} if self.note else {})


@dataclass(frozen=True)
class ResidueCost:
    """The model's p50 against the same graph with its residual BN chains bypassed."""

    pairs: int
    model_p50_us: float
    bypassed_p50_us: float
    estimate: RatioEstimate | None = None  # the rounds' ratio with its interval

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
        return doc


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

    @property
    def ops_sum_us(self) -> float:
        return sum(o.time_us for o in self.operators if o.time_us is not None)

    @property
    def explained(self) -> float:
        """The operators' sum over the whole model's p50."""
        return self.ops_sum_us / self.latency_us.p50

    @property
    def macs(self) -> int:
        return sum(o.macs for o in self.operators)

    @property
    def residue_cost(self) -> float | None:
        return self.residue.ratio if self.residue is not None else None

    def top(self, n: int) -> list[OpTime]:
        """The ``n`` slowest operators, slowest first."""
        return sorted(self.operators, key=lambda o: -(o.time_us or 0.0))[:n]

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
        doc = {"model": self.model, "method": self.method, "backend": self.backend,
               "threads": self.threads, "xnnpack": self.xnnpack,
               "latency_us": asdict(self.latency_us), "ops_sum_us": self.ops_sum_us,
               "invoke_overhead_us": self.invoke_overhead_us,
               "explained": self.explained, "macs": self.macs,
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


def residual_chains(model: TFLiteModel) -> list[tuple[int, ...]]:
    """(subgraph, op, op, ...) of each BN the converter left as a chain of per-channel steps
    (a MUL+ADD pair, SUB → MUL → MUL → ADD, ...): every operator of it."""
    from edgebn.tflite.residue import analyse_bn

    return [(r.subgraph, *r.ops) for r in analyse_bn(model).residual if r.affine]


@dataclass
class _Op:
    """One operator waiting for the rounds: its cost, and its interpreter or why it has none."""

    cost: Any  # edgebn.runtime.cost.OpCost
    shape: tuple[int, ...]
    residual: bool
    timed: Timed | None = None
    note: str | None = None

    def row(self, overhead_us: float) -> OpTime:
        c, measured = self.cost, self.timed.latency().p50 if self.timed is not None else None
        time_us = None if measured is None else max(measured - overhead_us, 0.0)
        if self.note == CONSTANT_NOTE:
            time_us = 0.0
        return OpTime(c.subgraph, c.index, c.op, self.shape, time_us,
                      len(self.timed.samples) if self.timed is not None else 0, c.macs,
                      c.weight_bytes, self.residual, note=self.note, measured_us=measured)


@dataclass
class _Prepared:
    """A model's interpreters, loaded and fed, waiting for the timing rounds."""

    model: TFLiteModel
    whole: Timed
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
    prepared = _Prepared(model, whole)
    for cost in costs:
        sg = model.subgraphs[cost.subgraph]
        op = sg.operators[cost.index]
        shape = sg.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
        entry = _Op(cost, shape, (cost.subgraph, cost.index) in residual)
        prepared.ops.append(entry)
        if op.op in AT_LOAD and all(t in static[sg.index] for t in op.outputs if t >= 0):
            entry.note = CONSTANT_NOTE
            continue
        frozen = {t: captured(reference, sg.index, t) for t in op.inputs
                  if t in static[sg.index] and not sg.tensors[t].is_constant}
        try:
            one = single_op(model, unpacked, cost.subgraph, cost.index,
                            {t: v for t, v in frozen.items() if v is not None})
            feeds = [captured(reference, cost.subgraph, t) for t in one.inputs]
            entry.timed = Timed(parse_tflite(one.data, f"{model.path} operator {cost.index}"),
                                settings, feeds, budget, checked=False)  # a preflighted node
        except (EdgebnError, ValueError, RuntimeError) as exc:
            entry.note = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return prepared


def residue_cost(model: TFLiteModel | str | Path, settings: ProfileSettings = ProfileSettings(),
                 pairs: list[tuple[int, ...]] | None = None) -> ResidueCost | None:
    """p50 of ``model`` over p50 of it with its residual BN chains bypassed; None without residue."""

    model = as_tflite(model)
    pairs = residual_chains(model) if pairs is None else pairs
    if not pairs:
        return None
    bypassed = parse_tflite(bypass_chains(model, pairs), f"{model.path} (residual BN bypassed)")
    est = latency_ratio(model, bypassed, settings, width=0.02)
    return ResidueCost(len(pairs), est.current_p50_us, est.baseline_p50_us, est)


def profile(model: TFLiteModel | str | Path, settings: ProfileSettings = ProfileSettings(),
            baseline: TFLiteModel | str | Path | None = None) -> ProfileResult:
    """Time every operator of ``model`` isolated, beside the whole model (and ``baseline``)."""
    settings.validate()
    models = [as_tflite(model)] + ([as_tflite(baseline)] if baseline is not None else [])
    for m in models:
        n = sum(len(sg.operators) for sg in m.subgraphs)
        if n > MAX_OPERATORS:
            raise EdgebnError(f"{m.path}: {n} operators; profile times at most "
                              f"{MAX_OPERATORS} (one interpreter each)")
    pairs = [residual_chains(m) for m in models]
    prepared = [_prepare(m, settings, p) for m, p in zip(models, pairs, strict=True)]
    empty = Timed(parse_tflite(empty_model(), "<empty invoke>"), settings, [None, None],
                  OP_MIN_TIME_S, checked=False)
    for _ in range(ROUNDS):  # every interpreter takes its turn, round after round
        for unit in (empty, *(u for p in prepared for u in p.units())):
            unit.run()
    overhead_us = empty.latency().p50
    results = [replace(p.result(overhead_us), residual_count=len(c))
               for p, c in zip(prepared, pairs, strict=True)]
    del prepared  # free the interpreters before the residue is timed
    result = results[0]
    if settings.residue:
        try:
            result = replace(result, residue=residue_cost(models[0], settings, pairs[0]))
        except EdgebnError as exc:  # the bypassed copy: the profile stands without it
            result = replace(result, residue_skipped=f"the graph with its residual BN bypassed "
                                                     f"cannot be timed: {exc}")
    if baseline is not None:
        result = replace(result, baseline=results[1],
                         diff=diff_operators(result.operators, results[1].operators))
    return result


def grown_operators(model: TFLiteModel | str | Path, baseline: TFLiteModel | str | Path,
                    settings: ProfileSettings = ProfileSettings(), top: int = 5) -> list[OpDiff]:
    """The ``top`` operators of ``model`` whose isolated time grew most over ``baseline``'s."""
    return profile(model, replace(settings, residue=False), baseline).grown(top)
