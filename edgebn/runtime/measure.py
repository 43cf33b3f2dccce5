"""One .tflite timed as ``edgebn bench`` times it: in this process or a fresh one, with its cost."""

from __future__ import annotations

import numpy as np

from edgebn.runtime.cost import with_cost
from edgebn.runtime.isolate import isolated_tflite
from edgebn.runtime.timing import BenchSettings, TFLiteStats, bench_tflite
from edgebn.tflite.reader import TFLiteModel


def time_tflite(model: TFLiteModel, settings: BenchSettings, data: np.ndarray | None = None,
                baseline: TFLiteModel | None = None) -> tuple[TFLiteStats, TFLiteStats | None]:
    """``bench_tflite``, in a fresh process when ``settings.isolate``; the model with its cost."""
    if settings.isolate:
        tfl, base = isolated_tflite(model, settings, data, baseline)
    else:
        tfl, base = bench_tflite(model, settings, data, baseline)
    if settings.cost:
        tfl = with_cost(tfl, model, settings)
    return tfl, base
