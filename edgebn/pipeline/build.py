"""``edgebn build``: one pipeline, each stage once, results handed down in memory.

    data -> train (and the BN-free twin) -> fold -> convert (folded and converter-only)
    -> verify -> inspect -> bench -> bundle -> emulate -> report

Every .tflite is converted to bytes, parsed once and kept: verify, inspect, bench and
the bundle use that parse; the Keras models stay in memory. ``report.json`` and
``report.md`` are written once, at the end, from the typed :class:`BuildResult`.

Everything is written into a staging directory beside OUT, swapped in whole once the
report is written: OUT always describes one build, whatever stops a build half-way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.bench.run import BenchResult, BenchTargets, bench
from edgebn.convert import (
    REPRESENTATIVE_SAMPLES,
    ConversionResult,
    Converted,
    ConvertOptions,
    convert_model,
    to_tflite,
)
from edgebn.data.dataset import Dataset, DataSpec
from edgebn.deploy.bundle import GOLDEN_SAMPLES, BundleSource, bundle, check_bundle_out
from edgebn.errors import DatasetError, EdgebnError
from edgebn.fold.graph import bn_layers_of
from edgebn.fold.stats_check import StatsCheck, bn_statistics
from edgebn.pipeline.ledger import SweepLedger, SweepRun, sweep_ledger
from edgebn.pipeline.precisions import FLOAT32_BESIDE, FLOAT32_FILE, Float32Beside, float32_models
from edgebn.pipeline.report import PLOTS, BuildResult, write_report
from edgebn.runtime.backends import Backend
from edgebn.runtime.profile import ProfileResult, ProfileSettings, profile
from edgebn.runtime.timing import BenchSettings
from edgebn.runtime.verify import VerifyLimits, verify
from edgebn.stages import SILENT, Progress, Stages, atomic_path, recover_dir, relocated, staged_dir
from edgebn.tensors import CHECK_SAMPLES
from edgebn.train.training import TrainConfig, TrainResult, given_model, train
from edgebn.zoo.keras_io import save_keras
from edgebn.zoo.models import arch_spec, fit_data


@dataclass(frozen=True)
class BuildConfig:
    out: Path = Path("build")
    model: Path | None = None  # a .keras to build instead of training one from the zoo
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    convert: ConvertOptions = field(default_factory=ConvertOptions)
    bench: BenchSettings = field(default_factory=BenchSettings)  # its backend also verifies
    run_bench: bool = True
    twin: bool = True  # also train the BN-free twin, as the benchmark's baseline
    bundle: bool = False  # also write OUT/bundle, the device bundle
    sign: Path | None = None  # sign the bundle's manifest with this SSH private key
    emulate: tuple[Backend, ...] = ()  # run the bundle's self-test on an emulated Pi, per runtime
    emulate_os: str = "trixie"  # the Raspberry Pi OS release emulated (trixie or bookworm)
    lr_sweep: tuple[float, ...] = ()  # multipliers of the learning rate: BN and BN-free at each
    min_agreement: float | None = None  # verify's limits, loosened (None: the quantize mode's)
    max_prob_diff: float | None = None

    @property
    def limits(self) -> VerifyLimits:
        """What verify holds the .tflite to: the quantize mode's limits, or the user's."""
        return VerifyLimits.of(self.convert.quantize, self.min_agreement, self.max_prob_diff)

    @property
    def runtime(self) -> Backend:
        return self.bench.backend


# Every name a build writes in OUT; anything else in OUT is carried into the new build whole.
ARTIFACTS = frozenset({"model.keras", "twin.keras", "folded.keras", "model.tflite", "twin.tflite",
                       "converter_only.tflite", FLOAT32_FILE, "samples.npy", "report.json",
                       "report.md", "bundle", *PLOTS.values()})


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C during a build; its message says what OUT holds now (the CLI prints it)."""


def check_out_dir(out: Path) -> Path:
    """OUT as a build replaces it whole (what else it holds is carried into the new one)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EdgebnError(f"{out}: exists and is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgebnError(f"{out}: cannot create directory ({exc.strerror})") from exc
    recover_dir(out)  # a build killed as it swapped its directory in
    if not out.is_dir():
        return out
    real, cwd = Path(os.path.realpath(out)), Path.cwd()
    if os.path.ismount(real):
        raise EdgebnError(f"{out}: a mount point, and a build replaces its directory whole: "
                          "give a directory inside it")
    if real == cwd or real in cwd.parents:
        raise EdgebnError(f"{out}: holds the working directory, and a build replaces it whole: "
                          "run from elsewhere or choose another directory")
    if (out / "bundle").exists():
        check_bundle_out(out / "bundle")
    return out


def build(config: BuildConfig, progress: Progress = SILENT) -> BuildResult:
    """Run every stage into a staging directory beside ``config.out``, then swap it in whole.

    ``config.out`` holds one build at every moment: the previous one until this one is
    complete (report.json and report.md written last), then this one. Ctrl-C or any
    failure leaves it as it was (:func:`edgebn.stages.staged_dir`); Ctrl-C comes out as
    :class:`BuildInterrupted`, saying so. The result's paths are under ``config.out``.
    """
    refuse_early(config)
    out = check_out_dir(config.out)
    previous = out.is_dir() and any(out.iterdir())
    staging = None
    try:
        with staged_dir(out, carry=lambda name: name not in ARTIFACTS) as staging:
            result = _run(replace(config, out=staging.path), out, Stages(progress))
    except KeyboardInterrupt as exc:
        if staging is not None and staging.swapped:
            raise BuildInterrupted(f"interrupted as the build finished: {out} holds it, "
                                   "complete") from exc
        raise BuildInterrupted(f"interrupted: {out} still holds the previous build" if previous
                               else f"interrupted: nothing was written to {out}") from exc
    return relocated(result, staging.path, out)


def _run(config: BuildConfig, shown: Path, stages: Stages) -> BuildResult:
    """Every stage, writing into ``config.out`` (the staging directory); ``shown`` is OUT."""
    out = config.out
    given, data = _given_model(config, stages)
    with stages.stage("data", data.name):
        ds = _load_data(data, given)
    trained, twin, sweep = (given, None, None) if given is not None else _train(config, ds, stages)
    if ds.streams is not None:
        with stages.stage("data", "the first test images into memory (fold check, bench)"):
            ds = ds.with_test()  # verify reads the whole test split in chunks
    statistics = _given_statistics(config, data, ds, trained, stages)
    conversion, twin_tflite, float32 = _convert(config, ds, trained, twin, stages)
    with stages.stage("verify", f"{ds.counts[2]} test samples against Keras"):
        verified = verify(conversion.converted.model, *ds.test_split, trained.model,
                          config.runtime).judged(config.limits)
    benched = _bench(config, ds, trained, twin, conversion, twin_tflite, float32, stages)
    profiled = _profile(config, conversion, stages)
    with atomic_path(out / "samples.npy") as tmp:  # golden inputs for a later edgebn bundle
        np.save(tmp, ds.x_test[:GOLDEN_SAMPLES])
    result = BuildResult(out, data, ds, trained, twin, conversion, verified, benched,
                         seconds=dict(stages.seconds), float32=float32,
                         given_statistics=statistics, profiled=profiled, sweep=sweep)
    result = _device(config, result, stages, shown)
    with stages.stage("report", str(shown / "report.json")):
        return write_report(result)


def _given_model(config: BuildConfig, stages: Stages) -> tuple[TrainResult | None, DataSpec]:
    """The user's model (``--model``), and the data spec fitted to its input; else (None, data)."""
    if config.model is None:
        return None, config.train.data_for(config.data)

    with stages.stage("load", str(config.model)):
        given = given_model(config.model)
        save_keras(given.model, config.out / "model.keras")
    data, source = fit_data(config.data, given.model)
    return replace(given, preprocessing_source=source), data


def _load_data(data: DataSpec, given: TrainResult | None) -> Dataset:
    if given is None:
        return data.load(stream=True)  # an image folder is streamed by training
    ds = data.load()
    model = given.model
    want, outputs = tuple(model.input_shape[1:]), model.output_shape[-1]
    if tuple(ds.input_shape) != want:
        raise DatasetError(f"{ds.name}: inputs of shape {list(ds.input_shape)}, the model "
                           f"expects {list(want)}")
    if outputs is None or ds.classes > outputs:
        raise DatasetError(f"{ds.name} has {ds.classes} classes, the model outputs {outputs}")
    pre = replace(ds.preprocessing, source=given.preprocessing_source or "")
    return replace(ds, preprocessing=pre)


def _given_statistics(config: BuildConfig, data: DataSpec, ds: Dataset, given: TrainResult,
                      stages: Stages) -> StatsCheck | str | None:
    """A model brought by the user: its BN statistics on the data, recomputed when asked (then
    model.keras is the recomputed model). A model trained here did this in training."""
    if given.config is not None or not bn_layers_of(given.model):
        return None
    policy = config.convert.bn_stats
    what = "recomputed and proven" if policy.recalibrate else "measured"
    with stages.stage("bn stats", f"BN statistics {what} on {ds.name}"):
        statistics = bn_statistics(given.model, data, policy, ds)
        if isinstance(statistics, StatsCheck) and statistics.recalibration is not None:
            save_keras(given.model, config.out / "model.keras")
    return statistics


def refuse_early(config: BuildConfig) -> None:
    """Refuse what would fail late (a bad runtime, an --out that is not ours) before training."""
    if config.emulate:
        from edgebn.deploy.emulate import check_os_runtimes

        check_os_runtimes(config.emulate_os, config.emulate)
    if config.bundle or config.emulate or config.sign:
        check_bundle_out(Path(config.out) / "bundle")
    config.train.validate()
    config.bench.validate()
    if config.model is not None:
        _refuse_training_options(config.train)
    if config.lr_sweep and (config.model is not None or not config.twin or not config.train.bn
                            or not arch_spec(config.train.arch).twin):
        raise EdgebnError("a learning-rate sweep trains a zoo model and its BN-free baseline: "
                          "not with a model of yours, a backbone, or without the baseline",
                          option="lr_sweep")
    if any(not m > 0 for m in config.lr_sweep):
        raise EdgebnError(f"learning-rate multipliers must be > 0. Received: "
                          f"{list(config.lr_sweep)}", option="lr_sweep")


def _refuse_training_options(train: TrainConfig) -> None:
    """``--model`` builds the model as it is: an option that shapes training cannot apply."""
    given = [f"--{name.replace('_', '-')}" for name in ("arch", "alpha", "weights",
                                                        "fine_tune_epochs", "augment",
                                                        "strategy", "replicas")
             if getattr(train, name) != getattr(TrainConfig(), name)]
    if given:
        raise EdgebnError(f"--model builds a model as it is, untrained here: "
                          f"{', '.join(given)} cannot apply")


def _train(config: BuildConfig, ds: Dataset,
           stages: Stages) -> tuple[TrainResult, TrainResult | None, SweepLedger | None]:
    if config.lr_sweep:
        return _sweep(config, ds, stages)
    tc = config.train
    with stages.stage("train", f"{tc.arch.value}{'' if tc.bn else ' (no BN)'} on {ds.name}, "
                               f"{ds.counts[0]} samples{' (streamed)' if ds.streams else ''}"):
        trained = train(ds, tc, stages.progress, config.convert.bn_stats)
        save_keras(trained.model, config.out / "model.keras")
    twin = None
    if config.twin and tc.bn and arch_spec(tc.arch).twin:  # backbones: fold_gain is the cost
        with stages.stage("twin", "the BN-free baseline (the same model without BN)"):
            twin = train(ds, replace(tc, bn=False), stages.progress)
            save_keras(twin.model, config.out / "twin.keras")
    return trained, twin, None


def _sweep(config: BuildConfig, ds: Dataset,
           stages: Stages) -> tuple[TrainResult, TrainResult, SweepLedger]:
    """``--lr-sweep``: the BN model and its BN-free baseline at each learning rate; the build
    goes on with each at its own best rate (:func:`edgebn.pipeline.ledger.sweep_ledger`)."""
    tc = config.train
    rates = [(m, tc.learning_rate * m) for m in config.lr_sweep]
    shown = ", ".join(f"x{m:g}" for m in config.lr_sweep)
    with stages.stage("train", f"{tc.arch.value} on {ds.name} at learning rates {shown}"):
        bn = [train(ds, replace(tc, learning_rate=lr), stages.progress, config.convert.bn_stats)
              for _, lr in rates]
    with stages.stage("twin", f"the BN-free baseline at learning rates {shown}"):
        free = [train(ds, replace(tc, bn=False, learning_rate=lr), stages.progress)
                for _, lr in rates]
    sweep = sweep_ledger([SweepRun(m, lr, b, f) for (m, lr), b, f in zip(rates, bn, free,
                                                                         strict=True)])
    save_keras(sweep.best_bn.bn.model, config.out / "model.keras")
    save_keras(sweep.best_twin.twin.model, config.out / "twin.keras")
    return sweep.best_bn.bn, sweep.best_twin.twin, sweep


def _convert(config: BuildConfig, ds: Dataset, trained: TrainResult, twin: TrainResult | None,
             stages: Stages) -> tuple[ConversionResult, Converted | None, Float32Beside | None]:
    """Fold, convert, inspect (convert_model); the twin, and float32 beside a quantized file.

    The build's calibration policy: the first training samples, whatever the mode.
    """
    options, out = config.convert, config.out
    representative = ds.x_train[:REPRESENTATIVE_SAMPLES]
    beside = options.quantize in FLOAT32_BESIDE
    made: dict[str, Converted] = {}

    def twin_and_float32(converted_model: Any) -> None:  # inside the convert stage
        if twin is not None:
            made["twin"] = to_tflite(twin.model, out / "twin.tflite", options.quantize,
                                     representative)
        if beside:  # the same (folded) model, unquantized
            made["float32"] = to_tflite(converted_model, out / FLOAT32_FILE)

    conversion = convert_model(
        trained.model, out / "model.tflite", options, representative,
        fold_inputs=(ds.x_test[:CHECK_SAMPLES], f"{ds.name} test split"),
        converter_only_out=out / "converter_only.tflite", folded_out=out / "folded.keras",
        stages=stages, also=twin_and_float32)
    conversion = replace(conversion, source="model.keras")
    twin_tflite, float32 = made.get("twin"), made.get("float32")
    if float32 is None:
        return conversion, twin_tflite, None
    with stages.stage("float32", f"{FLOAT32_FILE} against Keras, beside "
                                 f"{options.quantize.value}"):  # side by side in the report
        verified = verify(float32.model, *ds.test_split, trained.model,
                          config.runtime).judged(VerifyLimits.of("none"))
    return conversion, twin_tflite, Float32Beside(float32, verified)


def _bench(config: BuildConfig, ds: Dataset, trained: TrainResult, twin: TrainResult | None,
           conversion: ConversionResult, twin_tflite: Converted | None,
           float32: Float32Beside | None, stages: Stages) -> BenchResult | None:
    if not config.run_bench:
        return None
    targets = BenchTargets(
        conversion.converted.model, twin_tflite.model if twin_tflite else None,
        keras=trained.model, keras_baseline=twin.model if twin else None,
        keras_folded=conversion.fold.model if conversion.fold else None,
        baseline_label="BN-free baseline", others=float32_models(float32),
        ratio_interval=False)  # the twin's ratio is reported; the gate times its own rounds
    with stages.stage("bench", "TFLite against Keras" + (", and the float32 file" if targets.others
                                                         else "")):
        return bench(targets, config.bench, data=ds.x_test)


PROFILE_S = 0.3  # the build's profile: seconds of the whole model (the operators share as much)


def _profile(config: BuildConfig, conversion: ConversionResult, stages: Stages
             ) -> ProfileResult | None:
    """Each operator's time in the .tflite, for report.md's profile plot (with the bench)."""
    if not config.run_bench:
        return None
    settings = ProfileSettings(threads=config.bench.threads, backend=config.bench.backend,
                               min_time_s=min(config.bench.min_time_s, PROFILE_S),
                               residue=False, context=False)
    with stages.stage("profile", "each operator of the .tflite, isolated"):
        return profile(conversion.converted.model, settings,
                       analysis=conversion.inspected.bn)  # inspected once, by the convert stage


def _device(config: BuildConfig, result: BuildResult, stages: Stages,
            shown: Path) -> BuildResult:
    """The bundle and its emulated self-test, when asked for."""
    if not (config.bundle or config.emulate or config.sign):
        return result

    with stages.stage("bundle", str(shown / "bundle")):
        source = BundleSource.from_build(result, result.dataset.x_test)
        bundled = bundle(source, config.out / "bundle", config.sign)
    emulated = None
    if config.emulate:
        from edgebn.deploy.emulate import emulate

        with stages.stage("emulate", ", ".join(r.value for r in config.emulate)):
            emulated = relocated(emulate(config.out / "bundle", config.emulate,
                                         log=stages.progress.note, os_name=config.emulate_os),
                                 config.out, shown)
    return replace(result, bundled=bundled, emulated=emulated, seconds=dict(stages.seconds))
