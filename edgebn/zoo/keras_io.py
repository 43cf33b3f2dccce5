"""Keras models on disk: a .keras archive or a legacy .h5 file bounded before Keras opens it,
loaded in safe mode, saved atomically. Keras is imported only when a model is loaded.

A legacy ``.h5`` (Keras 2's ``model.save("m.h5")``, most tutorials' format) is an HDF5 file
whose ``model_config`` attribute holds the architecture as JSON: it is read with h5py and
checked first (an HDF5 file, a model and not a weights file, a config of bounded size with
no ``Lambda`` layer, whose Python code would run on load), then Keras 3 loads it in safe mode.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from edgebn.documents import JsonValue
from edgebn.errors import EdgebnError, InvalidModelError, path_text, reason
from edgebn.files import atomic_path

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras


def save_keras(model: keras.Model, path: str | Path) -> Path:
    """Save ``model`` to ``path`` (.keras) atomically."""
    path = Path(path)
    if path.suffix != ".keras":
        raise EdgebnError(f"a Keras model path must end in .keras. Received: {path}")
    with atomic_path(path) as tmp:
        model.save(tmp)
    return path


KERAS_SUFFIXES = (".keras", ".h5")


def load_keras(path: str | Path) -> keras.Model:
    """Load a .keras (or legacy .h5) file with Keras' safe mode on (no code from lambdas)."""
    path = Path(path)
    where = path_text(path)
    if not path.is_file():
        raise InvalidModelError(f"{where}: no such file")
    if path.suffix not in KERAS_SUFFIXES:
        raise InvalidModelError(f"{where}: expected a .keras or .h5 Keras model. Received suffix "
                                f"{path.suffix!r}")
    if path.suffix == ".h5":
        check_h5_model(path)
    else:
        check_keras_archive(path)
    import keras  # lazy: Keras imports TensorFlow (seconds)

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


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_SIGNATURE_OFFSETS = (0, 512, 1024, 2048)  # after a user block of 512 · 2^k bytes


def check_h5_model(path: Path) -> None:
    """A legacy .h5 checked before Keras opens it: an HDF5 file within the size limits, a
    model (``model_config``), not weights alone, whose layers hold no Lambda."""
    import h5py  # lazy: only a legacy .h5 needs h5py (it comes with Keras)

    where = path_text(path)
    size = path.stat().st_size
    if size > KERAS_MAX_BYTES:
        raise InvalidModelError(f"{where}: {size / 2**20:.0f} MiB; a .h5 model is read up to "
                                f"{KERAS_MAX_BYTES / 2**20:.0f} MiB")
    with path.open("rb") as f:
        heads = []
        for offset in HDF5_SIGNATURE_OFFSETS:
            f.seek(offset)
            heads.append(f.read(len(HDF5_SIGNATURE)))
    if HDF5_SIGNATURE not in heads:
        raise InvalidModelError(f"{where}: not an HDF5 file (no HDF5 signature): a .h5 Keras "
                                "model is one")
    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            # Keras 2's save_weights: layer_names at the root; Keras 3's: layers/ and vars/
            weights_only = "layer_names" in f.attrs or {"layers", "vars"} <= set(f.keys())
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise InvalidModelError(f"{where}: not a readable HDF5 file ({reason(exc)}): truncated "
                                "or damaged?") from exc
    if config is None:
        what = "a weights file (save_weights), not a model" if weights_only else \
            "an HDF5 file without a model_config attribute: not a Keras model"
        raise InvalidModelError(f"{where}: {what}; edgebn needs the architecture too "
                                "(model.save)")
    text = config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
    if len(text) > KERAS_MAX_CONFIG_BYTES:
        raise InvalidModelError(f"{where}: its model_config holds {len(text) / 2**20:.0f} MiB; "
                                f"at most {KERAS_MAX_CONFIG_BYTES // 2**20} MiB are read")
    try:
        tree = json.loads(text)
        lam = _lambda_layer(tree)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelError(f"{where}: its model_config is not a model's JSON "
                                f"({reason(exc)})") from exc
    if lam is not None:
        raise InvalidModelError(f"{where}: holds a Lambda layer ({lam}) whose Python code would "
                                "run when the model is loaded; edgebn runs no code from a model "
                                "file (rebuild the model without it, or save it as .keras from "
                                "the code that defines it)")


def _lambda_layer(tree: JsonValue, depth: int = 0) -> str | None:
    """The name of the first Lambda layer in a model config, at any nesting, or None."""
    if depth > 200:
        raise ValueError("it nests deeper than 200 levels")
    if isinstance(tree, dict):
        if tree.get("class_name") in ("Lambda", "TFOpLambda", "SlicingOpLambda"):
            config = tree.get("config")
            return str(config.get("name") if isinstance(config, dict) else tree["class_name"])
        items = tree.values()
    elif isinstance(tree, list):
        items = tree
    else:
        return None
    for item in items:
        found = _lambda_layer(item, depth + 1)
        if found is not None:
            return found
    return None
