"""The edgebn command line: typed options in, one library call, the result rendered.

TensorFlow is imported only by the commands that need it (train, convert, build,
and bench with --keras); ``inspect`` never pays for it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from edgebn.convert import Quantize  # these modules import no TensorFlow at import time
from edgebn.data import DatasetName
from edgebn.errors import EdgebnError
from edgebn.models import DEFAULT_ARCH, Arch
from edgebn.runtime import Backend

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before any TensorFlow import

EXIT_PROBLEM = 1  # the command ran and found a problem (BN residue, regression)
EXIT_BAD_INPUT = 2


class _OneLineErrors(TyperGroup):
    """The CLI's single error boundary: bad input or usage -> one stderr line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except TyperException as exc:  # Typer's usage errors: bad option value, missing file, ...
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help())
                sys.exit(0)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            typer.echo(f"Error: {where}{message}", err=True)
            sys.exit(getattr(exc, "exit_code", EXIT_BAD_INPUT))
        except EdgebnError as exc:
            typer.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Train BatchNorm Keras classifiers, convert them to TFLite, and prove every BN was folded.",
)
console = Console()

# ---------------------------------------------------------------- shared options

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
RuntimeOpt = Annotated[Backend, typer.Option("--runtime", help="Interpreter backend.")]
DatasetOpt = Annotated[DatasetName, typer.Option("--dataset", help="Dataset (folder: use --data-dir).")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Images, one sub-folder per class (overrides --dataset).")]
ImageSizeOpt = Annotated[int, typer.Option("--image-size", min=4, help="Side of images from --data-dir.")]
ColorOpt = Annotated[str, typer.Option("--color", help="grayscale or rgb, for --data-dir.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=10, help="Use at most N samples.")]
ArchOpt = Annotated[Arch, typer.Option("--arch", help="Model architecture from the zoo.")]
NoBnOpt = Annotated[bool, typer.Option("--no-bn", help="Build the BN-free twin instead.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, help="Maximum epochs (early stopping).")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for split, init and shuffling.")]
QuantizeOpt = Annotated[Quantize, typer.Option("--quantize", help="Post-training quantization.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Interpreter threads (a Pi: 4).")]
FoldOpt = Annotated[bool, typer.Option(
    "--fold/--no-fold", help="Fold BN in Keras before converting (and show the converter's own "
                             "verdict beside it).")]
FoldDataOpt = Annotated[Path | None, typer.Option(
    "--data", help="Inputs for the fold's equivalence check: a .npy of preprocessed samples.")]
ToleranceOpt = Annotated[float, typer.Option(
    "--tolerance",
    help="Largest max |Δ| between folded and original outputs, relative to the largest output.")]


def _print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


# ---------------------------------------------------------------- inspect


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="The .tflite file to read.")],
    as_json: JsonFlag = False,
    tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor.")] = False,
) -> None:
    """Read a .tflite and prove that no BatchNorm survived (exit 0 clean, 1 residue)."""
    from edgebn.analysis import inspect_tflite

    result = inspect_tflite(model)
    if as_json:
        _print_json(result.to_json())
    else:
        render_inspect(result, tensors)
    if not result.clean:
        raise typer.Exit(EXIT_PROBLEM)


def render_inspect(result, show_tensors: bool = False) -> None:
    from edgebn.tflite import tensor_bytes

    m = result.model
    console.print(f"[bold]{m.path}[/]: {m.size_bytes} bytes "
                  f"({m.weight_bytes} weights, {m.graph_bytes} graph and metadata), "
                  f"schema v{m.version}")
    for sig in m.signatures:
        console.print(f"signature {sig.key!r}: inputs {sig.inputs}, outputs {sig.outputs}")
    for sg in m.subgraphs:
        table = Table(title=f"subgraph {sg.index} {sg.name!r}: inputs {list(sg.inputs)}, "
                            f"outputs {list(sg.outputs)}")
        for col in ("#", "op", "inputs", "outputs", "output shape"):
            table.add_column(col)
        for op in sg.operators:
            shape = sg.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
            table.add_row(str(op.index), op.op, str(list(op.inputs)), str(list(op.outputs)),
                          str(list(shape)))
        console.print(table)
        if show_tensors:
            tt = Table(title=f"subgraph {sg.index} tensors")
            for col in ("#", "name", "shape", "dtype", "bytes", "const", "quantization"):
                tt.add_column(col)
            for t in sg.tensors:
                q = t.quantization
                qs = "" if q is None else (f"scale {q.scale[0]:.3g} zp {q.zero_point[0]}"
                                           if len(q.scale) == 1 else f"{len(q.scale)} channels")
                tt.add_row(str(t.index), t.name[:60], str(list(t.shape)), t.dtype,
                           str(tensor_bytes(t)), "yes" if t.is_constant else "", qs)
            console.print(tt)
    console.print("op counts: " + ", ".join(f"{k} {v}" for k, v in m.op_counts().items()))
    bn = result.bn
    for f in bn.folded:
        console.print(f"  folded: {f.source} -> op {f.op} {f.into}")
    for r in bn.residual:
        console.print(f"  [red]residual[/] {r.kind} BN {r.source or '(names stripped)'}: "
                      f"subgraph {r.subgraph} ops {list(r.ops)}, {r.channels} channels, "
                      f"{r.cost_elements} elements x (mul + add) per inference")
    colour = "green" if result.clean else "red"
    console.print(f"BN verdict: [bold {colour}]{bn.verdict}[/] "
                  f"({len(bn.residual)} residual, {len(bn.folded)} folded)")


# ---------------------------------------------------------------- train / convert


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", help="Where to save the .keras model.")] = Path(
        "model.keras"),
    dataset: DatasetOpt = DatasetName.digits,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 32,
    color: ColorOpt = "grayscale",
    limit: LimitOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    no_bn: NoBnOpt = False,
    epochs: EpochsOpt = 40,
    batch_size: BatchSizeOpt = 32,
    seed: SeedOpt = 0,
    as_json: JsonFlag = False,
) -> None:
    """Train a zoo model and save it as a .keras file."""
    from edgebn.train import TrainConfig, train_to_file

    result = train_to_file(out, TrainConfig(arch=arch, bn=not no_bn, epochs=epochs,
                                            batch_size=batch_size, seed=seed),
                           dataset, data_dir, image_size, color, limit,
                           verbose=0 if as_json else 2)
    if as_json:
        _print_json(result)
    else:
        console.print(f"saved {out}: {result['params']} params, {result['epochs_run']} epochs, "
                      f"test accuracy {result['test_accuracy']:.4f}")


@app.command()
def convert(
    model: Annotated[Path, typer.Argument(help="The .keras model to convert.")],
    out: Annotated[Path | None, typer.Option("--out", help="Output .tflite path.")] = None,
    quantize: QuantizeOpt = Quantize.none,
    fold: FoldOpt = True,
    tolerance: ToleranceOpt = 1e-5,
    dataset: Annotated[DatasetName, typer.Option(
        "--dataset", help="Calibration data for --quantize int8, and the fold's check.")
    ] = DatasetName.digits,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 32,
    color: ColorOpt = "grayscale",
    data: FoldDataOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Convert a .keras model to .tflite (folding BN first), then inspect the result."""
    from edgebn.convert import convert_file

    result = convert_file(model, out or model.with_suffix(".tflite"), quantize, dataset,
                          data_dir, image_size, color, fold=fold, tolerance=tolerance, data=data)
    if as_json:
        _print_json({"model": str(model), "out": str(result.converted.path),
                     "size_bytes": result.converted.size_bytes, "quantize": quantize.value,
                     "fold": result.fold_json(), "inspect": result.inspected.to_json()})
    else:
        console.print(f"wrote {result.converted.path} ({result.converted.size_bytes} bytes, "
                      f"quantize {quantize.value})")
        render_inspect(result.inspected)
        if result.fold is not None:
            render_fold(result.fold)
            render_verdicts(result.fold_json())
    if not result.inspected.clean:
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
def fold(
    model: Annotated[Path, typer.Argument(help="The .keras model to fold.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the folded .keras.")],
    tolerance: ToleranceOpt = 1e-5,
    data: FoldDataOpt = None,
    dataset: Annotated[DatasetName, typer.Option(
        "--dataset", help="Else this dataset's test split, when it fits the model.")
    ] = DatasetName.digits,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 32,
    color: ColorOpt = "grayscale",
    as_json: JsonFlag = False,
) -> None:
    """Fold every BN into the layer before or after it, in Keras, checked on real inputs.

    Exit 0 when every BN folded, 1 when some had to stay (each with its reason), 2 when
    the folded model would differ beyond --tolerance (nothing is written then).
    """
    from edgebn.fold import fold_file

    result = fold_file(model, out, tolerance, data, dataset, data_dir, image_size, color)
    if as_json:
        _print_json(result.to_json())
    else:
        render_fold(result)
        console.print(f"wrote {out}")
    if not result.all_folded:
        raise typer.Exit(EXIT_PROBLEM)


def render_fold(result) -> None:
    table = Table(title=f"fold: max |Δ| {result.max_abs_diff:.3g} ({result.max_rel_diff:.3g} "
                        f"relative, tolerance {result.tolerance:g}) on {result.samples} inputs "
                        f"({result.inputs})")
    for col in ("BN", "result", "into / reason"):
        table.add_column(col)
    for f in result.layers:
        if f.folded:
            table.add_row(f.bn, f"[green]folded {f.direction}[/]", f.into)
        else:
            table.add_row(f.bn, "[red]kept[/]", f.reason)
    console.print(table)


def render_verdicts(doc: dict[str, Any]) -> None:
    for label, key in (("converter alone", "converter_only"), ("folded first", "pre_folded")):
        v = doc[key]
        colour = "green" if v["verdict"] == "clean" else "red"
        console.print(f"{label}: [{colour}]{v['verdict']}[/] ({v['residual']} residual BN, "
                      f"{v['size_bytes']} bytes)")


# ---------------------------------------------------------------- build


@app.command()
def build(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("build"),
    dataset: DatasetOpt = DatasetName.digits,
    data_dir: DataDirOpt = None,
    image_size: ImageSizeOpt = 32,
    color: ColorOpt = "grayscale",
    limit: LimitOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    no_bn: NoBnOpt = False,
    epochs: EpochsOpt = 40,
    batch_size: BatchSizeOpt = 32,
    seed: SeedOpt = 0,
    quantize: QuantizeOpt = Quantize.none,
    fold: FoldOpt = True,
    tolerance: ToleranceOpt = 1e-5,
    twin: Annotated[bool, typer.Option(help="Also train the BN-free twin as bench baseline.")] = True,
    make_bundle: Annotated[bool, typer.Option(
        "--bundle", help="Also write OUT/bundle, the self-verifying device bundle.")] = False,
    emulate: Annotated[list[str] | None, typer.Option(
        "--emulate", help="Run the bundle's self-test on an emulated arm64 Pi with this runtime "
                          "(tflite-runtime, ai-edge-litert; repeatable). Implies --bundle.")] = None,
    run_bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Benchmark.")] = True,
    bench_time: Annotated[float, typer.Option(
        "--bench-time", min=0.01, help="Seconds per benchmarked runtime.")] = 1.0,
    threads: ThreadsOpt = 1,
    runtime: RuntimeOpt = Backend.auto,
    as_json: JsonFlag = False,
) -> None:
    """Train, convert, verify, inspect and benchmark; write OUT/report.json and report.md."""
    from edgebn.bench import BenchSettings
    from edgebn.build import BuildConfig
    from edgebn.build import build as run_build

    config = BuildConfig(out=out, dataset=dataset, data_dir=data_dir, image_size=image_size,
                         color=color, limit=limit, arch=arch, bn=not no_bn, epochs=epochs,
                         batch_size=batch_size, seed=seed, quantize=quantize, fold=fold,
                         tolerance=tolerance, twin=twin, bundle=make_bundle,
                         emulate=tuple(emulate or ()),
                         bench=run_bench, runtime=runtime,
                         bench_settings=BenchSettings(threads=threads, min_time_s=bench_time))
    log = (lambda msg: typer.echo(msg, err=True)) if as_json else console.print
    result = run_build(config, log=log, verbose=0 if as_json else 2)
    if as_json:
        _print_json(result.report)
    else:
        render_build(result.report, out)


def render_build(report: dict[str, Any], out: Path) -> None:
    t, k, bn = report["tflite"], report["keras"], report["inspect"]["bn"]
    table = Table(title=f"edgebn build -> {out}")
    table.add_column("metric")
    table.add_column("value")
    table.add_row("dataset", f"{report['dataset']['name']} "
                             f"({report['dataset']['train']}/{report['dataset']['val']}/"
                             f"{report['dataset']['test']})")
    table.add_row("model", f"{report['model']['arch']}, {report['model']['params']} params, "
                           f"{report['model']['bn_layers']} BN layers")
    table.add_row("Keras test accuracy", _fmt(k["test_accuracy"]))
    table.add_row("TFLite test accuracy", _fmt(t["test_accuracy"]))
    table.add_row("top-1 agreement", _fmt(t["top1_agreement"]))
    table.add_row("max |Δp|", _fmt(t["max_abs_diff"], ".3g"))
    table.add_row("TFLite size", f"{t['size_bytes']} bytes ({t['quantize']})")
    fd = report.get("fold")
    by = f"{fd['folded']} folded in Keras, " if fd else ""
    table.add_row("BN verdict", f"{bn['verdict']} ({len(bn['residual'])} residual; {by}"
                                f"{len(bn['folded'])} folded by the converter)")
    if fd:
        table.add_row("Keras fold", f"{fd['folded']} folded, {fd['kept']} kept, "
                                    f"max |Δ| {fd['max_abs_diff']:.3g}")
        table.add_row("converter alone / folded first",
                      f"{fd['converter_only']['verdict']} ({fd['converter_only']['residual']}) / "
                      f"{fd['pre_folded']['verdict']} ({fd['pre_folded']['residual']})")
    b = report.get("bench")
    if b:
        table.add_row("TFLite p50", f"{b['tflite']['latency_us']['p50']:.1f} µs")
        for mode, s in b.get("keras", {}).items():
            table.add_row(f"Keras {mode} p50", f"{s['latency_us']['p50']:.1f} µs")
        sp = b.get("speedup")
        if sp:
            table.add_row("speedup vs fastest Keras",
                          f"{sp['vs_fastest_keras']:.1f}x ({sp['fastest_keras']})")
        for key, v in b.get("bn_cost", {}).items():
            table.add_row(f"BN cost {key}", f"{v:.3f}x vs BN-free twin")
        for key, v in b.get("fold_gain", {}).items():
            table.add_row(f"fold gain {key}", f"{v:.3f}x (BN p50 / folded p50)")
    console.print(table)
    if "emulation" in report:
        render_emulation(report["emulation"])
    console.print(f"report: {out / 'report.json'}, {out / 'report.md'}")


# ---------------------------------------------------------------- bench


@app.command()
def bench(
    model: Annotated[Path, typer.Argument(help="The .tflite to benchmark.")],
    keras: Annotated[Path | None, typer.Option("--keras", help="The .keras it came from.")] = None,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Another .tflite (e.g. the BN-free twin), timed interleaved.")] = None,
    keras_baseline: Annotated[Path | None, typer.Option(
        "--keras-baseline", help="The baseline's .keras, to show BN's cost inside Keras.")] = None,
    keras_folded: Annotated[Path | None, typer.Option(
        "--keras-folded", help="The folded .keras (edgebn fold), to show the fold's effect in Keras.")
    ] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="Inputs: a .npy of preprocessed samples (N, H, W, C).")] = None,
    dataset: Annotated[DatasetName | None, typer.Option(
        "--dataset", help="Inputs: this dataset's test split.")] = None,
    threads: ThreadsOpt = 1,
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
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON here.")] = None,
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG here.")] = None,
) -> None:
    """Time the TFLite interpreter against the Keras model, same inputs, side by side."""
    from edgebn.bench import BenchSettings, load_inputs, plot
    from edgebn.bench import bench as run_bench
    from edgebn.stages import write_atomic

    inputs = load_inputs(data, dataset)
    settings = BenchSettings(threads=threads, batch=batch, warmup=warmup, runs=runs,
                             min_time_s=min_time, backend=runtime, xnnpack=xnnpack)
    result = run_bench(model, settings, keras_model=keras, baseline=baseline,
                       keras_baseline=keras_baseline, keras_folded=keras_folded, data=inputs,
                       isolate=isolate, xla=xla)
    render_bench(result)
    if json_out is not None:
        write_atomic(json_out, json.dumps(result.to_json(), indent=2) + "\n")
    if plot_out is not None:
        plot(result, plot_out)


def render_bench(result) -> None:
    env = result.environment
    table = Table(title=f"{env['cpu']} ({env['cores']} cores), {result.tflite.backend}, "
                        f"threads {result.tflite.threads}, batch {result.tflite.batch}, "
                        f"XNNPACK {'on' if result.tflite.xnnpack else 'off'}")
    for col in ("runtime", "runs", "min µs", "p50 µs", "p90 µs", "p99 µs", "mean µs", "std µs"):
        table.add_column(col, justify="right" if col != "runtime" else "left")
    rows = [(f"TFLite {Path(result.tflite.model).name}", result.tflite.runs,
             result.tflite.latency_us)]
    if result.baseline is not None:
        rows.append((f"TFLite {Path(result.baseline.model).name}", result.baseline.runs,
                     result.baseline.latency_us))
    for prefix, group in (("Keras", result.keras), ("Keras baseline", result.keras_baseline),
                          ("Keras folded", result.keras_folded)):
        rows += [(f"{prefix} {m}", s.runs, s.latency_us) for m, s in group.items()]
    for name, n, lat in rows:
        table.add_row(name, str(n), *(f"{getattr(lat, f):.1f}" for f in
                                      ("min", "p50", "p90", "p99", "mean", "std")))
    console.print(table)
    t = result.tflite
    console.print(f"TFLite: init {t.init_ms:.1f} ms, first invoke {t.first_us:.0f} µs, "
                  f"{t.throughput_per_s:.0f} invocations/s ({t.throughput_per_s * t.batch:.0f} "
                  f"samples/s), peak RSS {t.peak_rss_mb:.0f} MB")
    sp = result.speedup()
    if sp:
        console.print("speedup (Keras p50 / TFLite p50): " + ", ".join(
            f"{k} {v:.1f}x" for k, v in sp.items() if isinstance(v, float))
            + f"; headline vs fastest Keras ({sp['fastest_keras']}): {sp['vs_fastest_keras']:.1f}x")
    cost = result.bn_cost()
    if cost:
        console.print("BN cost (BN model p50 / BN-free p50): "
                      + ", ".join(f"{k} {v:.3f}x" for k, v in cost.items()))
    gain = result.fold_gain()
    if gain:
        console.print("fold in Keras (BN model p50 / folded p50): "
                      + ", ".join(f"{k} {v:.3f}x" for k, v in gain.items()))


# ---------------------------------------------------------------- bundle / emulate


@app.command()
def bundle(
    build_dir: Annotated[Path, typer.Argument(help="A build directory (edgebn build --out).")],
    out: Annotated[Path, typer.Option("--out", help="The bundle directory to write.")],
    as_json: JsonFlag = False,
) -> None:
    """Write a self-verifying device bundle: model, labels, predict.py, golden I/O, manifest."""
    from edgebn.bundle import bundle as make_bundle

    result = make_bundle(build_dir, out)
    if as_json:
        _print_json(result.to_json())
    else:
        st = result.selftest
        console.print(f"wrote {out}: {', '.join(sorted(result.files))}, manifest.json")
        console.print(f"self-test here: {'passed' if st['passed'] else 'FAILED'} "
                      f"({st['samples']} golden inputs, {st['runtime']})")
        console.print(f"on the device: python3 {out.name}/predict.py --selftest")


@app.command()
def emulate(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle directory (edgebn bundle).")],
    runtime: Annotated[list[str] | None, typer.Option(
        "--runtime", help="tflite-runtime and/or ai-edge-litert (default: both).")] = None,
    cache: Annotated[Path | None, typer.Option(
        "--cache", help="Userland and wheel cache (default $EDGEBN_PI_CACHE or "
                        "~/.cache/edgebn/pi-bookworm-arm64).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the bundle's self-test on an emulated 64-bit Raspberry Pi OS (exit 1 if it fails)."""
    from edgebn.emulate import RUNTIMES
    from edgebn.emulate import emulate as run_emulate

    result = run_emulate(bundle_dir, tuple(runtime or RUNTIMES), cache,
                         log=lambda msg: typer.echo(msg, err=True))
    if as_json:
        _print_json(result.to_json())
    else:
        render_emulation(result.to_json())
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
def deploy(
    bundle_dir: Annotated[Path, typer.Argument(help="A bundle directory (edgebn bundle).")],
    host: Annotated[str, typer.Option("--host", help="user@host, as ssh takes it.")],
    dest: Annotated[str, typer.Option("--dest", help="Directory on the device.")] = "edgebn",
    selftest: Annotated[bool, typer.Option(
        "--selftest", help="Run predict.py --selftest on the device and bring its JSON back.")
    ] = False,
    python: Annotated[str, typer.Option("--python", help="The device's Python.")] = "python3",
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535)] = None,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="ssh key file.")] = None,
    ssh_option: Annotated[list[str] | None, typer.Option(
        "--ssh-option", "-o", help="An ssh -o option (repeatable).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Copy a bundle to a device over ssh; with --selftest, run it there (exit 1 if it fails)."""
    from edgebn.deploy import deploy as run_deploy

    result = run_deploy(bundle_dir, host, dest, selftest, python, port, identity,
                        tuple(ssh_option or ()))
    if as_json:
        _print_json(result.to_json())
    else:
        console.print(f"copied {bundle_dir} to {host}:{result.path} ({result.bytes_sent} bytes, "
                      f"{result.seconds:.1f} s)")
        st = result.selftest
        if st is not None:
            console.print(f"self-test on {host}: {'passed' if result.passed else 'FAILED'} "
                          f"({st['runtime']}, NumPy {st['numpy']}, {st['machine']}, max |diff| "
                          f"{st['max_abs_diff']:.3g} {st['units']})")
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def render_emulation(doc: dict[str, Any]) -> None:
    table = Table(title=f"self-test on {doc['platform']}")
    for col in ("runtime", "result", "NumPy", "max |diff|", "top-1", "seconds"):
        table.add_column(col)
    for r in doc["runs"]:
        st = r["selftest"] or {}
        table.add_row(st.get("runtime", r["runtime"]),
                      "[green]passed[/]" if r["passed"] else f"[red]FAILED[/] {r['error'] or ''}",
                      str(st.get("numpy", "-")),
                      f"{st['max_abs_diff']:.3g} {st['units']}" if st else "-",
                      _fmt(st.get("top1_agreement"), ".3f"), f"{r['seconds']:.1f}")
    console.print(table)


# ---------------------------------------------------------------- check


@app.command()
def check(
    report: Annotated[Path, typer.Argument(help="The new build's report.json.")],
    baseline: Annotated[Path, typer.Option("--baseline", help="The baseline's report.json.")],
    max_accuracy_drop: Annotated[float, typer.Option(
        "--max-accuracy-drop", help="Largest allowed accuracy drop (0.01 = 1 point).")] = 0.01,
    max_latency_regression: Annotated[float, typer.Option(
        "--max-latency-regression", help="Largest allowed p50 increase (0.10 = 10 %).")] = 0.10,
    max_size_growth: Annotated[float, typer.Option(
        "--max-size-growth", help="Largest allowed file growth (0.05 = 5 %).")] = 0.05,
    allow_op: Annotated[list[str] | None, typer.Option(
        "--allow-op", help="An op the new model may add (repeatable).")] = None,
    bench_time: Annotated[float, typer.Option(
        "--bench-time", min=0.01, help="Seconds per model for the latency ratio.")] = 1.0,
    as_json: JsonFlag = False,
) -> None:
    """Gate a build against a baseline: accuracy, latency, size, op set, BN (exit 1 on regression)."""
    from edgebn.bench import BenchSettings
    from edgebn.check import Thresholds
    from edgebn.check import check as run_check

    result = run_check(report, baseline, Thresholds(max_accuracy_drop, max_latency_regression,
                                                    max_size_growth, tuple(allow_op or ())),
                       BenchSettings(min_time_s=bench_time))
    if as_json:
        _print_json(result.to_json())
    else:
        table = Table(title=f"edgebn check {report} against {baseline}")
        for col in ("metric", "baseline", "current", "threshold", "result"):
            table.add_column(col)
        for m in result.metrics:
            table.add_row(m.name, str(m.baseline), str(m.current), m.threshold,
                          "[green]pass[/]" if m.passed else "[red]FAIL[/]")
        console.print(table)
        console.print("[green]no regression[/]" if result.passed else "[red]regression[/]")
    if not result.passed:
        raise typer.Exit(EXIT_PROBLEM)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
