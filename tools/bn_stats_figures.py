"""The measured BN-statistics table: each zoo backbone trained from scratch, its test accuracy
with the statistics training left and with them recomputed.

    python tools/bn_stats_figures.py [--archs mobilenet-v2 ...] [--image-size 32] [--write PAGE]

The data: scikit-learn's digits written as a 32 px RGB image folder (tests/digits_images.py),
trained as ``edgebn build --arch ARCH --weights none --data-dir DIGITS --image-size 32``
would, default epochs. Two trainings per backbone: with the BN momentum the application
sets (0.999 for the MobileNets: what edgebn did before) and with the momentum fitted to the
steps of an epoch (what it does now). Each row gives the test accuracy with the statistics
training left ("stored") and after every BN's statistics are recomputed on 600 training
inputs, layer by layer ("recomputed"), and the largest BN drift before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from figure_block import add_write_option, captured  # noqa: E402

from edgebn.machine import cpu_model  # noqa: E402  (after the tests' folder is on the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+",
                        default=["mobilenet-v2", "mobilenet-v3-small", "efficientnet-b0"])
    parser.add_argument("--image-size", type=int, default=32)
    add_write_option(parser, "bn-stats")
    args = parser.parse_args()

    from digits_images import write_folder

    from edgebn.data.dataset import DataSpec
    from edgebn.train.training import TrainConfig, train

    folder = write_folder(Path(tempfile.mkdtemp(prefix="edgebn-digits-")) / "digits_rgb",
                          args.image_size)
    with captured(args.write, "bn-stats"):
        print(f"CPU: {cpu_model()}; digits as {args.image_size} px RGB images, default epochs")
        print("| backbone | BN momentum in training | epochs | test accuracy, stored statistics | "
              "recomputed | largest drift stored → recomputed | train s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for arch in args.archs:
            for fit in (False, True):
                config = TrainConfig(arch=arch, weights="none", fit_bn_momentum=fit)
                data = config.data_for(replace(DataSpec(data_dir=folder),
                                               image_size=args.image_size))
                ds = data.load(stream=True)
                t0 = time.perf_counter()
                result = train(ds, config)
                stats = result.bn_statistics
                recal = stats.check.recalibration
                momentum = (f"fitted: {stats.momentum:.3f}" if stats.momentum is not None
                            else "the application's")
                print(f"| {arch} | {momentum} | {result.epochs_run} | "
                      f"{stats.test_accuracy_stored:.4f} | "
                      f"{result.test_accuracy:.4f} | {recal.before.max_drift:.2f} → "
                      f"{recal.after.max_drift:.2f} | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
