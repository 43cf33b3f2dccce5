#!/usr/bin/env python3
"""Reproduce the measured "How close to the machine's limit" table.

    python tools/perf_figures.py [BUILD_DIR] [--write docs/measurements.md]
    # default: `edgebn build --no-bench` into a temp dir

Two models, each at 1 and 2 interpreter threads (edgebn.bench.scaling.bench_threads, bench
defaults: XNNPACK, batch 1, 1 s of timed runs per count):

* the default model: `edgebn build`'s cnn on digits, folded, float32 (BUILD_DIR/model.tflite),
  timed on the digits test split;
* MobileNetV2 from keras.applications (weights=None, alpha 0.35, 96x96x3), converted with
  edgebn.convert.to_tflite, timed on random inputs.

For each: MACs counted from the file (edgebn.runtime.cost), p50, achieved GMAC/s at p50, the
compute-bound probe's ceiling at the same thread count, and efficiency = GMAC/s / ceiling.
The probe is measured afresh in this run (a temporary EDGEBN_CACHE), so the ceiling and
the models are timed under the same load.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from figure_block import add_write_option, captured

THREADS = (1, 2)


def _default_model(build_dir: Path | None, tmp: Path) -> Path:
    if build_dir is None:
        build_dir = tmp / "build"
        subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--out", str(build_dir),
                        "--no-bench"], check=True, stdout=subprocess.DEVNULL)
    return build_dir / "model.tflite"


def _mobilenet_v2(tmp: Path) -> Path:
    from edgebn.cli.ui import quiet

    with quiet(False):
        import keras

        from edgebn.convert import to_tflite

        model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35,
                                               weights=None)
        return to_tflite(model, tmp / "mobilenet_v2_035_96.tflite").path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path,
                        help="a default build (else one is made)")
    add_write_option(parser, "efficiency")
    args = parser.parse_args()
    from edgebn.bench.run import BenchTargets, bench_threads
    from edgebn.bench.scaling import ThreadScaling
    from edgebn.cli.ui import quiet
    from edgebn.data.dataset import DataSpec
    from edgebn.runtime.cost import PROBE_CHANNELS, PROBE_LAYERS, PROBE_SIZE, probe_model
    from edgebn.runtime.timing import BenchSettings
    from edgebn.tflite.macs import model_cost
    from edgebn.tflite.reader import parse_tflite

    tmp = Path(tempfile.mkdtemp(prefix="edgebn-figures-"))
    os.environ["EDGEBN_CACHE"] = str(tmp / "cache")  # probe the ceiling now, not from a cache
    build_dir = args.build_dir
    models = {  # name -> (.tflite, its inputs: None for random)
        "default cnn (digits, folded, float32)": (_default_model(build_dir, tmp),
                                                  DataSpec().load().x_test),
        "MobileNetV2 alpha 0.35, 96x96 (weights=None)": (_mobilenet_v2(tmp), None)}
    results = {}
    with quiet(False):  # the interpreter announces its delegate on fd 2
        for name, (path, data) in models.items():
            results[name] = bench_threads(BenchTargets(path), BenchSettings(), THREADS, data)
    env = next(iter(results.values())).environment
    probe_macs = model_cost(parse_tflite(probe_model(), "probe")).macs
    with captured(args.write, "efficiency"):
        print(f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, {env['backend']}, "
              f"XNNPACK on, batch 1. Ceiling: the probe ({PROBE_LAYERS} 1x1 CONV_2D, "
              f"{PROBE_CHANNELS} channels, {PROBE_SIZE}x{PROBE_SIZE}, float32, "
              f"{probe_macs / 1e6:.0f} M MACs), its fastest run at the same thread count.\n")
        header = ("model", "MACs", *ThreadScaling.HEADER)
        print(f"| {' | '.join(header)} |")
        print(f"| {' | '.join('---' for _ in header)} |")
        for name, result in results.items():
            macs = f"{result.tflite.cost.macs / 1e6:.2f} M"
            for row in result.scaling.rows:
                print(f"| {name} | {macs} | {' | '.join(row.cells())} |")


if __name__ == "__main__":
    main()
