"""Reading a build's report.json, hostile or not: ``edgebn check`` and ``edgebn bundle`` use it.

A report is input like any other: :func:`read_report` bounds the file, its nesting,
strings and integers before any field is used, then checks each field it takes (an
accuracy is a finite number in [0, 1]; the model a regular file inside the report's
directory) and refuses anything else in one line naming the field.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import stat
from collections import Counter, namedtuple
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TypeVar

import numpy as np

from edgebn.data.images import Color, Layout, Preprocessing, Resize
from edgebn.documents import JsonDict, JsonValue
from edgebn.errors import EdgebnError, InvalidModelError

MAX_REPORT_BYTES = 16 * 1024 * 1024  # a build's report.json is ~20 KB
MAX_DEPTH = 64  # objects and arrays nested; a build's report nests 7 deep
MAX_STRING = 65536  # characters in any string or key
MAX_PATH = 4096  # characters in a path inside a report (Linux's PATH_MAX)
MAX_DIGITS = 19  # an integer fits in 64 bits
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_SHOWN = reprlib.Repr()  # a received value, shortened
_SHOWN.maxstring = _SHOWN.maxother = 60
E = TypeVar("E", bound=Enum)
_LongInt = namedtuple("_LongInt", "digits")  # too long to convert: refused by name once parsed


def _int(text: str) -> int | _LongInt:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_DIGITS else _LongInt(digits)


def _object(pairs: list[tuple[str, JsonValue]]) -> JsonDict:
    keys = Counter(k for k, _ in pairs)
    if len(keys) < len(pairs):  # two values under one key: which one would a reader see?
        raise ValueError(f"duplicate key {_SHOWN.repr(keys.most_common(1)[0][0])}")
    return dict(pairs)


def _nesting(data: bytes) -> int:
    """How deep arrays and objects nest, counted without parsing (so without recursion).

    Escaped backslashes, then escaped quotes, then strings are dropped; the brackets left
    are counted. Text that is not JSON may count deeper, never shallower, up to where the
    parser would stop.
    """
    unescaped = re.sub(rb'"[^"]*"', b"", data.replace(b"\\\\", b"").replace(b'\\"', b""))
    brackets = np.frombuffer(unescaped.translate(None, _NOT_BRACKETS), np.uint8)
    steps = np.isin(brackets, (ord("["), ord("{"))).astype(np.int8) * 2 - 1
    return int(np.cumsum(steps, dtype=np.int32).max(initial=0))


def _dotted(keys: list[str | int]) -> str:
    """``bench.tflite.runs`` from the walk's keys, each shown short."""
    parts = [f"[{k}]" if isinstance(k, int) else "." + _SHOWN.repr(k)[1:-1] for k in keys]
    return "".join(parts).lstrip(".") or "the report"


def _items(container: dict | list) -> Iterator[tuple[str | int, JsonValue]]:
    return iter(container.items() if isinstance(container, dict) else enumerate(container))


def _bounded_values(doc: JsonValue, where: Path) -> None:
    """Every string, key and integer of ``doc`` within bounds.

    Depth first with one iterator per open container, no recursion: what is alive at once
    is bounded by the nesting, so a document of millions of values costs no more than its
    length (a stack of every value would keep the garbage collector busy).
    """
    keys: list[str | int] = []  # the path to the container being walked
    frames = [_items(doc)] if isinstance(doc, dict | list) else []
    while frames:
        for key, value in frames[-1]:
            if isinstance(value, dict | list):
                keys.append(key)
                frames.append(_items(value))
                longest = max(value, key=len, default="") if isinstance(value, dict) else ""
                if len(longest) > MAX_STRING:
                    raise InvalidModelError(f"{where}: {_dotted(keys)}: a key of {len(longest)} "
                                            f"characters (at most {MAX_STRING})")
                break
            if isinstance(value, _LongInt):
                raise InvalidModelError(f"{where}: {_dotted([*keys, key])}: an integer of "
                                        f"{value.digits} digits (at most {MAX_DIGITS})")
            if isinstance(value, str) and len(value) > MAX_STRING:
                raise InvalidModelError(f"{where}: {_dotted([*keys, key])}: a string of "
                                        f"{len(value)} characters (at most {MAX_STRING})")
        else:
            frames.pop()
            keys = keys[:-1]


def load_json(path: str | Path) -> JsonValue:
    """A JSON file, its size, nesting, strings and integers bounded before they are used."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO in place of the file does not hang
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EdgebnError(f"{p}: not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_REPORT_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError as exc:
        raise EdgebnError(f"{p}: no such file (not a build directory? run edgebn build)") from exc
    except OSError as exc:
        raise EdgebnError(f"{p}: cannot be read ({exc.strerror})") from exc
    if len(data) > MAX_REPORT_BYTES:
        raise EdgebnError(f"{p}: larger than {MAX_REPORT_BYTES >> 20} MiB; not a build report")
    if _nesting(data) > MAX_DEPTH:
        raise EdgebnError(f"{p}: not a readable JSON report (nested more than {MAX_DEPTH} deep)")
    try:
        doc = json.loads(data.decode("utf-8"), parse_int=_int, object_pairs_hook=_object)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgebnError(f"{p}: not a readable JSON report ({exc})") from exc
    _bounded_values(doc, p)
    return doc


@dataclass(frozen=True)
class BuildReport:
    """The parts of a build's report.json that bundle and check use, checked on reading."""

    path: Path
    tflite: Path  # resolved: a regular file inside the report's directory
    test_accuracy: float  # in [0, 1]
    quantize: str = "none"
    arch: str = "custom"
    bn_verdict: str = "unknown"
    preprocessing: Preprocessing | None = None  # needed by a bundle, not by check
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class _Fields:
    """One report's fields, each refused by its dotted name unless of its kind."""

    doc: JsonValue
    where: Path

    def refuse(self, name: str, allowed: str, value: JsonValue) -> InvalidModelError:
        return InvalidModelError(f"{self.where}: {name} must be {allowed}. Received: "
                                 f"{_SHOWN.repr(value)}")

    def get(self, name: str, default: JsonValue = KeyError) -> JsonValue:
        value, parts = self.doc, name.split(".")
        for i, key in enumerate(parts):
            if not isinstance(value, dict):
                raise self.refuse(".".join(parts[:i]) or "the report", "an object", value)
            if key not in value:
                if default is KeyError:
                    raise InvalidModelError(f"{self.where}: not an edgebn build report (it has no "
                                            f"{name})")
                return default
            value = value[key]
        return value

    def text(self, name: str, default: str) -> str:
        value = self.get(name, default)
        if not isinstance(value, str):
            raise self.refuse(name, "a string", value)
        return value

    def model_path(self, name: str) -> Path:
        """Resolved, inside the report's directory (through symlinks too), a regular file."""
        value = self.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH or "\0" in value:
            raise self.refuse(name, f"a path of 1 to {MAX_PATH} characters", value)
        if Path(value).is_absolute():
            raise self.refuse(name, "relative to the report's directory", value)
        root, shown = self.where.parent.resolve(), _SHOWN.repr(value)
        try:
            model = (root / value).resolve()
            mode = model.stat().st_mode if model.is_relative_to(root) else None
        except FileNotFoundError:
            raise EdgebnError(f"{self.where}: its model {shown} does not exist") from None
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise EdgebnError(f"{self.where}: its model {shown} cannot be read "
                              f"({getattr(exc, 'strerror', None) or exc})") from None
        if mode is None:
            raise EdgebnError(f"{self.where}: {name} {shown} leads outside the report's directory, "
                              f"to {str(model)!r}; only a build's own files are gated")
        if not stat.S_ISREG(mode):
            raise EdgebnError(f"{self.where}: its model {shown} is not a regular file")
        return model

    def number(self, name: str, allowed: str, ok: Callable[[float], bool],
               default: JsonValue = KeyError) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
            raise self.refuse(name, allowed, value)  # NaN fails every comparison: ok(NaN) is False
        return float(value)

    def choice(self, name: str, kind: type[E], default: str) -> E:
        value = self.text(name, default)
        if value not in {k.value for k in kind}:
            raise self.refuse(name, f"one of {', '.join(k.value for k in kind)}", value)
        return kind(value)

    def preprocessing(self) -> Preprocessing | None:
        p = "dataset.preprocessing"
        if self.get(p, None) is None:
            return None
        shape = self.get(f"{p}.input_shape")
        if not (isinstance(shape, list) and len(shape) == 3
                and all(type(n) is int and 0 < n <= 65536 for n in shape)):
            raise self.refuse(f"{p}.input_shape", "3 integers in [1, 65536]", shape)
        finite = "a finite number"
        return Preprocessing(
            tuple(shape), self.number(f"{p}.raw_max", f"{finite} > 0", lambda x: 0 < x < math.inf),
            self.number(f"{p}.scale", finite, math.isfinite),
            self.number(f"{p}.offset", finite, math.isfinite, 0.0),
            self.choice(f"{p}.color", Color, "grayscale"),
            self.choice(f"{p}.resize", Resize, "bilinear"),
            self.text(f"{p}.source", "unknown"), self.choice(f"{p}.layout", Layout, "nhwc"))

    def labels(self) -> tuple[str, ...] | None:
        names = self.get("dataset.class_names", None)
        if names is not None and not (isinstance(names, list)
                                      and all(isinstance(n, str) for n in names)):
            raise self.refuse("dataset.class_names", "a list of strings", names)
        return None if names is None else tuple(names)


def read_report(path: str | Path) -> BuildReport:
    """Read and check a report.json (bounded first, :func:`load_json`); refused in one line.

    Only what bundle and check use is read, each field checked: an accuracy is a finite number
    in [0, 1], the model a regular file inside the report's directory.
    """
    p = Path(path)
    f = _Fields(load_json(p), p)
    f.get("tflite.path")
    accuracy = f.number("tflite.test_accuracy", "a finite number in [0, 1]", lambda x: 0 <= x <= 1)
    return BuildReport(p, f.model_path("tflite.path"), accuracy, f.text("tflite.quantize", "none"),
                       f.text("model.arch", "custom"), f.text("inspect.bn.verdict", "unknown"),
                       f.preprocessing(), f.labels())
