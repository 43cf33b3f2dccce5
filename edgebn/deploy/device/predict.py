#!/usr/bin/env python3
"""Run an edgebn bundle on a device: NumPy plus ai_edge_litert or tflite_runtime, nothing else.

    python3 predict.py IMAGE_OR_NPY [...] [--top-k 3] [--threads 4] [--json]
    python3 predict.py --selftest [--json]      # golden inputs vs the build's outputs
    python3 predict.py --bench [--runs 200]     # per-invoke latency on this device
    python3 predict.py --serve [--listen 127.0.0.1:8750 | --socket PATH]   # an HTTP server

The server (``--serve``, see :func:`serve`) answers ``POST /predict`` (an image or a
.npy body), ``GET /health`` and ``GET /metrics`` (Prometheus' text format), and follows
``DEST/current``: a release that ``current`` switches to (or SIGHUP) goes through the
same checks as at start, then its self-test, before it is served.

Before anything is loaded the bundle is checked by verify.py (see its docstring): the
signature over manifest.json on a device that trusts a signing key (an OpenSSH
allowed-signers file at ~/.config/edgebn/allowed_signers, or $EDGEBN_TRUST), then exactly
the listed files, regular, each with its sha256: anything else is refused (exit 2).
Without a trust file the bundle runs and is reported unverified. On a trusting device,
run it through the verifier installed beside the trust file (``edgebn deploy --trust``
does), which checks the bundle with code that is not part of it:

    python3 -I ~/.config/edgebn/verify.py run ~/edgebn/current --selftest

Started directly, this file uses that installed verifier when there is one, else the
bundle's own copy. Exit codes: 0 success, 1 self-test failed, 2 bad input or a bundle
that does not match its manifest.
Images need Pillow (python3-pil); .npy files hold preprocessed inputs (N, H, W, C) or
one (H, W, C) input, float32, exactly what the model was trained on.
"""

import os  # frozen, loaded at start-up: no file of the bundle is read for it
import sys  # built in

# No module is ever imported from the bundle's folder: an unlisted json.py or numpy/ beside
# this file must not run before (or after) the checks. Python puts the script's folder
# first on sys.path; take it out before the first import that searches the path.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.dont_write_bytecode = True  # a release is never written to: no __pycache__ in it

import argparse  # noqa: E402
import contextlib  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402  (frozen too)
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
MAX_IMAGE_PIXELS = 16_000_000  # a 4000x4000 photo; more is refused as a decompression bomb
MAX_SPEC_BYTES = 1 << 20  # bundle.json
MAX_GOLDEN_BYTES = 256 << 20
MAX_INPUT_BYTES = 1 << 30  # an image or .npy given on the command line (or a request's body)
RESIZE_FILTERS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")


def _load_verifier():
    """verify.py: the device's installed copy beside its trust file, else the bundle's."""
    trust = os.path.expanduser(os.environ.get("EDGEBN_TRUST") or "~/.config/edgebn/allowed_signers")
    installed = os.path.join(os.path.dirname(trust), "verify.py")
    path = installed if os.path.isfile(installed) else os.path.join(HERE, "verify.py")
    spec = importlib.util.spec_from_file_location("edgebn_bundle_verify", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


verifier = _load_verifier()
BundleError = verifier.BundleError


def verify_bundle(root: str = HERE) -> dict:
    """The checked manifest (its "signature" says how the bundle stands), before any load.

    When verify.py's ``run`` started this file, it has just checked the same bundle.
    """
    said = os.environ.get(verifier.VERIFIED_ENV)
    if said and os.path.realpath(root) == HERE:
        data = read_bundle_file(root, verifier.MANIFEST, verifier.MAX_MANIFEST_BYTES)
        return {**verifier.parse_manifest(data), "signature": said}
    return verifier.check_bundle(root)[0]


def read_bundle_file(root: str, name: str, limit: int) -> bytes:
    """A listed file's bytes: a regular file inside the bundle, at most ``limit`` bytes."""
    return verifier.read_regular(os.path.join(root, name), limit, name)


def _number(value, what: str, low: float = -math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= low):
        raise BundleError(f"bundle.json: {what} must be a finite number >= {low}. "
                          f"Received: {value!r:.40}")
    return float(value)


def load_spec(root: str, files) -> dict:
    """bundle.json, every value the device uses checked (names must be listed files)."""
    try:
        spec = json.loads(read_bundle_file(root, "bundle.json", MAX_SPEC_BYTES).decode("utf-8"))
        p, test, labels = spec["preprocessing"], spec["selftest"], spec["labels"]
        shape = p["input_shape"]
        for key in ("model", "inputs", "outputs"):
            name = spec["model"] if key == "model" else test[key]
            if not isinstance(name, str) or name not in files:
                raise BundleError(f"bundle.json: {key} {str(name)[:80]!r} is not a file listed "
                                  "in manifest.json")
        if not (isinstance(shape, list) and len(shape) == 3 and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 4096 for n in shape)):
            raise BundleError(f"bundle.json: input_shape must be [H, W, C] of 1..4096. "
                              f"Received: {str(shape)[:60]}")
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise BundleError("bundle.json: labels must be a non-empty list of strings")
        if p.get("resize", "bilinear") not in RESIZE_FILTERS or p.get("color", "rgb") not in (
                "rgb", "grayscale") or p.get("layout", "nhwc") not in ("nhwc", "nchw"):
            raise BundleError(f"bundle.json: resize must be one of {', '.join(RESIZE_FILTERS)}, "
                              "color rgb or grayscale, layout nhwc or nchw")
        for key, low in (("raw_max", 0), ("scale", -math.inf), ("offset", -math.inf)):
            _number(p[key], f"preprocessing.{key}", low)
        _number(test["atol"], "selftest.atol", 0)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise BundleError(f"bundle.json: unreadable or incomplete ({type(exc).__name__}: "
                          f"{str(exc)[:80]})") from exc
    return spec


VERBOSE = False  # --verbose: let the runtime's own log lines through to stderr
_FD2_LOCK = threading.Lock()


@contextlib.contextmanager
def runtime_quiet():
    """fd 2 on /dev/null while the runtime starts (unless --verbose).

    LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight
    to file descriptor 2 when tensors are allocated: Python's sys.stderr cannot catch it.
    """
    if VERBOSE:
        yield
        return
    with _FD2_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2 at all: nothing to keep quiet
            yield
            return
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_interpreter(model: bytes, threads: int, runtime: str = "auto"):
    """An allocated interpreter for the model's bytes from ai_edge_litert or tflite_runtime."""
    tried = []
    for dist in (("ai-edge-litert", "tflite-runtime") if runtime == "auto" else (runtime,)):
        name = dist.replace("-", "_")
        try:
            module = __import__(f"{name}.interpreter", fromlist=["Interpreter"])
        except ImportError as exc:
            tried.append(f"{name}: {exc}")
            continue
        try:
            with runtime_quiet():
                interp = module.Interpreter(model_content=model, num_threads=threads)
                interp.allocate_tensors()
        except Exception as exc:  # e.g. tflite-runtime 2.14 under NumPy 2
            tried.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return interp, f"{name} {_version(name)}"
    raise BundleError("no usable TFLite runtime: " + "; ".join(tried) +
                      " (in a venv: pip install -r requirements.txt, which picks ai-edge-litert on "
                      "Python 3.12+ and tflite-runtime 2.14 with NumPy < 2 on 3.11)")


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist.replace("_", "-"))
    except Exception:
        return "unknown"


class Model:
    def __init__(self, root: str, spec: dict, threads: int, runtime: str, model: bytes = b""):
        """The bundle's model (or ``model``, its bytes already in memory) in an interpreter."""
        import numpy as np

        self.np = np
        self.spec = spec
        self.threads = threads
        model = model or read_bundle_file(root, spec["model"], verifier.MAX_FILE_BYTES)
        self.interp, self.runtime = load_interpreter(model, threads, runtime)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def raw(self, x):
        """The output tensor for one preprocessed float input (H, W, C), as stored."""
        np = self.np
        x = np.asarray(x, np.float32)[None]
        if self.spec["preprocessing"].get("layout") == "nchw":  # PyTorch's layout: (1, C, H, W)
            x = x.transpose(0, 3, 1, 2)
        if np.issubdtype(self.inp["dtype"], np.integer):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interp.set_tensor(self.inp["index"], x.astype(self.inp["dtype"], copy=False))
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])[0].copy()

    def probabilities(self, x):
        np = self.np
        y = self.raw(x)
        if np.issubdtype(self.out["dtype"], np.integer):
            scale, zero = self.out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


def preprocess_image(source, spec: dict, name: str | None = None, guard: bool = True):
    """An image (a path or a binary file object) -> the model's float input, as the build
    preprocessed its data. ``guard=False`` leaves Python's warning filters alone (they are
    not thread-safe): the server installs its own filter once (see :func:`serve`)."""
    import numpy as np

    name = name or str(source)
    try:
        from PIL import Image
    except ImportError as exc:
        raise BundleError(f"{name}: reading images needs Pillow (sudo apt install python3-pil), "
                          "or pass a preprocessed .npy") from exc
    p = spec["preprocessing"]
    h, w, c = p["input_shape"]
    # The build's filter (bundle.json), never Pillow's default: the same pixels as training.
    resample = getattr(Image, p.get("resize", "bilinear").upper())
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings() if guard else contextlib.nullcontext():
            if guard:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:  # the header says: nothing decoded yet
                    raise Image.DecompressionBombError(
                        f"{im.width}x{im.height} pixels, over the limit of {MAX_IMAGE_PIXELS}")
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), resample)
                raw = np.asarray(im, np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BundleError(f"{name}: refused as a decompression bomb ({exc})") from exc
    except MemoryError as exc:
        raise BundleError(f"{name}: too large to decode") from exc
    except Exception as exc:  # a decoder fed hostile bytes may raise anything: one line, exit 2
        raise BundleError(f"{name}: not a readable image ({type(exc).__name__}: {exc})") from exc
    # float32 throughout, in place (one array, not five): the very same values as
    # raw * (raw_max / 255) * scale + offset computed into new arrays
    x = raw.reshape(h, w, c)
    np.multiply(x, p["raw_max"] / 255.0, out=x)  # 8-bit pixels onto the training data's raw range
    np.multiply(x, p["scale"], out=x)
    np.add(x, p["offset"], out=x)
    return x


def load_npy(path: str, shape: tuple):
    """Preprocessed inputs (N, H, W, C) or one (H, W, C): real numbers, finite, never pickles."""
    import numpy as np

    try:  # memory-mapped: a header that claims more data than the file holds is refused
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # hostile bytes make np.load raise many types: one line, exit 2
        raise BundleError(f"{path}: not a readable .npy ({type(exc).__name__}: {exc})") from exc
    return check_inputs(np, arr, shape, path)


def check_inputs(np, arr, shape: tuple, name: str, copy: bool = True):
    """Inputs (N, H, W, C) as float32 from an array of (N, H, W, C) or (H, W, C). ``copy=False``
    returns a float32 ``arr`` itself: only for bytes nothing can change (the server's request
    body), never a file's memory map."""
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise BundleError(f"{name}: dtype {getattr(arr, 'dtype', type(arr).__name__)}, "
                          "expected a float or integer array")
    if arr.shape == shape:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise BundleError(f"{name}: inputs of shape {list(arr.shape)}, the model "
                          f"expects (N, {', '.join(map(str, shape))}) with N >= 1")
    with np.errstate(over="ignore", invalid="ignore"):
        x = arr if not copy and arr.dtype == np.float32 else np.array(arr, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BundleError(f"{name}: holds NaN or infinite values (or values beyond float32)")
    return x


def load_inputs(paths, spec):
    shape = tuple(spec["preprocessing"]["input_shape"])
    for path in paths:
        size = os.stat(path).st_size if os.path.isfile(path) else 0  # (the loaders say why not)
        if size > MAX_INPUT_BYTES:
            raise BundleError(f"{path}: {size} bytes, over the limit of {MAX_INPUT_BYTES} "
                              "for one input file")
        if path.endswith(".npy"):
            for i, x in enumerate(load_npy(path, shape)):
                yield f"{path}[{i}]", x
        else:
            yield path, preprocess_image(path, spec)


def load_golden(model: Model, root: str, spec: dict) -> tuple:
    """The golden inputs and the build's outputs for them, shapes checked against the model."""
    np, test = model.np, spec["selftest"]
    arrays = []
    for key in ("inputs", "outputs"):
        data = read_bundle_file(root, test[key], MAX_GOLDEN_BYTES)
        try:
            arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
        except Exception as exc:  # hostile bytes make np.load raise many types
            raise BundleError(f"{test[key]}: not a readable .npy ({type(exc).__name__})") from exc
    x, want = arrays
    shape = (len(x), *spec["preprocessing"]["input_shape"])
    if (x.dtype.kind != "f" or tuple(x.shape) != shape or len(x) == 0 or want.ndim < 2
            or len(want) != len(x) or want.shape[-1] != len(spec["labels"])):
        raise BundleError(f"golden inputs {list(x.shape)} and outputs {list(want.shape)} do not "
                          f"fit the model (N, {', '.join(map(str, shape[1:]))}) and "
                          f"{len(spec['labels'])} labels")
    return x, want


def selftest(model: Model, root: str, spec: dict) -> dict:
    """Outputs on the golden inputs against the build's, within the bundle's tolerance."""
    np = model.np
    test = spec["selftest"]
    x, want = load_golden(model, root, spec)
    got = np.stack([model.raw(xi) for xi in x])
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    passed = diff <= test["atol"] and agree == 1.0
    return {"passed": bool(passed), "samples": int(len(x)), "max_abs_diff": diff,
            "atol": test["atol"], "units": test["units"], "top1_agreement": agree,
            "runtime": model.runtime, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "os": os_name()}


def device() -> dict:
    """This machine as a latency number needs it: CPU model, cores, Python, OS."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        cpu = next((fields[k] for k in ("model name", "model", "hardware", "cpu model")
                    if fields.get(k)), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "system": platform.platform(), "os": os_name()}


def os_name() -> str | None:
    """The OS release, as /etc/os-release names it ("Debian GNU/Linux 13 (trixie)")."""
    text = _read_text("/etc/os-release") or ""
    for line in text.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')[:100]
    return None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(4096)
    except OSError:
        return None


NO_EFFECT = 1.15  # a speedup below this at more than one thread: the threads did not apply


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(256).strip()
    except OSError:
        return None


def thermal() -> dict:
    """CPU temperature, clock and throttle flags, each None with the reason where unreadable."""
    doc: dict = {}
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp"))
    temp = _read(zones[0]) if zones else None
    doc["temp_c"] = int(temp) / 1000 if temp and temp.lstrip("-").isdigit() else None
    if doc["temp_c"] is None:
        doc["temp_reason"] = "no /sys/class/thermal/thermal_zone*/temp here"
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    doc["clock_mhz"] = int(freq) / 1000 if freq and freq.isdigit() else None
    if doc["clock_mhz"] is None:
        doc["clock_reason"] = "no cpufreq scaling_cur_freq here"
    doc["throttled"] = doc["throttled_flags"] = None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True,
                             timeout=5).stdout.strip()  # throttled=0x50005
        flags = int(out.split("=", 1)[1], 16)
        doc["throttled_flags"], doc["throttled"] = hex(flags), bool(flags & 0xF)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        doc["throttled_reason"] = "vcgencmd get_throttled is not available here"
    return doc


def _latency(t) -> dict:
    np = __import__("numpy")
    t = np.asarray(t)
    return {k: float(v) for k, v in (("min", t.min()), ("p50", np.median(t)),
                                     ("p90", np.percentile(t, 90)), ("p99", np.percentile(t, 99)),
                                     ("mean", t.mean()))}


def _timed(model: Model, x, runs: int, duration: float = 0.0, window: float = 10.0) -> tuple:
    """invoke() times in µs: ``runs`` of them, or for ``duration`` seconds in windows."""
    for _ in range(min(50, runs)):
        model.raw(x)
    times, windows, start = [], [], time.perf_counter()
    while True:
        t0 = time.perf_counter_ns()
        model.interp.invoke()
        times.append((time.perf_counter_ns() - t0) / 1e3)
        now = time.perf_counter() - start
        if duration and now >= (len(windows) + 1) * window:
            done = sum(w["runs"] for w in windows)
            windows.append({"start_s": len(windows) * window, "runs": len(times) - done,
                            "p50_us": float(model.np.median(times[done:]))})
        if (duration and now >= duration) or (not duration and len(times) >= runs):
            return times, windows


def bench(model: Model, runs: int, root: str = HERE, duration: float = 0.0,
          window: float = 10.0) -> dict:
    """invoke() timed at the requested threads, and at 1 thread to see whether they applied;
    temperature, clock and throttle flags before and after; windows for a sustained run."""
    x = load_golden(model, root, model.spec)[0][0]
    before = thermal()
    times, windows = _timed(model, x, runs, duration, window)
    after = thermal()
    name, _, version = model.runtime.partition(" ")
    doc = {"runs": len(times), "runtime": model.runtime, "runtime_name": name,
           "runtime_version": version, "threads": model.threads, "device": device(),
           "latency_us": _latency(times), "thermal": {"before": before, "after": after},
           "windows": windows}
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    doc["cores_available"] = cores
    if model.threads > 1:
        one = Model(root, model.spec, 1, model.runtime.split()[0].replace("_", "-"),
                    model=read_bundle_file(root, model.spec["model"], verifier.MAX_FILE_BYTES))
        single = _latency(_timed(one, x, min(runs, max(len(times), 20)))[0])
        speedup = single["p50"] / doc["latency_us"]["p50"]
        doc["one_thread_latency_us"], doc["thread_speedup"] = single, speedup
        if speedup < NO_EFFECT:
            doc["warning"] = (f"threads had no effect: {model.threads} threads ran at {speedup:.2f}x "
                              f"the 1-thread speed; this process may use {cores} core(s)"
                              + (" (it is pinned: taskset, cgroups)" if cores < model.threads else ""))
    return doc


PROFILE_INDEX = "profile/profile.json"


def _op_inputs(np, root: str, names) -> list:
    arrays = []
    for name in names:
        data = read_bundle_file(root, name, MAX_GOLDEN_BYTES)
        try:
            arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
        except Exception as exc:  # hostile bytes make np.load raise many types
            raise BundleError(f"{name}: not a readable .npy ({type(exc).__name__})") from exc
    return arrays


def _time_op(np, interp, feeds, runs: int) -> float:
    """The p50 of invoke() in µs for one operator model fed its captured inputs."""
    details = interp.get_input_details()
    if len(details) != len(feeds):
        raise BundleError(f"an operator model takes {len(details)} inputs; {len(feeds)} were shipped")
    for d, x in zip(details, feeds, strict=True):
        if tuple(d["shape"]) != tuple(x.shape) or np.dtype(d["dtype"]) != x.dtype:
            raise BundleError(f"an operator input is {list(x.shape)} {x.dtype}, the model takes "
                              f"{list(d['shape'])} {np.dtype(d['dtype'])}")
        interp.set_tensor(d["index"], x)
    for _ in range(5):
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        interp.invoke()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return float(np.median(times))


def profile(model: Model, root: str, files, runs: int) -> dict:
    """Each shipped one-operator model timed on this device, beside the whole model's p50."""
    np = model.np
    if PROFILE_INDEX not in files:
        raise BundleError("this bundle has no operator models: make it with "
                          "edgebn bundle BUILD --out B --profile")
    try:
        rows = json.loads(read_bundle_file(root, PROFILE_INDEX, MAX_SPEC_BYTES))["operators"]
        listed = [r for r in rows if "model" in r]
        if any(r["model"] not in files or any(i not in files for i in r["inputs"]) for r in listed):
            raise BundleError(f"{PROFILE_INDEX}: names a file that is not in manifest.json")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{PROFILE_INDEX}: unreadable ({type(exc).__name__})") from exc
    runtime = model.runtime.split()[0].replace("_", "-")
    out = []
    for r in rows:
        row = {"index": r.get("index"), "op": str(r.get("op"))[:60], "macs": r.get("macs"),
               "time_us": None, "note": r.get("note"),
               "method": str(r.get("method", "isolated"))[:40]}
        if row["method"] in ("fused", "at load"):
            row["time_us"] = 0.0
        if "model" in r:
            interp, _ = load_interpreter(read_bundle_file(root, r["model"], verifier.MAX_FILE_BYTES),
                                         model.threads, runtime)
            row["time_us"] = _time_op(np, interp, _op_inputs(np, root, r["inputs"]), runs)
        out.append(row)
    whole = bench(model, runs, root)
    total = sum(r["time_us"] or 0.0 for r in out)
    for r in out:
        r["share"] = (r["time_us"] or 0.0) / total if total else 0.0
    return {"operators": out, "ops_sum_us": total, "latency_us": whole["latency_us"],
            "explained": total / whole["latency_us"]["p50"], "runtime": model.runtime,
            "threads": model.threads, "device": whole["device"], "method": "isolated ops"}


# predict.py --serve (serve.py): the options' defaults
SERVE_LISTEN = "127.0.0.1:8750"
SERVE_TIMEOUT_S = 10.0  # a whole request (line, headers and body) must arrive within this
SERVE_MAX_BODY = 32 << 20  # bytes of one request's body
SERVE_MAX_CONNECTIONS = 64  # connections served at once; more get a 503 at once
SERVE_POLL_S = 1.0  # how often DEST/current is read
SERVE_SCRIPT = "serve.py"


class SelfTestFailed(BundleError):
    """A release whose outputs on its golden inputs are not the build's."""


class _Names:
    """predict.py's globals as attributes, read when used (VERBOSE is set by main)."""

    def __getattr__(self, name):
        try:
            return globals()[name]
        except KeyError:
            raise AttributeError(name) from None


def load_serve(root: str, manifest: dict) -> dict:
    """serve.py's namespace, executed from bytes whose sha256 the verified ``manifest`` lists:
    read once, hashed, and those very bytes run (never imported from the folder by path)."""
    want = manifest["files"].get(SERVE_SCRIPT)
    if want is None:
        raise BundleError(f"this bundle has no {SERVE_SCRIPT} (made by an edgebn without "
                          "--serve): bundle it again with this edgebn")
    data = read_bundle_file(root, SERVE_SCRIPT, MAX_SPEC_BYTES)
    if hashlib.sha256(data).hexdigest() != want:
        raise BundleError(f"{SERVE_SCRIPT}: sha256 does not match the manifest: the bundle is "
                          "damaged or was modified")
    path = os.path.join(os.path.realpath(root), SERVE_SCRIPT)
    namespace = {"__name__": "edgebn_bundle_serve", "__file__": path,
                 "__builtins__": __builtins__}
    exec(compile(data, path, "exec"), namespace)
    namespace["p"] = _Names()
    return namespace


def serve(args, root: str) -> int:
    """``--serve``: the bundle checked, then serve.py's server (exit 2 refused, 1 self-test)."""
    return load_serve(root, verify_bundle(root))["serve"](args, root)


def run(args, root: str) -> tuple:
    """The document to print and the exit code; BundleError for bad input or a bad bundle."""
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    if args.threads < 1 or args.top_k < 1 or args.runs < 1:
        raise BundleError("--threads, --top-k and --runs must be >= 1")
    if not (0 <= args.duration <= 86400 and 0.1 <= args.window <= 3600):
        raise BundleError("--duration must be 0..86400 s and --window 0.1..3600 s")
    if not (args.inputs or args.selftest or args.bench or args.profile):
        raise BundleError("nothing to do: give inputs, --selftest, --bench or --profile")
    manifest = verify_bundle(root)  # before anything is loaded
    signature = manifest["signature"]
    spec = load_spec(root, manifest["files"])
    model = Model(root, spec, args.threads, args.runtime)
    doc, code = {"signature": signature}, 0
    if args.selftest:
        doc["selftest"] = {**selftest(model, root, spec), "signature": signature}
        code = 0 if doc["selftest"]["passed"] else EXIT_FAILED
    if args.bench:
        doc["bench"] = bench(model, args.runs, root, args.duration, args.window)
    if args.profile:
        doc["profile"] = profile(model, root, manifest["files"], args.runs)
    if args.inputs:
        labels = spec["labels"]
        doc["predictions"] = []
        for name, x in load_inputs(args.inputs, spec):
            p = model.probabilities(x)
            top = p.argsort()[::-1][: args.top_k]
            doc["predictions"].append({"input": name, "top": [
                {"label": labels[i], "index": int(i), "score": float(p[i])} for i in top]})
    return doc, code


def show(doc: dict) -> None:
    if "selftest" in doc:
        s = doc["selftest"]
        print(f"self-test {'PASSED' if s['passed'] else 'FAILED'}: {s['samples']} golden inputs, "
              f"max |diff| {s['max_abs_diff']:.3g} {s['units']} (allowed {s['atol']:g}), "
              f"top-1 agreement {s['top1_agreement']:.3f}, {s['runtime']}, NumPy {s['numpy']}, "
              f"{s['machine']}")
    if "bench" in doc:
        b = doc["bench"]
        print(f"invoke(): p50 {b['latency_us']['p50']:.1f} us, p90 {b['latency_us']['p90']:.1f} us "
              f"over {b['runs']} runs ({b['runtime']}, {b['threads']} threads, "
              f"{b['device']['cpu']})")
        if "thread_speedup" in b:
            print(f"  {b['threads']} threads: {b['thread_speedup']:.2f}x the 1-thread p50 "
                  f"({b['one_thread_latency_us']['p50']:.1f} us)")
        if "warning" in b:
            print(f"  warning: {b['warning']}")
        t0, t1 = b["thermal"]["before"], b["thermal"]["after"]
        print(f"  temperature {t0['temp_c']} -> {t1['temp_c']} C, clock {t0['clock_mhz']} -> "
              f"{t1['clock_mhz']} MHz, throttled {t1['throttled']}")
        for w in b["windows"]:
            print(f"  {w['start_s']:>6.1f} s: p50 {w['p50_us']:.1f} us ({w['runs']} runs)")
    if "profile" in doc:
        p = doc["profile"]
        print(f"per operator ({p['runtime']}, {p['threads']} threads): sum {p['ops_sum_us']:.1f} us "
              f"beside the whole model's p50 {p['latency_us']['p50']:.1f} us")
        for r in sorted(p["operators"], key=lambda r: -(r["time_us"] or 0)):
            t = "-" if r["time_us"] is None else f"{r['time_us']:.1f} us {r['share']:.0%}"
            print(f"  op {r['index']} {r['op']}: {t}" + (f" ({r['note']})" if r["note"] else ""))
    for pred in doc.get("predictions", []):
        print(pred["input"] + ": " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in pred["top"]))
    print(f"bundle signature: {doc['signature']}")


def main(argv=None, root: str = HERE) -> int:
    ap = argparse.ArgumentParser(description="Run this edgebn bundle's model.")
    ap.add_argument("inputs", nargs="*", help="image files or .npy of preprocessed inputs")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="interpreter threads (default: every core; with --serve, the cores "
                         "shared among the workers)")
    ap.add_argument("--runtime", choices=["auto", "ai-edge-litert", "tflite-runtime"],
                    default="auto")
    ap.add_argument("--selftest", action="store_true", help="compare with the build's outputs")
    ap.add_argument("--bench", action="store_true", help="time invoke() on this device")
    ap.add_argument("--profile", action="store_true",
                    help="time each operator on this device (a bundle made with --profile)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--duration", type=float, default=0.0,
                    help="with --bench: run this many seconds, p50 per --window (throttling shows)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per window of --duration")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--verbose", action="store_true",
                    help="let the runtime's log lines through to stderr; with --serve, log requests")
    serving = ap.add_argument_group("serving (--serve)")
    serving.add_argument("--serve", action="store_true",
                         help="serve POST /predict, GET /health and GET /metrics over HTTP")
    serving.add_argument("--listen", metavar="HOST:PORT",
                         help=f"address to listen on (default {SERVE_LISTEN}; 0.0.0.0:PORT for "
                              "every interface)")
    serving.add_argument("--socket", metavar="PATH", help="listen on this Unix socket instead")
    serving.add_argument("--workers", type=int, default=None,
                         help="interpreters, so requests run at once (default min(4, cores))")
    serving.add_argument("--timeout", type=float, default=SERVE_TIMEOUT_S,
                         help="seconds a whole request may take to arrive")
    serving.add_argument("--max-body-bytes", type=int, default=SERVE_MAX_BODY)
    serving.add_argument("--max-connections", type=int, default=SERVE_MAX_CONNECTIONS)
    serving.add_argument("--poll", type=float, default=SERVE_POLL_S,
                         help="seconds between two reads of DEST/current")
    serving.add_argument("--follow", metavar="LINK",
                         help="the link to follow (default DEST/current when the bundle is a "
                              "release of DEST)")
    args = ap.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose
    try:
        if args.serve:
            return serve(args, root)
        doc, code = run(args, root)
    except SelfTestFailed as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BundleError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        show(doc)
    return code


if __name__ == "__main__":
    sys.exit(main())
