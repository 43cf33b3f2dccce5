"""Training a zoo model on a dataset, with a seed, early stopping and an atomic save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.data import Dataset, DataSpec
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.models import Arch, build_model
from edgebn.stages import SILENT, Progress, atomic_path, timed


@dataclass(frozen=True)
class TrainConfig:
    arch: Arch = Arch.cnn
    bn: bool = True
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-3
    patience: int = 6  # epochs without val_accuracy improvement before stopping

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise EdgebnError(f"{name} must be >= 1. Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise EdgebnError(f"learning rate must be > 0. Received: {self.learning_rate}")


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

    @property
    def arch(self) -> str:
        return self.config.arch.value if self.config else "custom"

    @property
    def bn(self) -> bool:
        return self.config.bn if self.config else bool(self.bn_layers)

    @property
    def params(self) -> int:
        return int(self.model.count_params())

    @property
    def bn_layers(self) -> list[str]:
        """Every BN layer, at any depth (a nested backbone's too), by its own name."""
        from edgebn.fold import all_bn_layer_names

        return all_bn_layer_names(self.model)

    def to_json(self) -> dict[str, Any]:
        return {"arch": self.arch, "bn": self.bn, "params": self.params,
                "bn_layers": self.bn_layers, "epochs_run": self.epochs_run,
                "val_accuracy": self.val_accuracy, "test_accuracy": self.test_accuracy,
                "train_s": self.train_s}


def train(dataset: Dataset, config: TrainConfig = TrainConfig(),
          progress: Progress = SILENT) -> TrainResult:
    """Train ``config.arch`` on ``dataset``; restore the weights of the best validation epoch.

    Keras' own progress lines stay off; each epoch's loss and accuracy go to ``progress``.
    """
    config.validate()
    import keras

    keras.utils.set_random_seed(dataset.seed)  # the split's seed: one --seed for all
    model = build_model(config.arch, dataset.input_shape, dataset.classes, bn=config.bn)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience,
                                         restore_best_weights=True)
    report = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: progress.epoch(
        epoch + 1, config.epochs, {k: float(v) for k, v in (logs or {}).items()}))
    with timed() as t:
        history = model.fit(dataset.x_train, dataset.y_train, epochs=config.epochs,
                            batch_size=config.batch_size, shuffle=True,
                            validation_data=(dataset.x_val, dataset.y_val),
                            callbacks=[stop, report], verbose=0)
    _, val_acc = model.evaluate(dataset.x_val, dataset.y_val, verbose=0)
    _, test_acc = model.evaluate(dataset.x_test, dataset.y_test, verbose=0)
    return TrainResult(model, config, len(history.epoch), float(val_acc), float(test_acc),
                       t.seconds)


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
    ds = data.load()
    result = train(ds, config, progress)
    save_keras(result.model, out)
    return SavedTraining(Path(out), ds, result)


def given_model(path: str | Path) -> TrainResult:
    """A user's .keras model as the build's starting point: nothing trained, nothing changed."""
    return TrainResult(load_keras(path), None, 0, None, None, 0.0, source=str(path))


def save_keras(model: Any, path: str | Path) -> Path:
    """Save ``model`` to ``path`` (.keras) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise EdgebnError(f"a Keras model path must end in .keras. Received: {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


def load_keras(path: str | Path) -> Any:
    """Load a .keras file with Keras' safe mode on (no arbitrary code from lambdas)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModelError(f"{path}: no such file")
    if path.suffix != ".keras":
        raise InvalidModelError(f"{path}: expected a .keras file. Received suffix {path.suffix!r}")
    import zipfile

    if not zipfile.is_zipfile(path):
        raise InvalidModelError(f"{path}: not a Keras model (a .keras file is a zip archive)")
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive: one line for the user
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{path}: cannot load as a Keras model ({msg})") from exc
