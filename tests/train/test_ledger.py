"""The BN vs no-BN training ledger (edgebn.train.ledger), against hand-worked numbers."""



def _log(val, steps=10, seconds=1.0):
    from edgebn.train.training import EpochLog

    return EpochLog(tuple(val), tuple(seconds for _ in val), steps)


def test_ledger_row_hand_worked():
    from edgebn.train.ledger import LedgerRow

    row = LedgerRow.of(_log([0.5, 0.8, 0.9, 0.95], steps=36, seconds=2.0), target=0.9)
    assert (row.epochs_to_target, row.steps_to_target, row.seconds_to_target) == (3, 108, 6.0)
    assert row.seconds_per_epoch == 2.0 and row.epochs_run == 4
    never = LedgerRow.of(_log([0.5, 0.6]), target=0.9)
    assert never.steps_to_target is None and never.seconds_to_target is None


def test_sweep_ledger_takes_each_model_at_its_own_best_rate():
    """Hand-worked: the BN-free model's best accuracy at any rate (0.9, at x1) is the target;
    BN reaches it soonest at x10 (2 epochs), the BN-free model only at x1 (4 epochs)."""
    from types import SimpleNamespace

    from edgebn.train.ledger import SweepRun, sweep_ledger

    def result(val):
        return SimpleNamespace(history=_log(val, steps=10))

    runs = [SweepRun(1, 3e-3, result([0.5, 0.7, 0.85, 0.92]), result([0.4, 0.6, 0.8, 0.9])),
            SweepRun(3, 9e-3, result([0.6, 0.85, 0.91]), result([0.5, 0.7, 0.85])),
            SweepRun(10, 3e-2, result([0.8, 0.93]), result([0.3, 0.4]))]
    sweep = sweep_ledger(runs)
    assert sweep.target == 0.9
    assert sweep.best_bn.multiplier == 10 and sweep.best_twin.multiplier == 1
    ledger = sweep.ledger
    assert ledger.bn.steps_to_target == 20 and ledger.twin.steps_to_target == 40
    assert ledger.fewer_steps == 2.0
    doc = sweep.to_json()
    assert [r["multiplier"] for r in doc["rates"]] == [1, 3, 10]
    assert doc["rates"][1]["bn"]["steps_to_target"] == 30
    assert doc["rates"][2]["twin"]["steps_to_target"] is None


def test_seed_ledger_ratios_hand_worked():
    """BN reaches the twin's best (0.9) in 2 epochs of 10 steps, the twin in 3: 1.5x fewer
    steps. An epoch's time is the median after the first (3 s against 2 s: 1.5x slower
    epochs); the time to the target counts every epoch to it (BN 4 + 3 = 7 s, the twin
    1 + 2 + 2 = 5 s: a wall-time "speedup" of 5/7, BN slower here)."""
    from types import SimpleNamespace

    from edgebn.train.ledger import seed_ledger
    from edgebn.train.training import EpochLog

    bn = SimpleNamespace(history=EpochLog((0.7, 0.95, 0.96), (4.0, 3.0, 3.0), 10))
    twin = SimpleNamespace(history=EpochLog((0.5, 0.8, 0.9), (1.0, 2.0, 2.0), 10))
    ledger = seed_ledger(bn, twin)
    assert ledger.target == 0.9
    assert (ledger.bn.steps_to_target, ledger.bn.seconds_to_target) == (20, 7.0)
    assert (ledger.twin.steps_to_target, ledger.twin.seconds_to_target) == (30, 5.0)
    assert (ledger.bn.seconds_per_epoch, ledger.twin.seconds_per_epoch) == (3.0, 2.0)  # medians
    assert ledger.fewer_steps == 1.5 and ledger.epoch_slowdown == 1.5
    assert ledger.wall_speedup == 5.0 / 7.0
    assert ledger.to_json()["ratios"] == {"fewer_steps": 1.5, "epoch_slowdown": 1.5,
                                          "wall_speedup": 5.0 / 7.0}
    assert "BN 20 steps, 7.0 s, BN-free 30 steps, 5.0 s" in ledger.summary()
    assert seed_ledger(bn, None) is None
    assert seed_ledger(bn, SimpleNamespace(history=EpochLog())) is None


def test_a_ledger_row_that_never_reaches_the_target_has_no_ratio():
    from edgebn.train.ledger import LedgerRow, SeedLedger

    reached = LedgerRow(2, 20, 4.0, 2.0, 3)
    never = LedgerRow(None, None, None, 2.0, 3)
    ledger = SeedLedger(0.9, never, reached)
    assert ledger.fewer_steps is None and ledger.wall_speedup is None
    assert ledger.epoch_slowdown == 1.0
    assert "BN not reached in 3 epochs" in ledger.summary()
