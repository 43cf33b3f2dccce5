"""The op-by-op diff of two profiles (edgebn.runtime.profile.opdiff), against hand-worked rows."""

from dataclasses import dataclass

from edgebn.runtime.profile.opdiff import OpDiff, diff_operators


@dataclass(frozen=True)
class Row:
    """A profile row as the diff reads it (OpTime's subgraph, index, op, shape, time_us)."""

    subgraph: int
    index: int
    op: str
    shape: tuple[int, ...]
    time_us: float | None


def _rows(*specs: tuple[str, tuple[int, ...], float | None]) -> list[Row]:
    return [Row(0, i, op, shape, t) for i, (op, shape, t) in enumerate(specs)]


def test_an_inserted_operator_shifts_positions_and_the_rest_still_match():
    base = _rows(("CONV_2D", (1, 8, 8, 4), 10.0), ("RELU", (1, 8, 8, 4), 1.0),
                 ("FULLY_CONNECTED", (1, 10), 5.0))
    cur = _rows(("CONV_2D", (1, 8, 8, 4), 12.0), ("MUL", (1, 8, 8, 4), 2.0),
                ("RELU", (1, 8, 8, 4), 1.5), ("FULLY_CONNECTED", (1, 10), 5.0))
    diff = diff_operators(cur, base)
    assert [(d.op, d.index, d.baseline_index, d.status) for d in diff] == [
        ("CONV_2D", 0, 0, "matched"), ("MUL", 1, None, "added"), ("RELU", 2, 1, "matched"),
        ("FULLY_CONNECTED", 3, 2, "matched")]
    assert [d.delta_us for d in diff] == [2.0, 2.0, 0.5, 0.0]


def test_a_changed_width_is_paired_and_a_changed_type_is_removed_and_added():
    base = _rows(("CONV_2D", (1, 8, 8, 4), 10.0), ("RELU", (1, 8, 8, 4), 3.0))
    cur = _rows(("CONV_2D", (1, 8, 8, 16), 30.0), ("RELU6", (1, 8, 8, 16), None))
    diff = diff_operators(cur, base)
    assert [(d.op, d.status) for d in diff] == [("CONV_2D", "matched"), ("RELU", "removed"),
                                                 ("RELU6", "added")]
    conv, relu, relu6 = diff
    assert (conv.shape, conv.baseline_shape, conv.delta_us) == ((1, 8, 8, 16), (1, 8, 8, 4), 20.0)
    assert (relu.index, relu.baseline_index, relu.delta_us) == (None, 1, -3.0)
    assert relu6.delta_us == 0.0  # not timed: counts 0


def test_its_json_names_the_status_and_the_delta():
    d = OpDiff("ADD", 0, 3, None, (1, 4), None, 2.5, None)
    assert d.status == "added"
    assert d.to_json() == {"op": "ADD", "subgraph": 0, "status": "added", "index": 3,
                           "baseline_index": None, "shape": [1, 4], "baseline_shape": None,
                           "time_us": 2.5, "baseline_time_us": None, "delta_us": 2.5}
