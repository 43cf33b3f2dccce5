"""TFLite inference against the Keras model it came from, on the same inputs.

Each timed sample is one ``interpreter.invoke()`` measured with
``perf_counter_ns``; inputs are set outside the timed region, so the figure is
what a bare ``invoke()`` loop would show. Keras is timed in three ways a user
might actually run it: eager ``model(x, training=False)``, ``model.predict``,
and a compiled ``tf.function``. With a baseline .tflite (the BN-free twin), both
interpreters run in one process, interleaved block by block, so drift on a
shared machine hits both alike.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.runtime import Backend, load_interpreter

DEFAULT_MIN_TIME_S = 1.0
DEFAULT_WARMUP = 100
KERAS_MIN_TIME_S = 1.0
KERAS_MIN_RUNS = 10
KERAS_MAX_RUNS = 5000
KERAS_BLOCK = 5  # calls per turn when several Keras models are timed interleaved
INTERLEAVE_BLOCK = 50  # invocations per model before switching, with --baseline


@dataclass(frozen=True)
class Latency:
    min: float
    p50: float
    p90: float
    p99: float
    mean: float
    std: float

    @classmethod
    def from_ns(cls, samples_ns: np.ndarray) -> Latency:
        us = np.asarray(samples_ns, dtype=np.float64) / 1e3
        p50, p90, p99 = np.percentile(us, [50, 90, 99])
        return cls(float(us.min()), float(p50), float(p90), float(p99), float(us.mean()),
                   float(us.std()))


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 1
    batch: int = 1
    warmup: int = DEFAULT_WARMUP
    runs: int | None = None  # exact number of timed runs; None: run for min_time_s
    min_time_s: float = DEFAULT_MIN_TIME_S
    backend: Backend = Backend.auto
    xnnpack: bool = True

    def validate(self) -> None:
        if self.threads < 1:
            raise EdgebnError(f"--threads must be >= 1. Received: {self.threads}")
        if self.batch < 1:
            raise EdgebnError(f"--batch must be >= 1. Received: {self.batch}")
        if self.warmup < 0:
            raise EdgebnError(f"--warmup must be >= 0. Received: {self.warmup}")
        if self.runs is not None and self.runs < 1:
            raise EdgebnError(f"--runs must be >= 1. Received: {self.runs}")
        if not self.min_time_s > 0:
            raise EdgebnError(f"--min-time must be > 0. Received: {self.min_time_s}")


@dataclass(frozen=True)
class TFLiteStats:
    model: str
    backend: str
    xnnpack: bool
    threads: int
    batch: int
    runs: int
    warmup: int
    init_ms: float
    first_us: float
    latency_us: Latency
    peak_rss_mb: float
    samples_ns: np.ndarray = field(repr=False, compare=False)

    @property
    def throughput_per_s(self) -> float:
        return 1e6 / self.latency_us.mean

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "xnnpack": self.xnnpack,
                "threads": self.threads, "batch": self.batch, "runs": self.runs,
                "warmup": self.warmup, "init_ms": self.init_ms, "first_us": self.first_us,
                "latency_us": asdict(self.latency_us),
                "throughput_per_s": self.throughput_per_s,
                "samples_per_s": self.throughput_per_s * self.batch,
                "peak_rss_mb": self.peak_rss_mb}


@dataclass(frozen=True)
class KerasStats:
    mode: str  # eager | predict | compiled
    runs: int
    latency_us: Latency
    samples_ns: np.ndarray = field(repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"runs": self.runs, "latency_us": asdict(self.latency_us),
                "throughput_per_s": 1e6 / self.latency_us.mean}


@dataclass(frozen=True)
class BenchResult:
    environment: dict[str, Any]
    tflite: TFLiteStats
    baseline: TFLiteStats | None = None
    keras: dict[str, KerasStats] = field(default_factory=dict)
    keras_baseline: dict[str, KerasStats] = field(default_factory=dict)
    keras_folded: dict[str, KerasStats] = field(default_factory=dict)

    def speedup(self) -> dict[str, float]:
        p50 = self.tflite.latency_us.p50
        out = {f"vs_{mode}": s.latency_us.p50 / p50 for mode, s in self.keras.items()}
        if self.keras:
            fastest = min(self.keras.values(), key=lambda s: s.latency_us.p50)
            out["vs_fastest_keras"] = fastest.latency_us.p50 / p50
            out["fastest_keras"] = fastest.mode  # type: ignore[assignment]
        return out

    def bn_cost(self) -> dict[str, float]:
        """What BN costs: BN model p50 over its BN-free twin's p50, per runtime."""
        out = {}
        if self.baseline is not None:
            out["tflite"] = self.tflite.latency_us.p50 / self.baseline.latency_us.p50
        for mode, s in self.keras.items():
            if mode in self.keras_baseline:
                out[f"keras_{mode}"] = s.latency_us.p50 / self.keras_baseline[mode].latency_us.p50
        return out

    def fold_gain(self) -> dict[str, float]:
        """What folding in Keras buys inside Keras: the BN model's p50 over the folded one's."""
        return {f"keras_{mode}": s.latency_us.p50 / self.keras_folded[mode].latency_us.p50
                for mode, s in self.keras.items() if mode in self.keras_folded}

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"environment": self.environment, "tflite": self.tflite.to_json()}
        if self.baseline is not None:
            doc["baseline"] = self.baseline.to_json()
        if self.keras:
            doc["keras"] = {m: s.to_json() for m, s in self.keras.items()}
            doc["speedup"] = self.speedup()
        if self.keras_baseline:
            doc["keras_baseline"] = {m: s.to_json() for m, s in self.keras_baseline.items()}
        if self.keras_folded:
            doc["keras_folded"] = {m: s.to_json() for m, s in self.keras_folded.items()}
        if self.fold_gain():
            doc["fold_gain"] = self.fold_gain()
        if self.bn_cost():
            doc["bn_cost"] = self.bn_cost()
        return doc


def environment(backend: str | None = None, xnnpack: bool | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """Where the numbers came from. Reads versions without importing TensorFlow."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
           "python": platform.python_version(), "numpy": np.__version__,
           "tensorflow": version("tensorflow")}
    if backend is not None:
        env |= {"backend": backend, "xnnpack": xnnpack, "threads": threads}
    return env


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    VmHWM from /proc is preferred: ru_maxrss survives fork+exec on Linux, so an
    isolated worker would report its parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ---------------------------------------------------------------- inputs


def make_inputs(shape, dtype, quant: tuple[float, int] | None, count: int,
                data: np.ndarray | None = None, seed: int = 0) -> list[np.ndarray]:
    """``count`` input tensors of ``shape``: real samples when ``data`` is given, else random.

    Real samples are float (preprocessed) and get quantized for an int8/uint8 input;
    random ones span the dtype's range (integers) or [0, 1) (floats).
    """
    rng = np.random.default_rng(seed)
    batch = int(shape[0])
    dtype = np.dtype(dtype)
    out = []
    for i in range(count):
        if data is not None and len(data):
            idx = (np.arange(batch) + i * batch) % len(data)
            x = data[idx].reshape(shape)
            if np.issubdtype(dtype, np.integer):
                x = quantize(x, quant, dtype)
            out.append(x.astype(dtype))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out.append(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype))
        else:
            out.append(rng.random(shape, dtype=np.float32).astype(dtype))
    return out


def quantize(x: np.ndarray, quant: tuple[float, int] | None, dtype) -> np.ndarray:
    scale, zero_point = quant if quant and quant[0] else (1.0, 0)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, quant: tuple[float, int] | None) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    scale, zero_point = quant if quant and quant[0] else (1.0, 0)
    return (y.astype(np.float32) - zero_point) * scale


# ---------------------------------------------------------------- TFLite


class _Runner:
    """One loaded interpreter with its inputs, ready to be invoked and timed."""

    def __init__(self, path, settings: BenchSettings, data: np.ndarray | None):
        t0 = time.perf_counter_ns()
        self.interp, self.info = load_interpreter(path, settings.backend, settings.threads,
                                                  settings.xnnpack)
        detail = self.interp.get_input_details()[0]
        if settings.batch != 1:
            shape = [settings.batch, *detail["shape"][1:]]
            self.interp.resize_tensor_input(detail["index"], shape)
            self.interp.allocate_tensors()
            detail = self.interp.get_input_details()[0]
        self.init_ms = (time.perf_counter_ns() - t0) / 1e6
        self.path = str(path)
        self.index = detail["index"]
        self.inputs = make_inputs(detail["shape"], detail["dtype"], detail["quantization"],
                                  count=16, data=data)
        self.samples: list[int] = []
        self.interp.set_tensor(self.index, self.inputs[0])
        t0 = time.perf_counter_ns()
        self.interp.invoke()
        self.first_us = (time.perf_counter_ns() - t0) / 1e3

    def run(self, n: int, keep: bool = True) -> int:
        """Invoke ``n`` times; return the time spent inside invoke(), in ns."""
        invoke, set_tensor, index, inputs = (self.interp.invoke, self.interp.set_tensor,
                                             self.index, self.inputs)
        clock = time.perf_counter_ns
        spent = 0
        k = len(inputs)
        for i in range(n):
            set_tensor(index, inputs[i % k])
            t0 = clock()
            invoke()
            dt = clock() - t0
            spent += dt
            if keep:
                self.samples.append(dt)
        return spent

    def stats(self, settings: BenchSettings) -> TFLiteStats:
        samples = np.array(self.samples, dtype=np.int64)
        return TFLiteStats(self.path, str(self.info), self.info.xnnpack, settings.threads,
                           settings.batch, len(samples), settings.warmup, self.init_ms,
                           self.first_us, Latency.from_ns(samples), peak_rss_mb(), samples)


def bench_tflite(path: str | Path, settings: BenchSettings = BenchSettings(),
                 data: np.ndarray | None = None,
                 baseline: str | Path | None = None) -> tuple[TFLiteStats, TFLiteStats | None]:
    """Time ``path`` (and ``baseline``, interleaved in blocks) with the interpreter."""
    settings.validate()
    runners = [_Runner(path, settings, data)]
    if baseline is not None:
        runners.append(_Runner(baseline, settings, data))
    for r in runners:
        r.run(settings.warmup, keep=False)
    # Interleave in blocks when there is a baseline; otherwise check the clock every 256 runs.
    block = INTERLEAVE_BLOCK if len(runners) > 1 else 256
    deadline = time.perf_counter() + settings.min_time_s * len(runners)
    while True:
        for r in runners:
            n = block if settings.runs is None else min(block, settings.runs - len(r.samples))
            if n > 0:
                r.run(n)
        if settings.runs is not None:
            if all(len(r.samples) >= settings.runs for r in runners):
                break
        elif time.perf_counter() >= deadline and all(len(r.samples) >= 100 for r in runners):
            break
    stats = [r.stats(settings) for r in runners]
    return stats[0], (stats[1] if len(stats) > 1 else None)


# ---------------------------------------------------------------- Keras


def bench_keras_models(models: dict[str, Any], x: np.ndarray,
                       modes=("eager", "predict", "compiled"),
                       min_time_s: float = KERAS_MIN_TIME_S, runs: int | None = None,
                       xla: bool = False) -> dict[str, dict[str, KerasStats]]:
    """Time several Keras models on the batch ``x``, mode by mode, interleaved.

    Within a mode the models take turns in blocks of KERAS_BLOCK calls, so that drift
    on a shared machine hits them alike (the same as the .tflite baseline); each model
    gets ``min_time_s`` of timed calls (or exactly ``runs``).
    """
    import tensorflow as tf

    x_tensor = tf.constant(x)

    def calls_for(model):
        compiled = tf.function(lambda t: model(t, training=False), jit_compile=xla)
        return {"eager": lambda: model(x_tensor, training=False),
                "predict": lambda: model.predict(x, batch_size=len(x), verbose=0),
                "compiled": lambda: compiled(x_tensor)}

    calls = {name: calls_for(model) for name, model in models.items()}
    out: dict[str, dict[str, KerasStats]] = {name: {} for name in models}
    for mode in modes:
        for name in models:
            for _ in range(3):  # warm-up: tracing, first allocations
                calls[name][mode]()
        samples: dict[str, list[int]] = {name: [] for name in models}
        deadline = time.perf_counter() + min_time_s * len(models)
        while True:
            for name in models:
                call = calls[name][mode]
                for _ in range(KERAS_BLOCK):
                    t0 = time.perf_counter_ns()
                    call()
                    samples[name].append(time.perf_counter_ns() - t0)
            n = min(len(v) for v in samples.values())
            if runs is not None:
                if n >= runs:
                    break
            elif (time.perf_counter() >= deadline and n >= KERAS_MIN_RUNS) or n >= KERAS_MAX_RUNS:
                break
        for name, v in samples.items():
            arr = np.array(v[:runs] if runs is not None else v, dtype=np.int64)
            out[name][mode] = KerasStats(mode, len(arr), Latency.from_ns(arr), arr)
    return out


def load_inputs(data: str | Path | None = None, dataset: str | None = None) -> np.ndarray | None:
    """Real samples for ``edgebn bench``: a .npy file, or a dataset's test split."""
    if data is not None and dataset is not None:
        raise EdgebnError("give --data or --dataset, not both")
    if data is not None:
        p = Path(data)
        if not p.is_file():
            raise EdgebnError(f"--data {p}: no such file")
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise EdgebnError(f"--data {p}: not a readable .npy file ({exc})") from exc
        if arr.ndim < 2 or not np.issubdtype(arr.dtype, np.number):
            raise EdgebnError(f"--data {p}: expected numeric samples (N, ...). "
                              f"Received: shape={arr.shape}, dtype={arr.dtype}")
        return arr.astype(np.float32)
    if dataset is not None:
        from edgebn.data import load_dataset

        return load_dataset(dataset).x_test
    return None


def keras_input(path: str | Path, batch: int, data: np.ndarray | None) -> np.ndarray:
    """The float batch Keras sees: the same real samples the interpreter gets, else random."""
    from edgebn.tflite import read_tflite

    model = read_tflite(path)
    sg = model.subgraphs[0]
    shape = [batch, *sg.tensors[sg.inputs[0]].shape[1:]]
    return make_inputs(shape, np.float32, None, 1, data)[0]


# ---------------------------------------------------------------- the command


def bench(model: str | Path, settings: BenchSettings = BenchSettings(),
          keras_model: str | Path | None = None, baseline: str | Path | None = None,
          keras_baseline: str | Path | None = None, keras_folded: Any = None,
          data: np.ndarray | None = None, isolate: bool = False,
          keras_modes=("eager", "predict", "compiled"), xla: bool = False) -> BenchResult:
    """TFLite (and optional baseline) against Keras, same inputs, same batch."""
    settings.validate()
    if isolate:
        tfl, base = _isolated_tflite(model, settings, data, baseline)
    else:
        tfl, base = bench_tflite(model, settings, data, baseline)
    keras_stats, keras_base, keras_fold = {}, {}, {}
    if keras_model is not None or keras_baseline is not None or keras_folded is not None:
        from edgebn.train import load_keras

        x = keras_input(model, settings.batch, data)
        given = {"model": keras_model, "baseline": keras_baseline, "folded": keras_folded}
        loaded = {k: load_keras(m) if isinstance(m, (str, Path)) else m
                  for k, m in given.items() if m is not None}
        timed_models = bench_keras_models(loaded, x, keras_modes, runs=settings.runs, xla=xla)
        keras_stats = timed_models.get("model", {})
        keras_base = timed_models.get("baseline", {})
        keras_fold = timed_models.get("folded", {})
    env = environment(tfl.backend, tfl.xnnpack, tfl.threads)
    return BenchResult(env, tfl, base, keras_stats, keras_base, keras_fold)


def _isolated_tflite(model, settings: BenchSettings, data, baseline):
    """Run the interpreter side in a fresh process, so TensorFlow's memory is not counted."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgebn-bench-") as tmp:
        data_path = None
        if data is not None:
            data_path = os.path.join(tmp, "data.npy")
            np.save(data_path, data)
        job = {"model": str(model), "baseline": str(baseline) if baseline else None,
               "data": data_path, "settings": asdict(settings) | {"backend": settings.backend.value}}
        out_path = os.path.join(tmp, "out.npz")
        job["out"] = out_path
        proc = subprocess.run([sys.executable, "-m", "edgebn.bench", json.dumps(job)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            lines = (proc.stderr or "").strip().splitlines()
            raise EdgebnError(f"isolated benchmark failed: {lines[-1] if lines else proc.returncode}")
        results = json.loads(proc.stdout.strip().splitlines()[-1])
        samples = np.load(out_path)
    stats = []
    for key in ("tflite", "baseline"):
        doc = results.get(key)
        if doc is None:
            stats.append(None)
            continue
        stats.append(TFLiteStats(
            doc["model"], doc["backend"], doc["xnnpack"], doc["threads"], doc["batch"],
            doc["runs"], doc["warmup"], doc["init_ms"], doc["first_us"],
            Latency(**doc["latency_us"]), doc["peak_rss_mb"], samples[key]))
    return stats[0], stats[1]


def _worker(job: dict[str, Any]) -> None:
    settings = BenchSettings(**(job["settings"] | {"backend": Backend(job["settings"]["backend"])}))
    data = np.load(job["data"]) if job["data"] else None
    tfl, base = bench_tflite(job["model"], settings, data, job["baseline"])
    arrays = {"tflite": tfl.samples_ns}
    doc = {"tflite": tfl.to_json(), "baseline": base.to_json() if base else None}
    if base is not None:
        arrays["baseline"] = base.samples_ns
    np.savez(job["out"], **arrays)
    print(json.dumps(doc))


# ---------------------------------------------------------------- plot


def plot(result: BenchResult, out: str | Path) -> Path:
    """Latency distributions per runtime on a log axis, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgebn.stages import atomic_path

    rows = [(f"TFLite {Path(result.tflite.model).name}", result.tflite.samples_ns)]
    if result.baseline is not None:
        rows.append((f"TFLite {Path(result.baseline.model).name}", result.baseline.samples_ns))
    for prefix, group in (("Keras", result.keras), ("Keras twin", result.keras_baseline),
                          ("Keras folded", result.keras_folded)):
        rows.extend((f"{prefix} {m}", s.samples_ns) for m, s in group.items())
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    ax.boxplot([np.asarray(s) / 1e3 for _, s in rows], vert=False, whis=(1, 99),
               showfliers=False)
    ax.set_yticks(range(1, len(rows) + 1), [label for label, _ in rows])
    ax.set_xscale("log")
    ax.set_xlabel("latency per call (µs, log scale); box: p25–p75, whiskers: p1–p99")
    env = result.environment
    ax.set_title(f"{env.get('cpu', '')}, {result.tflite.threads} thread(s), "
                 f"batch {result.tflite.batch}", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out)


if __name__ == "__main__":  # the --isolate worker
    _worker(json.loads(sys.argv[1]))
