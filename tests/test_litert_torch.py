"""PyTorch models through Google's litert-torch, then ``edgebn inspect`` and ``edgebn fold``.

Small ``torch.nn`` models with one BN each, in the places users report trouble, BN statistics
randomised (γ[0] < 0). litert-torch keeps the NCHW input behind a TRANSPOSE and writes an
unfolded BN as SUB → MUL → MUL → ADD. Needs the ``torch`` extra (``pip install ".[torch]"``,
torch 2.13.0's CPU build); without it these tests skip with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgebn.runtime.backends import load_interpreter
from edgebn.runtime.tflite_fold import fold_tflite
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn

torch = pytest.importorskip("torch", reason="the torch extra is not installed: pip install '.[torch]'")
litert_torch = pytest.importorskip("litert_torch",
                                   reason="the torch extra is not installed: pip install '.[torch]'")
nn = torch.nn

SHAPE = (1, 3, 8, 8)


class DenseBlock(nn.Module):
    """DenseNet's concat → BN → ReLU → 1x1 conv: nothing can take the BN; it collapses."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.out = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(7), nn.Conv2d(7, 4, 1)

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
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm1d(4 * 6 * 6), nn.Linear(4 * 6 * 6, 5)

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
