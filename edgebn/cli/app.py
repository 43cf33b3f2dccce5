"""The edgebn command line: typed options in, one library call, the result rendered.

TensorFlow is imported only by the commands that need it (train, convert, fold, build,
and bench with --keras), inside :func:`edgebn.cli.ui.quiet`, so its log lines stay off the
terminal unless ``--verbose``; ``inspect`` never pays for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgebn import __version__
from edgebn.bench.run import BenchTargets, bench_threads
from edgebn.cli import render
from edgebn.cli.device import register_device_commands
from edgebn.cli.options import (
    EXIT_BAD_INPUT,
    EXIT_PROBLEM,
    ONE_THREAD,
    BaselineFlag,
    FoldOpt,
    JsonFlag,
    KerasIn,
    LrSweepOpt,
    MaxProbDiffOpt,
    MinAgreementOpt,
    ModelOpt,
    OneLineErrors,
    QuantizeOpt,
    RecalibrateOpt,
    RuntimeOpt,
    SignatureOpt,
    StrictStatsOpt,
    ThreadCountsOpt,
    ThreadsOpt,
    ToleranceOpt,
    VerboseFlag,
    check_model_options,
    data_options,
    suffix,
    train_options,
)
from edgebn.cli.perf import register_perf_commands
from edgebn.cli.ui import StageProgress, quiet, show
from edgebn.convert import ConvertOptions, Quantize, convert_file
from edgebn.data.arrays import load_samples
from edgebn.data.dataset import DatasetName, DataSpec
from edgebn.files import write_atomic
from edgebn.fold.keras.keras_fold import DEFAULT_TOLERANCE, fold_file
from edgebn.fold.keras.statistics import RECALIBRATE_SAMPLES
from edgebn.fold.keras.stats_check import StatsPolicy, recalibrate_file
from edgebn.fold.tflite.tflite_fold import fold_file as fold_tflite_file
from edgebn.pipeline.build import BuildConfig
from edgebn.pipeline.build import build as run_build
from edgebn.pipeline.check import Thresholds
from edgebn.pipeline.check import check as run_check
from edgebn.pipeline.ci_formats import append_step_summary, write_junit
from edgebn.pipeline.tflite_build import run_tflite_build
from edgebn.runtime.backends import Backend
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.residue import inspect_files
from edgebn.train.training import TrainConfig, train_to_file

app = typer.Typer(
    cls=OneLineErrors, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Train BatchNorm Keras classifiers, convert them to TFLite, and prove every BN was "
         "folded.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgebn {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False
          ) -> None:
    """Train BatchNorm Keras classifiers, convert them to TFLite, and prove every BN was folded."""


# ---------------------------------------------------------------- inspect


@app.command()
def inspect(
    models: Annotated[list[Path], typer.Argument(help="The .tflite file(s) to read.")],
    as_json: JsonFlag = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor.")] = False,
) -> None:
    """Read .tflite files and prove that no BatchNorm survived (exit 0 clean, 1 residue).

    With several files: one table row (or one JSON line) per file; a file that cannot be
    read gets its error line and makes the exit code 2, the others are still inspected.
    """
    results, errors = inspect_files(models)
    if len(models) == 1 and errors:
        raise errors[0]
    for error in errors:
        typer.echo(f"Error: {error}", err=True)
    if len(models) == 1:
        show(results[0], as_json, lambda r: render.inspect(r, tensors))
    elif as_json:  # several files: one JSON line each
        for r in results:
            render.out.file.write(r.to_json_line() + "\n")
    else:
        render.inspect_many(results)
    if errors:
        raise typer.Exit(EXIT_BAD_INPUT)
    if not all(r.clean for r in results):
        raise typer.Exit(EXIT_PROBLEM)


# ---------------------------------------------------------------- train / convert / fold


@app.command()
@train_options
@data_options
def train(
    data: DataSpec,
    training: TrainConfig,
    out: Annotated[Path, typer.Option(
        "--out", callback=suffix(".keras"), dir_okay=False,
        help="Where to save the .keras model.")] = Path("model.keras"),
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Train a zoo model (or a backbone's new head) and save it as a .keras file.

    An image folder (--data-dir) is streamed through tf.data, never loaded whole.
    """

    with quiet(verbose), StageProgress() as progress:
        result = train_to_file(out, training, data, progress)
    show(result, as_json, render.train)


@app.command()
@data_options
def convert(
    data: DataSpec,
    model: KerasIn,
    out: Annotated[Path | None, typer.Option("--out", callback=suffix(".tflite"), dir_okay=False,
                                             help="Output .tflite path.")] = None,
    quantize: QuantizeOpt = Quantize.none,
    fold: FoldOpt = True,
    tolerance: ToleranceOpt = 1e-5,
    recalibrate_bn: RecalibrateOpt = None,
    strict_bn_stats: StrictStatsOpt = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Convert a .keras model to .tflite (folding BN first), then inspect the result.

    The data options give the int8 calibration samples and the fold's check inputs
    (--data, else the dataset's test split when it fits the model, else random inputs).
    """

    with quiet(verbose):
        result = convert_file(model, out or model.with_suffix(".tflite"),
                              ConvertOptions(quantize, fold, tolerance,
                                             StatsPolicy(recalibrate_bn, strict_bn_stats)), data)
    show(result, as_json, render.conversion)
    if not result.inspected.clean:
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
@data_options
def fold(
    data: DataSpec,
    model: Annotated[Path, typer.Argument(
        exists=True, dir_okay=False, readable=True,
        help="The .keras model, or a .tflite from any converter.")],
    out: Annotated[Path, typer.Option(
        "--out", dir_okay=False, help="Where to write the folded model (same type as MODEL).")],
    tolerance: Annotated[float | None, typer.Option(
        "--tolerance", min=1e-12,
        help="Largest |Δ| beyond float32 rounding, relative to the largest "
        "|value| [default: 1e-5; a .tflite: per tensor]")] = None,
    recalibrate_bn: RecalibrateOpt = None,
    strict_bn_stats: StrictStatsOpt = False,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Fold every BN into the layer before or after it, checked on real inputs.

    A .keras model is folded in Keras. A .tflite is folded on the flatbuffer, without
    TensorFlow: each BN chain the converter left folds into the operator before or after it,
    or collapses to one MUL+ADD, and every tensor the two files share is compared.
    The check runs on --data (or --data-dir), else the dataset's test split when it fits a
    .keras model, else random inputs. Exit 0 when every BN folded, 1 when some had to stay
    (each with its reason), 2 when the folded model would differ beyond --tolerance
    (nothing is written).
    """
    if model.suffix not in (".keras", ".h5", ".tflite"):
        raise typer.BadParameter(f"MODEL must be a .keras, a .h5 or a .tflite. Received: {model}")
    if model.suffix == ".tflite" and (recalibrate_bn is not None or strict_bn_stats):
        raise typer.BadParameter("--recalibrate-bn and --strict-bn-stats are for a .keras model: "
                                 "a .tflite has its BN statistics baked into its weights")
    want = ".tflite" if model.suffix == ".tflite" else ".keras"  # a legacy .h5 is written as .keras
    if out.suffix != want:
        raise typer.BadParameter(f"--out must end in {want}. Received: {out}")
    with quiet(verbose):
        if model.suffix == ".tflite":
            given = data if data.npz is not None or data.data_dir is not None else None
            result = fold_tflite_file(model, out, given, tolerance)
        else:
            result = fold_file(model, out, DEFAULT_TOLERANCE if tolerance is None else tolerance,
                               data, StatsPolicy(recalibrate_bn, strict_bn_stats))
    show(result, as_json, lambda r: render.folded(r, out))
    if not result.all_folded:
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
@data_options
def recalibrate(
    data: DataSpec,
    model: KerasIn,
    out: Annotated[Path, typer.Option("--out", callback=suffix(".keras"), dir_okay=False,
                                      help="Where to write the recalibrated model.")],
    samples: Annotated[int, typer.Option(
        "--samples", min=2, help="Inputs to recompute the statistics from.")] = RECALIBRATE_SAMPLES,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Recompute every BN's statistics from the data, layer by layer, and prove them.

    The population mean and variance of each BN's input over --samples inputs (not momentum
    averages), the BNs before it already recomputed; then every BN's drift on held-out
    inputs must be at their sampling noise, or nothing is written (exit 2). MODEL is never
    changed.
    """
    with quiet(verbose):
        result = recalibrate_file(model, out, data, samples)
    show(result, as_json, render.recalibrated)


# ---------------------------------------------------------------- build


@app.command()
@train_options
@data_options
def build(
    data: DataSpec,
    training: TrainConfig,
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Output directory.")] = Path(
        "build"),
    model: ModelOpt = None,
    signature: SignatureOpt = None,
    quantize: QuantizeOpt = Quantize.none,
    fold: FoldOpt = True,
    tolerance: ToleranceOpt = 1e-5,
    recalibrate_bn: RecalibrateOpt = None,
    strict_bn_stats: StrictStatsOpt = False,
    twin: BaselineFlag = True,
    make_bundle: Annotated[bool, typer.Option(
        "--bundle", help="Also write OUT/bundle, the self-verifying device bundle.")] = False,
    sign: Annotated[Path | None, typer.Option(
        "--sign", exists=True, dir_okay=False, readable=True,
        help="Sign the bundle's manifest with this SSH private key. Implies --bundle.")] = None,
    emulate: Annotated[list[Backend] | None, typer.Option(
        "--emulate", help="Run the bundle's self-test on an emulated arm64 Pi with this runtime "
                          "(tflite-runtime, ai-edge-litert; repeatable). Implies --bundle.")
    ] = None,
    emulate_os: Annotated[str, typer.Option(
        "--emulate-os", help="The Raspberry Pi OS release --emulate runs: trixie or bookworm.")
    ] = "trixie",
    min_agreement: MinAgreementOpt = None,
    max_prob_diff: MaxProbDiffOpt = None,
    lr_sweep: LrSweepOpt = None,
    run_bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Benchmark.")] = True,
    bench_time: Annotated[float, typer.Option(
        "--bench-time", min=0.01, help="Seconds per benchmarked runtime.")] = 1.0,
    threads: ThreadsOpt = 1,
    runtime: RuntimeOpt = Backend.auto,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Train, fold, convert, verify, inspect and benchmark; write OUT/report.json and report.md."""
    config = BuildConfig(
        out=out, model=model, data=data, train=training,
        convert=ConvertOptions(quantize, fold, tolerance,
                               StatsPolicy(recalibrate_bn, strict_bn_stats)),
        bench=BenchSettings(threads=threads, min_time_s=bench_time, keras_time_s=bench_time,
                            backend=runtime),
        run_bench=run_bench, twin=twin, bundle=make_bundle, sign=sign,
        emulate=tuple(emulate or ()), emulate_os=emulate_os, min_agreement=min_agreement,
        max_prob_diff=max_prob_diff, lr_sweep=tuple(lr_sweep or ()))
    tflite_route = check_model_options(model, signature, config.convert.bn_stats)
    with quiet(verbose), StageProgress() as progress:
        if tflite_route:
            result = run_tflite_build(config, progress, signature)
        else:
            result = run_build(config, progress)
    show(result, as_json, render.build)
    if not result.passed:  # the build ran, and its own verification failed
        raise typer.Exit(EXIT_PROBLEM)


# ---------------------------------------------------------------- bench


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                          help="The .tflite to benchmark.")],
    keras: Annotated[Path | None, typer.Option("--keras", help="The .keras it came from.")] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Another .tflite (e.g. the BN-free baseline), timed interleaved.")
    ] = None,
    keras_baseline: Annotated[Path | None, typer.Option(
        "--keras-baseline", help="The baseline's .keras, to show BN's cost inside Keras.")] = None,
    keras_folded: Annotated[Path | None, typer.Option(
        "--keras-folded",
        help="The folded .keras (edgebn fold), to show the fold's effect in Keras.")
    ] = None,
    inputs: Annotated[Path | None, typer.Option(
        "--data", exists=True, dir_okay=False,
        help="Inputs: a .npy (N, H, W, C), or a .npz with an array 'x'.")] = None,
    dataset: Annotated[DatasetName | None, typer.Option(
        "--dataset", help="Inputs: this dataset's test split.")] = None,
    threads: ThreadCountsOpt = ONE_THREAD,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size (resizes input).")] = 1,
    warmup: Annotated[int, typer.Option("--warmup", min=0)] = 100,
    runs: Annotated[int | None, typer.Option("--runs", min=1, help="Exact timed runs.")] = None,
    min_time: Annotated[float, typer.Option(
        "--min-time", min=0.01, help="Seconds per runtime when --runs is not given.")] = 1.0,
    runtime: RuntimeOpt = Backend.auto,
    xnnpack: Annotated[bool, typer.Option(help="Use the XNNPACK delegate.")] = True,
    xla: Annotated[bool, typer.Option(help="jit_compile the Keras tf.function.")] = False,
    isolate: Annotated[bool, typer.Option(
        help="Run the interpreter in a fresh process (memory without TensorFlow).")] = False,
    as_json: JsonFlag = False,
    json_file: Annotated[Path | None, typer.Option(
        "--json-file", dir_okay=False, help="Also write the JSON document to this file.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG here.")] = None,
    verbose: VerboseFlag = False,
) -> None:
    """Time the TFLite interpreter against the Keras model, same inputs, side by side.

    With several --threads (1,2,4) the .tflite is also timed at each further count: a
    scaling table of p50, speedup, GMAC/s and efficiency (Keras is timed once).
    """

    if inputs is not None and dataset is not None:
        raise typer.BadParameter("give --data or --dataset, not both")
    settings = BenchSettings(threads=threads[0], batch=batch, warmup=warmup, runs=runs,
                             min_time_s=min_time, keras_time_s=min_time, backend=runtime,
                             xnnpack=xnnpack, isolate=isolate, xla=xla)
    targets = BenchTargets(model, baseline, keras, keras_baseline, keras_folded)
    with quiet(verbose):
        x = load_samples(inputs) if inputs else (
            DataSpec(dataset).load().x_test if dataset else None)
        result = bench_threads(targets, settings, threads, x)
    show(result, as_json, render.bench)
    if json_file is not None:
        write_atomic(json_file, json.dumps(result.to_json(), indent=2) + "\n")
    if plot_out is not None:
        render.plot(result, plot_out)


# ---------------------------------------------------------------- bundle / emulate / deploy

register_device_commands(app)  # edgebn.cli.device: bundle, emulate, deploy
register_perf_commands(app)  # edgebn.cli.perf: profile


# ---------------------------------------------------------------- check


@app.command()
def check(
    report: Annotated[Path, typer.Argument(help="The new build's report.json.")],
    baseline: Annotated[Path, typer.Option("--baseline", help="The baseline's report.json.")],
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", min=0, help="Largest allowed accuracy drop (0.01 = 1 point).")
    ] = 0.01,
    max_latency_regression: Annotated[float, typer.Option(
        "--max-latency-regression", min=0, help="Largest allowed p50 increase (0.10 = 10 %).")
    ] = 0.10,
    max_size_growth: Annotated[float, typer.Option(
        "--max-size-growth", min=0, help="Largest allowed file growth (0.05 = 5 %).")] = 0.05,
    allow_op: Annotated[list[str] | None, typer.Option(
        "--allow-op", help="An op the new model may add (repeatable).")] = None,
    bench_time: Annotated[float, typer.Option(
        "--bench-time", min=0.01, help="Seconds per model for the latency ratio.")] = 1.0,
    junit: Annotated[Path | None, typer.Option(
        "--junit", dir_okay=False, help="Also write JUnit XML here: one test case per metric "
                                        "(GitLab, Jenkins and most CI systems read it).")] = None,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Gate a build against a baseline: accuracy, latency, size, op set, BN (exit 1 on regression).

    With $GITHUB_STEP_SUMMARY set (GitHub Actions), a Markdown summary is appended to it.
    """
    with quiet(verbose):  # the interpreters announce their delegate on fd 2
        result = run_check(report, baseline, Thresholds(max_accuracy_drop, max_latency_regression,
                                                        max_size_growth, tuple(allow_op or ())),
                           BenchSettings(min_time_s=bench_time))

    if junit is not None:
        write_junit(result, junit)
    append_step_summary(result)
    show(result, as_json, render.check)
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
