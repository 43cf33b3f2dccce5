"""Training a zoo model on a dataset, with a seed, early stopping and an atomic save."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebn.data import Dataset
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.models import Arch, bn_layer_names, build_model
from edgebn.stages import atomic_path, timed


@dataclass(frozen=True)
class TrainConfig:
    arch: Arch = Arch.cnn
    bn: bool = True
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 3e-3
    patience: int = 6  # epochs without val_accuracy improvement before stopping
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise EdgebnError(f"--{name.replace('_', '-')} must be >= 1. "
                                  f"Received: {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise EdgebnError(f"learning rate must be > 0. Received: {self.learning_rate}")


@dataclass(frozen=True)
class TrainResult:
    model: Any  # keras.Model
    epochs_run: int
    val_accuracy: float
    test_accuracy: float
    train_s: float

    @property
    def params(self) -> int:
        return int(self.model.count_params())

    @property
    def bn_layers(self) -> list[str]:
        return bn_layer_names(self.model)


def train(dataset: Dataset, config: TrainConfig = TrainConfig(), verbose: int = 2) -> TrainResult:
    """Train ``config.arch`` on ``dataset``; restore the weights of the best validation epoch."""
    config.validate()
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_model(config.arch, dataset.input_shape, dataset.classes, bn=config.bn)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience,
                                         restore_best_weights=True)
    with timed() as t:
        history = model.fit(dataset.x_train, dataset.y_train, epochs=config.epochs,
                            batch_size=config.batch_size, shuffle=True,
                            validation_data=(dataset.x_val, dataset.y_val),
                            callbacks=[stop], verbose=verbose)
    _, val_acc = model.evaluate(dataset.x_val, dataset.y_val, verbose=0)
    _, test_acc = model.evaluate(dataset.x_test, dataset.y_test, verbose=0)
    return TrainResult(model, len(history.epoch), float(val_acc), float(test_acc), t.seconds)


def train_to_file(out: str | Path, config: TrainConfig, dataset="digits", data_dir=None,
                  image_size: int = 32, color: str = "grayscale", limit: int | None = None,
                  verbose: int = 2) -> dict[str, Any]:
    """Load the dataset, train, save ``out`` atomically; return a summary for ``edgebn train``."""
    from edgebn.data import load_dataset

    if Path(out).suffix != ".keras":
        raise EdgebnError(f"--out must end in .keras. Received: {out}")
    if Path(out).is_dir():
        raise EdgebnError(f"--out {out}: is a directory")
    ds = load_dataset(dataset, data_dir, image_size, color, config.seed, limit=limit)
    result = train(ds, config, verbose=verbose)
    save_keras(result.model, out)
    return {"path": str(out), "dataset": ds.to_json(), "arch": config.arch.value,
            "bn": config.bn, "params": result.params, "bn_layers": result.bn_layers,
            "epochs_run": result.epochs_run, "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "train_s": result.train_s}


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
