"""Training a zoo model on a dataset, with a seed, early stopping and an atomic save."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.data.dataset import Dataset, DataSpec
from edgebn.errors import EdgebnError
from edgebn.fold.graph import bn_layers_of
from edgebn.fold.keras_fold import all_bn_layer_names
from edgebn.fold.statistics import DRIFT_SAMPLES, RECALIBRATE_SAMPLES
from edgebn.fold.stats_check import StatsCheck, StatsPolicy, StatsSamples, check_statistics
from edgebn.stages import SILENT, Progress, timed
from edgebn.train.distribute import SINGLE, Distribution, Strategy, distribution
from edgebn.zoo.keras_io import load_keras, save_keras
from edgebn.zoo.models import BACKBONE_NAMES, DEFAULT_ARCH, Arch, arch_spec, build_model, is_backbone


@dataclass(frozen=True)
class TrainConfig:
    arch: Arch = DEFAULT_ARCH
    bn: bool = True
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-3
    patience: int = 6  # epochs without val_accuracy improvement before stopping
    alpha: float = 1.0  # a backbone's width multiplier (MobileNets)
    weights: str = "none"  # a backbone's: none, imagenet, or a .h5 weights file
    fine_tune_epochs: int = 0  # then unfreeze the backbone's top (not its BN) for this many
    augment: bool = False  # flip, small rotation, zoom: layers active only in training
    strategy: Strategy = Strategy.none
    replicas: int | None = None  # mirrored: devices to use (default: every GPU, or 2 CPUs)
    fit_bn_momentum: bool = True  # lower a BN's momentum to remember about one epoch (below)

    def __post_init__(self) -> None:  # "cnn" as well as Arch.cnn; any other refused
        object.__setattr__(self, "arch", Arch(arch_spec(self.arch).name))
        object.__setattr__(self, "strategy", Strategy(self.strategy))

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise EdgebnError(f"{name} must be >= 1. Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise EdgebnError(f"learning rate must be > 0. Received: {self.learning_rate}")
        if self.fine_tune_epochs < 0:
            raise EdgebnError(f"fine-tune epochs must be >= 0. Received: {self.fine_tune_epochs}")
        if not self.alpha > 0:
            raise EdgebnError(f"alpha must be > 0. Received: {self.alpha}")
        if not self.bn and not arch_spec(self.arch).twin:
            raise EdgebnError(f"{self.arch.value} is a pretrained backbone: it has no "
                              "BN-free baseline (drop --no-bn)")
        if is_backbone(self.arch):
            from edgebn.zoo.backbones import check_weights

            check_weights(self.weights)
            return
        for given, what in ((self.alpha != 1.0, "--alpha"), (self.weights != "none", "--weights"),
                            (self.fine_tune_epochs > 0, "--fine-tune-epochs")):
            if given:
                raise EdgebnError(f"{what} is for the backbones ({BACKBONE_NAMES}), "
                                  f"not {self.arch.value}")

    def data_for(self, data: DataSpec) -> DataSpec:
        """The data spec this model trains on (a backbone: RGB, 96 px, raw pixels)."""
        if not is_backbone(self.arch):
            return data
        from edgebn.zoo.backbones import data_for

        return data_for(self.arch, data)

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch.value, "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "alpha": self.alpha,
                "weights": self.weights, "fine_tune_epochs": self.fine_tune_epochs,
                "augment": self.augment}


@dataclass(frozen=True)
class EpochLog:
    """Each epoch's validation accuracy and wall time, and the optimizer steps in an epoch."""

    val_accuracy: tuple[float, ...] = ()
    seconds: tuple[float, ...] = ()
    steps_per_epoch: int = 0

    def __add__(self, other: EpochLog) -> EpochLog:
        return EpochLog(self.val_accuracy + other.val_accuracy, self.seconds + other.seconds,
                        self.steps_per_epoch or other.steps_per_epoch)

    def to_json(self) -> dict[str, Any]:
        return {"val_accuracy": list(self.val_accuracy), "epoch_s": list(self.seconds),
                "steps_per_epoch": self.steps_per_epoch}


@dataclass(frozen=True)
class TrainedStatistics:
    """What training did so that its BN statistics describe the data (edgebn.fold.statistics).

    Keras keeps a BN's statistics as a momentum average of training batches; MobileNetV2's
    and V3's momentum (0.999) remembers 1,000 steps, more than a small dataset trains for.
    Training lowers a BN's momentum to remember about one epoch (``1 − 1/steps``) so that
    validation and early stopping see statistics of the current weights, then recomputes
    every statistic exactly on the training inputs (a model trained from scratch; the frozen
    BN of a pretrained backbone keeps its statistics).
    """

    momentum: float | None  # the momentum the BN layers trained with, when it was lowered
    momentum_from: tuple[float, ...]  # the models' own momenta it replaced
    check: StatsCheck  # the statistics training left, on the validation split; recomputed
    test_accuracy_stored: float  # with the statistics training left
    kept: str | None = None  # why the statistics were not recomputed

    def to_json(self) -> dict[str, Any]:
        return {**self.check.to_json(), "momentum": self.momentum,
                "momentum_from": list(self.momentum_from),
                "test_accuracy_stored": self.test_accuracy_stored, "kept": self.kept}


@dataclass(frozen=True)
class TrainResult:
    """A model trained here, or (``config`` None) one the user brought, loaded as it is."""

    model: Any  # keras.Model
    config: TrainConfig | None
    epochs_run: int
    val_accuracy: float | None
    test_accuracy: float | None
    train_s: float
    source: str | None = None  # the .keras it was loaded from
    preprocessing_source: str | None = None  # who decided its input scaling, when brought
    distribution: Distribution = SINGLE
    fine_tune_epochs_run: int = 0
    history: EpochLog = EpochLog()  # per epoch, for the seed's ledger
    bn_statistics: TrainedStatistics | None = None  # None: no BN, or brought by the user

    @property
    def arch(self) -> str:
        return self.config.arch.value if self.config else "custom"

    @property
    def bn(self) -> bool:
        return self.config.bn if self.config else bool(self.bn_layers)

    @property
    def has_twin(self) -> bool:
        """A BN-free twin exists for the small zoo models only."""
        return self.config is not None and not is_backbone(self.config.arch)

    @property
    def params(self) -> int:
        return int(self.model.count_params())

    @property
    def bn_layers(self) -> list[str]:
        """Every BN layer, at any depth (a nested backbone's too), by its own name."""
        return all_bn_layer_names(self.model)

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "bn": self.bn, "params": self.params,
                "bn_layers": self.bn_layers, "epochs_run": self.epochs_run,
                "fine_tune_epochs_run": self.fine_tune_epochs_run,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "history": self.history.to_json(),
                "train_s": self.train_s, "strategy": self.distribution.to_json(),
                "bn_statistics": None if self.bn_statistics is None
                else self.bn_statistics.to_json(),
                "config": self.config.to_json() if self.config else None}


def train(dataset: Dataset, config: TrainConfig = TrainConfig(),
          progress: Progress = SILENT, bn_stats: StatsPolicy = StatsPolicy()) -> TrainResult:
    """Train ``config.arch`` on ``dataset``; restore the weights of the best validation epoch.

    A streamed folder (``dataset.streams``) is read through tf.data. A backbone trains
    its head first, then (``fine_tune_epochs``) the top of the backbone at a lower rate.
    Keras' own progress lines stay off; each epoch's metrics go to ``progress``. The BN
    statistics are recomputed at the end (:class:`TrainedStatistics`), as ``bn_stats`` says.
    """
    config.validate()
    dist = distribution(config.strategy, config.replicas)  # before TensorFlow initializes
    import keras

    keras.utils.set_random_seed(dataset.seed)  # the split's seed: one --seed for all
    with _scope(dist):
        model = _new_model(config, dataset)
        _compile(model, config.learning_rate)
    feeds = _Feeds.of(dataset, config.batch_size)
    total = config.epochs + config.fine_tune_epochs
    momentum = fit_bn_momentum(model, -(-dataset.counts[0] // config.batch_size)) \
        if config.fit_bn_momentum else None
    with timed() as t:
        ran, history = _fit(model, feeds, config, 0, config.epochs, total, progress)
        tuned = 0
        if config.fine_tune_epochs:
            from edgebn.zoo.backbones import FINE_TUNE_LR_DIVISOR, unfreeze_top

            with _scope(dist):
                unfreeze_top(model)
                _compile(model, config.learning_rate / FINE_TUNE_LR_DIVISOR)
            tuned, more = _fit(model, feeds, config, ran, ran + config.fine_tune_epochs, total,
                               progress)
            history = history + more
    with _named_read_errors():
        test_stored = float(model.evaluate(*feeds.test, verbose=0)[1])
        statistics = _final_statistics(model, dataset, config, momentum, test_stored, bn_stats)
        val_acc = model.evaluate(*feeds.val, verbose=0)[1]
        test_acc = model.evaluate(*feeds.test, verbose=0)[1] \
            if statistics is not None and statistics.check.recalibration else test_stored
    return TrainResult(model, config, ran + tuned, float(val_acc), float(test_acc), t.seconds,
                       distribution=dist, fine_tune_epochs_run=tuned, history=history,
                       bn_statistics=statistics)


BN_MOMENTUM_FLOOR = 0.9  # a momentum fitted to very few steps per epoch stays at least this


def fit_bn_momentum(model: Any, steps_per_epoch: int) -> tuple[float, tuple[float, ...]] | None:
    """Lower each trainable BN's momentum to remember about one epoch, ``1 − 1/steps``.

    Returns the momentum set and the momenta it replaced; None when every BN already
    remembers at most an epoch (or none trains). A frozen BN is left as it is.
    """
    fit = max(BN_MOMENTUM_FLOOR, 1.0 - 1.0 / max(steps_per_epoch, 1))
    slow = [layer for layer in bn_layers_of(model) if layer.trainable and layer.momentum > fit]
    if not slow:
        return None
    replaced = tuple(sorted({float(layer.momentum) for layer in slow}))
    for layer in slow:
        layer.momentum = fit
    return fit, replaced


def _final_statistics(model: Any, dataset: Dataset, config: TrainConfig,
                      momentum: tuple[float, tuple[float, ...]] | None, test_stored: float,
                      policy: StatsPolicy) -> TrainedStatistics | None:
    """Recompute every BN statistic on the training inputs (a model trained from scratch, or
    any when ``policy`` asks); else measure how far they are from the validation split."""
    if not bn_layers_of(model):
        return None
    fitted, replaced = momentum if momentum is not None else (None, ())
    kept = None
    if config.weights != "none" and policy.recalibrate is None:
        kept = "the pretrained backbone's frozen BN keep their statistics"
    elif policy.recalibrate is None:
        policy = StatsPolicy(RECALIBRATE_SAMPLES, policy.strict)
    checked = check_statistics(model, _statistics_samples(dataset, policy.recalibrate), policy)
    return TrainedStatistics(fitted, replaced, checked, test_stored, kept)


def _statistics_samples(ds: Dataset, samples: int | None) -> StatsSamples:
    """Training inputs to recompute on, validation inputs to prove it on (in memory)."""
    import numpy as np

    n = samples or RECALIBRATE_SAMPLES
    if ds.streams is None:
        x, val, labels = ds.x_train[:n], ds.x_val[:DRIFT_SAMPLES], ds.y_val[:DRIFT_SAMPLES]
    else:
        train = ds.streams.train.take(np.arange(min(n, len(ds.streams.train))))
        held = ds.streams.val.take(np.arange(min(DRIFT_SAMPLES, len(ds.streams.val))))
        x, val, labels = train.load(), held.load(), held.labels
    return StatsSamples(x, val, labels, f"{len(x)} training inputs", "the validation split")


def _scope(dist: Distribution):
    return dist.scope.scope() if dist.scope is not None else contextlib.nullcontext()


def _new_model(config: TrainConfig, dataset: Dataset) -> Any:
    if is_backbone(config.arch):
        from edgebn.zoo.backbones import build_transfer

        model = build_transfer(config.arch, dataset.input_shape, dataset.classes, config.alpha,
                               config.weights)
    else:
        model = build_model(config.arch, dataset.input_shape, dataset.classes, bn=config.bn)
    if config.augment:
        from edgebn.zoo.backbones import with_augmentation

        model = with_augmentation(model, dataset.seed)
    return model


def _compile(model: Any, learning_rate: float) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])


@dataclass(frozen=True)
class _Feeds:
    """What fit and evaluate read: arrays, or a streamed folder's tf.data pipelines."""

    train: tuple[Any, ...]
    val: tuple[Any, ...]
    test: tuple[Any, ...]
    fit_kwargs: dict[str, Any]

    @classmethod
    def of(cls, ds: Dataset, batch_size: int) -> _Feeds:
        if ds.streams is None:
            return cls((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test),
                       {"batch_size": batch_size, "shuffle": True})
        s = ds.streams
        return cls((s.train.tf_dataset(batch_size, shuffle=True, seed=ds.seed),),
                   (s.val.tf_dataset(batch_size),), (s.test.tf_dataset(batch_size),),
                   {"shuffle": False})  # the pipeline shuffles its file names itself


def _fit(model: Any, feeds: _Feeds, config: TrainConfig, first: int, last: int, total: int,
         progress: Progress) -> tuple[int, EpochLog]:
    """Epochs ``first`` to ``last`` (of ``total``) with early stopping: epochs run, their log."""
    import keras

    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience,
                                         restore_best_weights=True)
    began: list[float] = []
    seconds: list[float] = []

    def ended(epoch: int, logs: dict[str, Any] | None) -> None:
        seconds.append(time.perf_counter() - began[-1])
        progress.epoch(epoch + 1, total, {k: float(v) for k, v in (logs or {}).items()})

    report = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: began.append(time.perf_counter()), on_epoch_end=ended)
    val = feeds.val if len(feeds.val) == 2 else feeds.val[0]
    with _named_read_errors():
        history = model.fit(*feeds.train, epochs=last, initial_epoch=first,
                            validation_data=val, callbacks=[stop, report], verbose=0,
                            **feeds.fit_kwargs)
    accuracy = tuple(float(v) for v in history.history.get("val_accuracy", []))
    return len(history.epoch), EpochLog(accuracy, tuple(seconds), int(history.params.get("steps") or 0))


@contextlib.contextmanager
def _named_read_errors() -> Iterator[None]:
    """A file that fails to decode mid-stream: its DatasetError (one line), not TF's."""
    from edgebn.data.folder import raise_read_error

    try:
        yield
    except Exception as exc:
        raise_read_error(exc)
        raise


@dataclass(frozen=True)
class SavedTraining:
    """``edgebn train``: the model trained on ``dataset`` and saved at ``path``."""

    path: Path
    dataset: Dataset
    trained: TrainResult

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "dataset": self.dataset.to_json(),
                **self.trained.to_json()}


def train_to_file(out: str | Path, config: TrainConfig, data: DataSpec = DataSpec(),
                  progress: Progress = SILENT) -> SavedTraining:
    """Load the data, train, save ``out`` atomically."""
    if Path(out).suffix != ".keras":
        raise EdgebnError(f"a Keras model path must end in .keras. Received: {out}")
    if Path(out).is_dir():
        raise EdgebnError(f"{out}: is a directory")
    config.validate()  # before a folder is listed
    data = config.data_for(data)
    ds = data.load(stream=True)
    result = train(ds, config, progress)
    save_keras(result.model, out)
    return SavedTraining(Path(out), ds, result)


def given_model(path: str | Path) -> TrainResult:
    """A user's .keras model as the build's starting point: nothing trained, nothing changed."""
    return TrainResult(load_keras(path), None, 0, None, None, 0.0, source=str(path))
