"""One .tflite timed as ``edgebn bench`` times it (edgebn.runtime.measure)."""

import numpy as np
from tflite_forms import conv_bn

from edgebn.runtime.measure import time_tflite
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.reader import parse_tflite


def test_the_model_and_its_baseline_are_timed_the_same_way():
    model = parse_tflite(conv_bn(0), "conv_bn.tflite")
    baseline = parse_tflite(conv_bn(1), "other.tflite")
    settings = BenchSettings(runs=20, warmup=2, cost=False)
    tfl, base = time_tflite(model, settings, np.zeros((3, 6, 6, 3), np.float32), baseline)
    assert (tfl.runs, base.runs) == (20, 20) and tfl.model == "conv_bn.tflite"
    assert tfl.cost is None and base.model == "other.tflite"
    alone, none = time_tflite(model, settings)
    assert none is None and alone.runs == 20
