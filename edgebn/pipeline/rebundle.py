"""``edgebn bundle BUILD``: a device bundle from a finished build directory on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebn.data.arrays import load_samples
from edgebn.deploy.bundle import (
    GOLDEN_SAMPLES,
    BundleResult,
    BundleSource,
    bundle,
    check_bundle_out,
)
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.pipeline.report_read import read_report
from edgebn.tflite.reader import read_tflite


def source_from_build_dir(build_dir: str | Path) -> BundleSource:
    """What a bundle is made of, from a build directory: its report.json, model and samples.npy."""
    build_dir = Path(build_dir)
    report = read_report(build_dir / "report.json")
    if report.preprocessing is None or report.labels is None:
        raise InvalidModelError(f"{report.path}: not an edgebn build report (no "
                                "dataset.preprocessing or dataset.class_names)")
    samples = build_dir / "samples.npy"
    if not samples.is_file():
        raise EdgebnError(f"{samples}: missing (rebuild with this edgebn to bundle it)")
    x = load_samples(samples)  # headers and sizes checked before allocation
    want = tuple(report.preprocessing.input_shape)
    if x.ndim != 4 or tuple(x.shape[1:]) != want or x.dtype.kind != "f":
        raise InvalidModelError(f"{samples}: shape {list(x.shape)} ({x.dtype}), expected "
                                f"float (N, {', '.join(map(str, want))})")
    return BundleSource(read_tflite(report.tflite), report.preprocessing, report.labels,
                        x[:GOLDEN_SAMPLES].astype(np.float32), report.arch, report.quantize,
                        report.test_accuracy, report.bn_verdict)


def bundle_build(build_dir: str | Path, out: str | Path, sign: Path | None = None,
                 profile: bool = False) -> BundleResult:
    """``edgebn bundle BUILD --out OUT [--sign KEY] [--profile]``: a bundle from a build
    directory."""
    check_bundle_out(Path(out))
    return bundle(source_from_build_dir(build_dir), out, sign, profile)
