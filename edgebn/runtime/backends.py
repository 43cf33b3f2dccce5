"""Choosing the TFLite interpreter backend, and creating interpreters safely.

Order for ``auto``: ai_edge_litert (LiteRT, the maintained successor),
tflite_runtime (the Pi's classic package), then tf.lite (pulls in TensorFlow).
tflite-runtime 2.14, its last release, is built for NumPy 1.x and fails under
NumPy 2 when an Interpreter is created; that is detected up front.

Every interpreter is made by :func:`load_interpreter`. A model from outside is first
*preflighted* (:func:`preflight`): prepared in a child process without delegates (where
the interpreter's own checks refuse a malformed graph cleanly), then with the delegate
asked for, then invoked once. A native crash there (the XNNPACK delegate reading a SPLIT
that has no SplitOptions, ...) kills only the child and becomes a RuntimeBackendError.
Children are forked by one small server process (``python -m edgebn.runtime.backends``) that
holds only NumPy and the backend, so a check costs a fork, not a Python start; each
model is checked once per process (keyed by its content hash).
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO, Protocol, TypedDict

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import RuntimeBackendError
from edgebn.machine import version
from edgebn.tflite.reader import TFLiteModel, read_tflite


class Backend(str, Enum):
    """An interpreter backend, spelled as its pip package (the same on the device and in JSON)."""

    auto = "auto"
    ai_edge_litert = "ai-edge-litert"
    tflite_runtime = "tflite-runtime"
    tensorflow = "tensorflow"


class TensorDetail(TypedDict):
    """One input or output as the interpreter describes it (``get_input_details()``)."""

    name: str
    index: int
    shape: np.ndarray
    dtype: type[np.generic]
    quantization: tuple[float, int]  # (scale, zero point); a scale of 0: not quantized


class Interpreter(Protocol):
    """What edgebn calls of a TFLite Interpreter: ai_edge_litert's, tflite_runtime's or
    TensorFlow's (their classes share these methods, not a base class)."""

    def allocate_tensors(self) -> None: ...

    def get_input_details(self) -> list[TensorDetail]: ...

    def get_output_details(self) -> list[TensorDetail]: ...

    def resize_tensor_input(self, input_index: int, tensor_size: list[int]) -> None: ...

    def set_tensor(self, tensor_index: int, value: np.ndarray) -> None: ...

    def invoke(self) -> None: ...

    def get_tensor(self, tensor_index: int, subgraph_index: int = 0) -> np.ndarray: ...


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


def backend_version(backend: Backend) -> str:
    """The installed version of ``backend``'s distribution, without importing it."""
    return version(_MODULES[backend][1]) or "unknown"


def import_backend(backend: Backend) -> tuple[type[Interpreter], str, str]:
    """The backend's Interpreter class, its package name and its installed version."""
    module, _, short = _MODULES[backend]
    version = backend_version(backend)
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
        raise RuntimeBackendError(f"runtime {backend.value}: cannot import {module} "
                                  f"({exc})") from exc
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def interpreter_errors(where: str) -> Iterator[None]:
    """The interpreter's ValueError/RuntimeError (set_tensor, resize, invoke, ...) as one line."""
    try:
        yield
    except (ValueError, RuntimeError) as exc:
        raise RuntimeBackendError(f"{where}: {_first_line(exc)}") from exc


def _no_delegates(cls: type[Interpreter]) -> object | None:
    """The op resolver without default delegates (XNNPACK), or None if the backend has none."""
    resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
    return None if resolver is None else resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def load_interpreter(  # noqa: PLR0913 - the interpreter's own options
    model: TFLiteModel | str | Path,
    backend: Backend | str = Backend.auto,
    threads: int = 1,
    xnnpack: bool = True,
    preserve_all_tensors: bool = False,
    checked: bool = True,
) -> tuple[Interpreter, BackendInfo]:
    """An allocated interpreter for ``model`` and a description of its backend.

    A path is read and bounds-checked first, so that a malformed model ends in an
    InvalidModelError instead of reaching the interpreter's native code; a parsed
    model is handed over from memory (``model_content``), never read again. Then it is
    preflighted in a child process (:func:`preflight`) unless ``checked=False``: only for
    models edgebn derives from one already preflighted, or builds itself.
    """
    if threads < 1:
        raise RuntimeBackendError(f"threads must be >= 1. Received: threads={threads}")
    if not isinstance(model, TFLiteModel):
        model = read_tflite(model)
    chosen = resolve_backend(backend)
    cls, name, version = import_backend(chosen)
    label = f"{name} {version}"
    if checked:
        refusal = preflight(model, chosen, xnnpack).refusal
        if refusal is not None:
            raise RuntimeBackendError(f"{model.path}: {label} cannot load this model: {refusal}")
    kwargs: dict[str, object] = {"model_content": model.data, "num_threads": threads}
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if not xnnpack:
        resolver = _no_delegates(cls)
        if resolver is None:
            raise RuntimeBackendError(f"{label}: cannot turn XNNPACK off with this backend")
        kwargs["experimental_op_resolver_type"] = resolver
    try:
        interpreter = cls(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise RuntimeBackendError(f"{model.path}: {label} cannot load this model: "
                                  f"{_first_line(exc)}") from exc
    return interpreter, BackendInfo(name, version, threads, xnnpack)


def delegate_partitions(interpreter: Interpreter) -> int | None:
    """How many delegate nodes (XNNPACK partitions) the interpreter's graph has; None where the
    runtime does not say. One partition means every operator was delegated; each operator the
    delegate refuses splits the graph."""
    try:
        details = interpreter._get_ops_details()  # noqa: SLF001 - the only view of the nodes
    except (AttributeError, ValueError, RuntimeError):
        return None
    return sum(1 for d in details if d.get("op_name") == "DELEGATE")


# ---------------------------------------------------------------- the preflight

PREFLIGHT_TIMEOUT_S = 300.0  # a model that takes longer to prepare and run once is refused
_STAGES = {"prepare": "preparing this model",
           "delegate": "preparing this model with the XNNPACK delegate",
           "invoke": "running this model once"}


@dataclass(frozen=True)
class Preflight:
    """What the child process found: why the model cannot be loaded (None: it can)."""

    refusal: str | None
    peak_rss_mb: float  # the child's


_PREFLIGHTS: dict[tuple[str, str, bool], Preflight] = {}


def preflight(model: TFLiteModel, backend: Backend | str = Backend.auto,
              xnnpack: bool = True) -> Preflight:
    """``model`` prepared and invoked once in a child process (see the module docstring)."""
    chosen = resolve_backend(backend)
    key = (hashlib.sha256(model.data).hexdigest(), chosen.value, xnnpack)
    if key not in _PREFLIGHTS:
        _PREFLIGHTS[key] = _Server.get(chosen).check(model.data, xnnpack)
    return _PREFLIGHTS[key]


class _Server:
    """The forking server (``python -m edgebn.runtime.backends BACKEND``), one per backend."""

    _running: dict[Backend, _Server] = {}

    def __init__(self, backend: Backend) -> None:
        env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
        self.proc = subprocess.Popen(  # stderr: the interpreters' log lines, not ours
            [sys.executable, "-m", "edgebn.runtime.backends", backend.value], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        atexit.register(self.stop)

    @classmethod
    def get(cls, backend: Backend) -> _Server:
        server = cls._running.get(backend)
        if server is None or server.proc.poll() is not None:
            server = cls._running[backend] = cls(backend)
        return server

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the server and a child it forked
            except ProcessLookupError:
                pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()

    def check(self, data: bytes, xnnpack: bool) -> Preflight:
        ready: list[IO[bytes]] = []
        try:
            self.proc.stdin.write(b"%d %d\n" % (int(xnnpack), len(data)) + data)
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], PREFLIGHT_TIMEOUT_S)
            line = self.proc.stdout.readline() if ready else b""
        except OSError:
            line = b""
        if not line:
            self.stop()
            return Preflight("the interpreter's check process died" if ready else
                             f"the interpreter did not finish within {PREFLIGHT_TIMEOUT_S:.0f} s",
                             0.0)
        return _outcome(json.loads(line))


def _outcome(reply: JsonDict) -> Preflight:
    """The server's reply as a Preflight: the child's refusal, its crash, or None."""
    lines = reply["lines"]
    stage = next((ln.split()[1] for ln in reversed(lines) if ln.startswith("stage ")), "prepare")
    done = [json.loads(ln[5:]) for ln in lines if ln.startswith("done ")]  # [refusal or None]
    rss = reply["rss_kb"] / 1024
    if reply["signal"]:
        try:
            name = signal.Signals(reply["signal"]).name
        except ValueError:
            name = "unknown signal"
        return Preflight(f"the interpreter crashed {_STAGES[stage]} (signal {reply['signal']}, "
                         f"{name})", rss)
    if not done:
        return Preflight(f"the interpreter's check ended with exit code {reply['code']} "
                         f"{_STAGES[stage]}", rss)
    return Preflight(done[0], rss)


def _check(data: bytes, backend: Backend, xnnpack: bool, report: IO[str]) -> None:
    """In the forked child: prepare without delegates, then as asked, then invoke once."""
    def say(line: str) -> None:
        report.write(line + "\n")
        report.flush()

    cls, _, _ = import_backend(backend)
    resolver = _no_delegates(cls)
    say("stage prepare")
    try:
        interp = None
        if resolver is not None:
            interp = cls(model_content=data, num_threads=1, experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
        if xnnpack or interp is None:
            say("stage delegate")
            interp = cls(model_content=data, num_threads=1)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        say("done " + json.dumps(_first_line(exc)))
        return
    say("stage invoke")
    rng = np.random.default_rng(0)
    try:  # random floats, integer zeros (indices in range); an error here is the caller's to see
        for d in interp.get_input_details():
            floating = np.issubdtype(d["dtype"], np.floating)
            x = rng.random(d["shape"]) if floating else np.zeros(d["shape"])
            interp.set_tensor(d["index"], x.astype(d["dtype"]))
        interp.invoke()
    except (ValueError, RuntimeError, TypeError):
        pass
    say("done null")


def _serve(backend: Backend) -> None:
    """The server: per request (``XNNPACK SIZE\\n`` then the model), fork a child to check it,
    reap it and answer one JSON line: what it said, how it ended, its peak memory."""
    import_backend(backend)  # once, before forking: the children inherit it
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while header := requests.readline():
        xnnpack, size = (int(v) for v in header.split())
        data = requests.read(size)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            os.close(r)
            with os.fdopen(w, "w") as report:
                try:
                    _check(data, backend, bool(xnnpack), report)
                except BaseException:  # noqa: BLE001 - reported as the exit code
                    os._exit(3)
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as pipe:
            lines = pipe.read().splitlines()
        _, status, usage = os.wait4(pid, 0)
        reply = {"lines": lines, "rss_kb": usage.ru_maxrss,
                 "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                 "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":  # the preflight server
    _serve(Backend(sys.argv[1]))
