"""``edgebn bench --threads 1,2,4``: one .tflite timed at several interpreter thread counts.

The first count gets the whole bench (baseline, Keras, cost): the bench document is the
one a single ``--threads`` gives. Every further count times the .tflite alone, one count
after another (interleaving two interpreters' thread pools would let their spinning
workers steal each other's cores), each against the ceiling probed at its own count.
Keras is timed once: it does not use the interpreter's threads.

    speedup(n)    = p50(reference) / p50(n)     reference: 1 thread if listed, else the first
    efficiency(n) = GMAC/s(n) / probe ceiling(n)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.timing import CostStats, Latency, TFLiteStats

_EXAMPLE = "whole numbers >= 1, separated by commas, each once (e.g. 1,2,4)"


def check_thread_counts(counts: Sequence[int]) -> tuple[int, ...]:
    """The counts as a tuple, or an EdgebnError saying what is allowed."""
    counts = tuple(counts)
    if not counts or any(c < 1 for c in counts) or len(set(counts)) != len(counts):
        raise EdgebnError(f"thread counts must be {_EXAMPLE}. Received: {list(counts)}")
    return counts


def parse_thread_counts(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``; a single number is a list of one."""
    try:
        counts = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise EdgebnError(f"thread counts must be {_EXAMPLE}. Received: {text!r}") from None
    return check_thread_counts(counts)


@dataclass(frozen=True)
class ThreadRow:
    """One thread count: its latency, and its speedup and efficiency."""

    threads: int
    runs: int
    latency_us: Latency
    throughput_per_s: float
    speedup: float  # the reference count's p50 over this count's p50
    cost: CostStats | None = None  # when measured

    def to_json(self) -> JsonDict:
        return {"threads": self.threads, "runs": self.runs, "latency_us": asdict(self.latency_us),
                "throughput_per_s": self.throughput_per_s, "speedup": self.speedup} | (
                    {"cost": self.cost.to_json()} if self.cost is not None else {})

    def cells(self) -> tuple[str, ...]:
        """The row as the table (terminal and Markdown) shows it; see ThreadScaling.HEADER."""
        c = self.cost
        return (str(self.threads), f"{self.latency_us.p50:,.1f}", f"{self.throughput_per_s:,.0f}",
                f"{self.speedup:.2f}x", "-" if c is None else f"{c.gmacs_per_s:.1f}",
                "-" if c is None else f"{c.ceiling_gmacs_per_s:.1f}",
                "-" if c is None else f"{c.efficiency:.0%}")


@dataclass(frozen=True)
class ThreadScaling:
    reference_threads: int  # speedups are against this count's p50
    rows: tuple[ThreadRow, ...]

    HEADER = ("threads", "p50 µs", "invokes/s", "speedup", "GMAC/s", "ceiling GMAC/s",
              "efficiency")

    @classmethod
    def from_stats(cls, stats: Sequence[TFLiteStats]) -> ThreadScaling:
        """Rows in the order timed; speedups against 1 thread if timed, else the first."""
        reference = next((s for s in stats if s.threads == 1), stats[0])
        return cls(reference.threads, tuple(
            ThreadRow(s.threads, s.runs, s.latency_us, s.throughput_per_s,
                      reference.latency_us.p50 / s.latency_us.p50, s.cost) for s in stats))

    def to_json(self) -> list[JsonDict]:
        """The bench document's ``threads_scaling``: one entry per thread count."""
        return [r.to_json() | {"speedup_vs_threads": self.reference_threads} for r in self.rows]
