"""torchvision's DenseNet121 through litert-torch, folded on the flatbuffer: the measured row.

    python tools/densenet_fold.py [--size 64] [--bench-time 2.0] [--repeats 3] [--write PAGE]

Needs the torch extra (torch, torchvision, litert-torch). The model is built with
``weights=None`` and random BN statistics (as tests/fold/tflite/test_tflite_fold_torch.py does),
converted by litert-torch, folded by ``edgebn fold`` (every shared tensor compared), and its outputs
checked against PyTorch's on the same inputs. The p50 ratio before / after comes from interleaved
rounds on one core, with its 95 % interval, ``--repeats`` times. The CPU is named.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fold/tflite"))

from figure_block import add_write_option, captured  # noqa: E402

from edgebn.machine import cpu_model  # noqa: E402  (after the tests' folder is on the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bench-time", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    add_write_option(parser, "densenet-fold")
    args = parser.parse_args()

    import litert_torch
    import torch
    import torchvision
    from test_tflite_fold_torch import randomise_bn

    from edgebn.fold.tflite.tflite_fold import fold_tflite
    from edgebn.runtime.accuracy import predict_tflite
    from edgebn.runtime.timing import BenchSettings
    from edgebn.tflite.reader import read_tflite

    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.densenet121(weights=None))
    path = Path(tempfile.mkdtemp(prefix="edgebn-densenet-")) / "densenet121.tflite"
    litert_torch.convert(model, (torch.zeros(1, 3, args.size, args.size),)).export(str(path))
    original = read_tflite(path)
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, args.size, args.size)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy().astype(np.float64)
    with captured(args.write, "densenet-fold", packages=('torch', 'torchvision', 'litert-torch')):
        print(f"CPU: {cpu_model()}; torch {torch.__version__}, "
              f"torchvision {torchvision.__version__}, "
              "litert-torch "
              f"{litert_torch.__version__ if hasattr(litert_torch, '__version__') else ''}")
        print("| run | chains: folded / collapsed / kept | largest \\|Δ\\| of a tensor "
              "| folded vs PyTorch "
              "| p50 before µs | p50 after µs | ratio before / after (95 % interval) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for run in range(args.repeats):
            result = fold_tflite(original, x,
                                 bench=BenchSettings(min_time_s=args.bench_time, cost=False))
            counts = result.to_json()["counts"]
            folded = Path(tempfile.mkdtemp()) / "folded.tflite"
            folded.write_bytes(result.data)
            got, _ = predict_tflite(folded, x)
            e = result.speed
            print(f"| {run + 1} | {counts['folded']} / {counts['collapsed']} / {counts['kept']} | "
                  f"{result.max_rel_diff:.2g} | "
                  f"{np.max(np.abs(got - want)) / np.max(np.abs(want)):.2g} | "
                  f"{e.current_p50_us:,.0f} | {e.baseline_p50_us:,.0f} | {e.describe()} |")


if __name__ == "__main__":
    main()
