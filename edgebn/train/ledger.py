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
from dataclasses import asdict, dataclass

from edgebn.documents import JsonDict
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

    def to_json(self) -> JsonDict:
        return asdict(self)


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

    def to_json(self) -> JsonDict:
        return {"target_val_accuracy": self.target, "bn": self.bn.to_json(),
                "twin": self.twin.to_json(),
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
        return (f"to the BN-free baseline's best val accuracy {self.target:.4f}: BN "
                f"{steps(self.bn)}, BN-free {steps(self.twin)}; per epoch "
                f"{self.bn.seconds_per_epoch:.2f} s vs {self.twin.seconds_per_epoch:.2f} s"
                + (f" ({', '.join(ratios)})" if ratios else ""))


def seed_ledger(bn: TrainResult, twin: TrainResult | None) -> SeedLedger | None:
    """The ledger of a BN model against its twin; None without a twin or a training history."""
    if twin is None or not twin.history.val_accuracy or not bn.history.val_accuracy:
        return None
    target = max(twin.history.val_accuracy)
    return SeedLedger(target, LedgerRow.of(bn.history, target), LedgerRow.of(twin.history, target))


# ---------------------------------------------------------------- --lr-sweep


@dataclass(frozen=True)
class SweepRun:
    """One learning rate of ``--lr-sweep``: the BN model and its BN-free baseline trained at it."""

    multiplier: float
    learning_rate: float
    bn: TrainResult
    twin: TrainResult


def _best(rows: list[tuple[SweepRun, LedgerRow, float]]) -> tuple[SweepRun, LedgerRow]:
    """The run that reaches the target in the fewest steps; when none does, the best-scoring."""
    reached = [r for r in rows if r[1].steps_to_target is not None]
    if reached:
        run, row, _ = min(reached, key=lambda r: (r[1].steps_to_target, r[0].multiplier))
    else:
        run, row, _ = max(rows, key=lambda r: r[2])
    return run, row


@dataclass(frozen=True)
class SweepLedger:
    """BN against BN-free, each at its own best learning rate (the BN paper's claim came with
    the higher rates BN allows), and every rate's rows. The target is the BN-free model's best
    validation accuracy at any rate."""

    runs: tuple[SweepRun, ...]
    target: float
    rows: tuple[tuple[LedgerRow, LedgerRow], ...]  # (bn, twin) per run, in the runs' order
    best_bn: SweepRun
    best_twin: SweepRun

    @property
    def ledger(self) -> SeedLedger:
        """The best BN run against the best BN-free run, to the same target."""
        return SeedLedger(self.target, LedgerRow.of(self.best_bn.bn.history, self.target),
                          LedgerRow.of(self.best_twin.twin.history, self.target))

    def to_json(self) -> JsonDict:
        return {"target_val_accuracy": self.target,
                "best": {"bn": self.best_bn.multiplier, "twin": self.best_twin.multiplier},
                "best_against_best": self.ledger.to_json(),
                "rates": [{"multiplier": run.multiplier, "learning_rate": run.learning_rate,
                           "bn": bn.to_json()
                           | {"best_val_accuracy": max(run.bn.history.val_accuracy)},
                           "twin": twin.to_json() | {
                               "best_val_accuracy": max(run.twin.history.val_accuracy)}}
                          for run, (bn, twin) in zip(self.runs, self.rows, strict=True)]}

    def summary(self) -> str:
        return (f"best rate x{self.best_bn.multiplier:g} (BN) against "
                f"x{self.best_twin.multiplier:g} "
                f"(BN-free): {self.ledger.summary()}")


def sweep_ledger(runs: list[SweepRun]) -> SweepLedger:
    """Each model at its own best rate, to the BN-free model's best accuracy at any rate."""
    target = max(max(run.twin.history.val_accuracy) for run in runs)
    rows = [(LedgerRow.of(run.bn.history, target), LedgerRow.of(run.twin.history, target))
            for run in runs]
    best_bn, _ = _best([(run, bn, max(run.bn.history.val_accuracy))
                        for run, (bn, _) in zip(runs, rows, strict=True)])
    best_twin, _ = _best([(run, twin, max(run.twin.history.val_accuracy))
                          for run, (_, twin) in zip(runs, rows, strict=True)])
    return SweepLedger(tuple(runs), target, tuple(rows), best_bn, best_twin)
