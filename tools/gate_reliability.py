"""How often the latency gate cries wolf, and how often it catches a real regression.

    python tools/gate_reliability.py [--runs 50] [--bench-time 1.0] [--no-busy] [--write PAGE]

With a CPU-bound process busy on one of the machine's cores (unless --no-busy), runs
``edgebn check`` of the committed digits-cnn build against itself ``--runs`` times (every
failure is a false alarm), then of a copy whose model has three extra 1x1 convolutions
(about 25 % slower) against the original (every pass is a miss). Each check is its own
process, timed; its latency metric's interval and rounds are collected.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from figure_block import add_write_option, captured

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits-cnn"


def slower_model(data: bytes, extra: int = 3) -> bytes:
    """The digits CNN with ``extra`` 1x1 64→64 convolutions before its MEAN (~8 % each)."""
    from edgebn.tflite.reader import parse_tflite, schema
    from edgebn.tflite.writer import Buffer, buffers_of, operator_code, pack, unpack

    s = schema()
    model = parse_tflite(data)
    m = unpack(model)
    m.buffers = buffers_of(model)
    sg, parsed = m.subgraphs[0], model.subgraphs[0]
    mean = next(op for op in parsed.operators if op.op == "MEAN")
    x = mean.inputs[0]
    shape = list(parsed.tensors[x].shape)
    m.operatorCodes.append(operator_code("CONV_2D"))
    code = len(m.operatorCodes) - 1
    rng = np.random.default_rng(0)

    def tensor(shape, data=None):
        t = s.TensorT()
        t.shape, t.type = list(shape), s.TensorType.FLOAT32
        if data is not None:
            m.buffers.append(Buffer(np.ascontiguousarray(data, np.float32).tobytes()))
        t.buffer = len(m.buffers) - 1 if data is not None else 0
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    ops, cur = [], x
    for _ in range(extra):
        c = shape[-1]
        w = tensor([c, 1, 1, c], rng.normal(0, 0.1, (c, 1, 1, c)))
        b = tensor([c], np.zeros(c))
        y = tensor(shape)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = code, [cur, w, b], [y]
        op.builtinOptionsType = s.BuiltinOptions.Conv2DOptions
        op.builtinOptions = opts = s.Conv2DOptionsT()
        opts.padding, opts.strideH, opts.strideW = s.Padding.VALID, 1, 1
        opts.dilationHFactor = opts.dilationWFactor = 1
        ops.append(op)
        cur = y
    sg.operators[mean.index].inputs = [cur, *sg.operators[mean.index].inputs[1:]]
    sg.operators[mean.index:mean.index] = ops
    return pack(m)


def _build_dir(root: Path, name: str, model: bytes) -> Path:
    d = root / name
    d.mkdir()
    (d / "model.tflite").write_bytes(model)
    shutil.copyfile(DIGITS / "report.json", d / "report.json")
    return d / "report.json"


def _check(report: Path, baseline: Path, bench_time: float) -> tuple[bool, dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgebn", "check", str(report), "--baseline",
                           str(baseline), "--bench-time", str(bench_time), "--json"],
                          capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"check exited {proc.returncode}: {proc.stderr[-500:]}")
    doc = json.loads(proc.stdout)
    latency = next(m for m in doc["metrics"] if m["metric"] == "latency_p50_ratio")
    return latency["passed"], latency, elapsed


def _series(label: str, report: Path, baseline: Path, args) -> list[tuple[bool, dict, float]]:
    runs = []
    for i in range(args.runs):
        runs.append(_check(report, baseline, args.bench_time))
        print(f"  {label} {i + 1}/{args.runs}: passed={runs[-1][0]} "
              f"ratio={runs[-1][1]['ratio']:.3f} "
              f"interval={[round(v, 3) for v in runs[-1][1]['interval']]} "
              f"rounds={runs[-1][1]['rounds']} "
              f"{runs[-1][2]:.1f} s", file=sys.stderr)
    return runs


def _summary(label: str, runs: list[tuple[bool, dict, float]], want_pass: bool) -> str:
    wrong = sum(p != want_pass for p, _, _ in runs)
    ratios = [d["ratio"] for _, d, _ in runs]
    widths = [d["interval"][1] - d["interval"][0] for _, d, _ in runs]
    return (f"| {label} | {len(runs)} | {wrong} | {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) | {statistics.median(widths):.3f} | "
            f"{statistics.median(d['rounds'] for _, d, _ in runs):.0f} | "
            f"{max(d['seconds'] for _, d, _ in runs):.2f} s | {max(e for _, _, e in runs):.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--bench-time", type=float, default=1.0)
    parser.add_argument("--no-busy", action="store_true")
    add_write_option(parser, "gate-reliability")
    args = parser.parse_args()
    busy = None if args.no_busy else subprocess.Popen(
        [sys.executable, "-c", "while True: pass"])  # one core kept busy the whole time
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            data = (DIGITS / "model.tflite").read_bytes()
            base = _build_dir(root, "base", data)
            slow = _build_dir(root, "slow", slower_model(data))
            same = _series("same", base, base, args)
            slower = _series("slower", slow, base, args)
    finally:
        if busy is not None:
            busy.kill()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU")
    with captured(args.write, "gate-reliability"):
        print(f"{cpu}, {'one core busy' if busy else 'idle'}, --bench-time {args.bench_time}\n")
        print("| check | runs | wrong verdicts | ratio median (range) | interval width (median) | "
              "rounds (median) | longest timing (cap 2 × --bench-time) | "
              "slowest check, whole process |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(_summary("a build against itself (must pass)", same, True))
        print(_summary("3 extra convolutions against the original (must fail)", slower, False))


if __name__ == "__main__":
    main()
