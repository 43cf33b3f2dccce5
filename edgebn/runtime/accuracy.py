"""Run a .tflite over a whole split and compare it with the Keras model it came from."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Protocol

import numpy as np

from edgebn.choices import quantize_spec
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Backend, Interpreter, interpreter_errors, load_interpreter
from edgebn.tflite.quantization import dequantize, quantize
from edgebn.tflite.reader import TFLiteModel

CHUNK = 256  # samples per invoke at most: the input is resized to this batch
CHUNK_BYTES = 4 * 2**20  # inputs per batch that a check runs at once: activations grow with it


def rows_per_chunk(sample_elements: int, most: int) -> int:
    """How many float32 samples of ``sample_elements`` values to run at once: at most ``most``, and
    at most CHUNK_BYTES of inputs. MobileNetV2 at 224 px run 64 (or 256) at a time took a
    build to 6 GB of resident memory; 6 at a time, under 2."""
    return max(1, min(most, CHUNK_BYTES // (sample_elements * 4)))


@dataclass(frozen=True)
class VerifyLimits:
    """How far a .tflite may be from the model it came from: a quantize mode's row
    (edgebn.choices), or the user's own where they loosen it."""

    min_agreement: float
    max_prob_diff: float
    mode: str = "none"

    @classmethod
    def of(cls, mode: str | Enum, min_agreement: float | None = None,
           max_prob_diff: float | None = None) -> VerifyLimits:
        spec = quantize_spec(mode)
        return cls(spec.min_agreement if min_agreement is None else min_agreement,
                   spec.max_prob_diff if max_prob_diff is None else max_prob_diff, spec.name)

    def judge(self, agreement: float, max_prob_diff: float) -> tuple[VerifyCheck, ...]:
        return (VerifyCheck("top1_agreement", agreement, self.min_agreement, ">=",
                            agreement >= self.min_agreement),
                VerifyCheck("max_abs_diff", max_prob_diff, self.max_prob_diff, "<=",
                            bool(max_prob_diff <= self.max_prob_diff)))

    def to_json(self) -> JsonDict:
        return {"mode": self.mode, "min_agreement": self.min_agreement,
                "max_prob_diff": self.max_prob_diff}


@dataclass(frozen=True)
class VerifyCheck:
    """One of verify's measures against its limit."""

    name: str  # "top1_agreement" | "max_abs_diff"
    value: float
    limit: float
    relation: str  # how value must stand to the limit: ">=" or "<="
    passed: bool

    def describe(self) -> str:
        what = {"top1_agreement": "top-1 agreement", "max_abs_diff": "max |Δp|"}[self.name]
        if self.passed:
            return f"{what} {self.value:.4g} {self.relation} {self.limit:g}"
        return f"{what} {self.value:.4g}, the limit {self.relation} {self.limit:g}"

    def to_json(self) -> JsonDict:
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    samples: int
    tflite_accuracy: float
    keras_accuracy: float | None
    top1_agreement: float | None
    max_abs_diff: float | None  # max |p_tflite - p_keras| over all samples and classes
    backend: str
    checks: tuple[VerifyCheck, ...] = ()  # against the limits, when judged (judged())

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def judged(self, limits: VerifyLimits) -> VerifyResult:
        """With its checks against ``limits`` (a reference model is needed: Keras')."""
        if self.top1_agreement is None or self.max_abs_diff is None:
            return self
        return replace(self, checks=limits.judge(self.top1_agreement, self.max_abs_diff))

    def to_json(self) -> JsonDict:
        return {"samples": self.samples, "test_accuracy": self.tflite_accuracy,
                "keras_test_accuracy": self.keras_accuracy, "top1_agreement": self.top1_agreement,
                "max_abs_diff": self.max_abs_diff, "backend": self.backend,
                "passed": self.passed, "checks": [c.to_json() for c in self.checks]}


class Streamed(Protocol):
    """A split read a chunk at a time, never whole (:class:`edgebn.data.folder.ImageFiles`)."""

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def chunks(self, size: int) -> Iterator[np.ndarray]: ...


class Predicts(Protocol):
    """The model a .tflite came from, as verify runs it (a ``keras.Model``)."""

    def predict(self, x: np.ndarray, batch_size: int, verbose: int) -> np.ndarray: ...


Samples = np.ndarray | Streamed  # a split's inputs: in memory, or streamed


def _chunks(x: Samples) -> Iterator[np.ndarray]:
    """``x`` a chunk at a time: an array, or a streamed split's files.

    A chunk is CHUNK rows, fewer for large inputs (:func:`rows_per_chunk`).
    """
    if isinstance(x, np.ndarray):
        rows = rows_per_chunk(int(np.prod(x.shape[1:])), CHUNK)
        for start in range(0, len(x), rows):
            yield x[start:start + rows]
        return
    yield from x.chunks(rows_per_chunk(int(np.prod(x.input_shape)), CHUNK))


def predict_tflite(model: TFLiteModel | str | Path, x: Samples, backend: Backend
                   | str = Backend.auto,
                   threads: int = 1) -> tuple[np.ndarray, str]:
    """Float outputs of the .tflite for every row of ``x`` (quantized I/O handled)."""
    outputs, info, _ = _predict(model, x, backend, threads)
    return outputs, info


def _predict(model: TFLiteModel | str | Path, x: Samples, backend: Backend | str, threads: int,
             keras_model: Predicts | None = None) -> tuple[np.ndarray, str, np.ndarray | None]:
    """The .tflite's outputs, and ``keras_model``'s on the same rows when given; ``x`` is
    read one chunk at a time."""
    interp, info = load_interpreter(model, backend, threads)
    if not interp.get_input_details() or not interp.get_output_details():
        raise EdgebnError(f"{getattr(model, 'path', model)}: the model needs an input and an "
                          "output")
    with interpreter_errors(f"{getattr(model, 'path', model)}: the interpreter cannot run this "
                            "model"):
        return _run(interp, str(info), x, keras_model)


def _run(interp: Interpreter, info: str, x: Samples, keras_model: Predicts | None
         ) -> tuple[np.ndarray, str, np.ndarray | None]:
    inp = interp.get_input_details()[0]
    outputs, keras_outputs = [], []
    for batch in _chunks(x):
        if keras_model is not None:
            keras_outputs.append(np.asarray(keras_model.predict(batch, batch_size=len(batch),
                                                                verbose=0), dtype=np.float32))
        if interp.get_input_details()[0]["shape"][0] != len(batch):
            interp.resize_tensor_input(inp["index"], [len(batch), *inp["shape"][1:]])
            interp.allocate_tensors()
        if np.issubdtype(inp["dtype"], np.integer):
            batch = quantize(batch, inp["quantization"], inp["dtype"])
        interp.set_tensor(inp["index"], batch.astype(inp["dtype"]))
        interp.invoke()
        out = interp.get_output_details()[0]
        outputs.append(dequantize(interp.get_tensor(out["index"]), out["quantization"]))
    return (np.concatenate(outputs), info,
            np.concatenate(keras_outputs) if keras_model is not None else None)


def verify(model: TFLiteModel | str | Path, x: Samples, y: np.ndarray,
           keras_model: Predicts | None = None, backend: Backend
           | str = Backend.auto) -> VerifyResult:
    """Accuracy of the .tflite on (x, y), and its agreement with ``keras_model`` if given.

    ``x``: the inputs as an array, or a streamed folder's files, read a chunk at a time.
    """
    p_tfl, info, p_keras = _predict(model, x, backend, 1, keras_model)
    acc = float((p_tfl.argmax(1) == y).mean())
    if keras_model is None:
        return VerifyResult(len(y), acc, None, None, None, info)
    return VerifyResult(
        samples=len(y), tflite_accuracy=acc,
        keras_accuracy=float((p_keras.argmax(1) == y).mean()),
        top1_agreement=float((p_keras.argmax(1) == p_tfl.argmax(1)).mean()),
        max_abs_diff=float(np.abs(p_keras - p_tfl).max()), backend=info,
    )
