"""What a command does about BN statistics: ``--recalibrate-bn [N]``, ``--strict-bn-stats``.

The samples come from the command's data options (a .npy/.npz of inputs is split in two
halves; a dataset gives its training split to recompute on and its validation split to
measure on); the measure and the recomputing are :mod:`edgebn.fold.keras.statistics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebn.data.arrays import load_labelled
from edgebn.data.dataset import Dataset, DataSpec
from edgebn.documents import JsonDict
from edgebn.files import check_not_source
from edgebn.fold.keras.bn_sites import bn_layers_of
from edgebn.fold.keras.statistics import (
    DRIFT_SAMPLES,
    RECALIBRATE_SAMPLES,
    BNDrift,
    DriftReport,
    Recalibration,
    StatisticsError,
    measure_drift,
    recalibrate,
)
from edgebn.zoo.keras_io import load_keras, save_keras
from edgebn.zoo.models import fit_data

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras


@dataclass(frozen=True)
class StatsPolicy:
    """``--recalibrate-bn [N]`` and ``--strict-bn-stats``."""

    recalibrate: int | None = None  # recompute every BN's statistics from N samples first
    strict: bool = False  # refuse a model with stale statistics (instead of a warning)

    def __post_init__(self) -> None:
        if self.recalibrate is not None and self.recalibrate < 2:
            raise StatisticsError(f"recalibrating BN statistics needs at least 2 samples. "
                                  f"Received: {self.recalibrate}", option="recalibrate_bn")


@dataclass(frozen=True)
class StatsSamples:
    """Inputs to recompute on, and disjoint held-out inputs to measure and prove on."""

    x: np.ndarray
    held_out: np.ndarray
    labels: np.ndarray | None  # of the held-out inputs, when known
    source: str
    held_out_source: str


def split_samples(x: np.ndarray, labels: np.ndarray | None, name: str,
                  seed: int = 0) -> StatsSamples:
    """One set of inputs (evaluation data) as two disjoint halves, shuffled with ``seed``."""
    order = np.random.default_rng(seed).permutation(len(x))
    half = len(x) // 2
    mine, held = order[:half], order[half:]
    return StatsSamples(x[mine], x[held], None if labels is None else labels[held],
                        f"half of {name}", f"the other half of {name}")


@dataclass(frozen=True)
class StatsCheck:
    """What a command found about the BN statistics, and what it did about them."""

    drift: DriftReport  # the statistics as given, on the held-out inputs
    recalibration: Recalibration | None = None

    @property
    def stale(self) -> list[BNDrift]:
        """Stale BN layers that stayed stale (not recomputed)."""
        return self.drift.stale if self.recalibration is None else []

    def warning(self) -> str | None:
        if not self.stale:
            return None
        worst = max(self.stale, key=lambda d: d.drift)
        return (f"{len(self.stale)} of {len(self.drift.layers)} BN layers have statistics that "
                f"do not describe the data (largest drift {worst.drift:.2f} in {worst.bn}, "
                f"limit {self.drift.stale_drift:g}): the fold bakes them in; recalibrating "
                "recomputes them from the data")

    def summary(self) -> str:
        return self.recalibration.summary() if self.recalibration else self.drift.summary()

    def to_json(self) -> JsonDict:
        return {"drift": self.drift.to_json(), "warning": self.warning(),
                "recalibration": None if self.recalibration is None
                else self.recalibration.to_json()}


def check_statistics(model: keras.Model, samples: StatsSamples, policy: StatsPolicy) -> StatsCheck:
    """Measure every BN's drift on the held-out samples; recompute first when asked.

    StatisticsError when ``policy.strict`` and a BN is stale (nothing recomputed), or when
    recomputed statistics fail their proof.
    """
    if policy.recalibrate is not None:
        done = recalibrate(model, samples.x[:policy.recalibrate], samples.held_out,
                           samples.labels, samples.source, samples.held_out_source)
        return StatsCheck(done.before, done)
    drift = measure_drift(model, samples.held_out[:DRIFT_SAMPLES], samples.held_out_source)
    check = StatsCheck(drift)
    if policy.strict and check.stale:
        raise StatisticsError(f"{check.warning()}; refused", option="strict_bn_stats")
    return check


def samples_from_data(data: DataSpec, input_shape: tuple[int, ...], most: int | None = None,
                      ds: Dataset | None = None) -> StatsSamples | str:
    """The samples a command measures BN statistics on, from its data options (a DataSpec):
    a .npy/.npz of inputs (split in two halves), else the dataset's training and validation
    splits when they fit the model (``ds``: ``data`` already loaded); else why there are none
    (random inputs tell nothing)."""
    want = tuple(input_shape)
    if data.npz is not None:
        x, arrays = load_labelled(data.npz, ("y",))
        if tuple(x.shape[1:]) != want:
            return f"the inputs given have shape {list(x.shape[1:])}, the model takes {list(want)}"
        y = arrays.get("y")
        labels = y if y is not None and y.ndim == 1 and len(y) == len(x) else None
        return split_samples(x, labels, f"{data.name}", data.seed)
    ds = ds if ds is not None else data.load()
    if tuple(ds.input_shape) != want:
        return f"{ds.name} has inputs of shape {list(ds.input_shape)}, the model takes {list(want)}"
    if not len(ds.y_val):  # evaluation data only (split=False)
        return split_samples(ds.x_test, ds.y_test, ds.name, ds.seed)
    return StatsSamples(ds.x_train[:most or RECALIBRATE_SAMPLES], ds.x_val[:DRIFT_SAMPLES],
                        ds.y_val[:DRIFT_SAMPLES], f"{ds.name} training split",
                        f"{ds.name} validation split")


def statistics_json(check: StatsCheck | str | None) -> JsonDict | None:
    """A command's BN statistics document: the check, or why it was not measured."""
    if check is None or isinstance(check, StatsCheck):
        return None if check is None else check.to_json()
    return {"drift": None, "warning": None, "recalibration": None, "not_measured": check}


def bn_statistics(model: keras.Model, data: DataSpec, policy: StatsPolicy, ds: Dataset | None = None
                  ) -> StatsCheck | str | None:
    """The BN statistics of a loaded model on the data given (convert, fold): measured,
    recomputed when ``policy`` asks; a str says why not; None for a model without BN.
    ``ds``: ``data`` already loaded."""
    if not bn_layers_of(model):
        return None
    if len(model.inputs) != 1:
        return "a model with several inputs"
    samples = samples_from_data(data, tuple(model.input_shape[1:]), policy.recalibrate, ds)
    if isinstance(samples, str):
        if policy.recalibrate is not None or policy.strict:
            raise StatisticsError(f"BN statistics need data that fits the model: {samples}",
                              option="data")
        return samples
    return check_statistics(model, samples, policy)


@dataclass(frozen=True)
class RecalibratedFile:
    """``edgebn recalibrate``: the model whose statistics were recomputed, written to ``out``."""

    model: str
    out: str
    recalibration: Recalibration

    def to_json(self) -> JsonDict:
        return {"model": self.model, "out": self.out, **self.recalibration.to_json()}


def recalibrate_file(model_path: str | Path, out: str | Path, data: DataSpec,
                     samples: int = RECALIBRATE_SAMPLES) -> RecalibratedFile:
    """Load a .keras, recompute every BN's statistics from ``data`` (a DataSpec), prove them
    on held-out inputs, write ``out`` atomically; ``model_path`` is never changed."""
    if Path(out).suffix != ".keras":
        raise StatisticsError(f"the recalibrated model's path must end in .keras. Received: {out}",
                              option="out")
    check_not_source(out, model_path)
    model = load_keras(model_path)
    if data.data_dir is not None:
        data = fit_data(data, model)[0]
    check = bn_statistics(model, data, StatsPolicy(samples))
    if check is None:
        raise StatisticsError(f"{model_path}: the model has no BN layer to recalibrate")
    save_keras(model, out)
    return RecalibratedFile(str(model_path), str(out), check.recalibration)
