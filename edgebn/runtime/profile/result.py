"""What a profile is: its settings, one row per operator, the residue's cost, the whole result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.profile.context import Segment
from edgebn.runtime.profile.opdiff import OpDiff
from edgebn.runtime.ratio import RatioEstimate
from edgebn.runtime.timing import BenchSettings, Latency

METHOD = "isolated ops"
ISOLATED, WITH_PAD, FUSED, AT_LOAD_METHOD, NOT_TIMED = (
    "isolated", "with the PAD before it", "fused", "at load", "not timed")
# an isolated time scaled to its segment's (edgebn.runtime.profile.context)
IN_CONTEXT = "in context"
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
    # how the row was timed: isolated, with the PAD before it, fused, at load
    method: str = ISOLATED
    isolated_us: float | None = None  # the isolated time, before its segment's scaling
    segment: int | None = None  # its segment (ProfileResult.segments), when timed in context

    @property
    def gmacs_per_s(self) -> float | None:
        return self.macs / self.time_us / 1e3 if self.macs and self.time_us else None

    def to_json(self) -> JsonDict:
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

    def to_json(self) -> JsonDict:
        doc = {"pairs": self.pairs, "model_p50_us": self.model_p50_us,
               "bypassed_p50_us": self.bypassed_p50_us, "ratio": self.ratio, "note": RESIDUE_NOTE}
        if self.estimate is not None:
            doc |= self.estimate.interval_json()
        if self.partitions is not None:
            doc["delegate_partitions"] = {"model": self.partitions[0],
                                          "bypassed": self.partitions[1]}
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
    # the model's prefixes timed in it (edgebn.runtime.profile.context)
    segments: tuple[Segment, ...] = ()
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

    def by_op(self) -> dict[str, JsonDict]:
        """Per operator type: how many, their summed time and share, slowest type first."""
        out: dict[str, JsonDict] = {}
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

    def to_json(self) -> JsonDict:
        p50 = self.latency_us.p50
        doc = {"model": self.model, "method": self.method, "methods": self.methods(),
               "backend": self.backend,
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
