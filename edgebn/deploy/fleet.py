"""Many devices at once: the hosts file, and --rollback on every host of it.

    edgebn deploy --rollback --hosts pis.txt --parallel 8 --timeout 300

A hosts file holds one ``user@host[:port]`` a line; ``#`` starts a comment. Hosts run in a
thread pool, each ssh call bounded by the per-host timeout; one failing host never stops
the others. Exit 1 when any host failed. A deploy to many hosts is a rollout, in batches
with a failure budget: edgebn.deploy.rollout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgebn.deploy.policy import DEFAULT_PARALLEL
from edgebn.deploy.ssh import DeployOptions, SshTarget, rollback
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError


class HostResult(Protocol):
    """What an action returns for one host (a RollbackResult, edgebn.deploy.service's
    ServedDeploy or ServedRollback); its ``selftest`` and ``bench``, where it has them, are read
    into the row."""

    @property
    def passed(self) -> bool: ...

    def to_json(self) -> JsonDict: ...


@dataclass(frozen=True)
class HostOutcome:
    host: str  # user@host[:port], as in the hosts file
    seconds: float
    result: HostResult | None = None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and bool(self.result.passed)

    def to_json(self) -> JsonDict:
        r = self.result
        st = getattr(r, "selftest", None)
        bench = getattr(r, "bench", None)
        return {"host": self.host, "passed": self.passed,
                "copied": r is not None and hasattr(r, "bytes_sent"),
                "selftest": None if st is None else bool(r.passed),
                "latency_us": None if not bench else bench["latency_us"],
                "device": _device(st if isinstance(st, dict) else None, bench),
                "seconds": round(self.seconds, 2), "error": self.error,
                "result": None if r is None else r.to_json()}


def _device(selftest: JsonDict | None, bench: JsonDict | None) -> JsonDict:
    """What the host said of itself: OS, Python, runtime, and with a bench its temperature
    and throttle flag after the run (None where it did not say)."""
    st, b = selftest or {}, bench or {}
    dev = b.get("device") or {}
    after = (b.get("thermal") or {}).get("after") or {}
    return {"os": st.get("os") or dev.get("os"), "python": st.get("python") or dev.get("python"),
            "runtime": st.get("runtime") or b.get("runtime"), "temp_c": after.get("temp_c"),
            "throttled": after.get("throttled"), "thread_warning": b.get("warning")}


@dataclass(frozen=True)
class FleetResult:
    hosts: tuple[HostOutcome, ...]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(h.passed for h in self.hosts)

    def to_json(self) -> JsonDict:
        return {"passed": self.passed, "seconds": round(self.seconds, 2),
                "failed": sum(not h.passed for h in self.hosts),
                "hosts": [h.to_json() for h in self.hosts]}


def parse_host(spec: str, base: SshTarget) -> SshTarget:
    """``user@host[:port]`` -> a target with ``base``'s identity and options."""
    host, port = spec, base.port
    if ":" in spec:
        host, _, p = spec.rpartition(":")
        # ASCII digits only: str.isdigit() and int() also take '٢٢' (Arabic-Indic) and '²'
        if not (p.isascii() and p.isdigit() and len(p) <= 5 and 0 < int(p) < 65536):
            raise EdgebnError(f"host {spec!r}: the port must be 1..65535 in ASCII digits. "
                              f"Received: {p!r}")
        port = int(p)
    return SshTarget(host, port, base.identity, base.options, base.keepalive_s)


def read_hosts(path: str | Path, base: SshTarget) -> list[SshTarget]:
    """A hosts file: one ``user@host[:port]`` a line, ``#`` comments, blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgebnError(f"{path}: unreadable ({exc})", option="hosts") from exc
    targets = []
    for number, line in enumerate(lines, 1):
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        try:
            targets.append(parse_host(spec, base))
        except EdgebnError as exc:
            raise EdgebnError(f"{path}, line {number}: {exc}") from None
    if not targets:
        raise EdgebnError(f"{path}: no hosts in it", option="hosts")
    return targets


def _one(action: Callable[[SshTarget], HostResult], target: SshTarget) -> HostOutcome:
    name = target.host if target.port is None else f"{target.host}:{target.port}"
    start = time.perf_counter()
    try:
        result = action(target)
    except EdgebnError as exc:
        return HostOutcome(name, time.perf_counter() - start, None, str(exc))
    except Exception as exc:  # a bug for one host must not lose the other hosts' results
        return HostOutcome(name, time.perf_counter() - start, None,
                           f"internal error: {type(exc).__name__}: {exc}")
    return HostOutcome(name, time.perf_counter() - start, result)


def run_fleet(targets: list[SshTarget], action: Callable[[SshTarget], HostResult],
              parallel: int = DEFAULT_PARALLEL) -> FleetResult:
    """``action`` on every target in a pool of ``parallel`` threads; rows in the targets' order."""
    if parallel < 1:
        raise EdgebnError(f"must be >= 1. Received: {parallel}", option="parallel")
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(parallel, len(targets))) as pool:
        outcomes = list(pool.map(lambda t: _one(action, t), targets))
    return FleetResult(tuple(outcomes), time.perf_counter() - start)


def rollback_fleet(targets: list[SshTarget], options: DeployOptions,
                   parallel: int = DEFAULT_PARALLEL) -> FleetResult:
    return run_fleet(targets, lambda t: rollback(t, options), parallel)
