"""Run a .tflite over a whole split and compare it with the Keras model it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.runtime import Backend, load_interpreter
from edgebn.tensors import dequantize, quantize
from edgebn.tflite import TFLiteModel

CHUNK = 256  # samples per invoke: the input is resized to this batch


@dataclass(frozen=True)
class VerifyResult:
    samples: int
    tflite_accuracy: float
    keras_accuracy: float | None
    top1_agreement: float | None
    max_abs_diff: float | None  # max |p_tflite - p_keras| over all samples and classes
    backend: str

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "test_accuracy": self.tflite_accuracy,
                "keras_test_accuracy": self.keras_accuracy, "top1_agreement": self.top1_agreement,
                "max_abs_diff": self.max_abs_diff, "backend": self.backend}


def predict_tflite(model: TFLiteModel | str | Path, x: np.ndarray, backend: Backend | str = Backend.auto,
                   threads: int = 1) -> tuple[np.ndarray, str]:
    """Float outputs of the .tflite for every row of ``x`` (quantized I/O handled)."""
    interp, info = load_interpreter(model, backend, threads)
    inp = interp.get_input_details()[0]
    outputs = []
    for start in range(0, len(x), CHUNK):
        batch = x[start:start + CHUNK]
        if interp.get_input_details()[0]["shape"][0] != len(batch):
            interp.resize_tensor_input(inp["index"], [len(batch), *inp["shape"][1:]])
            interp.allocate_tensors()
        if np.issubdtype(inp["dtype"], np.integer):
            batch = quantize(batch, inp["quantization"], inp["dtype"])
        interp.set_tensor(inp["index"], batch.astype(inp["dtype"]))
        interp.invoke()
        out = interp.get_output_details()[0]
        outputs.append(dequantize(interp.get_tensor(out["index"]), out["quantization"]))
    return np.concatenate(outputs), str(info)


def verify(model: TFLiteModel | str | Path, x: np.ndarray, y: np.ndarray,
           keras_model: Any = None, backend: Backend | str = Backend.auto) -> VerifyResult:
    """Accuracy of the .tflite on (x, y), and its agreement with ``keras_model`` if given."""
    p_tfl, info = predict_tflite(model, x, backend)
    acc = float((p_tfl.argmax(1) == y).mean())
    if keras_model is None:
        return VerifyResult(len(y), acc, None, None, None, info)
    p_keras = np.asarray(keras_model.predict(x, batch_size=CHUNK, verbose=0), dtype=np.float32)
    return VerifyResult(
        samples=len(y), tflite_accuracy=acc,
        keras_accuracy=float((p_keras.argmax(1) == y).mean()),
        top1_agreement=float((p_keras.argmax(1) == p_tfl.argmax(1)).mean()),
        max_abs_diff=float(np.abs(p_keras - p_tfl).max()), backend=info,
    )
