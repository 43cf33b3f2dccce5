#!/usr/bin/env python3
"""The measured backbone table: each zoo backbone at 96 and 224 px, float32 and int8.

    python tools/backbone_figures.py [--sizes 96,224] [--time 1.0] [ARCH ...] [--write PAGE]

Each backbone is built as ``edgebn build --arch`` builds it (edgebn.zoo.backbones: the
application without its top, a new 5-class head; weights none, BN statistics set from
random images, since nothing is downloaded here), folded by edgebn, converted float32
and int8 (calibrated on random images), and timed: the TFLite interpreter (one thread,
XNNPACK, the installed runtime) and Keras' compiled tf.function, batch 1. Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from figure_block import add_write_option, captured

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # synthetic images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLASSES = 5


def _model(arch, size: int, work: Path):
    """The transfer model with BN statistics from images (what pretrained weights give)."""
    from synthetic import pretrained_weights

    from edgebn.zoo.backbones import build_transfer

    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (16, size, size, 3))
    weights = pretrained_weights(work / f"{arch.value}-{size}.h5", images,
                                 np.zeros(16, np.int64), arch.value, 1.0, epochs=0)
    return build_transfer(arch, (size, size, 3), CLASSES, 1.0, str(weights))


def _row(arch, size: int, seconds: float, work: Path) -> str:
    from edgebn.bench.run import BenchTargets, bench
    from edgebn.convert import to_tflite
    from edgebn.fold.keras.keras_fold import all_bn_layer_names, fold_model
    from edgebn.runtime.timing import BenchSettings

    model = _model(arch, size, work)
    x = np.random.default_rng(1).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    folded = fold_model(model, x[:8], inputs="random images").model
    f32 = to_tflite(folded, work / f"{arch.value}-{size}.tflite")
    i8 = to_tflite(folded, work / f"{arch.value}-{size}-int8.tflite", "int8", x)
    settings = BenchSettings(min_time_s=seconds, keras_time_s=seconds)
    r32 = bench(BenchTargets(f32.model, keras=model), settings, data=x[:8])
    r8 = bench(BenchTargets(i8.model), settings, data=x[:8])
    keras = r32.keras["compiled"].latency_us.p50
    cost = r32.tflite.cost
    eff = f"{cost.gmacs_per_s:.1f} ({cost.efficiency:.0%})" if cost is not None else "n/a"
    return (f"| {arch.value} | {size} | {model.count_params():,} | "
            f"{len(all_bn_layer_names(model))} | {f32.size_bytes / 1e6:.2f} MB | "
            f"{i8.size_bytes / 1e6:.2f} MB | {r32.tflite.latency_us.p50:,.0f} µs | "
            f"{r8.tflite.latency_us.p50:,.0f} µs | {keras:,.0f} µs | {eff} |")


def main() -> None:
    from edgebn.zoo.models import BACKBONE_ARCHS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="*", default=sorted(a.value for a in BACKBONE_ARCHS))
    parser.add_argument("--sizes", default="96,224")
    parser.add_argument("--time", type=float, default=1.0, help="seconds per timed model")
    add_write_option(parser, "backbones")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgebn-backbones-"))
    with captured(a.write, "backbones"):
        _table(a, work)


def _table(a, work: Path) -> None:
    from edgebn.zoo.models import Arch

    print("| backbone | px | params | BN layers | TFLite float32 | TFLite int8 | "
          "TFLite p50 float32 | TFLite p50 int8 | Keras compiled p50 | GMAC/s (of ceiling) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in a.archs:
        for size in (int(s) for s in a.sizes.split(",")):
            print(_row(Arch(name), size, a.time, work), flush=True)


if __name__ == "__main__":
    main()
