"""How close the runtime gets to this CPU's peak: a compute-bound probe, and a model's rate.

The ceiling is a compute-bound probe: three 1x1 convolutions of 256 channels on a
28x28 map, built in memory, timed with the same runtime, threads and delegate,
taking its fastest run (a peak: on a shared machine the probe's p50 wanders
well below it), and cached per machine in :func:`edgebn.machine.cache_dir`
(``~/.cache/edgebn/``; ``EDGEBN_CACHE`` overrides it). The probe is packed by
:mod:`edgebn.tflite.writer`, like every flatbuffer edgebn writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from edgebn.files import write_atomic
from edgebn.machine import cache_dir, cpu_model
from edgebn.runtime.backends import Backend, backend_version, resolve_backend
from edgebn.runtime.timing import BenchSettings, CostStats, TFLiteStats, bench_tflite
from edgebn.tflite.macs import model_cost
from edgebn.tflite.reader import TFLiteModel, parse_tflite, schema
from edgebn.tflite.writer import Graph

PROBE_SIZE = 28  # height and width of the probe's feature map
PROBE_CHANNELS = 256
PROBE_LAYERS = 3
PROBE_VERSION = 3  # part of the cache key: bump when the probe changes (3: aligned weights)
PROBE_MIN_TIME_S = 1.0
PROBE_WARMUP = 50  # runs before timing: the first ones fault in pages and warm caches


def probe_model(seed: int = 0) -> bytes:
    """A compute-bound .tflite: PROBE_LAYERS 1x1 CONV_2D, float32, seeded random weights."""
    s = schema()
    rng = np.random.default_rng(seed)
    c, hw = PROBE_CHANNELS, PROBE_SIZE
    graph = Graph()
    x = first = graph.tensor((1, hw, hw, c))
    for _ in range(PROBE_LAYERS):
        w = graph.tensor((c, 1, 1, c), data=(rng.standard_normal((c, 1, 1, c)) / np.sqrt(c))
                         .astype("<f4"))
        b = graph.tensor((c,), data=np.zeros(c, dtype="<f4"))
        y = graph.tensor((1, hw, hw, c))
        options = s.Conv2DOptionsT()
        options.padding, options.strideH, options.strideW = s.Padding.VALID, 1, 1
        graph.operator("CONV_2D", [x, w, b], [y], options)
        x = y
    return graph.pack([first], [x])


def _probe_key(threads: int, backend: Backend | str, xnnpack: bool) -> str:
    chosen = resolve_backend(backend)
    runtime = f"{chosen.value} {backend_version(chosen)}"
    return (f"probe{PROBE_VERSION}|{cpu_model()}|{os.cpu_count()} cores|{runtime}"
            f"|threads={threads}|xnnpack={xnnpack}")


def probe_ceiling(threads: int = 1, backend: Backend | str = "auto", xnnpack: bool = True) -> float:
    """GMAC/s of the compute-bound probe here, measured once per machine and runtime."""
    path = cache_dir() / "ceiling.json"
    key = _probe_key(threads, backend, xnnpack)
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if isinstance(cached.get(key), (int, float)):
        return float(cached[key])
    probe = parse_tflite(probe_model(), "<edgebn ceiling probe>")
    settings = BenchSettings(threads=threads, backend=backend, xnnpack=xnnpack,
                             warmup=PROBE_WARMUP, min_time_s=PROBE_MIN_TIME_S)
    stats, _ = bench_tflite(probe, settings)
    gmacs = model_cost(probe).macs / stats.latency_us.min / 1e3  # a peak: the fastest run
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(cached | {key: gmacs}, indent=2, sort_keys=True))
    return gmacs


def with_cost(stats: TFLiteStats, model: TFLiteModel, settings: BenchSettings) -> TFLiteStats:
    """``stats`` (a TFLiteStats) with its cost: the batch's MACs over p50, against the probe."""
    macs = model_cost(model).macs
    achieved = macs * stats.batch / stats.latency_us.p50 / 1e3
    ceiling = probe_ceiling(stats.threads, settings.backend, stats.xnnpack)
    return replace(stats, cost=CostStats(macs, achieved, ceiling))
