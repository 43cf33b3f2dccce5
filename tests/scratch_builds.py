"""Issue 33's builds: a backbone trained from scratch learns in the default epochs, its BN
statistics fitted in training and recomputed; one file per backbone, so that the suite's
workers take them in parallel (pytest-xdist hands out whole files).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()


def from_scratch_build(arch, digits_rgb, tmp_path):
    """Issue 33: MobileNetV2/V3 (BN momentum 0.999) from scratch on the digits as 32 px RGB
    images. Before, their moving statistics stayed at their initial values and the build
    shipped a model at chance (0.10) with exit 0. Now training fits the momentum to its
    steps and recomputes every statistic: test accuracy >= 0.75 in the default epochs.

    The command: ``edgebn build --arch ARCH --weights none --data-dir DIGITS --image-size 32``."""
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--arch", arch, "--weights", "none", "--data-dir",
                            str(digits_rgb), "--image-size", "32", "--no-bench", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    assert report["keras"]["test_accuracy"] >= 0.75, report["keras"]
    assert report["warnings"] == []
    stats = report["bn_statistics"]
    assert stats["momentum"] == pytest.approx(1 - 1 / 36) and stats["momentum_from"] == [0.999]
    recal = stats["recalibration"]
    assert recal["samples"] == 600 and recal["after"]["stale"] == 0
    assert report["inspect"]["bn"]["verdict"] == "clean"
