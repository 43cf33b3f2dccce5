#!/usr/bin/env python3
"""Is edgebn bench's harness free of overhead? Compare it with a bare invoke() loop
and with LiteRT's own benchmark tool, on the same model, alternating rounds.

    python tools/compare_harness.py build/model.tflite [--runs 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np


def bare_loop_p50_us(path: str, runs: int, threads: int) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path, num_threads=threads)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.random.default_rng(0).random(inp["shape"], dtype=np.float32)
                      .astype(inp["dtype"]))
    for _ in range(100):
        interp.invoke()
    samples = np.empty(runs, dtype=np.int64)
    clock, invoke = time.perf_counter_ns, interp.invoke
    for i in range(runs):
        t0 = clock()
        invoke()
        samples[i] = clock() - t0
    return float(np.percentile(samples, 50)) / 1e3


def edgebn_p50_us(path: str, runs: int, threads: int) -> float:
    from edgebn.runtime.timing import BenchSettings, bench_tflite

    stats, _ = bench_tflite(path, BenchSettings(threads=threads, runs=runs))
    return stats.latency_us.p50


def litert_tool_median_us(path: str, runs: int, threads: int) -> float | None:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        proc = subprocess.run([sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model",
                               "--model", path, "--num_runs", str(runs), "--num_threads",
                               str(threads), "--result_json", f.name],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        return json.load(open(f.name))["latency"]["median_ms"] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    print(f"model {a.model}, {a.runs} runs per measurement, {a.threads} thread(s)")
    print("| round | bare invoke() loop p50 µs | edgebn bench p50 µs | edgebn / bare |"
          " LiteRT benchmark tool median µs (0.01 ms steps) |")
    print("| --- | --- | --- | --- | --- |")
    ratios = []
    for r in range(1, a.rounds + 1):
        bare = bare_loop_p50_us(a.model, a.runs, a.threads)
        ours = edgebn_p50_us(a.model, a.runs, a.threads)
        tool = litert_tool_median_us(a.model, a.runs, a.threads)
        ratios.append(ours / bare)
        print(f"| {r} | {bare:.2f} | {ours:.2f} | {ours / bare:.3f} | "
              f"{'n/a' if tool is None else f'{tool:.0f}'} |")
    worst = max(abs(x - 1) for x in ratios)
    print(f"\nworst |edgebn/bare - 1| = {worst:.1%} (target: within 15%)")


if __name__ == "__main__":
    main()
