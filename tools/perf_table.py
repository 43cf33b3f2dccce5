#!/usr/bin/env python3
"""Reproduce the measured performance table: bench a build twice, side by side.

    python tools/perf_table.py [BUILD_DIR] [--write docs/measurements.md]
    # default: runs `edgebn build` into a temp dir

Each run benches model.tflite against model.keras (eager, predict, tf.function) and
the BN-free baseline (.tflite interleaved, .keras) and the model edgebn folded in Keras
(folded.keras), at batch 1 and 1 thread, with
`edgebn bench`'s defaults. The two runs show how repeatable p50 is on this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from figure_block import add_write_option, captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", nargs="?", type=Path,
                        help="a default build (else one is made)")
    add_write_option(parser, "perf-table")
    args = parser.parse_args()
    if args.build_dir is not None:
        out = args.build_dir
    else:
        out = Path(tempfile.mkdtemp(prefix="edgebn-perf-")) / "build"
        subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--out", str(out),
                        "--no-bench"], check=True, stdout=subprocess.DEVNULL)
    from edgebn.bench.run import BenchTargets, bench
    from edgebn.data.dataset import DataSpec
    from edgebn.runtime.timing import BenchSettings

    data = DataSpec().load().x_test
    targets = BenchTargets(out / "model.tflite", out / "twin.tflite", keras=out / "model.keras",
                           keras_baseline=out / "twin.keras", keras_folded=out / "folded.keras",
                           baseline_label="BN-free baseline")
    runs = [bench(targets, BenchSettings(), data=data) for _ in range(2)]
    with captured(args.write, "perf-table"):
        _print(runs)


def _print(runs) -> None:
    env = runs[0].environment
    print(f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, NumPy {env['numpy']}, "
          f"TensorFlow {env['tensorflow']}, {env['backend']}, XNNPACK on, 1 thread, batch 1\n")
    print("| runtime | p50 µs (run 1) | p50 µs (run 2) | run 2 / run 1 | p99 µs (run 1) |")
    print("| --- | --- | --- | --- | --- |")

    def rows(r):
        yield "TFLite, BN model (folded)", r.tflite.latency_us
        yield "TFLite, BN-free baseline", r.baseline.latency_us
        for m, s in r.keras.items():
            yield f"Keras {m}, BN model", s.latency_us
        for m, s in r.keras_folded.items():
            yield f"Keras {m}, BN folded by edgebn", s.latency_us
        for m, s in r.keras_baseline.items():
            yield f"Keras {m}, BN-free baseline", s.latency_us

    for (name, a), (_, b) in zip(rows(runs[0]), rows(runs[1]), strict=True):
        print(f"| {name} | {a.p50:.1f} | {b.p50:.1f} | {b.p50 / a.p50:.3f} | {a.p99:.1f} |")
    for i, r in enumerate(runs, 1):
        sp, cost = r.speedup(), r.bn_cost()
        print(f"\nrun {i}: TFLite speedup vs fastest Keras ({sp['fastest_keras']}) "
              f"{sp['vs_fastest_keras']:.1f}x; BN cost (BN / BN-free p50): "
              + ", ".join(f"{k} {v:.3f}x" for k, v in cost.items())
              + "; fold gain in Keras (BN / folded p50): "
              + ", ".join(f"{k} {v:.3f}x" for k, v in r.fold_gain().items()))


if __name__ == "__main__":
    main()
