#!/usr/bin/env python3
"""The measured "bring your own model" figures: MobileNetV2 (alpha 1.0, 224x224) as a user ships it.

    python tools/byom_figures.py [WORK_DIR] [--write docs/measurements.md]

Makes the canonical transfer-learning model (Rescaling, MobileNetV2 backbone as one
nested layer, pooling, dropout, Dense head; weights=None with random BN statistics, as
no weights can be downloaded here), a generated image folder of 224x224 photos, then runs
`edgebn build --model ... --data-dir ...` float32 and int8 as a user would, and prints
the table docs/measurements.md shows from each build's report.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "pipeline"))

from figure_block import add_write_option, captured  # noqa: E402


def main() -> None:
    from test_build_byom import image_folder, transfer_model

    from edgebn.zoo.keras_io import save_keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, help="where the model and builds go")
    add_write_option(parser, "byom")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="edgebn-byom-"))
    work.mkdir(parents=True, exist_ok=True)
    model = save_keras(transfer_model(size=224, classes=5, alpha=1.0), work / "mobilenetv2.keras")
    folder = work / "photos"
    if not folder.exists():
        image_folder(folder, classes=5, per_class=20, size=256)
    reports = {}
    for quantize in ("none", "int8"):
        out = work / f"build-{quantize}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--model", str(model),
                        "--data-dir", str(folder), "--quantize", quantize, "--out", str(out),
                        "--bundle"], check=True, stdout=subprocess.DEVNULL)
        reports[quantize] = (json.loads((out / "report.json").read_text()),
                             time.perf_counter() - t0)
    f, _ = reports["none"]
    env = f["bench"]["environment"]
    with captured(args.write, "byom"):
        print(f"{env['cpu']}, {env['cores']} cores, TensorFlow {env['tensorflow']}, "
              f"{env['backend']}, 1 thread, batch 1\n")
        print(f"model: {f['model']['params']:,} parameters, {f['model']['bn_layers']} BN layers "
              f"(fold in Keras: {f['fold']['folded']} folded, {f['fold']['kept']} kept, max |Δ| "
              f"{f['fold']['max_rel_diff']:.2g} relative)\n")
        print("| | float32 | int8 |")
        print("| --- | --- | --- |")
        rows = [("TFLite file", lambda r: f"{r['tflite']['size_bytes']:,} bytes"),
                ("BN verdict", lambda r: r["inspect"]["bn"]["verdict"]),
                ("convert time (both conversions)", lambda r: f"{r['timings']['convert_s']:.1f} s"),
                ("fold time", lambda r: f"{r['timings']['fold_s']:.1f} s"),
                ("TFLite p50",
                 lambda r: f"{r['bench']['tflite']['latency_us']['p50'] / 1e3:.2f} ms"),
                ("Keras eager p50",
                 lambda r: f"{r['bench']['keras']['eager']['latency_us']['p50'] / 1e3:.1f} ms"),
                ("Keras tf.function p50",
                 lambda r: f"{r['bench']['keras']['compiled']['latency_us']['p50'] / 1e3:.1f} ms"),
                ("speedup vs fastest Keras",
                 lambda r: f"{r['bench']['speedup']['vs_fastest_keras']:.1f}x"),
                ("fold gain, Keras eager",
                 lambda r: f"{r['bench']['fold_gain']['keras_eager']:.2f}x"),
                ("top-1 agreement with Keras", lambda r: f"{r['tflite']['top1_agreement']:.3f}"),
                ("bundle self-test here",
                 lambda r: "passed" if r["bundle"]["selftest_here"]["passed"] else "FAILED")]
        for label, get in rows:
            print(f"| {label} | {get(reports['none'][0])} | {get(reports['int8'][0])} |")
        print("| whole `edgebn build` wall time | "
              + " | ".join(f"{reports[q][1]:.0f} s" for q in ("none", "int8")) + " |")


if __name__ == "__main__":
    main()
