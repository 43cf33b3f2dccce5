#!/usr/bin/env python3
"""The README's keras.applications table: fold, then convert, per family.

    python tools/fold_apps.py [FAMILY ...]

Each family is built as tests/fold/keras/test_keras_fold_apps.py builds it (weights=None, small
input, random BN statistics), folded by edgebn (the float64 check included), then converted
twice, folded first and by the converter alone; inspect counts the residual BN in both.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    from patterns import randomise_bn_statistics
    from test_fold_apps import FAMILIES, _build, _inputs

    from edgebn.convert import ConvertOptions, convert_model

    families = sys.argv[1:] or list(FAMILIES)
    tmp = Path(tempfile.mkdtemp(prefix="edgebn-apps-"))
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
