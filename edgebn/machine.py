"""What machine the numbers came from, how much memory this process has used, and where
edgebn keeps what it measures or downloads once per machine (:func:`cache_dir`)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
from pathlib import Path

import numpy as np

from edgebn.documents import JsonDict


def cache_dir() -> Path:
    """edgebn's one cache directory: ``$EDGEBN_CACHE``, or ``~/.cache/edgebn``.

    It holds the ceiling probe's figures (``ceiling.json``) and the emulated Pi's userland
    and wheels (``pi-bookworm-arm64/``).
    """
    return Path(os.environ.get("EDGEBN_CACHE") or Path.home() / ".cache" / "edgebn")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (a Pi says 'Cortex-A72' or its hardware)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str | None:
    """An installed distribution's version, without importing it."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(backend: str | None = None, xnnpack: bool | None = None,
                threads: int | None = None) -> JsonDict:
    """Where the numbers came from. Reads versions without importing TensorFlow."""
    env = {"cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
           "python": platform.python_version(), "numpy": np.__version__,
           "tensorflow": version("tensorflow")}
    if backend is not None:
        env |= {"backend": backend, "xnnpack": xnnpack, "threads": threads}
    return env


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    VmHWM from /proc is preferred: ru_maxrss survives fork+exec on Linux, so an
    isolated worker would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
