"""The .tflite route of a build (edgebn.pipeline.tflite_build): the model's input layout, the
limits a folded file is held to, and the agreement's document."""

import numpy as np
from tflite_forms import conv_bn, int8_kernel_bn

from edgebn.data.images import Layout
from edgebn.fold.tflite.tflite_fold import fold_tflite
from edgebn.pipeline.build import BuildConfig
from edgebn.pipeline.tflite_build import Agreement, file_limits, model_input
from edgebn.runtime.accuracy import VerifyLimits
from edgebn.tflite.reader import parse_tflite


def test_samples_are_laid_out_as_the_model_input_wants_them():
    x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    assert model_input(x, Layout.nhwc) is x
    nchw = model_input(x, Layout.nchw)
    assert nchw.shape == (2, 3, 4, 5) and nchw.flags.c_contiguous
    assert nchw[1, 2, 3, 4] == x[1, 3, 4, 2]


def test_a_folded_file_is_held_to_the_limits_of_what_it_is():
    config = BuildConfig()
    float32 = parse_tflite(conv_bn(0), "f32.tflite")
    assert file_limits(config, float32, None) == VerifyLimits.of("none")
    half = parse_tflite(conv_bn(0, float16=True), "f16.tflite")
    assert file_limits(config, half, fold_tflite(half)) == VerifyLimits.of("float16")
    int8 = parse_tflite(int8_kernel_bn(0), "i8.tflite")
    assert file_limits(config, int8, None).mode == "int8"
    loose = BuildConfig(min_agreement=0.5)
    assert file_limits(loose, float32, None).min_agreement == 0.5


def test_the_agreement_passes_when_every_check_does():
    limits = VerifyLimits.of("none")
    good = Agreement(10, 0.9, 0.9, 1.0, 1e-6, "ai_edge_litert", limits.judge(1.0, 1e-6))
    bad = Agreement(10, 0.9, 0.8, 0.9, 0.2, "ai_edge_litert", limits.judge(0.9, 0.2))
    assert good.passed and not bad.passed
    doc = bad.to_json()
    assert (doc["original_test_accuracy"], doc["test_accuracy"], doc["passed"]) == (0.9, 0.8, False)
    assert [c["name"] for c in doc["checks"]] == ["top1_agreement", "max_abs_diff"]
