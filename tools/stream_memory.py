#!/usr/bin/env python3
"""Peak memory of training on a big image folder: streamed, not loaded.

    python tools/stream_memory.py [WORK_DIR] [--images 5000] [--size 224] [--build] [--write PAGE]

Generates a folder of N images (3 classes, noise over a raised colour channel, PNG and
JPEG alternating, a few pixels larger than SIZE so every one is resized), MobileNetV2
weights in the ImageNet .h5 format (random filters, BN statistics set from images:
nothing is downloaded), then runs, each in a fresh process as a user would,

    edgebn train --arch mobilenet-v2 --image-size SIZE --data-dir FOLDER --weights W.h5
                 --epochs 1

and reads that process's peak RSS from the kernel (``os.wait4``'s rusage). With
``--build`` it also runs ``edgebn build --no-bench`` on the same folder (fold, convert,
verify on the test split, which is read into memory). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from figure_block import add_write_option, captured

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # synthetic images

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this script builds the weights with Keras


def _peak_run(args: list[str], log: Path) -> tuple[float, float, str]:
    """Run ``edgebn ARGS`` in a fresh process: (its peak RSS in MB, seconds, its stdout)."""
    t0 = time.perf_counter()
    with open(log, "w+") as out, open(log.with_suffix(".err"), "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "edgebn", *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"edgebn {' '.join(args)} failed:\n{stderr[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--build", action="store_true")
    add_write_option(parser, "stream-memory")
    a = parser.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="edgebn-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    from synthetic import pretrained_weights, write_image_folder

    folder = work / f"photos-{a.images}-{a.size}"
    if not folder.exists():
        write_image_folder(folder, per_class=-(-a.images // 3), size=a.size)
    n = sum(1 for f in folder.rglob("*") if f.is_file())
    disk_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    weights = work / "mobilenet_v2_1.0_no_top.h5"
    if not weights.exists():
        images = np.random.default_rng(0).uniform(0, 255, (16, a.size, a.size, 3))
        pretrained_weights(weights, images, np.zeros(16, np.int64), "mobilenet-v2", 1.0,
                           epochs=0)
    common = ["--arch", "mobilenet-v2", "--image-size", str(a.size), "--data-dir", str(folder),
              "--weights", str(weights), "--epochs", "1"]
    rows = []
    peak, secs, stdout = _peak_run(["train", *common, "--out", str(work / "m.keras"), "--json"],
                                   work / "train.log")
    doc = json.loads(stdout)
    rows.append(("edgebn train, 1 epoch", peak, secs, doc["test_accuracy"]))
    if a.build:
        out = work / "build"
        peak, secs, _ = _peak_run(["build", *common, "--no-bench", "--out", str(out)],
                                  work / "build.log")
        report = json.loads((out / "report.json").read_text())
        rows.append(("edgebn build --no-bench", peak, secs, report["tflite"]["test_accuracy"]))
    decoded_gb = n * a.size * a.size * 3 * 4 / 1e9
    with captured(a.write, "stream-memory"):
        print(f"{n} images at {a.size}x{a.size} ({disk_mb:.0f} MB on disk, {decoded_gb:.2f} GB "
              "as float32 tensors); MobileNetV2 alpha 1.0, frozen, batch 32\n")
        print("| command | peak RSS | wall time | test accuracy |\n|---|---:|---:|---:|")
        for name, peak, secs, acc in rows:
            print(f"| {name} | {peak:,.0f} MB | {secs:.0f} s | {acc:.3f} |")


if __name__ == "__main__":
    main()
