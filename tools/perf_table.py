#!/usr/bin/env python3
"""Reproduce the README's performance table: bench a build twice, side by side.

    python tools/perf_table.py [BUILD_DIR]   # default: runs `edgebn build` into a temp dir

Each run benches model.tflite against model.keras (eager, predict, tf.function) and
the BN-free twin (.tflite interleaved, .keras) and the model edgebn folded in Keras
(folded.keras), at batch 1 and 1 thread, with
`edgebn bench`'s defaults. The two runs show how repeatable p50 is on this machine.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    if len(sys.argv) > 1:
        out = Path(sys.argv[1])
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
                           baseline_label="BN-free twin")
    runs = [bench(targets, BenchSettings(), data=data) for _ in range(2)]
    env = runs[0].environment
    print(f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, NumPy {env['numpy']}, "
          f"TensorFlow {env['tensorflow']}, {env['backend']}, XNNPACK on, 1 thread, batch 1\n")
    print("| runtime | p50 µs (run 1) | p50 µs (run 2) | run 2 / run 1 | p99 µs (run 1) |")
    print("| --- | --- | --- | --- | --- |")

    def rows(r):
        yield "TFLite, BN model (folded)", r.tflite.latency_us
        yield "TFLite, BN-free twin", r.baseline.latency_us
        for m, s in r.keras.items():
            yield f"Keras {m}, BN model", s.latency_us
        for m, s in r.keras_folded.items():
            yield f"Keras {m}, BN folded by edgebn", s.latency_us
        for m, s in r.keras_baseline.items():
            yield f"Keras {m}, BN-free twin", s.latency_us

    for (name, a), (_, b) in zip(rows(runs[0]), rows(runs[1]), strict=True):
        print(f"| {name} | {a.p50:.1f} | {b.p50:.1f} | {b.p50 / a.p50:.3f} | {a.p99:.1f} |")
    for i, r in enumerate(runs, 1):
        sp, cost = r.speedup(), r.bn_cost()
        print(f"\nrun {i}: TFLite speedup vs fastest Keras ({sp['fastest_keras']}) "
              f"{sp['vs_fastest_keras']:.1f}x; BN cost (BN / twin p50): "
              + ", ".join(f"{k} {v:.3f}x" for k, v in cost.items())
              + "; fold gain in Keras (BN / folded p50): "
              + ", ".join(f"{k} {v:.3f}x" for k, v in r.fold_gain().items()))


if __name__ == "__main__":
    main()
