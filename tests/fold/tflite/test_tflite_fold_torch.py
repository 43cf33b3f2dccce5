"""PyTorch models through Google's litert-torch, then ``edgebn inspect`` and ``edgebn fold``.

Small ``torch.nn`` models with one BN each, in the places users report trouble, BN statistics
randomised (γ[0] < 0). litert-torch keeps the NCHW input behind a TRANSPOSE and writes an
unfolded BN as SUB → MUL → MUL → ADD. Needs the ``torch`` extra (``pip install ".[torch]"``,
torch 2.13.0's CPU build); without it these tests skip with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgebn.fold.tflite.tflite_fold import fold_tflite
from edgebn.runtime.backends import load_interpreter
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn
from edgebn.tflite.writer import strip_names

torch = pytest.importorskip("torch", reason="the torch extra is not installed: pip install "
                                            "'.[torch]'")
litert_torch = pytest.importorskip(
    "litert_torch", reason="the torch extra is not installed: pip install '.[torch]'")
nn = torch.nn

SHAPE = (1, 3, 8, 8)


class DenseBlock(nn.Module):
    """DenseNet's concat → BN → ReLU → 1x1 conv: nothing can take the BN; it collapses."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(7)
        self.out = nn.Conv2d(7, 4, 1)

    def forward(self, x):
        return self.out(torch.relu(self.bn(torch.cat([x, self.conv(x)], 1))))


class ConvReluBnConv(nn.Module):
    """Conv → ReLU → BN → VALID conv (tflite-micro#1651): folds forward."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 5, 3)

    def forward(self, x):
        return self.b(self.bn(torch.relu(self.a(x))))


class InputBn(nn.Module):
    """BN on the NCHW model input, behind litert-torch's TRANSPOSE: found, folds forward."""

    def __init__(self):
        super().__init__()
        self.bn, self.conv = nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(self.bn(x))


class BnLinear(nn.Module):
    """Conv → ReLU → flatten → BN1d → Linear: the MUL+ADD before a Linear folds forward."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm1d(4 * 6 * 6)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(self.bn(torch.relu(self.conv(x)).flatten(1)))


class ConvTransposeBn(nn.Module):
    """ConvTranspose without a bias → BN (litert-torch#28, #122): litert-torch folds it now."""

    def __init__(self):
        super().__init__()
        self.t, self.bn = nn.ConvTranspose2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.t(x))


# model -> (kind inspect must find, or None: clean; what fold makes of it, and where)
CASES = {
    DenseBlock: ("sub_mul_mul_add", "collapsed", None),
    ConvReluBnConv: ("sub_mul_mul_add", "folded", "CONV_2D"),
    InputBn: ("sub_mul_mul_add", "folded", "CONV_2D"),
    BnLinear: ("decomposed", "folded", "FULLY_CONNECTED"),
    ConvTransposeBn: (None, None, None),
}


def randomise_bn(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                m.weight[0] *= -1
                m.bias.copy_(torch.randn(c, generator=g))
                m.running_mean.copy_(torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) * 1.8 + 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{model class: (.tflite path, the eval-mode torch model)}, converted once."""
    out = {}
    for cls in CASES:
        model = randomise_bn(cls())
        path = tmp_path_factory.mktemp("litert") / f"{cls.__name__}.tflite"
        litert_torch.convert(model, (torch.zeros(SHAPE),)).export(str(path))
        out[cls] = (path, model)
    return out


@pytest.fixture(scope="module")
def converted_float16(tmp_path_factory):
    """The same models through litert-torch's float16 recipe (weights stored as float16)."""
    pytest.importorskip("ai_edge_quantizer", reason="the torch extra is not installed: "
                                                   "pip install '.[torch]'")
    from litert_torch.generative.quantize import quant_recipes

    out = {}
    for cls in CASES:
        model = randomise_bn(cls())
        path = tmp_path_factory.mktemp("litert16") / f"{cls.__name__}.tflite"
        litert_torch.convert(model, (torch.zeros(SHAPE),),
                             quant_config=quant_recipes.full_fp16_recipe()).export(str(path))
        out[cls] = (path, model)
    return out


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_litert_torch_float16_residue_folds_into_float16_weights(converted_float16, cls):
    path, model = converted_float16[cls]
    kind, outcome, into = CASES[cls]
    parsed = read_tflite(path)
    assert "DEQUANTIZE" in parsed.op_counts() or kind is None
    assert [r.kind for r in analyse_bn(parsed).residual] == ([kind] if kind else [])
    result = fold_tflite(parsed)
    assert [c.result for c in result.chains] == ([outcome] if outcome else [])
    if outcome == "folded":
        (chain,) = result.chains
        assert chain.into_type == into and chain.float16  # stored as float16 again
        assert result.tolerance > 2 ** -10
    assert result.max_rel_diff <= result.tolerance
    folded = parse_tflite(result.data)
    assert len(analyse_bn(folded).residual) == (1 if outcome == "collapsed" else 0)
    x = np.random.default_rng(6).normal(0, 1, SHAPE).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = _predict(result.data, x)  # float16 weights: within their rounding of PyTorch's float32
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def _predict(data: bytes, x: np.ndarray) -> np.ndarray:
    interp, _ = load_interpreter(parse_tflite(data), xnnpack=False)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_litert_torch_residue_is_found_and_folded(converted, cls):
    path, model = converted[cls]
    kind, outcome, into = CASES[cls]
    parsed = read_tflite(path)
    residual = analyse_bn(parsed).residual
    assert [r.kind for r in residual] == ([kind] if kind else [])
    # names present: the BN module's own name; stripped: every surviving BN still counted
    assert [(r.source_type, r.source) for r in residual] == ([("bn", "bn")] if kind else [])
    stripped = analyse_bn(parse_tflite(strip_names(parsed.data)))
    assert [(r.kind, r.source_type) for r in stripped.residual] == ([(kind, "bn")] if kind else [])
    assert stripped.names is False and stripped.not_bn == ()
    assert parsed.subgraphs[0].operators[0].op == "TRANSPOSE" or cls is InputBn
    result = fold_tflite(parsed)
    assert [c.result for c in result.chains] == ([outcome] if outcome else [])
    if into:
        assert result.chains[0].into_type == into
    assert result.max_rel_diff <= result.tolerance
    left = analyse_bn(parse_tflite(result.data)).residual
    assert len(left) == (1 if outcome == "collapsed" else 0)
    if outcome == "collapsed":
        assert len(left[0].ops) == 2 < len(residual[0].ops)
    # the folded file against PyTorch itself, on an input the proof did not see
    x = np.random.default_rng(5).normal(0, 1, SHAPE).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = _predict(result.data, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


# litert-torch's int8 route (PT2E, static, per-channel weights): model -> what fold makes of it
INT8_CASES = {DenseBlock: ("collapsed", "it follows a CONCATENATION"),
              ConvReluBnConv: ("collapsed", "it reaches a QUANTIZE")}


def pt2e_int8(cls, path) -> None:
    """``cls`` (BN randomised) quantized by PT2E, static, per-channel, converted to ``path``."""
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    model = randomise_bn(cls())
    args = (torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)),)
    exported = torch.export.export(model, args).module()
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    prepared = quantize_pt2e.prepare_pt2e(exported, quantizer)
    prepared(*args)  # calibration
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(quantized, args).export(str(path))


@pytest.mark.parametrize("cls", list(INT8_CASES), ids=lambda c: c.__name__)
def test_litert_torch_int8_files_keep_their_float_chain_between_quantizes(cls, tmp_path):
    """PT2E quantizes activations with QUANTIZE/DEQUANTIZE pairs and leaves the BN's
    SUB → MUL → MUL → ADD in float between them: found, collapsed to MUL+ADD, proven, and the
    reason says what stops a fold (a requantization between the chain and the next kernel)."""
    path = tmp_path / f"{cls.__name__}_int8.tflite"
    pt2e_int8(cls, path)
    parsed = read_tflite(path)
    assert "QUANTIZE" in parsed.op_counts() and "CONV_2D" in parsed.op_counts()
    (residual,) = analyse_bn(parsed).residual
    assert residual.kind == "sub_mul_mul_add"
    result = fold_tflite(parsed)
    (chain,) = result.chains
    outcome, reason = INT8_CASES[cls]
    assert chain.result == outcome and reason in chain.reason, chain
    assert result.compared > 0 and result.max_rel_diff <= result.tolerance
    (left,) = analyse_bn(parse_tflite(result.data)).residual
    assert len(left.ops) == 2


class DenseClassifier(nn.Module):
    """A DenseNet-style classifier for 3 classes: a BN it folds, one it collapses, GAP, Linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.grow, self.bn1 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = torch.relu(self.bn1(torch.cat([x, self.grow(x)], 1)))
        return torch.softmax(self.head(x.mean((2, 3))), 1)


def test_build_a_litert_torch_model_with_nchw_input_to_a_bundle(photos, tmp_path):
    """``edgebn build --model dense.tflite --data-dir D --bundle``: folded, verified against
    the original on the labelled images, benched, bundled; the bundle's predict.py gives
    the host's top-1 on an image, and ``check`` gates the build against itself."""
    import json
    import subprocess
    import sys

    from typer.testing import CliRunner

    from edgebn.cli.app import app
    from edgebn.data.images import Preprocessing, read_image

    model = randomise_bn(DenseClassifier())
    path = tmp_path / "dense.tflite"
    litert_torch.convert(model, (torch.zeros(1, 3, 24, 24),)).export(str(path))
    out = tmp_path / "build"
    runner = CliRunner()
    result = runner.invoke(app, ["build", "--model", str(path), "--data-dir", str(photos), "--out",
                                 str(out), "--bundle", "--bench-time", "0.05"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    pre = report["dataset"]["preprocessing"]
    assert pre["layout"] == "nchw" and pre["input_shape"] == [24, 24, 3]
    fold = report["tflite_fold"]
    assert fold["counts"]["collapsed"] == 1 and fold["max_rel_diff"] <= fold["tolerance"]
    t = report["tflite"]
    assert t["top1_agreement"] == 1.0 and t["max_abs_diff"] < 1e-5
    assert t["test_accuracy"] == t["original_test_accuracy"]
    assert report["bench"]["interleaved"] and report["bundle"]["selftest_here"]["passed"]
    assert (out / "original.tflite").read_bytes() == path.read_bytes()
    selftest = subprocess.run([sys.executable, str(out / "bundle" / "predict.py"), "--selftest",
                               "--json"], capture_output=True, text=True, timeout=300)
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)["selftest"]["passed"], selftest.stderr
    image = sorted(sorted(photos.iterdir())[1].iterdir())[0]
    device = subprocess.run([sys.executable, str(out / "bundle" / "predict.py"), str(image),
                             "--json"],
                            capture_output=True, text=True, timeout=300)
    assert device.returncode == 0, device.stderr
    x = Preprocessing.from_json(pre).apply(read_image(image, Preprocessing.from_json(pre)))
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())).numpy()[0]
    top = json.loads(device.stdout)["predictions"][0]["top"][0]
    assert top["label"] == report["dataset"]["class_names"][int(want.argmax())], (top, want)
    assert top["score"] == pytest.approx(float(want.max()), abs=1e-5)
    gate = runner.invoke(app, ["check", str(out / "report.json"), "--baseline",
                               str(out / "report.json"),
                               "--bench-time", "0.1", "--json"])
    failed = [m["metric"] for m in json.loads(gate.stdout)["metrics"] if not m["passed"]]
    # the collapsed chain is residue
    assert gate.exit_code == 1 and failed == ["bn_verdict"], gate.output


@pytest.mark.slow
def test_torchvision_densenet121_folds_and_matches_pytorch(tmp_path):
    """torchvision's DenseNet121 (weights=None, BN statistics random) through litert-torch:
    every residual BN chain folded, collapsed or kept with its reason; the folded file within
    1e-5 of PyTorch's own outputs (relative to the largest). Before issue 27 the proof's
    measure was inf on the −inf padding of its first max-pool, and the fold was refused."""
    import json

    from typer.testing import CliRunner

    from edgebn.cli.app import app
    from edgebn.runtime.accuracy import predict_tflite

    torchvision = pytest.importorskip("torchvision", reason="the torch extra is not installed: "
                                                            "pip install '.[torch]'")
    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.densenet121(weights=None))
    path, out = tmp_path / "densenet121.tflite", tmp_path / "densenet121.folded.tflite"
    litert_torch.convert(model, (torch.zeros(1, 3, 64, 64),)).export(str(path))
    residual = analyse_bn(read_tflite(path)).residual
    assert len(residual) == 62  # the BN after each concatenation (the converter took the rest)
    r = CliRunner().invoke(app, ["fold", str(path), "--out", str(out), "--json"])
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    assert len(doc["bn"]) == len(residual)
    assert all(c["result"] == "folded" or c["reason"] for c in doc["bn"])
    assert doc["max_rel_diff"] <= doc["tolerance"]
    x = np.random.default_rng(0).uniform(0, 1, (8, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy().astype(np.float64)
    got, _ = predict_tflite(out, x)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5
