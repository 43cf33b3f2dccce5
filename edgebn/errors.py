"""The project's exception types, and how their messages show a path or a cause.

The CLI turns any of them into one stderr line and exit 2.
"""

from __future__ import annotations

import os
import unicodedata


class EdgebnError(Exception):
    """Bad input or usage: the message says what was received and what is allowed.

    ``option`` names the parameter it is about (``"recalibrate_bn"``), when one is: the CLI
    prints the flag's spelling before the message; the library never spells flags.
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InvalidModelError(EdgebnError):
    """A file that cannot be read as the model it claims to be (.tflite or .keras)."""


class DatasetError(EdgebnError):
    """A dataset that is missing, empty, unreadable or has fewer than two classes."""


class RuntimeBackendError(EdgebnError):
    """No usable TFLite interpreter backend, or the one asked for cannot run here."""


class FoldError(EdgebnError):
    """A fold that cannot be trusted: the folded model's outputs differ beyond the tolerance."""


def path_text(path: str | os.PathLike) -> str:
    """``path`` as one printable line: itself, or (bytes that are not UTF-8, control
    characters such as a newline) the repr of its bytes, e.g. ``b'caf\\xe9.png'``."""
    text = os.fsdecode(path)
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return repr(os.fsencode(text))
    return text


def reason(exc: BaseException) -> str:
    """An exception's message as one printable line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
