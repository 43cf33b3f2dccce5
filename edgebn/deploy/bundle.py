"""A self-verifying deployment bundle for a device (a Raspberry Pi first).

    BUNDLE/
      model.tflite      the build's model
      labels.txt        one class name per line, in output order
      bundle.json       input/output spec, preprocessing, self-test tolerance, the build's numbers
      predict.py        NumPy + ai_edge_litert or tflite_runtime; top-k, --bench, --selftest
      verify.py         the checks predict.py runs first (a trusting device runs its own copy)
      serve.py          predict.py --serve: the model over HTTP, following DEST/current
      requirements.txt  the device's Python packages (tflite-runtime 2.14 on NumPy 1.x)
      README.md         how to install and run it on the device
      golden/inputs.npy, golden/outputs.npy   inputs and the build's raw outputs for them
      manifest.json     sha256 of every file above; predict.py checks it before loading
      manifest.json.sig with --sign: an OpenSSH signature over manifest.json (edgebn.deploy.sign)

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

import numpy as np

from edgebn import __version__
from edgebn.choices import selftest_tolerance
from edgebn.data.images import Preprocessing
from edgebn.deploy.op_models import write_operator_models
from edgebn.deploy.sign import sign_manifest
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.files import atomic_dir
from edgebn.tflite.reader import TFLiteModel

DEVICE_DIR = Path(__file__).parent / "device"
DEVICE_SCRIPTS = ("predict.py", "verify.py", "serve.py")
GOLDEN_SAMPLES = 16

REQUIREMENTS = """\
# The device's Python packages, for Raspberry Pi OS trixie (Python 3.13) and bookworm (3.11).
# Both mark the system Python externally managed (PEP 668): install into a venv that sees
# Debian's NumPy (README.md):
#   sudo apt install python3-venv python3-numpy python3-pil
#   python3 -m venv --system-site-packages ~/edgebn-venv
#   ~/edgebn-venv/bin/pip install -r requirements.txt
# tflite-runtime 2.14 (its last release) has wheels up to Python 3.11 and needs NumPy 1.x;
# elsewhere its successor ai-edge-litert (NumPy 2: Debian trixie's 2.2 fits).
tflite-runtime==2.14.0; python_version < "3.12"
numpy>=1.23,<2; python_version < "3.12"
ai-edge-litert>=2.3; python_version >= "3.12"
"""

DEVICE_README = """\
# {name}: an edgebn bundle

{arch} classifier, {classes} classes, input {shape} ({input_dtype}), quantize {quantize}.
Built by edgebn {version}: test accuracy {accuracy}, BN verdict {verdict}.

## Install on the device (Raspberry Pi OS 64-bit: trixie or bookworm)

Both releases mark the system Python externally managed (PEP 668): a plain `pip install`
is refused. Install into a venv that also sees Debian's NumPy and Pillow:

    sudo apt install python3-venv python3-numpy python3-pil
    python3 -m venv --system-site-packages ~/edgebn-venv
    ~/edgebn-venv/bin/pip install -r requirements.txt

requirements.txt picks the runtime for the Python it runs on: on trixie (Python 3.13,
NumPy 2.2) ai-edge-litert; on bookworm (Python 3.11, NumPy 1.24) tflite-runtime 2.14,
which needs NumPy 1.x. On bookworm, ai-edge-litert works too, with a NumPy 2 of its own
from PyPI (it needs NumPy >= 2):

    ~/edgebn-venv/bin/pip install ai-edge-litert

## Run

    ~/edgebn-venv/bin/python predict.py --selftest          # exit 0: same outputs as the build
    ~/edgebn-venv/bin/python predict.py photo.png --top-k 3
    ~/edgebn-venv/bin/python predict.py batch.npy --json    # preprocessed inputs (N, {shape_csv})
    ~/edgebn-venv/bin/python predict.py --bench --threads 4
    ~/edgebn-venv/bin/python predict.py --serve             # POST /predict, GET /health, /metrics
                                                            # on 127.0.0.1:8750 (serve.py)

predict.py checks every file against manifest.json before it loads anything: a
bundle with one changed byte, an unlisted file or a symlink is refused (exit 2). Exit 1
means the self-test failed.

## On a device that trusts a signing key

`edgebn deploy --trust KEY.pub` installs the key (~/.config/edgebn/allowed_signers) and,
beside it, the device's own verifier (~/.config/edgebn/verify.py). Run bundles through
it: it checks the signature, the exact file list and every hash with code that is not
part of the bundle, and only then runs this bundle's predict.py:

    ~/edgebn-venv/bin/python -I ~/.config/edgebn/verify.py run ~/edgebn/current --selftest
    ~/edgebn-venv/bin/python -I ~/.config/edgebn/verify.py check ~/edgebn/current
Images are converted to {color}, resized to {hw} ({resize} filter) and scaled as in training:
x = pixel * {raw_scale} * {scale} + {offset}.
"""


@dataclass(frozen=True)
class BundleResult:
    out: Path
    files: dict[str, str]  # name -> sha256
    spec: JsonDict
    selftest: JsonDict  # predict.py's self-test, run here
    signed: bool = False  # manifest.json.sig was written (--sign)

    def to_json(self) -> JsonDict:
        return {"out": str(self.out), "files": self.files, "selftest": self.selftest,
                "input": self.spec["input"], "output": self.spec["output"],
                "signature": "manifest.json.sig" if self.signed else None}


def load_device_module(name: str):
    """A device script (predict, verify) as a module, so that this machine runs the device's
    code."""
    spec = importlib.util.spec_from_file_location(f"edgebn_device_{name}",
                                                  DEVICE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_predict_module():
    """The bundle's predict.py as a module, so that this machine runs the device's code."""
    return load_device_module("predict")


@dataclass(frozen=True)
class BundleSource:
    """Everything a bundle is made of, in memory: a build's model, labels and golden inputs."""

    model: TFLiteModel
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    golden_inputs: np.ndarray  # preprocessed float inputs (N, H, W, C)
    arch: str
    quantize: str
    test_accuracy: float
    bn_verdict: str


def _tensor_spec(model: TFLiteModel, index: int) -> JsonDict:
    t = model.subgraphs[0].tensors[index]
    q = t.quantization
    return {"shape": list(t.shape), "dtype": t.dtype.lower(),
            "quantization": [float(q.scale[0]), int(q.zero_point[0])] if q and len(q.scale)
            else None}


def _spec(source: BundleSource) -> JsonDict:
    sg = source.model.subgraphs[0]
    if len(sg.inputs) != 1 or len(sg.outputs) != 1:
        raise InvalidModelError(f"{source.model.path}: a bundle needs one input and one output "
                                "tensor")
    inp, outp = _tensor_spec(source.model, sg.inputs[0]), _tensor_spec(source.model, sg.outputs[0])
    atol, units = selftest_tolerance(source.quantize, outp["dtype"])  # the mode's row
    return {
        "edgebn": __version__,
        "model": "model.tflite",
        "labels": list(source.labels),
        "preprocessing": source.preprocessing.to_json(),
        "input": inp, "output": outp,
        "selftest": {"inputs": "golden/inputs.npy", "outputs": "golden/outputs.npy",
                     "atol": atol, "units": units},
        "build": {"arch": source.arch, "quantize": source.quantize,
                  "test_accuracy": source.test_accuracy, "bn_verdict": source.bn_verdict,
                  "size_bytes": source.model.size_bytes},
    }


def _readme(name: str, spec: JsonDict) -> str:
    p, inp, b = spec["preprocessing"], spec["input"], spec["build"]
    return DEVICE_README.format(
        name=name, arch=b["arch"], classes=len(spec["labels"]), shape=inp["shape"][1:],
        shape_csv=", ".join(map(str, inp["shape"][1:])), input_dtype=inp["dtype"],
        quantize=b["quantize"], version=__version__, accuracy=f"{b['test_accuracy']:.4f}",
        verdict=b["bn_verdict"], color=p["color"], resize=p["resize"],
        hw=f"{p['input_shape'][0]}x{p['input_shape'][1]}", raw_scale=f"{p['raw_max']}/255",
        scale=p["scale"], offset=p["offset"])


def bundle(source: BundleSource, out: str | Path, sign: Path | None = None,
           profile: bool = False) -> BundleResult:
    """Assemble OUT from ``source``; run the self-test here; swap OUT in atomically.

    With ``sign`` (an SSH private key), manifest.json.sig is written before the swap.
    """
    out = Path(out)
    check_bundle_out(out)
    spec = _spec(source)
    predict = load_predict_module()
    with atomic_dir(out) as tmp:
        (tmp / "model.tflite").write_bytes(source.model.data)
        for script in DEVICE_SCRIPTS:
            shutil.copyfile(DEVICE_DIR / script, tmp / script)
        (tmp / "golden").mkdir()
        here = predict.Model(str(tmp), spec, threads=1, runtime="auto", model=source.model.data)
        golden_y = np.stack([here.raw(x) for x in source.golden_inputs])
        np.save(tmp / "golden" / "inputs.npy", source.golden_inputs)
        np.save(tmp / "golden" / "outputs.npy", golden_y)
        (tmp / "labels.txt").write_text("\n".join(spec["labels"]) + "\n", encoding="utf-8")
        (tmp / "bundle.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
        (tmp / "requirements.txt").write_text(REQUIREMENTS, encoding="utf-8")
        (tmp / "README.md").write_text(_readme(out.name, spec), encoding="utf-8")
        if profile:  # one-operator models for predict.py --profile, listed in the manifest too

            write_operator_models(source.model, source.golden_inputs, tmp,
                                  nchw=source.preprocessing.layout.value == "nchw")
        files = {str(f.relative_to(tmp)): _sha256(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"edgebn": __version__, "files": files},
                                                      indent=2) + "\n", encoding="utf-8")
        selftest = predict.selftest(here, str(tmp), spec)
        if not selftest["passed"]:
            raise EdgebnError(f"the bundle's self-test fails on this machine: {selftest}")
        if sign is not None:
            sign_manifest(tmp, sign)
    return BundleResult(out, files, spec, selftest, signed=sign is not None)


def check_bundle_out(out: Path) -> None:
    """OUT is replaced whole: refuse anything there that is not an earlier bundle."""
    if out.exists() and not out.is_dir():
        raise EdgebnError(f"{out}: exists and is not a directory", option="out")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise EdgebnError(f"{out}: a non-empty directory that is not an edgebn bundle "
                          "(no manifest.json); it would be replaced whole: choose another path",
                          option="out")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
