"""Choosing the TFLite interpreter backend.

Order for ``auto``: ai_edge_litert (LiteRT, the maintained successor),
tflite_runtime (the Pi's classic package), then tf.lite (pulls in TensorFlow).
tflite-runtime 2.14, its last release, is built for NumPy 1.x and fails under
NumPy 2 when an Interpreter is created; that is detected up front.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import RuntimeBackendError
from edgebn.tflite import TFLiteModel, read_tflite


class Backend(str, Enum):
    """An interpreter backend, spelled as its pip package (the same on the device and in JSON)."""

    auto = "auto"
    ai_edge_litert = "ai-edge-litert"
    tflite_runtime = "tflite-runtime"
    tensorflow = "tensorflow"


DEVICE_BACKENDS = (Backend.ai_edge_litert, Backend.tflite_runtime)  # what a Pi can install

_MODULES = {
    Backend.ai_edge_litert: ("ai_edge_litert.interpreter", "ai-edge-litert", "ai_edge_litert"),
    Backend.tflite_runtime: ("tflite_runtime.interpreter", "tflite-runtime", "tflite_runtime"),
    Backend.tensorflow: ("tensorflow.lite.python.interpreter", "tensorflow", "tensorflow"),
}


@dataclass(frozen=True)
class BackendInfo:
    name: str  # the package, e.g. "ai_edge_litert"
    version: str
    threads: int
    xnnpack: bool

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _import_backend(backend: Backend) -> tuple[Any, str, str]:
    """The backend's Interpreter class, its package name and its installed version."""
    module, dist, short = _MODULES[backend]
    version = _version(dist)
    if backend is Backend.tflite_runtime and int(np.__version__.split(".")[0]) >= 2:
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if major_minor and major_minor <= (2, 14):
            raise RuntimeBackendError(
                f"tflite-runtime {version} is built for NumPy 1.x and this environment has "
                f"NumPy {np.__version__}: install 'numpy<2' or use ai-edge-litert"
            )
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeBackendError(f"runtime {backend.value}: cannot import {module} ({exc})") from exc
    return mod.Interpreter, short, version


def resolve_backend(backend: Backend | str = Backend.auto) -> Backend:
    """The concrete backend ``auto`` stands for here, or ``backend`` itself if importable."""
    backend = Backend(backend)
    if backend is not Backend.auto:
        return backend
    for candidate in (Backend.ai_edge_litert, Backend.tflite_runtime, Backend.tensorflow):
        module = _MODULES[candidate][0].split(".")[0]
        if importlib.util.find_spec(module) is not None:
            if candidate is Backend.tflite_runtime and int(np.__version__.split(".")[0]) >= 2:
                continue
            return candidate
    raise RuntimeBackendError(
        "no TFLite interpreter found: pip install ai-edge-litert (or tflite-runtime with numpy<2)"
    )


def load_interpreter(
    model: TFLiteModel | str | Path,
    backend: Backend | str = Backend.auto,
    threads: int = 1,
    xnnpack: bool = True,
) -> tuple[Any, BackendInfo]:
    """An allocated interpreter for ``model`` and a description of its backend.

    A path is read and bounds-checked first, so that a malformed model ends in an
    InvalidModelError instead of reaching the interpreter's native code; a parsed
    model is handed over from memory (``model_content``), never read again.
    """
    if threads < 1:
        raise RuntimeBackendError(f"threads must be >= 1. Received: threads={threads}")
    if not isinstance(model, TFLiteModel):
        model = read_tflite(model)
    chosen = resolve_backend(backend)
    cls, name, version = _import_backend(chosen)
    label = f"{name} {version}"
    kwargs: dict[str, Any] = {"model_content": model.data, "num_threads": threads}
    if not xnnpack:
        op_resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
        if op_resolver is None:
            raise RuntimeBackendError(f"{label}: cannot turn XNNPACK off with this backend")
        kwargs["experimental_op_resolver_type"] = op_resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeBackendError(f"{model.path}: {label} cannot load this model: {first}") from exc
    return interpreter, BackendInfo(name, version, threads, xnnpack)
