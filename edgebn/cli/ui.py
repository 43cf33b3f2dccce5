"""What the user sees: edgebn's own lines and one progress display, nothing else.

TensorFlow, absl and XLA write their log lines from C++ straight to file descriptor 2,
before Python's logging is even set up (``TF_CPP_MIN_LOG_LEVEL`` does not stop absl's
``I0000 ... cudart_stub.cc`` lines), and Keras, the converter and Python's warnings write
to ``sys.stdout``/``sys.stderr``. :func:`quiet` therefore moves file descriptors 1 and 2
to a log file for the duration of a command and hands edgebn's consoles duplicates of
the real ones: everything that edgebn did not write lands in the log, which is deleted
when the command succeeds (or stops on bad input or Ctrl-C) and named when it fails.
``--verbose`` skips all of this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from typing import Protocol, TextIO, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError

out = Console(highlight=False)  # results: stdout
err = Console(stderr=True, highlight=False)  # progress and errors: stderr


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
    """Keep every line edgebn did not write off the terminal (unless ``verbose``).

    Ctrl-C is one line: the interrupt's own message (a build's says what its directory
    holds now) or "interrupted"; Typer then exits 130.
    """
    try:
        with _quiet(verbose):
            yield
    except KeyboardInterrupt as exc:
        err.print(str(exc) or "interrupted", markup=False, highlight=False, soft_wrap=True)
        raise


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    fds = _real_fds()
    if fds is None:  # not a real terminal or pipe (e.g. Typer's CliRunner): Python level only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
        return
    log = tempfile.NamedTemporaryFile(prefix="edgebn-", suffix=".log", delete=False)
    saved = {fd: os.dup(fd) for fd in fds}
    streams = {1: os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8"),
               2: os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8")}
    ok = False
    try:
        _flush()
        for fd in fds:
            os.dup2(log.fileno(), fd)
        out.file, err.file = streams[1], streams[2]
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _to_log(log.name)
            yield
        ok = True
    except (EdgebnError, KeyboardInterrupt):  # bad input, Ctrl-C: one line says it all
        ok = True
        raise
    finally:
        _flush()
        for fd in fds:
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
        out.file, err.file = None, None  # rich falls back to sys.stdout / sys.stderr
        for s in streams.values():
            s.close()
        log.close()
        if ok:
            os.unlink(log.name)
        elif os.path.getsize(log.name):
            err.print(f"(TensorFlow's own log of this run: {log.name})", highlight=False,
                      soft_wrap=True)
        else:
            os.unlink(log.name)


def _real_fds() -> tuple[int, int] | None:
    try:
        if sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2:
            return (1, 2)
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _flush() -> None:
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()


def _to_log(path: str):
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

    return show


class StageProgress:
    """The progress display of a long command: one line per stage, an epoch bar in training.

    On a terminal it is a live rich display; elsewhere (CI logs, pipes) each finished
    stage is one plain line.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or err
        self.live = self.console.is_terminal
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.fields[info]}"), TimeElapsedColumn(), console=self.console, transient=True)
        self.task: TaskID | None = None
        self.epochs: TaskID | None = None
        self.detail = ""

    def __enter__(self) -> StageProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()

    def start(self, stage: str, detail: str) -> None:
        self.detail = detail
        if self.live:
            self.task = self.bar.add_task(f"{stage}", total=None, info=detail)

    def done(self, stage: str, seconds: float) -> None:
        if self.live and self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        if self.epochs is not None:
            self.bar.remove_task(self.epochs)
            self.epochs = None
        self.console.print(f"[green]✓[/] {stage:<8} {seconds:6.1f} s  {self.detail}")

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        info = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                         if k in ("loss", "accuracy", "val_accuracy"))
        if not self.live:
            return
        if self.epochs is None:
            self.epochs = self.bar.add_task("  epoch", total=epochs, info="")
        self.bar.update(self.epochs, completed=epoch, info=f"{epoch}/{epochs}  {info}")

    def note(self, message: str) -> None:
        self.console.print(f"  {message}")


def print_json(doc: object) -> None:
    """A JSON document on stdout, plain (no colour, no wrapping), for machines."""
    stream: TextIO = out.file
    stream.write(json.dumps(doc, indent=2) + "\n")
    stream.flush()


class Documented(Protocol):
    """A result with its JSON document (../shared/CONTRACTS.md)."""

    def to_json(self) -> JsonDict: ...


R = TypeVar("R", bound=Documented)


def show(result: R, as_json: bool, table: Callable[[R], object]) -> None:
    """``result`` for machines, its document on stdout (``--json``), or for people: ``table``."""
    if as_json:
        print_json(result.to_json())
    else:
        table(result)
