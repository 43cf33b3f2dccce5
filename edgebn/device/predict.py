#!/usr/bin/env python3
"""Run an edgebn bundle on a device: NumPy plus ai_edge_litert or tflite_runtime, nothing else.

    python3 predict.py IMAGE_OR_NPY [...] [--top-k 3] [--threads 4] [--json]
    python3 predict.py --selftest [--json]      # golden inputs vs the build's outputs
    python3 predict.py --bench [--runs 200]     # per-invoke latency on this device

Before anything is loaded, every file listed in manifest.json is checked against its
sha256: a damaged or modified bundle is refused (exit 2). On a device that trusts a
signing key (an OpenSSH allowed-signers file at ~/.config/edgebn/allowed_signers, or
$EDGEBN_TRUST), manifest.json.sig is verified with ``ssh-keygen -Y verify`` first, before
the manifest's hashes are believed: an unsigned bundle or one signed by another key is
refused (exit 2). Without that file the bundle runs and is reported unverified. Exit codes: 0 success,
1 self-test failed, 2 bad input or a bundle that does not match its manifest.
Images need Pillow (python3-pil); .npy files hold preprocessed inputs (N, H, W, C) or
one (H, W, C) input, float32, exactly what the model was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
NAMESPACE = "edgebn-bundle"  # ssh-keygen -Y's signature namespace, and the signer's principal
TRUST_ENV = "EDGEBN_TRUST"
KEYGEN_ENV = "EDGEBN_SSH_KEYGEN"
DEFAULT_TRUST = "~/.config/edgebn/allowed_signers"
VERIFY_TIMEOUT_S = 30
MAX_IMAGE_PIXELS = 16_000_000  # a 4000x4000 photo; more is refused as a decompression bomb


class BundleError(Exception):
    """Bad input, or a bundle that does not match its manifest."""


def trust_file() -> str:
    """Where this device keeps the keys it trusts: $EDGEBN_TRUST, else ~/.config/edgebn/."""
    return os.path.expanduser(os.environ.get(TRUST_ENV) or DEFAULT_TRUST)


def verify_signature(root: str, data: bytes) -> str:
    """Check manifest.json.sig over ``data`` (the manifest's bytes) against the trust file.

    Returns how the bundle stands ("verified by ..." or "unverified (no trust file)");
    raises BundleError when the device trusts a key and the bundle is not signed by it.
    """
    allowed = trust_file()
    if not os.path.isfile(allowed):
        return "unverified (no trust file)"
    sig = os.path.join(root, "manifest.json.sig")
    if not os.path.isfile(sig):
        raise BundleError(f"unsigned bundle: this device trusts the keys in {allowed} and "
                          "manifest.json.sig is missing (edgebn bundle --sign KEY)")
    # $EDGEBN_SSH_KEYGEN: another ssh-keygen command (the emulator runs the arm64 one via qemu)
    keygen = shlex.split(os.environ.get(KEYGEN_ENV, "")) or [shutil.which("ssh-keygen")]
    if keygen[0] is None:
        raise BundleError(f"this device trusts the keys in {allowed} but ssh-keygen is not "
                          "installed to verify signatures (sudo apt install openssh-client)")
    try:
        done = subprocess.run([*keygen, "-Y", "verify", "-f", allowed, "-I", NAMESPACE,
                               "-n", NAMESPACE, "-s", sig], input=data, capture_output=True,
                              timeout=VERIFY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"ssh-keygen -Y verify did not run: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise BundleError(f"manifest.json.sig does not verify against {allowed}: the bundle "
                          f"was not signed by a trusted key, or was changed after signing ({why})")
    said = done.stdout.decode(errors="replace").strip()  # Good "ns" signature for ID with KEY
    return "verified by " + (said.split(" with ", 1)[-1] if " with " in said else NAMESPACE)


def verify_manifest(root: str = HERE, signed: bool = False) -> dict:
    """Check every file's sha256 against manifest.json, before anything is loaded.

    With ``signed``, the manifest's signature is checked first (on the same bytes that
    are then parsed) and the result is in the returned dict's "signature".
    """
    path = os.path.join(root, "manifest.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BundleError(f"{path}: missing or unreadable manifest ({exc})") from exc
    signature = verify_signature(root, data) if signed else None
    try:
        manifest = json.loads(data.decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: missing or unreadable manifest ({exc})") from exc
    if signed:
        manifest["signature"] = signature
    for name, want in sorted(files.items()):
        if not isinstance(name, str) or not isinstance(want, str):
            raise BundleError(f"{path}: file entries must be name: sha256 strings")
        full = os.path.normpath(os.path.join(root, name))
        if not full.startswith(root + os.sep):
            raise BundleError(f"manifest.json names a file outside the bundle: {name!r}")
        digest = hashlib.sha256()
        try:
            with open(full, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise BundleError(f"{name}: listed in manifest.json but unreadable "
                              f"({exc.strerror})") from exc
        if digest.hexdigest() != want:
            raise BundleError(f"{name}: sha256 {digest.hexdigest()[:16]}... does not match "
                              f"the manifest ({want[:16]}...): the bundle is damaged or was "
                              "modified; copy it again")
    return manifest


def load_interpreter(model_path: str, threads: int, runtime: str = "auto"):
    """An allocated interpreter from ai_edge_litert or tflite_runtime, and its name."""
    tried = []
    for dist in (("ai-edge-litert", "tflite-runtime") if runtime == "auto" else (runtime,)):
        name = dist.replace("-", "_")
        try:
            module = __import__(f"{name}.interpreter", fromlist=["Interpreter"])
        except ImportError as exc:
            tried.append(f"{name}: {exc}")
            continue
        try:
            interp = module.Interpreter(model_path=model_path, num_threads=threads)
            interp.allocate_tensors()
        except Exception as exc:  # e.g. tflite-runtime 2.14 under NumPy 2
            tried.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return interp, f"{name} {_version(name)}"
    raise BundleError("no usable TFLite runtime: " + "; ".join(tried) +
                      " (pip install ai-edge-litert, or tflite-runtime==2.14.0 with NumPy < 2)")


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist.replace("_", "-"))
    except Exception:
        return "unknown"


class Model:
    def __init__(self, root: str, spec: dict, threads: int, runtime: str):
        import numpy as np

        self.np = np
        self.spec = spec
        self.threads = threads
        self.interp, self.runtime = load_interpreter(os.path.join(root, spec["model"]), threads,
                                                     runtime)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]

    def raw(self, x):
        """The output tensor for one preprocessed float input (H, W, C), as stored."""
        np = self.np
        x = np.asarray(x, np.float32)[None]
        if np.issubdtype(self.inp["dtype"], np.integer):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(self.inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interp.set_tensor(self.inp["index"], x.astype(self.inp["dtype"]))
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"])[0].copy()

    def probabilities(self, x):
        np = self.np
        y = self.raw(x)
        if np.issubdtype(self.out["dtype"], np.integer):
            scale, zero = self.out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


def preprocess_image(path: str, spec: dict):
    """An image file -> the model's float input, as the build preprocessed its data."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError as exc:
        raise BundleError(f"{path}: reading images needs Pillow (sudo apt install python3-pil), "
                          "or pass a preprocessed .npy") from exc
    p = spec["preprocessing"]
    h, w, c = p["input_shape"]
    # The build's filter (bundle.json), never Pillow's default: the same pixels as training.
    resample = getattr(Image, p.get("resize", "bilinear").upper())
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h), resample)
                raw = np.asarray(im, np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BundleError(f"{path}: refused as a decompression bomb ({exc})") from exc
    except MemoryError as exc:
        raise BundleError(f"{path}: too large to decode") from exc
    except Exception as exc:  # a decoder fed hostile bytes may raise anything: one line, exit 2
        raise BundleError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from exc
    raw = raw * (p["raw_max"] / 255.0)  # 8-bit pixels onto the training data's raw range
    return (raw.reshape(h, w, c) * p["scale"] + p["offset"]).astype(np.float32)


def load_npy(path: str, shape: tuple):
    """Preprocessed inputs (N, H, W, C) or one (H, W, C): real numbers, finite, never pickles."""
    import numpy as np

    try:  # memory-mapped: a header that claims more data than the file holds is refused
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # hostile bytes make np.load raise many types: one line, exit 2
        raise BundleError(f"{path}: not a readable .npy ({type(exc).__name__}: {exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise BundleError(f"{path}: dtype {getattr(arr, 'dtype', type(arr).__name__)}, "
                          "expected a float or integer array")
    if arr.shape == shape:
        arr = arr[None]
    if arr.ndim != 4 or tuple(arr.shape[1:]) != shape or len(arr) == 0:
        raise BundleError(f"{path}: inputs of shape {list(arr.shape)}, the model "
                          f"expects (N, {', '.join(map(str, shape))}) with N >= 1")
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.array(arr, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BundleError(f"{path}: holds NaN or infinite values (or values beyond float32)")
    return x


def load_inputs(paths, spec):
    shape = tuple(spec["preprocessing"]["input_shape"])
    for path in paths:
        if path.endswith(".npy"):
            for i, x in enumerate(load_npy(path, shape)):
                yield f"{path}[{i}]", x
        else:
            yield path, preprocess_image(path, spec)


def selftest(model: Model, root: str, spec: dict) -> dict:
    """Outputs on the golden inputs against the build's, within the bundle's tolerance."""
    np = model.np
    test = spec["selftest"]
    x = np.load(os.path.join(root, test["inputs"]), allow_pickle=False)
    want = np.load(os.path.join(root, test["outputs"]), allow_pickle=False)
    got = np.stack([model.raw(xi) for xi in x])
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
    agree = float(np.mean(got.argmax(-1) == want.argmax(-1)))
    passed = diff <= test["atol"] and agree == 1.0
    return {"passed": bool(passed), "samples": int(len(x)), "max_abs_diff": diff,
            "atol": test["atol"], "units": test["units"], "top1_agreement": agree,
            "runtime": model.runtime, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


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
            "python": platform.python_version(), "system": platform.platform()}


def bench(model: Model, runs: int, root: str = HERE) -> dict:
    np = model.np
    x = np.load(os.path.join(root, model.spec["selftest"]["inputs"]), allow_pickle=False)[0]
    for _ in range(min(50, runs)):
        model.raw(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        model.interp.invoke()
        times.append((time.perf_counter_ns() - t0) / 1e3)
    t = np.asarray(times)
    name, _, version = model.runtime.partition(" ")
    return {"runs": runs, "runtime": model.runtime, "runtime_name": name,
            "runtime_version": version, "threads": model.threads, "device": device(),
            "latency_us": {k: float(v) for k, v in (("min", t.min()), ("p50", np.median(t)),
                                                     ("p90", np.percentile(t, 90)),
                                                     ("p99", np.percentile(t, 99)),
                                                     ("mean", t.mean()))}}


def run(args, root: str) -> tuple:
    """The document to print and the exit code; BundleError for bad input or a bad bundle."""
    if args.threads < 1 or args.top_k < 1 or args.runs < 1:
        raise BundleError("--threads, --top-k and --runs must be >= 1")
    if not (args.inputs or args.selftest or args.bench):
        raise BundleError("nothing to do: give inputs, --selftest or --bench")
    signature = verify_manifest(root, signed=True)["signature"]  # before anything is loaded
    with open(os.path.join(root, "bundle.json"), encoding="utf-8") as f:
        spec = json.load(f)
    model = Model(root, spec, args.threads, args.runtime)
    doc, code = {"signature": signature}, 0
    if args.selftest:
        doc["selftest"] = {**selftest(model, root, spec), "signature": signature}
        code = 0 if doc["selftest"]["passed"] else EXIT_FAILED
    if args.bench:
        doc["bench"] = bench(model, args.runs, root)
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
    for pred in doc.get("predictions", []):
        print(pred["input"] + ": " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in pred["top"]))
    print(f"bundle signature: {doc['signature']}", file=sys.stderr)


def main(argv=None, root: str = HERE) -> int:
    ap = argparse.ArgumentParser(description="Run this edgebn bundle's model.")
    ap.add_argument("inputs", nargs="*", help="image files or .npy of preprocessed inputs")
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runtime", choices=["auto", "ai-edge-litert", "tflite-runtime"],
                    default="auto")
    ap.add_argument("--selftest", action="store_true", help="compare with the build's outputs")
    ap.add_argument("--bench", action="store_true", help="time invoke() on this device")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        doc, code = run(args, root)
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
