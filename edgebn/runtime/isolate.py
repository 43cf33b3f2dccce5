"""``edgebn bench --isolate``: the interpreter timed in a fresh process.

TensorFlow's ~500 MB would otherwise count in the interpreter's peak memory. The worker
is this module run as ``python -m edgebn.runtime.isolate JOB``; it imports no TensorFlow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Backend
from edgebn.runtime.timing import BenchSettings, Latency, TFLiteStats, bench_tflite
from edgebn.tflite.reader import TFLiteModel


def isolated_tflite(model: TFLiteModel, settings: BenchSettings, data,
                     baseline: TFLiteModel | None):
    """Run the interpreter side in a fresh process, so TensorFlow's memory is not counted."""
    with tempfile.TemporaryDirectory(prefix="edgebn-bench-") as tmp:
        data_path = None
        if data is not None:
            data_path = os.path.join(tmp, "data.npy")
            np.save(data_path, data)
        out_path = os.path.join(tmp, "out.npz")
        job = {"model": model.path, "baseline": baseline.path if baseline else None,
               "data": data_path, "out": out_path,
               "settings": asdict(settings) | {"backend": settings.backend.value}}
        proc = subprocess.run([sys.executable, "-m", "edgebn.runtime.isolate", json.dumps(job)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or "").strip().splitlines()
            raise EdgebnError("isolated benchmark failed: "
                              f"{lines[-1] if lines else proc.returncode}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        samples = np.load(out_path)
    stats = []
    for key in ("tflite", "baseline"):
        doc = results.get(key)
        stats.append(None if doc is None else TFLiteStats(
            doc["model"], doc["backend"], doc["xnnpack"], doc["threads"], doc["batch"],
            doc["runs"], doc["warmup"], doc["init_ms"], doc["first_us"],
            Latency(**doc["latency_us"]), doc["peak_rss_mb"], samples[key]))
    return stats[0], stats[1]


def _worker(job: JsonDict) -> None:
    settings = BenchSettings(**(job["settings"] | {"backend": Backend(job["settings"]["backend"])}))
    data = np.load(job["data"]) if job["data"] else None
    tfl, base = bench_tflite(job["model"], settings, data, job["baseline"])
    arrays = {"tflite": tfl.samples_ns}
    doc = {"tflite": tfl.to_json(), "baseline": base.to_json() if base else None}
    if base is not None:
        arrays["baseline"] = base.samples_ns
    np.savez(job["out"], **arrays)
    print(json.dumps(doc))


if __name__ == "__main__":  # the --isolate worker
    _worker(json.loads(sys.argv[1]))
