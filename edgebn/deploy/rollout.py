"""A rollout to many hosts: batches, a failure budget, one row per host, from either engine.

    edgebn deploy BUNDLE --hosts pis.txt --batches 1,10%,100% --max-failures 2
    edgebn deploy BUNDLE --inventory inv.yml --engine ansible --batches 1,25% --check

The bundle is checked and packed once (edgebn.deploy.ssh.prepare). Each host goes through
edgebn.deploy.release (status, then stage, verify, self-test, switch, health check, roll
back on failure); the batches and the budget are edgebn.deploy.policy's. The native engine
runs each batch in a pool of threads (at most ``parallel``, never more than the batch), one
``ssh`` per remote command; the Ansible engine (edgebn.deploy.ansible_engine) runs the
edgebn.fleet collection's playbook, whose action plugin calls the same host procedure over
Ansible's connection. Both give a :class:`RolloutResult`: the same table, the same JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from edgebn.deploy import policy
from edgebn.deploy.policy import Engine, RolloutPolicy, RolloutResult
from edgebn.deploy.release import (
    DeployOptions,
    Shipment,
    host_row,
    not_attempted,
)
from edgebn.deploy.rows import HostRow
from edgebn.deploy.ssh import SshTarget, SshTransport, check_profile, prepare, trust_line
from edgebn.errors import EdgebnError


def run_batches(names: list[str], run_one: Callable[[int, int], HostRow], shipment: Shipment,
                options: DeployOptions, rollout: RolloutPolicy) -> list[HostRow]:
    """``run_one(index, batch) -> HostRow`` for every host, batch after batch, until the
    budget is spent; then a ``not_attempted`` row for each host left."""
    rows: list[HostRow] = []
    sizes = policy.batch_sizes(rollout.batches, len(names))
    for number, size in enumerate(sizes, 1):
        first = len(rows)
        if policy.budget_spent((r.status for r in rows), rollout.max_failures):
            reason = policy.spent_reason(rollout.max_failures,
                                         policy.failures(r.status for r in rows), number)
            rows += [not_attempted(names[i], shipment, options, policy.batch_of(i, rollout.batches,
                                                                                len(names)), reason)
                     for i in range(first, len(names))]
            break
        with ThreadPoolExecutor(max_workers=max(1, min(rollout.parallel, size))) as pool:
            rows += list(pool.map(lambda i, n=number: run_one(i, n), range(first, first + size)))
    return rows


def rollout_native(bundle: str, targets: list[SshTarget], options: DeployOptions,
                   rollout: RolloutPolicy = RolloutPolicy()) -> RolloutResult:
    """Check and pack ``bundle`` once, then ship it to the targets in batches."""
    if not targets:
        raise EdgebnError("no device to deploy to")
    check_profile(bundle, options)
    shipment = prepare(bundle, options.trust)
    line = trust_line(options)
    transports = [SshTransport(t) for t in targets]
    start = time.perf_counter()
    rows = run_batches([t.name for t in transports],
                       lambda i, batch: host_row(transports[i], shipment, options, trust_line=line,
                                                 batch=batch, check=rollout.check),
                       shipment, options, rollout)
    return RolloutResult(Engine.native, shipment.release, tuple(rows), time.perf_counter() - start,
                         tuple(policy.batch_sizes(rollout.batches, len(targets))),
                         rollout.max_failures, rollout.check)
