"""The seed's other half, measured: BN needs fewer steps, each slower, and the wall time.

The BN paper's claim is that BN "achieves the same accuracy with 14 times fewer training
steps". For a zoo build with its BN-free twin, the target is the twin's best validation
accuracy; for each model, the first epoch whose validation accuracy reaches it gives the
steps (epochs × steps per epoch) and the wall time (the epochs' own seconds) it took. The
time per epoch is the median over the epochs after the first (the first also traces and
compiles), or the first alone. Ratios: twin steps / BN steps (how many times fewer steps BN
needed), BN / twin time per epoch (how much slower a BN epoch is), twin / BN wall time to
the target (above 1: BN got there sooner).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from edgebn.train.training import EpochLog, TrainResult


@dataclass(frozen=True)
class LedgerRow:
    epochs_to_target: int | None  # None: not reached in the epochs run
    steps_to_target: int | None
    seconds_to_target: float | None
    seconds_per_epoch: float
    epochs_run: int

    @classmethod
    def of(cls, log: EpochLog, target: float) -> LedgerRow:
        reached = next((i + 1 for i, a in enumerate(log.val_accuracy) if a >= target), None)
        rest = log.seconds[1:] or log.seconds
        return cls(reached, None if reached is None else reached * log.steps_per_epoch,
                   None if reached is None else float(sum(log.seconds[:reached])),
                   float(statistics.median(rest)) if rest else 0.0, len(log.val_accuracy))

    def to_json(self) -> dict[str, Any]:
        return {"epochs_to_target": self.epochs_to_target, "steps_to_target": self.steps_to_target,
                "seconds_to_target": self.seconds_to_target,
                "seconds_per_epoch": self.seconds_per_epoch, "epochs_run": self.epochs_run}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass(frozen=True)
class SeedLedger:
    target: float  # the twin's best validation accuracy
    bn: LedgerRow
    twin: LedgerRow

    @property
    def fewer_steps(self) -> float | None:
        return _ratio(self.twin.steps_to_target, self.bn.steps_to_target)

    @property
    def epoch_slowdown(self) -> float | None:
        return _ratio(self.bn.seconds_per_epoch, self.twin.seconds_per_epoch)

    @property
    def wall_speedup(self) -> float | None:
        return _ratio(self.twin.seconds_to_target, self.bn.seconds_to_target)

    def to_json(self) -> dict[str, Any]:
        return {"target_val_accuracy": self.target, "bn": self.bn.to_json(), "twin": self.twin.to_json(),
                "ratios": {"fewer_steps": self.fewer_steps, "epoch_slowdown": self.epoch_slowdown,
                           "wall_speedup": self.wall_speedup}}

    def summary(self) -> str:
        def steps(row: LedgerRow) -> str:
            if row.steps_to_target is None:
                return f"not reached in {row.epochs_run} epochs"
            return f"{row.steps_to_target} steps, {row.seconds_to_target:.1f} s"

        ratios = [f"{v:.2f}x {what}" for v, what in ((self.fewer_steps, "fewer steps"),
                                                      (self.epoch_slowdown, "slower epochs"),
                                                      (self.wall_speedup, "wall-time speedup"))
                  if v is not None]
        return (f"to the twin's best val accuracy {self.target:.4f}: BN {steps(self.bn)}, twin "
                f"{steps(self.twin)}; per epoch {self.bn.seconds_per_epoch:.2f} s vs "
                f"{self.twin.seconds_per_epoch:.2f} s" + (f" ({', '.join(ratios)})" if ratios else ""))


def seed_ledger(bn: TrainResult, twin: TrainResult | None) -> SeedLedger | None:
    """The ledger of a BN model against its twin; None without a twin or a training history."""
    if twin is None or not twin.history.val_accuracy or not bn.history.val_accuracy:
        return None
    target = max(twin.history.val_accuracy)
    return SeedLedger(target, LedgerRow.of(bn.history, target), LedgerRow.of(twin.history, target))
