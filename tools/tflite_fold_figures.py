"""The measured table for ``edgebn fold model.tflite``: each residue form, what the fold made of it.

    python tools/tflite_fold_figures.py [--bench-time S] [--write docs/measurements.md]

Rows: the forms tests/tflite_forms.py writes with edgebn's writer (float32 and float16
weights, and its int8 forms), the TensorFlow converter's full-integer Conv3D → BN (→ ReLU)
and, when the torch extra is installed, the litert-torch models of
tests/fold/tflite/test_tflite_fold_torch.py. For an int8 file the Δ column is the worst quantized
tensor in steps of its scale. Each is folded and proven (every shared tensor compared), then both
files are timed interleaved on one core; the p50 ratio is before / after. The CPU is named: absolute
times depend on it, ratios less so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fold/tflite"))

from figure_block import add_write_option, captured  # noqa: E402


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _models(tmp: Path) -> list[tuple[str, str, bytes]]:
    from tflite_forms import FORMS, INT8_FORMS

    rows = [(name + (" (float16)" if f16 else ""), "edgebn writer", build(3, f16))
            for name, (build, _, _) in FORMS.items() for f16 in (False, True)]
    rows += [(f"{name} (int8)", "edgebn writer", build(3)) for name, build in INT8_FORMS.items()]
    rows += _conv3d_int8(tmp)
    try:
        import litert_torch
        import torch
        from test_tflite_fold_torch import CASES, INT8_CASES, SHAPE, pt2e_int8, randomise_bn
    except ImportError:
        print("(torch extra not installed: litert-torch rows left out)", file=sys.stderr)
        return rows
    for cls in CASES:
        path = tmp / f"{cls.__name__}.tflite"
        with contextlib.redirect_stdout(io.StringIO()):  # litert-torch's progress lines
            litert_torch.convert(randomise_bn(cls()), (torch.zeros(SHAPE),)).export(str(path))
        rows.append((cls.__name__, "litert-torch 0.10", path.read_bytes()))
    try:
        from litert_torch.generative.quantize import quant_recipes
    except ImportError:
        quant_recipes = None
    for cls in CASES if quant_recipes is not None else ():
        path = tmp / f"{cls.__name__}_f16.tflite"
        with contextlib.redirect_stdout(io.StringIO()):
            litert_torch.convert(randomise_bn(cls()), (torch.zeros(SHAPE),),
                                 quant_config=quant_recipes.full_fp16_recipe()).export(str(path))
        rows.append((f"{cls.__name__} (float16)", "litert-torch 0.10", path.read_bytes()))
    for cls in INT8_CASES:
        path = tmp / f"{cls.__name__}_int8.tflite"
        with contextlib.redirect_stdout(io.StringIO()):
            pt2e_int8(cls, path)
        rows.append((f"{cls.__name__} (int8, PT2E)", "litert-torch 0.10", path.read_bytes()))
    return rows


def _conv3d_int8(tmp: Path) -> list[tuple[str, str, bytes]]:
    """The TensorFlow converter's full-integer Conv3D → BN and Conv3D → BN → ReLU."""
    import keras
    import numpy as np
    from keras import layers
    from patterns import set_random_bn

    from edgebn.convert import to_tflite

    rows = []
    for relu in (False, True):
        x = keras.Input((4, 6, 6, 3))
        y = layers.BatchNormalization()(layers.Conv3D(4, 3)(x))
        model = keras.Model(x, layers.ReLU()(y) if relu else y)
        set_random_bn(model, negative=True)
        path = tmp / f"conv3d_{relu}.tflite"
        with contextlib.redirect_stdout(io.StringIO()):
            to_tflite(model, path, "int8",
                      np.random.default_rng(0).random((32, 4, 6, 6, 3), np.float32))
        rows.append((f"Conv3D → BN{' → ReLU' if relu else ''} (int8)", "TF converter",
                     path.read_bytes()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-time", type=float, default=1.0)
    add_write_option(parser, "tflite-fold")
    args = parser.parse_args()
    # PyTorch before TensorFlow: the CUDA build's triton crashes (SIGSEGV) when it loads after
    # TensorFlow's libraries in one process
    with contextlib.suppress(ImportError):
        import litert_torch  # noqa: F401
    from edgebn.fold.tflite.tflite_fold import fold_tflite
    from edgebn.runtime.timing import BenchSettings
    from edgebn.tflite.reader import parse_tflite

    settings = BenchSettings(min_time_s=args.bench_time, cost=False)
    with captured(args.write, "tflite-fold", packages=("litert-torch", "torch")):
        print(f"CPU: {_cpu()}, 1 thread, XNNPACK\n")
        print("| model | from | form | result | into / reason | tensors compared | max rel Δ | "
              "p50 before → after (µs) | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        with tempfile.TemporaryDirectory() as tmp:
            for name, source, data in _models(Path(tmp)):
                result = fold_tflite(parse_tflite(data, name), bench=settings)
                for c in result.chains or [None]:
                    form = c.kind if c else "(none)"
                    outcome = c.result if c else "clean"
                    where = (f"{c.direction} into {c.into_type}" if c and c.result == "folded"
                             else (c.reason if c else "the converter folded it"))
                    e = result.speed
                    timing = ("—", "—") if e is None else (
                        f"{e.current_p50_us:.1f} → {e.baseline_p50_us:.1f}",
                        f"{e.ratio:.2f} [{e.interval[0]:.2f}, {e.interval[1]:.2f}]")
                    diff = (f"{result.max_steps:g} steps" if result.compared_quantized
                            else f"{result.max_rel_diff:.1e}")
                    print(f"| {name} | {source} | {form} | {outcome} | {where} | "
                          f"{result.compared} | "
                          f"{diff} | {timing[0]} | {timing[1]} |")


if __name__ == "__main__":
    main()
