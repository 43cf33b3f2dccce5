"""What a long run tells its user as it goes, and how long each of its stages took.

The library reports through a :class:`Progress` (the CLI's is a rich display); :class:`Stages`
times each stage once, in one place, and the result carries those seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


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
