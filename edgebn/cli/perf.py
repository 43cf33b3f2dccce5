"""The CLI's performance commands: profile (registered on edgebn.cli.app's app). No TensorFlow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgebn.cli import render
from edgebn.cli.options import JsonFlag, RuntimeOpt, ThreadsOpt, VerboseFlag
from edgebn.cli.ui import quiet, show
from edgebn.runtime.backends import Backend
from edgebn.runtime.profile.operators import profile as run_profile
from edgebn.runtime.profile.result import ProfileSettings

TflitePath = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                            help="The .tflite to profile.")]


def profile(  # noqa: PLR0913 - a Typer command's parameters are its options
    model: TflitePath,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", exists=True, dir_okay=False, readable=True,
        help="Another .tflite: profiled in the same rounds, diffed operator by operator.")] = None,
    threads: ThreadsOpt = 1,
    runtime: RuntimeOpt = Backend.auto,
    xnnpack: Annotated[bool, typer.Option(help="Use the XNNPACK delegate.")] = True,
    min_time: Annotated[float, typer.Option(
        "--min-time", min=0.01, help="Seconds of timed runs for the whole model; its operators "
                                     "share as much (at least 10 ms each).")] = 1.0,
    residue: Annotated[bool, typer.Option(
        help="Time the graph with its residual BN pairs bypassed (the residue's cost).")] = True,
    context: Annotated[bool, typer.Option(
        help="Time the model's prefixes too: each operator's time scaled to its segment's "
             "inside the model (weights as cold, fusions as they are there).")] = True,
    top: Annotated[int, typer.Option("--top", min=1, help="Operators shown in the table.")] = 15,
    as_json: JsonFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Time each operator isolated (same constants, threads, delegate), and in context by
    differences of the model's prefixes, beside the whole model."""
    settings = ProfileSettings(threads=threads, backend=runtime, xnnpack=xnnpack,
                               min_time_s=min_time, residue=residue, context=context)
    with quiet(verbose):  # the interpreters announce their delegate on fd 2
        result = run_profile(model, settings, baseline)
    show(result, as_json, lambda r: render.profile(r, top))


def register_perf_commands(app: typer.Typer) -> None:
    app.command()(profile)
