"""The CLI's shared parts: the error boundary, option types, the DataSpec option group."""

from __future__ import annotations

import functools
import inspect as pyinspect
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from edgebn.bench.scaling import parse_thread_counts
from edgebn.choices import QUANTIZE_HELP, Quantize
from edgebn.data.dataset import DatasetName, DataSpec
from edgebn.data.images import Color, Resize
from edgebn.errors import EdgebnError
from edgebn.fold.keras.statistics import RECALIBRATE_SAMPLES, STALE_DRIFT
from edgebn.fold.keras.stats_check import StatsPolicy
from edgebn.runtime.backends import Backend
from edgebn.train.distribute import Strategy
from edgebn.train.training import TrainConfig
from edgebn.zoo.models import BACKBONE_NAMES, DEFAULT_ARCH, Arch

EXIT_PROBLEM = 1  # the command ran and found a problem (BN residue, regression)
EXIT_BAD_INPUT = 2


class OneLineErrors(TyperGroup):
    """The CLI's single error boundary: bad input or usage -> one stderr line, exit 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = with_optional_values(list(sys.argv[1:] if args is None else args))
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
            typer.echo(f"Error: {error_line(exc, self.flags(args))}", err=True)
            sys.exit(EXIT_BAD_INPUT)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)

    def flags(self, args: list[str]) -> dict[str, str]:
        """How the command in ``args`` spells its options, by parameter (``npz``: ``--data``)."""
        name = next((a for a in args if a in self.commands), None)  # no global option takes a value
        command = self.commands.get(name) if name is not None else None
        return {p.name: next((o for o in p.opts if o.startswith("--")), p.opts[0])
                for p in (command.params if command is not None else ())
                if p.param_type_name == "option" and p.name}


# Library parameters that no option is named after: the flag that sets each.
FLAGS = {"bn": "--no-bn"}


def error_line(exc: EdgebnError, flags: dict[str, str] | None = None) -> str:
    """A library error as the CLI says it: the flag it is about first, when it names one.

    ``flags``: the command's own spelling of its parameters; else the parameter's name as a flag.
    """
    if exc.option is None:
        return str(exc)
    flag = (flags or {}).get(exc.option) or FLAGS.get(exc.option) or \
        f"--{exc.option.replace('_', '-')}"
    return f"{flag}: {exc}"


# ---------------------------------------------------------------- shared options

# Options whose value may be left out (``--recalibrate-bn`` or ``--recalibrate-bn 300``):
# click has no such option, so a bare one gets its default value before parsing.
OPTIONAL_VALUES = {"--recalibrate-bn": str(RECALIBRATE_SAMPLES)}


def with_optional_values(args: list[str]) -> list[str]:
    """``args`` with each option of :data:`OPTIONAL_VALUES` given its value when left out."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--":
            return out + args[i + 1:]
        if arg in OPTIONAL_VALUES and not (i + 1 < len(args) and args[i + 1].isdigit()):
            out.append(OPTIONAL_VALUES[arg])
    return out


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
VerboseFlag = Annotated[bool, typer.Option(
    "--verbose", "-v", help="Show TensorFlow's, absl's and Keras' own log lines.")]
RuntimeOpt = Annotated[Backend, typer.Option("--runtime", help="Interpreter backend.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="Interpreter threads (a Pi: 4).")]


class ThreadCounts(tuple):
    """``--threads 1,2,4``: interpreter thread counts (a tuple subclass: one option, not nargs)."""


def _thread_counts(text: str | tuple) -> ThreadCounts:
    if isinstance(text, tuple):  # the default
        return ThreadCounts(text)
    try:
        return ThreadCounts(parse_thread_counts(text))
    except EdgebnError as exc:
        raise typer.BadParameter(str(exc)) from None


ONE_THREAD = ThreadCounts((1,))
ThreadCountsOpt = Annotated[ThreadCounts, typer.Option(
    "--threads", parser=_thread_counts, metavar="N[,N...]",
    help="Interpreter threads (a Pi: 4); a list such as 1,2,4 adds a scaling table.")]
QuantizeOpt = Annotated[Quantize, typer.Option("--quantize", help=QUANTIZE_HELP)]  # its rows
FoldOpt = Annotated[bool, typer.Option(
    "--fold/--no-fold", help="Fold BN in Keras before converting (and show the converter's own "
                             "verdict beside it).")]
ToleranceOpt = Annotated[float, typer.Option(
    "--tolerance", min=1e-12,
    help="How much further the folded model may be from the original's float64 outputs than "
         "the original's own float32 rounding, relative to the largest output.")]
RecalibrateOpt = Annotated[int | None, typer.Option(
    "--recalibrate-bn", metavar="[N]", min=2,
    help=f"Recompute every BN's statistics from N inputs (default {RECALIBRATE_SAMPLES}), layer "
         "by layer, before the fold; proven on held-out inputs.")]
StrictStatsOpt = Annotated[bool, typer.Option(
    "--strict-bn-stats", help=f"Refuse a model whose BN statistics do not describe the data "
                              f"(drift > {STALE_DRIFT:g}) instead of warning.")]
KerasIn = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="The Keras model: a .keras, or a legacy .h5.")]

_DATA_OPTIONS = [  # (name, annotation, default): the DataSpec group, shared by every command
    ("dataset", Annotated[DatasetName, typer.Option(
        "--dataset", help="Dataset (an image folder: use --data-dir).")], DatasetName.digits),
    ("data_dir", Annotated[Path | None, typer.Option(
        "--data-dir", exists=True, file_okay=False,
        help="Images, one sub-folder per class (overrides --dataset).")], None),
    ("npz", Annotated[Path | None, typer.Option(
        "--data", exists=True, dir_okay=False,
        help="Preprocessed inputs: .npz with x (N, H, W, C) and y (N,) class indices, optional "
             "labels; or, where only inputs are needed, a .npy (overrides --data-dir).")], None),
    ("labels", Annotated[Path | None, typer.Option(
        "--labels", exists=True, dir_okay=False,
        help="Class names, one a line (for a --data .npz without 'labels').")], None),
    ("image_size", Annotated[int | None, typer.Option(
        "--image-size", min=4, help="Side of the images from --data-dir [default: 32, or the "
                                    "--model's input].")], None),
    ("color", Annotated[Color | None, typer.Option(
        "--color", help="Colour of the images from --data-dir [default: grayscale, or the "
                        "--model's input].")], None),
    ("resize", Annotated[Resize, typer.Option(
        "--resize", help="Resize filter for images (the device uses the same).")], Resize.bilinear),
    ("scale", Annotated[float | None, typer.Option(
        "--input-scale", help="Images become x = pixel * scale + offset (pixel 0..255) "
                              "[default: 1/255, or 1 when the --model rescales itself].")], None),
    ("offset", Annotated[float, typer.Option("--input-offset", help="See --input-scale.")], 0.0),
    ("seed", Annotated[int, typer.Option("--seed", help="Seed for split, init and shuffling.")], 0),
    ("limit", Annotated[int | None, typer.Option(
        "--limit", min=10, help="Use at most N samples (stratified).")], None),
]


_TRAIN_OPTIONS = [  # (name, annotation, default): the TrainConfig group of train and build
    ("arch", Annotated[Arch, typer.Option(
        "--arch", help="Model: a small zoo model, or a keras.applications backbone with a new "
                       f"head ({BACKBONE_NAMES}).")], DEFAULT_ARCH),
    ("no_bn", Annotated[bool, typer.Option(
        "--no-bn", help="The BN-free baseline instead (small zoo models).")], False),
    ("epochs", Annotated[int, typer.Option(
        "--epochs", min=1, help="Most epochs (early stop); a backbone: of its head.")], 40),
    ("batch_size", Annotated[int, typer.Option("--batch-size", min=1)], 32),
    ("learning_rate", Annotated[float, typer.Option("--learning-rate", min=1e-9)], 3e-3),
    ("alpha", Annotated[float, typer.Option(
        "--alpha", min=0.01, help="A MobileNet backbone's width multiplier.")], 1.0),
    ("weights", Annotated[str, typer.Option(
        "--weights", help="A backbone's weights: none (from scratch), imagenet (downloaded "
                          "through Keras), or a .h5 weights file.")], "none"),
    ("fine_tune_epochs", Annotated[int, typer.Option(
        "--fine-tune-epochs", min=0, help="Then unfreeze the backbone's top (never its BN) "
                                          "at a lower learning rate for N epochs.")], 0),
    ("augment", Annotated[bool, typer.Option(
        "--augment", help="Random flip, small rotation, zoom while training (Keras layers "
                          "that vanish at inference).")], False),
    ("strategy", Annotated[Strategy, typer.Option(
        "--strategy", help="mirrored: every local GPU, or --replicas logical CPU devices.")],
     Strategy.none),
    ("replicas", Annotated[int | None, typer.Option(
        "--replicas", min=1, help="Devices for --strategy mirrored (default: every GPU, "
                                  "else 2 CPU devices).")], None),
]


def _train_config(no_bn: bool, **options: object) -> TrainConfig:
    return TrainConfig(bn=not no_bn, **options)


def _option_group(param: str, options: list, make):
    """Add ``options`` to a command; it receives them as one value ``param`` = make(**them)."""

    def decorate(fn):
        hints = typing.get_type_hints(fn, include_extras=True)  # real annotations, not strings
        P = pyinspect.Parameter
        params = [p.replace(kind=P.KEYWORD_ONLY, annotation=hints[p.name])
                  for p in pyinspect.signature(fn).parameters.values() if p.name != param]
        params += [P(name, P.KEYWORD_ONLY, default=default, annotation=annotation)
                   for name, annotation, default in options]

        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> object:
            value = make(**{name: kwargs.pop(name) for name, _, _ in options})
            return fn(*args, **{param: value}, **kwargs)

        wrapper.__signature__ = pyinspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


data_options = _option_group("data", _DATA_OPTIONS, DataSpec)
data_options.__doc__ = "Add the DataSpec options to a command, received as ``data: DataSpec``."
train_options = _option_group("training", _TRAIN_OPTIONS, _train_config)
train_options.__doc__ = "Add the TrainConfig options, received as ``training: TrainConfig``."


def suffix(*suffixes: str):
    def check(path: Path | None) -> Path | None:
        if path is not None and path.suffix not in suffixes:
            raise typer.BadParameter(f"must end in {' or '.join(suffixes)}. Received: {path}")
        return path

    return check


def model_path(path: Path | None) -> Path | None:
    """``--model``: a .keras, .h5 or .tflite file, or a SavedModel directory."""
    if path is None:
        return None
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise typer.BadParameter(f"{path} is a directory without saved_model.pb: not a "
                                     "TensorFlow SavedModel")
        return path
    if path.suffix not in (".keras", ".h5", ".tflite"):
        raise typer.BadParameter(f"must be a .keras, .h5 or .tflite file, or a SavedModel "
                                 f"directory. Received: {path}")
    return path


ModelOpt = Annotated[Path | None, typer.Option(
    "--model", exists=True, callback=model_path,
    help="Build this model instead of training one from the zoo: yours, as a .keras, a legacy "
         ".h5, a TensorFlow SavedModel directory, or a .tflite from any converter (PyTorch's "
         "through litert-torch included).")]
SignatureOpt = Annotated[str | None, typer.Option(
    "--signature", help="A SavedModel's signature to convert [default: serving_default].")]
MinAgreementOpt = Annotated[float | None, typer.Option(
    "--min-agreement", min=0, max=1,
    help="Loosen verify: the least top-1 agreement of the .tflite with the model "
         "[default: the quantize mode's, 0.99 for float32 to 0.9 for int8].")]
MaxProbDiffOpt = Annotated[float | None, typer.Option(
    "--max-prob-diff", min=0, max=1,
    help="Loosen verify: the largest |Δp| of the .tflite against the model "
         "[default: the quantize mode's, 1e-4 for float32 to 0.5 for int8].")]


def check_model_options(model: Path | None, signature: str | None, bn_stats: StatsPolicy) -> bool:
    """``build``'s options that fit only some models, refused where they cannot apply; True
    when the model takes the .tflite route (a .tflite, or a SavedModel directory)."""
    tflite_route = model is not None and (model.suffix == ".tflite" or model.is_dir())
    if tflite_route and (bn_stats.recalibrate is not None or bn_stats.strict):
        raise typer.BadParameter("--recalibrate-bn and --strict-bn-stats are for a Keras model: "
                                 "a .tflite has its BN statistics baked into its weights")
    if signature is not None and (model is None or not model.is_dir()):
        raise typer.BadParameter("--signature is for a SavedModel directory given as --model")
    return tflite_route


class Multipliers(tuple):
    """``--lr-sweep 1,3,10``: learning-rate multipliers (a tuple subclass: one option)."""


def _multipliers(text: str | tuple) -> Multipliers:
    if isinstance(text, tuple):
        return Multipliers(text)
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected numbers such as 1,3,10. Received: {text}") from None
    if not values or any(not v > 0 for v in values) or len(set(values)) != len(values):
        raise typer.BadParameter(f"expected distinct numbers > 0 such as 1,3,10. Received: {text}")
    return Multipliers(values)


LrSweepOpt = Annotated[Multipliers | None, typer.Option(
    "--lr-sweep", parser=_multipliers, metavar="M[,M...]",
    help="Train the BN model and its BN-free baseline at each multiple of --learning-rate, and "
         "compare each at its own best rate (BN allows higher rates: the BN paper's claim came "
         "with them).")]

BaselineFlag = Annotated[bool, typer.Option(
    "--twin/--no-twin", help="Also train the BN-free baseline (the same model without BN): the "
                             "baseline of the BN vs no-BN training ledger and of the bench.")]
