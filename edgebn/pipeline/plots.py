"""The build's plots, written as PNG beside report.md (matplotlib, Agg, atomic writes).

* ``training.png``: validation accuracy against optimizer steps for the BN model and its
  BN-free baseline, the target (the baseline's best validation accuracy) as a line, and where
  each curve first reaches it: the seed's claim (fewer steps with BN), seen;
* ``latency.png``: each runtime's latency distribution on a log axis;
* ``profile.png``: the slowest operators of the .tflite, residual BN marked.

Each function returns a :class:`Plot`: the file and what it shows (its curves and lines by
label), so a test can tell what was drawn without reading pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from edgebn.bench.run import BenchRow
from edgebn.files import atomic_path
from edgebn.runtime.profile.result import OpTime

if TYPE_CHECKING:  # named in annotations only: matplotlib is imported when a plot is drawn
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Plot:
    path: Path
    shows: tuple[str, ...]  # the labels drawn: curves, lines, bars


@dataclass(frozen=True)
class Curve:
    """One model's validation accuracy, epoch by epoch."""

    label: str
    val_accuracy: tuple[float, ...]
    steps_per_epoch: int


def _pyplot() -> ModuleType:
    import matplotlib  # lazy: matplotlib only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib only when a plot is drawn

    return plt


def _save(fig: Figure, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def training(curves: Sequence[Curve], target: float | None, path: str | Path,
             title: str = "") -> Plot:
    """Validation accuracy against steps; the target line and where each curve reaches it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    shows = []
    for curve in curves:
        steps = np.arange(1, len(curve.val_accuracy) + 1) * max(curve.steps_per_epoch, 1)
        (line,) = ax.plot(steps, curve.val_accuracy, marker="o", markersize=3, label=curve.label)
        shows.append(curve.label)
        reached = next((i for i, a in enumerate(curve.val_accuracy)
                        if target is not None and a >= target), None)
        if reached is not None:
            ax.axvline(steps[reached], color=line.get_color(), linestyle=":", linewidth=1)
            ax.annotate(f"{steps[reached]} steps", (steps[reached], target),
                        textcoords="offset points", xytext=(4, -12), fontsize=8,
                        color=line.get_color())
    if target is not None:
        ax.axhline(target, color="black", linestyle="--", linewidth=1,
                   label=f"target {target:.4f}")
        shows.append("target")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, Path(path))
    return Plot(Path(path), tuple(shows))


def latency(rows: Sequence[BenchRow], path: str | Path, title: str = "") -> Plot:
    """Each row's latency samples (``label``, ``samples_ns``) as a box, on a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.boxplot([np.asarray(r.samples_ns) / 1e3 for r in rows], orientation="horizontal",
               whis=(1, 99), showfliers=False)
    ax.set_yticks(range(1, len(rows) + 1), [r.label for r in rows])
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (µs, log scale); box: p25–p75, whiskers: p1–p99")
    ax.set_title(title, fontsize=9)
    _save(fig, Path(path))
    return Plot(Path(path), tuple(r.label for r in rows))


PROFILE_TOP = 15


def profile(operators: Sequence[OpTime], path: str | Path, title: str = "",
            top: int = PROFILE_TOP) -> Plot:
    """The ``top`` slowest operators (``op``, ``index``, ``time_us``, ``residual_bn``) as bars;
    residual BN in red."""
    plt = _pyplot()
    slow = sorted((o for o in operators if o.time_us is not None), key=lambda o: -o.time_us)[:top]
    slow = slow[::-1]  # the slowest at the top
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(slow) + 1.5))
    colours = ["tab:red" if o.residual_bn else "tab:blue" for o in slow]
    labels = [f"{o.index} {o.op}" for o in slow]
    ax.barh(range(len(slow)), [o.time_us for o in slow], color=colours)
    ax.set_yticks(range(len(slow)), labels, fontsize=8)
    ax.set_xlabel("time per invoke (µs); red: residual BN")
    ax.set_title(title, fontsize=9)
    _save(fig, Path(path))
    return Plot(Path(path), tuple(labels) + (("residual BN",) if any(o.residual_bn for o in slow)
                                             else ()))
