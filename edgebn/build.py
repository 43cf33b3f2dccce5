"""``edgebn build``: train -> convert -> verify -> inspect -> bench -> report, in one call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.analysis import InspectResult, inspect_tflite
from edgebn.bench import BenchResult, BenchSettings, bench
from edgebn.bundle import GOLDEN_SAMPLES
from edgebn.convert import (
    REPRESENTATIVE_SAMPLES,
    ConvertResult,
    FoldedConversion,
    Quantize,
    convert,
    convert_model,
)
from edgebn.data import DatasetName, load_dataset
from edgebn.errors import EdgebnError
from edgebn.models import DEFAULT_ARCH, Arch
from edgebn.report import write_report, write_report_json
from edgebn.runtime import Backend
from edgebn.stages import atomic_path, timed
from edgebn.train import TrainConfig, TrainResult, save_keras, train
from edgebn.verify import VerifyResult, verify


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("build")
    dataset: DatasetName = DatasetName.digits
    data_dir: Path | None = None
    image_size: int = 32
    color: str = "grayscale"
    limit: int | None = None  # cap on samples, for quick runs on big datasets
    arch: Arch = DEFAULT_ARCH
    bn: bool = True
    epochs: int = 40
    batch_size: int = 32
    seed: int = 0
    quantize: Quantize = Quantize.none
    fold: bool = True  # fold BN in Keras before converting; the converter-only file is kept too
    tolerance: float = 1e-5  # the fold's max |Δ|, relative to the largest output
    twin: bool = True  # also train the BN-free twin, as the benchmark's baseline
    bench: bool = True
    bench_settings: BenchSettings = field(default_factory=BenchSettings)
    runtime: Backend = Backend.auto
    bundle: bool = False  # also write OUT/bundle, the device bundle
    emulate: tuple[str, ...] = ()  # run the bundle's self-test on an emulated arm64 Pi, per runtime


@dataclass(frozen=True)
class BuildResult:
    out: Path
    report: dict[str, Any]
    trained: TrainResult
    converted: ConvertResult
    conversion: FoldedConversion
    verified: VerifyResult
    inspected: InspectResult
    benched: BenchResult | None


def check_out_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebnError(f"--out {out}: exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgebnError(f"--out {out}: cannot create directory ({exc.strerror})") from exc
    return out


def build(config: BuildConfig, log: Callable[[str], None] = print,
          verbose: int = 2) -> BuildResult:
    """Run every stage into ``config.out``; write report.json and report.md last."""
    if config.emulate:  # refuse a bad runtime before training, not after
        from edgebn.emulate import check_runtimes

        check_runtimes(config.emulate)
    out = check_out_dir(config.out)
    if config.bundle or config.emulate:
        from edgebn.bundle import check_bundle_out

        check_bundle_out(out / "bundle")
    timings: dict[str, float] = {}

    log(f"[1/6] data: {config.data_dir or config.dataset.value}")
    with timed() as t:
        ds = load_dataset(config.dataset, config.data_dir, config.image_size, config.color,
                          config.seed, limit=config.limit)
    timings["data_s"] = t.seconds

    log(f"[2/6] train: {config.arch.value}{'' if config.bn else ' (no BN)'} on {ds.name}, "
        f"{len(ds.y_train)} samples")
    tc = TrainConfig(arch=config.arch, bn=config.bn, epochs=config.epochs,
                     batch_size=config.batch_size, seed=config.seed)
    trained = train(ds, tc, verbose=verbose)
    save_keras(trained.model, out / "model.keras")
    timings["train_s"] = trained.train_s
    twin = None
    if config.twin and config.bn:
        log("      training the BN-free twin (benchmark baseline)")
        twin = train(ds, TrainConfig(**{**tc.__dict__, "bn": False}), verbose=0)
        save_keras(twin.model, out / "twin.keras")
        timings["train_twin_s"] = twin.train_s

    fold = config.fold and bool(trained.bn_layers)
    log(f"[3/6] {'fold BN in Keras, then ' if fold else ''}convert: "
        f"quantize={config.quantize.value}")
    representative = ds.x_train[:REPRESENTATIVE_SAMPLES]
    with timed() as t:
        conversion = convert_model(
            trained.model, out / "model.tflite", config.quantize, representative,
            fold_inputs=ds.x_test if fold else None, tolerance=config.tolerance,
            fold_source=f"{ds.name} test split",
            converter_only_out=out / "converter_only.tflite" if fold else None)
    converted = conversion.converted
    timings["convert_s"] = t.seconds
    if conversion.fold is not None:
        save_keras(conversion.fold.model, out / "folded.keras")
    if twin is not None:
        convert(twin.model, out / "twin.tflite", config.quantize, representative)

    log("[4/6] verify against Keras on the test split")
    with timed() as t:
        verified = verify(converted.path, ds.x_test, ds.y_test, trained.model, config.runtime)
    timings["verify_s"] = t.seconds

    log("[5/6] inspect the .tflite for BN residue")
    inspected = inspect_tflite(converted.path, trained.bn_layers)
    timings["inspect_s"] = inspected.elapsed_ms / 1e3
    if conversion.fold is not None:
        log(f"      converter alone: {conversion.converter_only.bn.verdict}; "
            f"folded first: {inspected.bn.verdict}")

    benched = None
    if config.bench:
        log("[6/6] bench TFLite against Keras")
        settings = BenchSettings(**{**config.bench_settings.__dict__, "backend": config.runtime})
        with timed() as t:
            benched = bench(converted.path, settings, keras_model=out / "model.keras",
                            baseline=out / "twin.tflite" if twin else None,
                            keras_baseline=out / "twin.keras" if twin else None,
                            keras_folded=conversion.fold.model if conversion.fold else None,
                            data=ds.x_test)
        timings["bench_s"] = t.seconds

    with atomic_path(out / "samples.npy") as tmp:  # golden inputs for a device bundle
        np.save(tmp, ds.x_test[:GOLDEN_SAMPLES])
    report = write_report(out, config, ds, trained, twin, conversion, verified, inspected,
                          benched, timings)
    if config.bundle or config.emulate:
        from edgebn.bundle import bundle

        log(f"      bundle for the device: {out / 'bundle'}")
        bundled = bundle(out, out / "bundle")
        report["bundle"] = {"path": "bundle", "selftest_here": bundled.selftest}
        if config.emulate:
            from edgebn.emulate import emulate

            log(f"      self-test on an emulated arm64 Raspberry Pi: {', '.join(config.emulate)}")
            report["emulation"] = emulate(out / "bundle", config.emulate).to_json()
        write_report_json(out, report)
    return BuildResult(out, report, trained, converted, conversion, verified, inspected, benched)
