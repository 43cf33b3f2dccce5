"""A rollout's policy, the same for every engine: batches and a failure budget.

    --batches 1,10%,100%    sizes or percentages, as Ansible's play keyword ``serial`` reads them
    --max-failures 2        more than 2 failed hosts in all and no later batch starts

Batches are cut exactly as ansible-core's ``PlaybookExecutor._get_serialized_batches`` cuts
a play's hosts (``pct_to_int``: a percentage of all the hosts, rounded down, at least one;
the last item repeats until every host has a batch). The budget is absolute and counts the
whole rollout, unlike Ansible's ``max_fail_percentage``, which looks at one batch: a host
that failed, was refused, or was rolled back spends one; an offline host spends none. A
batch that has started runs to its end; the budget is looked at before the next one, and
every host of the batches not started is ``not_attempted``.

A rollout's result, :class:`RolloutResult`, is the same from either engine (the native
one, edgebn.deploy.rollout; the Ansible one, edgebn.deploy.ansible_engine).

Standard library only: the edgebn.fleet Ansible action plugin imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from edgebn.deploy.rows import FAILING, HostRow, Status
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError


def parse_batches(text: str) -> tuple[str, ...]:
    """``"1,10%,100%"`` -> ``("1", "10%", "100%")``: each a count >= 1 or 1..100 percent."""
    items = tuple(part.strip() for part in text.split(","))
    for item in items:
        number = item.removesuffix("%")
        ok = number.isascii() and number.isdigit() and int(number) >= 1
        if not ok or (item.endswith("%") and int(number) > 100):
            raise EdgebnError(f"batches {text!r}: each batch is a host count >= 1 or a "
                              f"percentage 1%..100%, separated by commas. Received: {item!r}")
    return items


def _size(item: str, hosts: int) -> int:
    """ansible-core's pct_to_int(item, hosts, min_value=1)."""
    if item.endswith("%"):
        return int((int(item[:-1]) / 100.0) * hosts) or 1
    return int(item)


def batch_sizes(items: tuple[str, ...], hosts: int) -> list[int]:
    """The size of each batch for ``hosts`` hosts; no items: one batch of all."""
    sizes, left, at = [], hosts, 0
    while left > 0:
        size = _size(items[at], hosts) if items else left
        sizes.append(min(size, left))
        left -= size
        at = min(at + 1, len(items) - 1)
    return sizes


def batch_of(index: int, items: tuple[str, ...], hosts: int) -> int:
    """The 1-based batch of the host at ``index`` (0-based, in the rollout's order)."""
    end = 0
    for number, size in enumerate(batch_sizes(items, hosts), 1):
        end += size
        if index < end:
            return number
    raise EdgebnError(f"host index {index} is beyond the {hosts} hosts of the rollout")


def failures(statuses: Iterable[Status]) -> int:
    return sum(Status(s) in FAILING for s in statuses)


def budget_spent(statuses: Iterable[Status], max_failures: int | None) -> bool:
    """More than ``max_failures`` hosts failed (None: no budget, never spent)."""
    return max_failures is not None and failures(statuses) > max_failures


def spent_reason(max_failures: int | None, failed: int, batch: int) -> str:
    return (f"not attempted: the failure budget ({max_failures}) was spent before batch "
            f"{batch}: {failed} host(s) failed")


DEFAULT_PARALLEL = 8


class Engine(str, Enum):
    native = "native"  # edgebn's own threads over OpenSSH
    ansible = "ansible"  # ansible-playbook with the edgebn.fleet collection (edgebn[fleet])


@dataclass(frozen=True)
class RolloutPolicy:
    batches: tuple[str, ...] = ()  # Ansible serial items ("1", "10%"); () = one batch of all
    max_failures: int | None = None  # more failed hosts than this stop the rollout; None: no budget
    check: bool = False  # report what would change, change nothing
    parallel: int = DEFAULT_PARALLEL  # hosts at once (threads, or Ansible's forks)

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise EdgebnError(f"parallel must be >= 1. Received: {self.parallel}")
        if self.max_failures is not None and self.max_failures < 0:
            raise EdgebnError(f"max failures must be >= 0. Received: {self.max_failures}")
        parse_batches(",".join(self.batches)) if self.batches else None

    def forks(self, hosts: int) -> int:
        """Hosts at once: ``parallel``, never more than the largest batch."""
        return max(1, min(self.parallel, max(batch_sizes(self.batches, hosts) or [1])))


@dataclass(frozen=True)
class RolloutResult:
    engine: Engine
    release: str
    rows: tuple[HostRow, ...]
    seconds: float
    batch_sizes: tuple[int, ...]
    max_failures: int | None
    check: bool = False

    @property
    def failed(self) -> int:
        return failures(r.status for r in self.rows)

    @property
    def budget_spent(self) -> bool:
        return budget_spent((r.status for r in self.rows), self.max_failures)

    @property
    def passed(self) -> bool:
        """No host failed, was refused or rolled back (offline hosts catch up on a re-run)."""
        return self.failed == 0 and not any(
            r.status in (Status.deployed, Status.unchanged) and r.reason for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {s.value: sum(r.status is s for r in self.rows) for s in Status}

    def to_json(self) -> JsonDict:
        return {"engine": self.engine.value, "release": self.release, "passed": self.passed,
                "check": self.check, "seconds": round(self.seconds, 2), "failed": self.failed,
                "batches": list(self.batch_sizes), "max_failures": self.max_failures,
                "budget_spent": self.budget_spent, "counts": self.counts(),
                "hosts": [r.to_json() for r in self.rows]}
