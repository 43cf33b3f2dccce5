#!/usr/bin/env python3
"""The measured keras.applications table: fold, then convert, per family.

    python tools/fold_apps.py [FAMILY ...] [--write docs/measurements.md]

Each family is built as tests/fold/keras/test_keras_fold_apps.py builds it (weights=None, small
input, random BN statistics), folded by edgebn (the float64 check included), then converted
twice, folded first and by the converter alone; inspect counts the residual BN in both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fold/keras"))

from figure_block import add_write_option, captured  # noqa: E402


def main() -> None:
    from test_keras_fold_apps import FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", metavar="FAMILY", help=", ".join(FAMILIES))
    add_write_option(parser, "fold-apps")
    args = parser.parse_args()
    families = args.families or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families: {', '.join(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="edgebn-apps-"))
    with captured(args.write, "fold-apps"):
        _table(families, tmp)


def _table(families: list[str], tmp: Path) -> None:
    from patterns import randomise_bn_statistics
    from test_keras_fold_apps import FAMILIES, _build, _inputs

    from edgebn.convert import ConvertOptions, convert_model

    print("| family | input | BN | folded in Keras | kept | max \\|Δ\\| rel (float32) | "
          "float64 fold error | residual BN: converter alone | residual BN: folded first | "
          "fold + 2 conversions |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in families:
        size = FAMILIES[family][0]
        model = _build(family)
        bn = randomise_bn_statistics(model, seed=1)
        t0 = time.perf_counter()
        result = convert_model(model, tmp / f"{family}.tflite", ConvertOptions(),
                               fold_inputs=(_inputs(size), "random"))
        seconds = time.perf_counter() - t0
        fold = result.fold
        only = result.converter_only.bn if result.converter_only else result.inspected.bn
        folded = len(fold.layers) - len(fold.kept) if fold else 0
        print(f"| {family} | {size} | {bn} | {folded} | {len(fold.kept) if fold else 0} | "
              f"{fold.max_rel_diff if fold else 0:.2g} | "
              f"{getattr(fold, 'fold_rel_diff', None) or 0:.2g} | {len(only.residual)} | "
              f"{len(result.inspected.bn.residual)} | {seconds:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
