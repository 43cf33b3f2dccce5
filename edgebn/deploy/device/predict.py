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
import email.utils  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import http.server  # noqa: E402
import importlib.util  # noqa: E402  (frozen too)
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import socketserver  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402
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


def check_inputs(np, arr, shape: tuple, name: str):
    """Inputs (N, H, W, C) as float32 from an array of (N, H, W, C) or (H, W, C)."""
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise BundleError(f"{name}: dtype {getattr(arr, 'dtype', type(arr).__name__)}, "
                          "expected a float or integer array")
    if arr.shape == shape:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise BundleError(f"{name}: inputs of shape {list(arr.shape)}, the model "
                          f"expects (N, {', '.join(map(str, shape))}) with N >= 1")
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.array(arr, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BundleError(f"{name}: holds NaN or infinite values (or values beyond float32)")
    return x


NPY_MAGIC = b"\x93NUMPY"


def npy_from_bytes(data: bytes, shape: tuple, name: str):
    """A .npy held in memory (a request's body), checked before any array is made.

    The header is read first: only a float or integer dtype, and a shape whose bytes are
    exactly what follows the header, go on to be decoded (np.load would allocate whatever
    the header claims, and unpickle objects if asked to).
    """
    import numpy as np

    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}")
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        dims, fortran, dtype = read(f)
    except Exception as exc:  # hostile bytes make the header parser raise many types
        raise BundleError(f"{name}: not a readable .npy ({type(exc).__name__}: "
                          f"{str(exc)[:100]})") from exc
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise BundleError(f"{name}: dtype {dtype}, expected a float or integer array")
    count = math.prod(dims)
    rest = len(data) - f.tell()
    if count * dtype.itemsize != rest:
        raise BundleError(f"{name}: the header claims {list(dims)} of {dtype} "
                          f"({count * dtype.itemsize} bytes); {rest} bytes follow it")
    arr = np.frombuffer(data, dtype, count, f.tell()).reshape(dims, order="F" if fortran else "C")
    return check_inputs(np, arr, shape, name)


def load_inputs(paths, spec):
    shape = tuple(spec["preprocessing"]["input_shape"])
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read ({exc.strerror})") from exc
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


# ---------------------------------------------------------------------------------------
# predict.py --serve: the bundle's model behind HTTP, following DEST/current.
# ---------------------------------------------------------------------------------------

SERVE_LISTEN = "127.0.0.1:8750"
SERVE_TIMEOUT_S = 10.0  # a whole request (line, headers and body) must arrive within this
SERVE_MAX_BODY = 32 << 20  # bytes of one request's body
SERVE_MAX_CONNECTIONS = 64  # connections served at once; more get a 503 at once
SERVE_MAX_BATCH = 256  # inputs in one .npy body
SERVE_POLL_S = 1.0  # how often DEST/current is read
SERVE_LINGER_S = 1.0  # at most this long reading what a client still sends after the answer
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
ROUTES = {"/predict": ("POST",), "/health": ("GET",), "/metrics": ("GET",)}
HTTP_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
                414: "URI Too Long", 431: "Request Header Fields Too Large",
                500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class SelfTestFailed(BundleError):
    """A release whose outputs on its golden inputs are not the build's."""


class Release:
    """One release, verified and self-tested, with an interpreter per worker ready.

    ``slots`` holds the interpreters: a request takes one, uses it alone, puts it back, so
    no interpreter is ever used by two threads at once, and at most ``workers`` requests
    of a release run the model at a time. A request keeps the Release it started with:
    when another one goes live, the requests in flight finish on this one.
    """

    def __init__(self, root: str, rid: str, spec: dict, signature: str, sha256: str,
                 models: list, test: dict, load_s: float):
        self.root, self.id, self.spec, self.signature = root, rid, spec, signature
        self.sha256, self.selftest, self.load_s = sha256, test, load_s
        self.runtime = models[0].runtime
        self.slots = queue.SimpleQueue()
        for m in models:
            self.slots.put(m)


def _release_id(root: str) -> str:
    """The first 16 hex of manifest.json's sha256: the release's directory name on a device."""
    data = read_bundle_file(root, verifier.MANIFEST, verifier.MAX_MANIFEST_BYTES)
    return hashlib.sha256(data).hexdigest()[:16]


def load_release(root: str, workers: int, threads: int, runtime: str, at_start: bool = False
                 ) -> Release:
    """Verify the bundle at ``root`` (the device's verifier on a trusting device), load one
    interpreter per worker from the verified model bytes, and run the self-test on them.

    BundleError when the bundle is refused or its model does not load; SelfTestFailed when
    its outputs are not the build's. ``at_start``: the verifier that started this process
    has just checked ``root`` (see :func:`verify_bundle`).
    """
    start = time.perf_counter()
    root = os.path.realpath(root)
    manifest = verify_bundle(root) if at_start else verifier.check_bundle(root)[0]
    rid = _release_id(root)
    spec = load_spec(root, manifest["files"])
    model = read_bundle_file(root, spec["model"], verifier.MAX_FILE_BYTES)
    sha256 = hashlib.sha256(model).hexdigest()
    if sha256 != manifest["files"][spec["model"]]:
        raise BundleError(f"{spec['model']}: changed while it was being loaded")
    models = [Model(root, spec, threads, runtime, model=model) for _ in range(workers)]
    test = selftest(models[0], root, spec)
    if not test["passed"]:
        raise SelfTestFailed(
            f"self-test failed: max |diff| {test['max_abs_diff']:.3g} {test['units']} (allowed "
            f"{test['atol']:g}), top-1 agreement {test['top1_agreement']:.3f} on "
            f"{test['samples']} golden inputs")
    return Release(root, rid, spec, manifest["signature"], sha256, models, test,
                   time.perf_counter() - start)


def _label(value) -> str:
    """A Prometheus label value: backslash, double quote and line feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and the latency histogram, rendered in Prometheus' text format 0.0.4."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict = {}  # (path, code) -> count
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.reloads = {"swapped": 0, "rejected": 0}
        self.cpu = (0.0, {})  # (when read, thermal state): read at most every 10 s

    def observe(self, path: str, code: int, seconds: float | None) -> None:
        with self.lock:
            key = (path, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            if path == "/predict" and code == 200 and seconds is not None:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, le in enumerate(LATENCY_BUCKETS_S):
                    if seconds <= le:
                        self.buckets[i] += 1

    def _cpu_state(self) -> dict:
        with self.lock:
            when, state = self.cpu
            if time.monotonic() - when < 10.0 and when:
                return state
        state = thermal()
        with self.lock:
            self.cpu = (time.monotonic(), state)
        return state

    def render(self, service) -> str:
        live, rejected = service.live, service.rejected
        with self.lock:
            requests = sorted(self.requests.items())
            buckets, total, count = list(self.buckets), self.latency_sum, self.latency_count
            reloads = dict(self.reloads)
        lines = []

        def family(name, kind, text, samples):
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])
            lines.extend(samples)

        family("edgebn_requests_total", "counter", "HTTP requests answered, by path and status code.",
               [f'edgebn_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in requests])
        errors: dict = {}
        for (_, c), n in requests:
            if c >= 400:
                errors[c] = errors.get(c, 0) + n
        family("edgebn_request_errors_total", "counter",
               "Requests answered with a 4xx or 5xx status, by code.",
               [f'edgebn_request_errors_total{{code="{c}"}} {n}' for c, n in sorted(errors.items())])
        hist = [f'edgebn_predict_duration_seconds_bucket{{le="{le:g}"}} {n}'
                for le, n in zip(LATENCY_BUCKETS_S, buckets, strict=True)]
        hist += [f'edgebn_predict_duration_seconds_bucket{{le="+Inf"}} {count}',
                 f"edgebn_predict_duration_seconds_sum {total:.6f}",
                 f"edgebn_predict_duration_seconds_count {count}"]
        family("edgebn_predict_duration_seconds", "histogram",
               "Time from a POST /predict's headers to its answer, for answers 200.", hist)
        rel = f'release="{_label(live.id)}"'
        family("edgebn_release_info", "gauge", "The live release (value 1), its model's sha256 and runtime.",
               [f'edgebn_release_info{{{rel},sha256="{live.sha256}",runtime="{_label(live.runtime)}",'
                f'signature="{_label(live.signature)}"}} 1'])
        family("edgebn_model_load_seconds", "gauge",
               "Seconds the live release took to verify, load and self-test.",
               [f"edgebn_model_load_seconds{{{rel}}} {live.load_s:.6f}"])
        family("edgebn_selftest_passed", "gauge", "1 when the live release's self-test passed at load.",
               [f"edgebn_selftest_passed{{{rel}}} {int(bool(live.selftest['passed']))}"])
        family("edgebn_release_rejected", "gauge",
               "1 while the latest release current points to was not taken, with why.",
               [f'edgebn_release_rejected{{release="{_label(rejected["release"])}",'
                f'reason="{_label(rejected["reason"])}"}} 1'] if rejected else [])
        family("edgebn_reloads_total", "counter", "Releases checked for a reload, by result.",
               [f'edgebn_reloads_total{{result="{k}"}} {n}' for k, n in sorted(reloads.items())])
        family("edgebn_uptime_seconds", "gauge", "Seconds since the server started.",
               [f"edgebn_uptime_seconds {time.monotonic() - service.started:.3f}"])
        family("edgebn_workers", "gauge", "Interpreters per release: requests that run the model at once.",
               [f"edgebn_workers {service.settings['workers']}"])
        cpu = self._cpu_state()
        if cpu.get("temp_c") is not None:
            family("edgebn_cpu_temperature_celsius", "gauge", "CPU temperature (thermal zone 0).",
                   [f"edgebn_cpu_temperature_celsius {cpu['temp_c']:g}"])
        if cpu.get("throttled") is not None:
            family("edgebn_cpu_throttled", "gauge", "1 while the firmware throttles the CPU now "
                   "(vcgencmd get_throttled, bits 0-3).", [f"edgebn_cpu_throttled {int(cpu['throttled'])}"])
        return "\n".join(lines) + "\n"


MISSING = "\0missing"  # rejected_root while DEST/current does not exist


class Service:
    """The live release, the latest one refused, and the watch over DEST/current."""

    def __init__(self, root: str, follow: str | None, settings: dict, first: Release):
        self.root, self.follow, self.settings = os.path.realpath(root), follow, settings
        self.started = time.monotonic()
        self.metrics = Metrics()
        self.live, self.kept = first, None  # kept: the release before, for a quick way back
        self.rejected: dict | None = None
        self.rejected_root: str | None = None
        self.wake, self.force, self.stopping = threading.Event(), False, False
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()

    def event(self, **doc) -> None:
        """One JSON line on stdout: the server's log of what it serves."""
        with self.out_lock:
            print(json.dumps(doc), flush=True)

    def health(self) -> dict:
        live = self.live
        return {"status": "ok", "release": live.id, "sha256": live.sha256,
                "selftest_passed": bool(live.selftest["passed"]), "signature": live.signature,
                "uptime_s": round(time.monotonic() - self.started, 3), "rejected": self.rejected,
                "load_s": round(live.load_s, 4), "runtime": live.runtime,
                "workers": self.settings["workers"], "current": self.follow,
                "machine": platform.machine(), "python": platform.python_version()}

    def _target(self) -> str | None:
        if self.follow is None:
            return self.root
        if not os.path.lexists(self.follow):
            return None
        return os.path.realpath(self.follow)

    def check(self, force: bool = False) -> None:
        """Take the release ``current`` points to, if it passes; else say why it was not."""
        with self.lock:
            target = self._target()
            if target is None:
                if self.rejected_root != MISSING:
                    self._reject(MISSING, os.path.basename(self.follow or ""),
                                 f"{self.follow} is missing")
            elif target == self.live.root and not (force and self.follow is None):
                self.rejected = self.rejected_root = None
            elif target != self.rejected_root or force:
                self._load(target)

    def _load(self, root: str) -> None:
        kept = self.kept
        try:
            if kept is not None and kept.root == root:  # back to the release before: verify it
                verifier.check_bundle(root)  # again, and reuse it if it is the same bundle
                new = kept if _release_id(root) == kept.id else None
            else:
                new = None
            s = self.settings
            new = new or load_release(root, s["workers"], s["threads"], s["runtime"])
        except BundleError as exc:
            return self._reject(root, os.path.basename(root), str(exc))
        except Exception as exc:  # never let a release stop the server: say what it was
            return self._reject(root, os.path.basename(root), f"{type(exc).__name__}: {exc}")
        before = time.monotonic()
        old, self.live = self.live, new
        after = time.monotonic()
        self.kept = old if old.id != new.id else kept
        self.rejected = self.rejected_root = None
        with self.metrics.lock:
            self.metrics.reloads["swapped"] += 1
        self.event(event="live", release=new.id, previous=old.id, load_s=round(new.load_s, 4),
                   swapped_monotonic=[before, after], selftest_passed=True)

    def _reject(self, root: str | None, name: str, reason: str) -> None:
        reason = " ".join(reason.split())[:500]
        self.rejected, self.rejected_root = {"release": name, "reason": reason}, root
        with self.metrics.lock:
            self.metrics.reloads["rejected"] += 1
        self.event(event="rejected", release=name, reason=reason, live=self.live.id)

    def watch(self) -> None:
        """Read DEST/current every poll interval (and at once on SIGHUP)."""
        while not self.stopping:
            self.wake.wait(self.settings["poll_s"] if self.follow else None)
            self.wake.clear()
            force, self.force = self.force, False
            if not self.stopping:
                self.check(force)

    def hangup(self, *_) -> None:
        self.force = True
        self.wake.set()


def decode_body(body: bytes, spec: dict) -> list:
    """A request's body -> [(name, input)]: a .npy (by its magic bytes) or an image."""
    shape = tuple(spec["preprocessing"]["input_shape"])
    if body.startswith(NPY_MAGIC):
        x = npy_from_bytes(body, shape, "body")
        if len(x) > SERVE_MAX_BATCH:
            raise BundleError(f"body: {len(x)} inputs, at most {SERVE_MAX_BATCH} a request")
        return [(f"body[{i}]", xi) for i, xi in enumerate(x)]
    return [("body", preprocess_image(io.BytesIO(body), spec, "body", guard=False))]


class _DeadlineReader(io.RawIOBase):
    """A socket read against one deadline per request, not per recv(): a client that sends
    a byte every few seconds (slowloris) is still cut off when the request's time is up."""

    def __init__(self, sock):
        self.sock, self.deadline, self.got, self.timed_out = sock, math.inf, 0, False

    def readable(self) -> bool:
        return True

    def start(self, seconds: float) -> None:
        self.deadline, self.got, self.timed_out = time.monotonic() + seconds, 0, False

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            raise TimeoutError("the request's time is up")
        self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(buf)
        except TimeoutError:
            self.timed_out = True
            raise
        self.got += n
        return n


class _Writer:
    """Collects a response and sends it with one sendall() when flushed."""

    closed = False

    def __init__(self, sock, timeout_s: float):
        self.sock, self.timeout_s, self.parts = sock, timeout_s, []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self.parts:
            data, self.parts = b"".join(self.parts), []
            self.sock.settimeout(self.timeout_s)
            self.sock.sendall(data)

    def close(self) -> None:
        self.closed = True


class _Handler(http.server.BaseHTTPRequestHandler):
    """POST /predict, GET /health, GET /metrics; every other request a 4xx in one JSON line."""

    protocol_version = "HTTP/1.1"
    server_version = "edgebn-predict"
    sys_version = ""

    def setup(self) -> None:
        self.connection = self.request
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = self.server.service.settings
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 1 << 16)
        self.wfile = _Writer(self.connection, settings["timeout_s"])
        self.t0 = None

    def finish(self) -> None:
        """Send what is left; before closing, read and drop what the client still sends for
        a moment (a lingering close), so that a refused body's bytes do not make the kernel
        reset the connection before the client has read the refusal."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            if self.reader.got or not self.reader.timed_out:
                self.connection.shutdown(socket.SHUT_WR)
                end = time.monotonic() + SERVE_LINGER_S
                while (left := end - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(1 << 16):
                        break

    def handle_one_request(self) -> None:
        self.reader.start(self.server.service.settings["timeout_s"])
        self.t0, self.route = None, "other"
        super().handle_one_request()
        if self.reader.timed_out:
            self.close_connection = True
            if self.reader.got:  # part of a request came, and then not the rest in time
                with contextlib.suppress(OSError):
                    self.wfile.timeout_s = 0.5
                    self._json(408, {"error": "the request did not arrive within "
                                              f"{self.server.service.settings['timeout_s']:g} s"})

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.t0 = time.perf_counter()
        path = urllib.parse.urlsplit(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            self.send_error(404, f"no such path: {self.path[:100]!r}; this server answers "
                                 "POST /predict, GET /health and GET /metrics")
            return False
        self.route = path
        if self.command not in allowed:
            self._json(405, {"error": f"{self.command[:20]!r} is not served on {path}; use "
                                      f"{' or '.join(allowed)}"},
                       {"Allow": ", ".join(allowed)}, close=True)
            return False
        return True

    def handle_expect_100(self) -> bool:
        if self._length() is None:
            return False
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()
        return True

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (a bad request line, headers too long or too many, an
        HTTP version it does not speak): each one JSON line, with a 4xx."""
        code = int(code)
        self._json(code if 400 <= code < 500 else 400,
                   {"error": message or HTTP_PHRASES.get(code, "bad request")}, close=True)

    def log_message(self, format, *args) -> None:  # noqa: A002  (the base class's name)
        if VERBOSE:
            sys.stderr.write(f"{self.command or '-'} {self.path[:200]!r}: " + format % args + "\n")

    def _json(self, code: int, doc: dict, headers: dict | None = None, close: bool = False
              ) -> None:
        self._reply(code, (json.dumps(doc) + "\n").encode(), "application/json", headers, close)

    def _reply(self, code: int, body: bytes, kind: str, headers: dict | None = None,
               close: bool = False) -> None:
        head = [f"HTTP/1.1 {code} {HTTP_PHRASES.get(code, 'Status')}",
                f"Server: {self.server_version}", f"Date: {email.utils.formatdate(usegmt=True)}",
                f"Content-Type: {kind}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if close:
            self.close_connection = True
            head.append("Connection: close")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()
        seconds = None if self.t0 is None else time.perf_counter() - self.t0
        self.server.service.metrics.observe(self.route, code, seconds)
        if VERBOSE:
            self.log_message("%d", code)

    def _length(self) -> int | None:
        """The body's length from Content-Length, or None with a 4xx sent."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._json(411, {"error": "send the body with a Content-Length (no Transfer-Encoding)"},
                       close=True)
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._json(411, {"error": "a body with a Content-Length is required"}, close=True)
            return None
        text = values[0].strip()
        if len(set(values)) != 1 or not (text.isascii() and text.isdigit() and len(text) <= 18):
            self._json(400, {"error": f"Content-Length {values[0][:30]!r}: expected one whole "
                                      "number of bytes"}, close=True)
            return None
        limit = self.server.service.settings["max_body"]
        if int(text) > limit:
            self._json(413, {"error": f"a body of {int(text)} bytes; at most {limit} are taken"},
                       close=True)
            return None
        return int(text)

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        service = self.server.service
        if self.route == "/health":
            self._json(200, service.health())
        else:
            text = service.metrics.render(service).encode()
            self._reply(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        length = self._length()
        if length is None:
            return
        body = self.rfile.read(length) if length else b""
        if len(body) != length:  # the client went away mid-body
            self.close_connection = True
            return
        service = self.server.service
        release = service.live  # this request is answered by this release, whatever follows
        try:
            top_k = self._top_k(release)
            if not body:
                raise BundleError("empty body: send an image file or a .npy")
            inputs = decode_body(body, release.spec)
        except BundleError as exc:
            return self._json(400, {"error": str(exc)[:500]})
        model = release.slots.get()
        try:
            scores = [model.probabilities(x) for _, x in inputs]
        except Exception as exc:  # the runtime failed on an input it had accepted: one line
            service.event(event="error", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return self._json(500, {"error": f"the model failed: {type(exc).__name__}"})
        finally:
            release.slots.put(model)
        labels = release.spec["labels"]
        preds = []
        for (name, _), p in zip(inputs, scores, strict=True):
            top = p.argsort()[::-1][:top_k]
            preds.append({"input": name, "top": [{"label": labels[i], "index": int(i),
                                                  "score": float(p[i])} for i in top]})
        self._json(200, {"signature": release.signature, "predictions": preds,
                         "release": release.id})

    def _top_k(self, release: Release) -> int:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        values = query.get("top_k") or [str(self.server.service.settings["top_k"])]
        text = values[-1]
        if not (text.isascii() and text.isdigit() and len(text) <= 6 and int(text) >= 1):
            raise BundleError(f"top_k {text[:20]!r}: expected a whole number >= 1")
        return min(int(text), len(release.spec["labels"]))


class _Serving(socketserver.ThreadingMixIn):
    """A thread per connection, at most ``max_connections`` at once; errors in one line."""

    daemon_threads = True
    request_queue_size = 128

    def process_request(self, request, client_address) -> None:
        if not self.connections.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(0.2)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nContent-Length: 40\r\nConnection: close\r\n"
                                b'\r\n{"error": "too many connections open"}\n')
            self.service.metrics.observe("other", 503, None)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: nothing to say
        self.service.event(event="error", error=f"{type(exc).__name__}: {str(exc)[:200]}")


class _TCPServer(_Serving, socketserver.TCPServer):
    allow_reuse_address = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Serving, socketserver.UnixStreamServer):
    pass


def parse_listen(text: str) -> tuple:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); the host must be given."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise BundleError(f"--listen {text!r}: expected HOST:PORT, e.g. {SERVE_LISTEN} (loopback) "
                          "or 0.0.0.0:8750 to listen on every interface")
    return host, int(port)


def make_server(service: Service, listen: str | None, sock_path: str | None):
    """The listening server: TCP on ``listen`` or a Unix socket at ``sock_path``."""
    try:
        if sock_path is not None:
            if os.path.lexists(sock_path):
                if not stat.S_ISSOCK(os.lstat(sock_path).st_mode):
                    raise BundleError(f"--socket {sock_path}: exists and is not a socket")
                os.unlink(sock_path)  # a socket left by a server that died
            server = _UnixServer(sock_path, _Handler, bind_and_activate=False)
            server.server_bind()
            os.chmod(sock_path, 0o660)
            server.server_activate()
        else:
            host, port = parse_listen(listen or SERVE_LISTEN)
            kind = _TCP6Server if ":" in host else _TCPServer
            server = kind((host, port), _Handler)
    except OSError as exc:
        raise BundleError(f"cannot listen on {sock_path or listen}: {exc.strerror or exc}") from exc
    server.service = service
    server.connections = threading.BoundedSemaphore(service.settings["max_connections"])
    return server


def default_follow(root: str) -> str | None:
    """The link a server started from a release follows: ``DEST/current`` when ``root`` is
    that link, or a directory under ``DEST/releases/`` beside it."""
    if os.path.islink(root):
        return os.path.abspath(root)
    releases = os.path.dirname(os.path.realpath(root))
    current = os.path.join(os.path.dirname(releases), "current")
    if os.path.basename(releases) == "releases" and os.path.islink(current):
        return current
    return None


def serve_settings(args) -> dict:
    workers = args.workers or min(4, os.cpu_count() or 1)
    threads = args.threads or max(1, (os.cpu_count() or 1) // workers)
    settings = {"workers": workers, "threads": threads, "runtime": args.runtime,
                "timeout_s": args.timeout, "max_body": args.max_body_bytes, "poll_s": args.poll,
                "max_connections": args.max_connections, "top_k": args.top_k}
    if not 1 <= workers <= 64 or not 1 <= args.max_connections <= 10000:
        raise BundleError("--workers must be 1..64 and --max-connections 1..10000")
    if not (0.05 <= args.timeout <= 3600 and 0.01 <= args.poll <= 3600):
        raise BundleError("--timeout must be 0.05..3600 s and --poll 0.01..3600 s")
    if not 1 <= args.max_body_bytes <= MAX_INPUT_BYTES:
        raise BundleError(f"--max-body-bytes must be 1..{MAX_INPUT_BYTES}")
    if args.inputs or args.selftest or args.bench or args.profile:
        raise BundleError("--serve takes no inputs, --selftest, --bench or --profile: the "
                          "server self-tests every release it loads")
    if args.listen is not None and args.socket is not None:
        raise BundleError("give --listen or --socket, not both")
    return settings


def serve(args, root: str) -> int:
    """Serve the bundle at ``root`` until SIGTERM or SIGINT; exit 2 when it is refused at
    start, 1 when its self-test fails (nothing listens then)."""
    settings = serve_settings(args)
    follow = os.path.abspath(args.follow) if args.follow else default_follow(root)
    first = load_release(root, settings["workers"], settings["threads"], settings["runtime"],
                         at_start=True)
    service = Service(first.root, follow, settings, first)
    server = make_server(service, args.listen, args.socket)
    try:
        from PIL import Image  # the decompression-bomb warning as an error, set once for all threads

        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    except ImportError:
        pass
    address = (f"unix:{args.socket}" if args.socket else
               "http://{}:{}".format(*server.server_address[:2]))
    service.event(event="serving", address=address, release=first.id, sha256=first.sha256,
                  workers=settings["workers"], threads=settings["threads"],
                  runtime=first.runtime, current=follow, load_s=round(first.load_s, 4),
                  signature=first.signature, monotonic=time.monotonic())
    watcher = threading.Thread(target=service.watch, name="edgebn-watch", daemon=True)
    watcher.start()

    def stop(*_):
        service.stopping = True
        service.wake.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, service.hangup)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if args.socket:
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
    service.event(event="stopped", release=service.live.id)
    return 0


def run(args, root: str) -> tuple:
    """The document to print and the exit code; BundleError for bad input or a bad bundle."""
    args.threads = args.threads or os.cpu_count() or 1
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
