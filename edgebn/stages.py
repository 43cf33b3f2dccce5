"""Helpers every stage uses: atomic writes, and stage timing with progress, in one place."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    The temporary name keeps the target's suffix (Keras insists on ``.keras``), and
    an interrupted writer leaves at most a hidden ``.tmp-*`` file, never a
    half-written artifact under the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.stem}-", suffix=target.suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(target: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``target`` atomically (temp file + rename)."""
    with atomic_path(target) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(target)


@dataclass
class Timer:
    seconds: float = 0.0


@contextlib.contextmanager
def timed() -> Iterator[Timer]:
    """``with timed() as t: ...`` then ``t.seconds`` holds the wall time of the block."""
    t = Timer()
    start = time.perf_counter()
    try:
        yield t
    finally:
        t.seconds = time.perf_counter() - start


class Progress(Protocol):
    """What a long run tells its user: stages, training epochs, and notes."""

    def start(self, stage: str, detail: str) -> None: ...

    def done(self, stage: str, seconds: float) -> None: ...

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None: ...

    def note(self, message: str) -> None: ...


class Silent:
    """A Progress that shows nothing (the library's default)."""

    def start(self, stage: str, detail: str) -> None:
        pass

    def done(self, stage: str, seconds: float) -> None:
        pass

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        pass

    def note(self, message: str) -> None:
        pass


SILENT = Silent()


@dataclass
class Stages:
    """Times each stage of a run, records it, and tells ``progress`` as it goes."""

    progress: Progress = field(default_factory=Silent)
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self.progress.start(name, detail)
        start = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.progress.done(name, self.seconds[name])


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; swap it in only on success.

    An existing ``target`` is replaced as a whole (renamed aside, then removed), so a
    reader sees the old directory or the new one, never a mixture.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
            os.replace(target, old / target.name)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
