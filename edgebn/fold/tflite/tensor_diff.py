"""How a tensor of one file differs from the same tensor of another, as the fold's proof measures
it.

Relative to the tensor's own largest finite value; equal infinities are equal (litert-torch
pads a max-pool with −inf, in both files); a tensor whose every value is 0 is measured
against the largest value of any tensor compared (:func:`activation_scale`), so the measure
stays finite.
"""

from __future__ import annotations

import numpy as np


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The largest |a − b| (equal infinities, a −inf padding value in both, are equal; an
    infinity or NaN on one side only is an infinite difference), and the largest finite |a|."""
    if not a.size:
        return 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.where(a == b, 0.0, np.abs(a.astype(np.float64) - b))
    d = np.where(np.isnan(d), np.inf, d)
    finite = np.abs(a[np.isfinite(a)])
    return float(d.max()), float(finite.max()) if finite.size else 0.0


def activation_scale(runs: list[dict[tuple[int, int], np.ndarray]],
                      keys: list[tuple[int, int]]) -> float:
    """The largest finite |value| of any compared tensor: what a tensor whose own values are
    all 0 is measured against (float32 rounding elsewhere in the graph is of this size)."""
    scale = 0.0
    for run in runs:
        for key in keys:
            values = run[key]
            finite = np.abs(values[np.isfinite(values)]) if values.size else values
            if finite.size:
                scale = max(scale, float(finite.max()))
    return scale
