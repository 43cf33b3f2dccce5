"""What a profile is (edgebn.runtime.profile.result): its settings, rows and sums, by hand."""

import pytest

from edgebn.errors import EdgebnError
from edgebn.runtime.profile.opdiff import OpDiff
from edgebn.runtime.profile.result import OpTime, ProfileResult, ProfileSettings, ResidueCost
from edgebn.runtime.ratio import RatioEstimate
from edgebn.runtime.timing import BenchSettings, Latency


def _op(index: int, op: str, time_us: float | None, macs: int = 0, isolated: float | None = None
        ) -> OpTime:
    return OpTime(0, index, op, (1, 4), time_us, 10, macs, 0, False, isolated_us=isolated)


def _result(**more) -> ProfileResult:
    rows = (_op(0, "CONV_2D", 6.0, macs=3000, isolated=4.0), _op(1, "CONV_2D", 2.0, macs=1000),
            _op(2, "ADD", 2.0), _op(3, "RESHAPE", None))
    return ProfileResult("m.tflite", "ai_edge_litert 2.3.0", 1, True,
                         Latency(9.0, 10.0, 11.0, 12.0, 10.0, 1.0), rows, **more)


def test_sums_shares_and_the_slowest_hand_worked():
    r = _result()
    assert r.ops_sum_us == 10.0 and r.explained == 1.0  # 6 + 2 + 2 over the p50 of 10
    assert r.isolated_sum_us == 8.0  # 4 (isolated) + 2 + 2 + 0 (not timed)
    assert r.macs == 4000 and r.residue_cost is None
    assert [o.index for o in r.top(2)] == [0, 1]
    assert r.by_op() == {"CONV_2D": {"count": 2, "time_us": 8.0, "macs": 4000, "share": 0.8},
                         "ADD": {"count": 1, "time_us": 2.0, "macs": 0, "share": 0.2},
                         "RESHAPE": {"count": 1, "time_us": 0.0, "macs": 0, "share": 0.0}}
    assert r.operators[0].gmacs_per_s == 3000 / 6.0 / 1e3 and r.operators[3].gmacs_per_s is None
    doc = r.to_json()
    assert doc["gmacs_per_s"] == 4000 / 10.0 / 1e3 and doc["isolated_explained"] == 0.8


def test_the_diff_names_the_operators_that_grew_most():
    grew = OpDiff("CONV_2D", 0, 0, 0, (1, 4), (1, 4), 9.0, 4.0)
    shrank = OpDiff("ADD", 0, 1, 1, (1, 4), (1, 4), 1.0, 2.0)
    added = OpDiff("MUL", 0, 2, None, (1, 4), None, 3.0, None)
    r = _result(diff=(grew, shrank, added))
    assert r.grown() == [grew, added] and r.grown(1) == [grew]


def test_the_residue_cost_is_its_estimate_and_says_when_delegation_was_lost():
    est = RatioEstimate(1.2, (1.1, 1.3), 24, 12.0, 10.0)
    cost = ResidueCost(2, 12.0, 10.0, est, (1, 3))
    assert cost.ratio == 1.2 and cost.significant and cost.lost_delegation
    assert cost.to_json()["delegate_partitions"] == {"model": 1, "bypassed": 3}
    plain = ResidueCost(2, 12.0, 10.0)
    assert plain.ratio == 1.2 and plain.significant is None and not plain.lost_delegation


def test_profile_settings_refuse_what_a_profile_cannot_time():
    settings = ProfileSettings(threads=2, min_time_s=0.5)
    assert settings.bench_settings() == BenchSettings(threads=2, min_time_s=0.5, cost=False)
    for bad in (ProfileSettings(batch=2), ProfileSettings(runs=10), ProfileSettings(isolate=True)):
        with pytest.raises(EdgebnError, match="a profile times with"):
            bad.validate()
