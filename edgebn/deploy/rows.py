"""A rollout's rows: one per host, the same from either engine (edgebn.deploy.release makes them).

Standard library only: the edgebn.fleet Ansible plugins read and write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

from edgebn.documents import JsonDict


class Status(str, Enum):
    deployed = "deployed"  # live and healthy
    rolled_back = "rolled_back"  # went live, failed its health check, the previous one is back
    refused = "refused"  # the device's verifier refused the bundle
    failed = "failed"  # did not go live (self-test, no space, ...) or failed and was kept
    offline = "offline"  # unreachable before any change: a re-run brings it up to date
    unchanged = "unchanged"  # already on the release: nothing sent
    not_attempted = "not_attempted"  # the failure budget was spent first, or --check


FAILING = frozenset({Status.failed, Status.refused, Status.rolled_back})  # spend the budget
OK = frozenset({Status.deployed, Status.unchanged})


@dataclass(frozen=True)
class DeviceFacts:
    """What the host said of itself (None where it did not say)."""

    os: str | None = None
    python: str | None = None
    runtime: str | None = None
    temp_c: float | None = None
    throttled: bool | None = None
    thread_warning: str | None = None

    def to_json(self) -> JsonDict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class HostRow:
    """One host of a rollout, the same from either engine."""

    host: str  # user@host[:port], or the inventory's name
    status: Status
    release: str | None = None  # the release id this rollout ships
    previous: str | None = None  # what current pointed to before
    batch: int | None = None  # 1-based, as Ansible's serial cuts the hosts
    reason: str | None = None  # why, when not deployed or unchanged
    seconds: float = 0.0
    bytes_sent: int = 0
    path: str | None = None  # DEST/current on the device
    selftest: JsonDict | None = None  # the staged release's predict.py --selftest document
    selftest_exit: int | None = None
    health: str | None = None  # "ok", or what the health check said
    device: DeviceFacts = field(default_factory=DeviceFacts)
    bench: JsonDict | None = None
    profile: JsonDict | None = None
    trusted: str | None = None  # the allowed-signers line installed (--trust)
    would_change: bool | None = None  # --check: this host is not on the release

    @property
    def passed(self) -> bool:
        return self.status in OK and self.reason is None

    def to_json(self) -> JsonDict:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc["status"] = self.status.value
        doc["seconds"] = round(self.seconds, 2)
        doc["device"] = self.device.to_json()
        doc["passed"] = self.passed
        return doc

    @classmethod
    def from_json(cls, doc: JsonDict) -> HostRow:
        """The row ``to_json`` wrote (the Ansible callback's file): unknown keys ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in names}
        values["status"] = Status(values["status"])
        values["device"] = DeviceFacts(**{k: v for k, v in (doc.get("device") or {}).items()
                                          if k in {f.name for f in fields(DeviceFacts)}})
        return cls(**values)
