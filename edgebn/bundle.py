"""A self-verifying deployment bundle for a device (a Raspberry Pi first).

    BUNDLE/
      model.tflite      the build's model
      labels.txt        one class name per line, in output order
      bundle.json       input/output spec, preprocessing, self-test tolerance, the build's numbers
      predict.py        NumPy + ai_edge_litert or tflite_runtime; top-k, --bench, --selftest
      requirements.txt  the device's Python packages (tflite-runtime 2.14 on NumPy 1.x)
      README.md         how to install and run it on the device
      golden/inputs.npy, golden/outputs.npy   inputs and the build's raw outputs for them
      manifest.json     sha256 of every file above; predict.py checks it before loading

The golden outputs come from running the bundle's own predict.py code on this machine,
so the device's self-test compares one code path on two machines, not two code paths.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebn import __version__
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.stages import atomic_dir

DEVICE_DIR = Path(__file__).parent / "device"
GOLDEN_SAMPLES = 16
FLOAT_ATOL = 1e-4  # probabilities: float32 kernels differ between CPUs by ~1e-7
INT8_ATOL = 1.0  # quantized outputs: one quantization step (rounding may differ by one)

REQUIREMENTS = """\
# The device's Python packages. On Raspberry Pi OS (bookworm, Python 3.11):
#   sudo apt install python3-numpy python3-pil      # NumPy 1.24 from Debian
#   python3 -m venv --system-site-packages ~/edgebn-venv
#   ~/edgebn-venv/bin/pip install -r requirements.txt
# tflite-runtime 2.14 (its last release) is built for NumPy 1.x: keep NumPy < 2 with it.
# Its successor, ai-edge-litert, works with NumPy 1.24 and 2.x: see README.md.
tflite-runtime==2.14.0
numpy>=1.23,<2
"""

DEVICE_README = """\
# {name}: an edgebn bundle

{arch} classifier, {classes} classes, input {shape} ({input_dtype}), quantize {quantize}.
Built by edgebn {version}: test accuracy {accuracy}, BN verdict {verdict}.

## Install on the device (Raspberry Pi OS bookworm, 64-bit)

    sudo apt install python3-numpy python3-pil
    python3 -m venv --system-site-packages ~/edgebn-venv
    ~/edgebn-venv/bin/pip install -r requirements.txt      # tflite-runtime 2.14, NumPy 1.x
    # or, the maintained successor (NumPy 1.24 or 2.x):
    ~/edgebn-venv/bin/pip install ai-edge-litert

## Run

    ~/edgebn-venv/bin/python predict.py --selftest          # exit 0: same outputs as the build
    ~/edgebn-venv/bin/python predict.py photo.png --top-k 3
    ~/edgebn-venv/bin/python predict.py batch.npy --json    # preprocessed inputs (N, {shape_csv})
    ~/edgebn-venv/bin/python predict.py --bench --threads 4

predict.py checks every file against manifest.json before it loads anything: a
bundle with one changed byte is refused (exit 2). Exit 1 means the self-test failed.
Images are converted to {color}, resized to {hw} and scaled as in training:
x = pixel * {raw_scale} * {scale} + {offset}.
"""


@dataclass(frozen=True)
class BundleResult:
    out: Path
    files: dict[str, str]  # name -> sha256
    spec: dict[str, Any]
    selftest: dict[str, Any]  # predict.py's self-test, run here

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "files": self.files, "selftest": self.selftest,
                "input": self.spec["input"], "output": self.spec["output"]}


def load_predict_module():
    """The bundle's predict.py as a module, so that this machine runs the device's code."""
    spec = importlib.util.spec_from_file_location("edgebn_device_predict", DEVICE_DIR / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_build(build_dir: Path) -> tuple[dict[str, Any], Path, np.ndarray]:
    report_path = build_dir / "report.json"
    if not report_path.is_file():
        raise EdgebnError(f"{build_dir}: not a build directory (no report.json): run edgebn build")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        tflite = build_dir / report["tflite"]["path"]
        dataset = report["dataset"]
        dataset["preprocessing"]["input_shape"]
        dataset["class_names"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidModelError(f"{report_path}: not an edgebn build report ({exc})") from exc
    if not tflite.is_file():
        raise EdgebnError(f"{tflite}: the build's model is missing")
    samples = build_dir / "samples.npy"
    if samples.is_file():
        try:
            x = np.load(samples, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InvalidModelError(f"{samples}: not a readable .npy of inputs ({exc})") from exc
    elif dataset["name"] in ("digits", "mnist", "fashion-mnist"):
        from edgebn.data import load_dataset

        x = load_dataset(dataset["name"], seed=report["model"].get("seed", 0)).x_test
    else:
        raise EdgebnError(f"{samples}: missing (rebuild with this edgebn to bundle a "
                          f"folder dataset)")
    want = tuple(dataset["preprocessing"]["input_shape"])
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
        raise InvalidModelError(f"{samples}: shape {list(x.shape)}, expected (N, {list(want)})")
    return report, tflite, x[:GOLDEN_SAMPLES].astype(np.float32)


def bundle(build_dir: str | Path, out: str | Path) -> BundleResult:
    """Assemble OUT from a build directory; run the self-test here; swap OUT in atomically."""
    from edgebn.tflite import read_tflite

    build_dir, out = Path(build_dir), Path(out)
    check_bundle_out(out)
    report, tflite, golden_x = _read_build(build_dir)
    model = read_tflite(tflite)
    sg = model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise InvalidModelError(f"{tflite}: a bundle needs one input and one output tensor")
    dataset = report["dataset"]

    def tensor_spec(index: int) -> dict[str, Any]:
        t = sg.tensors[index]
        q = t.quantization
        return {"shape": list(t.shape), "dtype": t.dtype.lower(),
                "quantization": [float(q.scale[0]), int(q.zero_point[0])] if q and len(q.scale)
                else None}

    inp, outp = tensor_spec(sg.inputs[0]), tensor_spec(sg.outputs[0])
    quantized_out = outp["dtype"] in ("int8", "uint8", "int16")
    spec = {
        "edgebn": __version__,
        "model": "model.tflite",
        "labels": list(dataset["class_names"]),
        "preprocessing": dataset["preprocessing"],
        "input": inp, "output": outp,
        "selftest": {"inputs": "golden/inputs.npy", "outputs": "golden/outputs.npy",
                     "atol": INT8_ATOL if quantized_out else FLOAT_ATOL,
                     "units": f"{outp['dtype']} steps" if quantized_out else "probability"},
        "build": {"arch": report["model"]["arch"], "quantize": report["tflite"]["quantize"],
                  "test_accuracy": report["tflite"]["test_accuracy"],
                  "bn_verdict": report["inspect"]["bn"]["verdict"],
                  "size_bytes": report["tflite"]["size_bytes"]},
    }
    predict = load_predict_module()
    with atomic_dir(out) as tmp:
        shutil.copyfile(tflite, tmp / "model.tflite")
        shutil.copyfile(DEVICE_DIR / "predict.py", tmp / "predict.py")
        (tmp / "golden").mkdir()
        here = predict.Model(str(tmp), spec, threads=1, runtime="auto")
        golden_y = np.stack([here.raw(x) for x in golden_x])
        np.save(tmp / "golden" / "inputs.npy", golden_x)
        np.save(tmp / "golden" / "outputs.npy", golden_y)
        (tmp / "labels.txt").write_text("\n".join(spec["labels"]) + "\n", encoding="utf-8")
        (tmp / "bundle.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        (tmp / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
        p = dataset["preprocessing"]
        (tmp / "README.md").write_text(DEVICE_README.format(
            name=out.name, arch=spec["build"]["arch"], classes=len(spec["labels"]),
            shape=inp["shape"][1:], shape_csv=", ".join(map(str, inp["shape"][1:])),
            input_dtype=inp["dtype"], quantize=spec["build"]["quantize"], version=__version__,
            accuracy=f"{spec['build']['test_accuracy']:.4f}", verdict=spec["build"]["bn_verdict"],
            color=p["color"], hw=f"{p['input_shape'][0]}x{p['input_shape'][1]}",
            raw_scale=f"{p['raw_max']}/255", scale=p["scale"], offset=p["offset"]),
            encoding="utf-8")
        files = {str(f.relative_to(tmp)): _sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"edgebn": __version__, "files": files},
                                                      indent=2) + "\n", encoding="utf-8")
        selftest = predict.selftest(here, str(tmp), spec)
        if not selftest["passed"]:
            raise EdgebnError(f"the bundle's self-test fails on this machine: {selftest}")
    return BundleResult(out, files, spec, selftest)


def check_bundle_out(out: Path) -> None:
    """OUT is replaced whole: refuse anything there that is not an earlier bundle."""
    if out.exists() and not out.is_dir():
        raise EdgebnError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise EdgebnError(f"--out {out}: a non-empty directory that is not an edgebn bundle "
                          "(no manifest.json); it would be replaced whole: choose another path")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
