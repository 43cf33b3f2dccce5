"""Op-by-op diff of two profiles: which operators grew, shrank, appeared or went away.

Operators are matched by (subgraph, op type, output shape) in execution order, with
:class:`difflib.SequenceMatcher`: an inserted layer shifts positions without breaking the
match of everything around it. Where a run of operators differs, operators of the same
type at the same place within the run are still paired (a conv that changed its width);
the rest are ``added`` (only in the current model) or ``removed`` (only in the baseline).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Protocol

from edgebn.documents import JsonDict


class ProfiledOp(Protocol):
    """An operator's row of a profile (:class:`edgebn.runtime.profile.result.OpTime`)."""

    @property
    def subgraph(self) -> int: ...

    @property
    def index(self) -> int: ...

    @property
    def op(self) -> str: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def time_us(self) -> float | None: ...


@dataclass(frozen=True)
class OpDiff:
    op: str
    subgraph: int
    index: int | None  # in the current model; None when removed
    baseline_index: int | None  # in the baseline; None when added
    shape: tuple[int, ...] | None
    baseline_shape: tuple[int, ...] | None
    time_us: float | None
    baseline_time_us: float | None

    @property
    def status(self) -> str:
        return ("added" if self.baseline_index is None else
                "removed" if self.index is None else "matched")

    @property
    def delta_us(self) -> float:
        return (self.time_us or 0.0) - (self.baseline_time_us or 0.0)

    def to_json(self) -> JsonDict:
        return {"op": self.op, "subgraph": self.subgraph, "status": self.status,
                "index": self.index, "baseline_index": self.baseline_index,
                "shape": None if self.shape is None else list(self.shape),
                "baseline_shape": None if self.baseline_shape is None
                else list(self.baseline_shape),
                "time_us": self.time_us, "baseline_time_us": self.baseline_time_us,
                "delta_us": self.delta_us}


def _pair(cur: ProfiledOp | None, base: ProfiledOp | None) -> OpDiff:
    some = cur if cur is not None else base
    return OpDiff(some.op, some.subgraph, cur.index if cur is not None else None,
                  base.index if base is not None else None,
                  cur.shape if cur is not None else None, base.shape if base is not None else None,
                  cur.time_us if cur is not None else None,
                  base.time_us if base is not None else None)


def diff_operators(current: Sequence[ProfiledOp], baseline: Sequence[ProfiledOp]
                   ) -> tuple[OpDiff, ...]:
    """One row per operator of either model (rows with ``subgraph, index, op, shape, time_us``)."""
    def key(o: ProfiledOp) -> tuple[int, str, tuple[int, ...]]:
        return (o.subgraph, o.op, tuple(o.shape))

    matcher = SequenceMatcher(None, [key(o) for o in baseline], [key(o) for o in current],
                              autojunk=False)
    rows: list[OpDiff] = []
    for _tag, i1, i2, j1, j2 in matcher.get_opcodes():
        olds, news = baseline[i1:i2], current[j1:j2]
        for k in range(max(len(olds), len(news))):
            base = olds[k] if k < len(olds) else None
            cur = news[k] if k < len(news) else None
            if base is not None and cur is not None and (base.op, base.subgraph) != (
                    cur.op, cur.subgraph):
                rows += [_pair(None, base), _pair(cur, None)]
            else:
                rows.append(_pair(cur, base))
    return tuple(rows)
