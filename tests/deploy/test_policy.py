"""A rollout's policy (edgebn.deploy.policy): batches cut as Ansible's serial, the budget."""

import pytest

from edgebn.deploy.policy import (
    RolloutPolicy,
    batch_of,
    batch_sizes,
    budget_spent,
    failures,
    parse_batches,
    spent_reason,
)
from edgebn.deploy.rows import Status
from edgebn.errors import EdgebnError


@pytest.mark.parametrize("items, hosts, sizes", [
    ((), 5, [5]),  # no batches: one of all
    (("1", "10%", "100%"), 12, [1, 1, 10]),  # 10% of 12 is 1.2: 1
    (("2",), 5, [2, 2, 1]),  # the last item repeats
    (("30%",), 7, [2, 2, 2, 1]),  # 30% of 7 is 2.1: 2
    (("1%",), 3, [1, 1, 1]),  # at least one
])
def test_batch_sizes_hand_worked(items, hosts, sizes):
    assert batch_sizes(items, hosts) == sizes
    assert [batch_of(i, items, hosts) for i in range(hosts)] == [
        n for n, size in enumerate(sizes, 1) for _ in range(size)]


def test_a_batch_spec_is_counts_or_percentages():
    assert parse_batches("1, 10%,100%") == ("1", "10%", "100%")
    for bad in ("0", "101%", "-1", "a", "½", "1,,2"):
        with pytest.raises(EdgebnError, match="each batch is a host count >= 1"):
            parse_batches(bad)
    with pytest.raises(EdgebnError, match="beyond the 3 hosts"):
        batch_of(3, (), 3)


def test_the_budget_counts_failed_refused_and_rolled_back_hosts():
    statuses = [Status.failed, Status.offline, Status.refused, Status.deployed,
                Status.rolled_back, Status.not_attempted]
    assert failures(statuses) == 3
    assert budget_spent(statuses, 2) and not budget_spent(statuses, 3)
    assert not budget_spent(statuses, None)
    assert spent_reason(2, 3, 4) == ("not attempted: the failure budget (2) was spent before "
                                     "batch 4: 3 host(s) failed")


def test_a_policy_is_checked_and_forks_no_more_hosts_than_its_largest_batch():
    assert RolloutPolicy(("2",), parallel=8).forks(5) == 2
    assert RolloutPolicy(parallel=3).forks(10) == 3
    for bad in (dict(parallel=0), dict(max_failures=-1), dict(batches=("0",))):
        with pytest.raises(EdgebnError):
            RolloutPolicy(**bad)
