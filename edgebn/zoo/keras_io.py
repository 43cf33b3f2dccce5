"""Keras models on disk: a .keras archive bounded before Keras opens it, loaded in safe mode,
saved atomically. Keras is imported only when a model is loaded."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.stages import atomic_path
from edgebn.tensors import path_text, reason


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
    where = path_text(path)
    if not path.is_file():
        raise InvalidModelError(f"{where}: no such file")
    if path.suffix != ".keras":
        raise InvalidModelError(f"{where}: expected a .keras file. Received suffix "
                                f"{path.suffix!r}")
    check_keras_archive(path)
    import keras

    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive: one line for the user
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidModelError(f"{where}: cannot load as a Keras model ({reason(msg)})") from exc


KERAS_MAX_MEMBERS = 1000  # files inside a .keras archive (config, metadata, weights, assets)
KERAS_MAX_CONFIG_BYTES = 64 * 2**20  # its config.json, which Keras reads whole into memory
KERAS_MAX_BYTES = 4 * 2**30  # everything it holds, uncompressed (TFLite stops at 2 GiB)


def check_keras_archive(path: Path) -> None:
    """A .keras archive bounded before anything is extracted: members, config.json's size
    and the sum of uncompressed sizes, as its directory declares them (zipfile never
    inflates a member past its declared size)."""
    where = path_text(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InvalidModelError(f"{where}: not a Keras model (a .keras file is a zip archive: "
                                f"{reason(exc)})") from exc
    mib = 2**20
    if len(infos) > KERAS_MAX_MEMBERS:
        raise InvalidModelError(f"{where}: {len(infos)} members in the archive; a .keras is "
                                f"read with at most {KERAS_MAX_MEMBERS}")
    config = sum(i.file_size for i in infos if i.filename == "config.json")
    if config > KERAS_MAX_CONFIG_BYTES:
        raise InvalidModelError(f"{where}: its config.json inflates to {config / mib:.0f} MiB; "
                                f"at most {KERAS_MAX_CONFIG_BYTES // mib} MiB are read")
    total = sum(i.file_size for i in infos)
    if total > KERAS_MAX_BYTES:
        raise InvalidModelError(f"{where}: {total / mib:.0f} MiB uncompressed in the archive; "
                                f"a .keras is read up to {KERAS_MAX_BYTES / mib:.0f} MiB")
