"""The issue's backbone builds on an image folder: a weights file with fine-tuning; from
scratch and int8; each with a report, a clean BN verdict and a bundle that self-tests.

Named to sort early: pytest-xdist hands out files in order, and these are the heaviest.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()
ALPHA = 0.35


def test_build_mobilenet_v2_with_weights_fine_tuned_bundled(photos, mobilenet_weights_untrained,
                                                            tmp_path):
    """The issue's command: exit 0, a report, a clean BN verdict, a bundle that self-tests."""
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--arch", "mobilenet-v2", "--alpha", str(ALPHA),
                            "--image-size", "64", "--data-dir", str(photos),
                            "--weights", str(mobilenet_weights_untrained), "--epochs", "2",
                            "--fine-tune-epochs", "1", "--bundle", "--no-bench",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["model"]["arch"] == "mobilenet-v2" and report["model"]["bn_layers"] == 52
    assert report["model"]["fine_tune_epochs_run"] == 1
    assert report["dataset"]["streamed"] is True
    assert report["dataset"]["input_shape"] == [64, 64, 3]
    assert report["twin"]["available"] is False and "folded" in report["twin"]["reason"]
    assert report["bundle"]["selftest_here"]["passed"] is True
    assert "bench" not in report  # benched backbones: tools/backbone_figures.py, README


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mobilenet-v2", "mobilenet-v3-small"])
def test_backbone_from_scratch_learns_in_the_default_epochs(arch, digits_rgb, tmp_path):
    """Issue 33: MobileNetV2/V3 (BN momentum 0.999) from scratch on the digits as 32 px RGB
    images. Before, their moving statistics stayed at their initial values and the build
    shipped a model at chance (0.10) with exit 0. Now training fits the momentum to its
    steps and recomputes every statistic: test accuracy >= 0.75 in the default epochs.
    MobileNetV2 also goes int8 with a bundle that self-tests, float32 beside it."""
    out = tmp_path / "b"
    extra = ["--quantize", "int8", "--bundle"] if arch == "mobilenet-v2" else []
    r = runner.invoke(app, ["build", "--arch", arch, "--weights", "none", "--data-dir",
                            str(digits_rgb), "--image-size", "32", "--no-bench", *extra,
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["keras"]["test_accuracy"] >= 0.75, report["keras"]
    assert report["warnings"] == []
    stats = report["bn_statistics"]
    assert stats["momentum"] == pytest.approx(1 - 1 / 36) and stats["momentum_from"] == [0.999]
    recal = stats["recalibration"]
    assert recal["samples"] == 600 and recal["after"]["stale"] == 0
    assert report["inspect"]["bn"]["verdict"] == "clean"
    if extra:
        assert report["bundle"]["selftest_here"]["passed"] is True
        assert report["tflite"]["quantize"] == "int8"
        assert set(report["precisions"]) == {"float32", "int8"}
