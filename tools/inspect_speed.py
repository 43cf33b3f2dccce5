#!/usr/bin/env python3
"""How long does `edgebn inspect` take on a ~1 MB model, as a user runs it?

Builds a BN MLP of about 1 MB (Dense 512x512 float32), converts it, then times the
whole `edgebn inspect --json` process (interpreter start-up included) five times.

    python tools/inspect_speed.py [--write docs/measurements.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figure_block import add_write_option, captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_write_option(parser, "inspect-speed")
    args = parser.parse_args()
    import keras

    from edgebn.convert import to_tflite as convert

    tmp = Path(tempfile.mkdtemp(prefix="edgebn-inspect-"))
    inputs = keras.Input((512,))
    x = keras.layers.Dense(512, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(10)(x)
    path = convert(keras.Model(inputs, outputs), tmp / "big.tflite").path
    size = path.stat().st_size
    walls = []
    for _ in range(5):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "edgebn.cli.app", "inspect", str(path),
                               "--json"],
                              capture_output=True, text=True, env=os.environ)
        walls.append(time.perf_counter() - t0)
        assert proc.returncode in (0, 1), proc.stderr
    from edgebn.tflite.residue import inspect_tflite

    lib = min(inspect_tflite(path).elapsed_ms for _ in range(5))
    with captured(args.write, "inspect-speed"):
        print(f"{path.name}: {size / 1e6:.2f} MB\n")
        print("| what is timed | time |")
        print("| --- | --- |")
        print(f"| `edgebn inspect --json`, the whole process (median of {len(walls)}) | "
              f"{statistics.median(walls):.3f} s |")
        print(f"| the same, slowest of {len(walls)} | {max(walls):.3f} s |")
        print(f"| the library's parse and BN analysis alone (best of 5) | {lib:.1f} ms |")


if __name__ == "__main__":
    main()
