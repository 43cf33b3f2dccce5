"""float32 vs int8 for the default model: weight bytes, file bytes, accuracy, BN verdict.

    python tools/int8_size.py [OUT_DIR] [--write docs/measurements.md]

Builds the default model twice (same seed, so the same trained weights; no bench, no twin)
and prints the table docs/measurements.md shows. The issue's targets: weights >= 3.5x smaller,
file <= 35 % of float32, accuracy within 1.5 points of Keras, BN clean.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from figure_block import add_write_option, captured

from edgebn.convert import ConvertOptions, Quantize
from edgebn.pipeline.build import BuildConfig, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path,
                        help="where the two builds go (else a temp dir)")
    add_write_option(parser, "int8-size")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp())
    reports = {}
    for q in (Quantize.none, Quantize.int8):
        reports[q] = build(BuildConfig(out=out / q.value, convert=ConvertOptions(q), twin=False,
                                       run_bench=False)).to_json()
    f, i = reports[Quantize.none], reports[Quantize.int8]
    with captured(args.write, "int8-size"):
        print(f"model: {f['model']['arch']}, {f['model']['params']} parameters")
        print("| | float32 | int8 | ratio |")
        print("| --- | --- | --- | --- |")
        for key in ("weight_bytes", "graph_bytes", "size_bytes"):
            a, b = f["tflite"][key], i["tflite"][key]
            print(f"| {key} | {a} | {b} | {b / a:.3f} ({a / b:.2f}x smaller) |")
        print(f"| Keras test accuracy | {f['keras']['test_accuracy']:.4f} | "
              f"{i['keras']['test_accuracy']:.4f} | |")
        print(f"| TFLite test accuracy | {f['tflite']['test_accuracy']:.4f} | "
              f"{i['tflite']['test_accuracy']:.4f} | "
              f"{(i['tflite']['test_accuracy'] - i['keras']['test_accuracy']) * 100:+.2f} points |")
        print(f"| top-1 agreement with Keras | {f['tflite']['top1_agreement']:.4f} | "
              f"{i['tflite']['top1_agreement']:.4f} | |")
        print(f"| BN verdict | {f['inspect']['bn']['verdict']} | "
              f"{i['inspect']['bn']['verdict']} | |")


if __name__ == "__main__":
    main()
