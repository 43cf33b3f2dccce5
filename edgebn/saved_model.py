"""A TensorFlow SavedModel directory (``model.export(...)``, TF Serving, TF Hub) on the .tflite
route.

TensorFlow's converter takes the directory as it is, through one of its signatures
(``serving_default`` unless told); the file it writes then goes the way of ``edgebn build
--model x.tflite`` (folded on the flatbuffer, proven, inspected, benchmarked, bundled), and
verify holds the folded file to the SavedModel's **own** outputs, computed by TensorFlow from
the directory on the same inputs: the truth is the model the user brought, not a file made
from it.

Loading a SavedModel runs its graph's operations when it is called: only a SavedModel you
trust should be verified. TensorFlow is imported only here, and only when a directory is
given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import InvalidModelError, path_text, reason
from edgebn.files import write_atomic
from edgebn.progress import timed
from edgebn.runtime.accuracy import rows_per_chunk
from edgebn.tflite.reader import TFLiteModel, parse_tflite

if TYPE_CHECKING:  # named in annotations only: importing TensorFlow takes seconds (edgebn.cli.app)
    import tensorflow as tf


class Loaded(Protocol):
    """What ``tf.saved_model.load`` returns, as this module reads it: its signatures."""

    @property
    def signatures(self) -> Mapping[str, tf.types.experimental.ConcreteFunction]: ...

DEFAULT_SIGNATURE = "serving_default"
MAX_GRAPH_BYTES = 1 << 30  # saved_model.pb (the graph; the weights are in variables/)
CHUNK = 64  # samples per call when the SavedModel computes its own outputs


@dataclass(frozen=True)
class SavedModelSource:
    """The directory, the signature used, its input and output, and what the converter made."""

    path: Path
    signature: str
    input_name: str
    output_name: str
    converted: TFLiteModel  # TensorFlow's converter's file (before any fold)
    convert_s: float

    def route_json(self) -> JsonDict:
        return {"format": "saved_model", "path": str(self.path), "signature": self.signature,
                "input": self.input_name, "output": self.output_name,
                "converted_by": "tf.lite.TFLiteConverter.from_saved_model",
                "verified_against": "the SavedModel's own outputs (TensorFlow)"}


def is_saved_model(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "saved_model.pb").is_file()


def check_saved_model(path: Path) -> None:
    """A directory holding a saved_model.pb of bounded size."""
    where = path_text(path)
    if not path.is_dir():
        raise InvalidModelError(f"{where}: not a directory")
    graph = path / "saved_model.pb"
    if not graph.is_file():
        raise InvalidModelError(f"{where}: a directory without saved_model.pb: not a TensorFlow "
                                "SavedModel (model.export(...) writes one)")
    if graph.stat().st_size > MAX_GRAPH_BYTES:
        raise InvalidModelError(f"{where}: saved_model.pb holds {graph.stat().st_size} bytes; "
                                f"at most {MAX_GRAPH_BYTES} are read")


def _signature(loaded: Loaded, path: Path,
               name: str) -> tuple[tf.types.experimental.ConcreteFunction,
                                                               str, str]:
    """The signature function, its one input's name and its one output's name."""
    where = path_text(path)
    signatures = dict(loaded.signatures)
    if name not in signatures:
        raise InvalidModelError(f"{where}: no signature {name!r}. Received signatures: "
                                f"{sorted(signatures) or 'none'}", option="signature")
    fn = signatures[name]
    inputs = fn.structured_input_signature[1]
    outputs = fn.structured_outputs
    if len(inputs) != 1 or not isinstance(outputs, dict) or len(outputs) != 1:
        raise InvalidModelError(f"{where}: signature {name!r} takes {len(inputs)} inputs and "
                                f"gives {len(outputs) if isinstance(outputs, dict) else '?'} "
                                "outputs; a classifier's takes one image and gives one output")
    return fn, next(iter(inputs)), next(iter(outputs))


def load(path: str | Path, signature: str | None = None
         ) -> tuple[Loaded, str, str, tf.types.experimental.ConcreteFunction]:
    """The loaded SavedModel (kept alive), its signature's input and output names, the function."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    path = Path(path)
    check_saved_model(path)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # a damaged directory: one line for the user
        raise InvalidModelError(f"{path_text(path)}: cannot load as a SavedModel "
                                f"({reason(exc)})") from exc
    fn, input_name, output_name = _signature(loaded, path, signature or DEFAULT_SIGNATURE)
    return loaded, input_name, output_name, fn


def convert(path: str | Path, out: str | Path, signature: str | None = None) -> SavedModelSource:
    """Convert the SavedModel at ``path`` with TensorFlow's converter; write ``out`` atomically."""
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    path = Path(path)
    name = signature or DEFAULT_SIGNATURE
    _, input_name, output_name, _ = load(path, name)
    with timed() as t, contextlib.redirect_stdout(io.StringIO()):
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(str(path), signature_keys=[name])
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter's many errors: one line
            raise InvalidModelError(f"{path_text(path)}: TensorFlow's converter cannot convert it "
                                    f"({reason(exc)})") from exc
    write_atomic(out, flatbuffer)
    return SavedModelSource(path, name, input_name, output_name,
                            parse_tflite(flatbuffer, str(out)), t.seconds)


@dataclass(frozen=True)
class Reference:
    """The SavedModel's own outputs on a batch of inputs (in its own layout), float64."""

    loaded: Loaded  # keeps the signature's function alive
    function: tf.types.experimental.ConcreteFunction
    input_name: str
    output_name: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf  # lazy: TensorFlow takes seconds to import

        rows = rows_per_chunk(int(np.prod(x.shape[1:])), CHUNK)
        parts = []
        for start in range(0, len(x), rows):
            batch = tf.constant(np.asarray(x[start:start + rows], np.float32))
            result = self.function(**{self.input_name: batch})[self.output_name]
            parts.append(np.asarray(result, np.float64))
        return np.concatenate(parts)


def reference(source: SavedModelSource) -> Reference:
    """What verify holds the folded file to: the SavedModel computing its own outputs."""
    loaded, input_name, output_name, fn = load(source.path, source.signature)
    return Reference(loaded, fn, input_name, output_name)
