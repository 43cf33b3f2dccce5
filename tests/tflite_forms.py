"""BN residue forms written straight into .tflite files with edgebn's own writer (no TensorFlow).

Each form is a small graph around one unfolded BN, with random statistics (negative γ
included, so a fold that mixes up the sign or the shift is visible). ``FORMS`` maps a name to
(builder, what ``edgebn fold`` must make of it: "folded", "collapsed" or "kept", the kind).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgebn.tflite.reader import schema
from edgebn.tflite.writer import Graph

H = W = 6
C = 4


def _bn(rng: np.random.Generator, c: int = C, positive: bool = False) -> dict[str, np.ndarray]:
    """Random statistics: γ of random sign with γ[0] < 0 for sure, or all γ > 0 (``positive``)."""
    gamma = rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c)
    gamma[0] = -abs(gamma[0])
    if positive:
        gamma = np.abs(gamma)
    return {"gamma": gamma, "beta": rng.normal(0, 1, c), "mean": rng.normal(0, 1, c),
            "inv_std": 1 / np.sqrt(rng.uniform(0.2, 2.0, c) + 1e-5)}


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _opts(kind: str, activation: str = "NONE", **fields):
    o = getattr(schema(), kind)()
    if hasattr(o, "fusedActivationFunction"):
        o.fusedActivationFunction = getattr(schema().ActivationFunctionType, activation)
    for k, v in fields.items():
        setattr(o, k, v)
    return o


class Form:
    """A graph under construction with helpers for the operators the forms use."""

    def __init__(self, seed: int, float16: bool = False, positive: bool = False) -> None:
        self.g, self.rng, self.float16 = Graph(), np.random.default_rng(seed), float16
        self.positive = positive

    def const(self, values, shape=None) -> int:
        values = _f32(values)
        shape = list(values.shape if shape is None else shape)
        if not self.float16 or values.size < 2:
            return self.g.tensor(shape, data=values.reshape(shape))
        half = self.g.tensor(shape, "FLOAT16", data=values.astype(np.float16).reshape(shape))
        out = self.g.tensor(shape)
        self.g.operator("DEQUANTIZE", [half], [out])
        return out

    def data(self, shape) -> int:
        return self.g.tensor(list(shape))

    def op(self, builtin: str, inputs, shape, options=None) -> int:
        y = self.data(shape)
        self.g.operator(builtin, inputs, [y], options)
        return y

    def conv(self, x: int, cin: int, cout: int, shape, padding="VALID", activation="NONE",
             bias=True) -> int:
        w = self.const(self.rng.normal(0, 0.5, (cout, 3, 3, cin)))
        b = [self.const(self.rng.normal(0, 0.5, cout))] if bias else []
        pad = getattr(schema().Padding, padding)
        return self.op("CONV_2D", [x, w, *b], shape,
                       _opts("Conv2DOptionsT", activation, padding=pad, strideH=1, strideW=1,
                             dilationHFactor=1, dilationWFactor=1))

    def dwconv(self, x: int, c: int, shape, padding="VALID") -> int:
        w = self.const(self.rng.normal(0, 0.5, (1, 3, 3, c)))
        b = self.const(self.rng.normal(0, 0.5, c))
        return self.op("DEPTHWISE_CONV_2D", [x, w, b], shape,
                       _opts("DepthwiseConv2DOptionsT", padding=getattr(schema().Padding, padding),
                             strideH=1, strideW=1, depthMultiplier=1, dilationHFactor=1,
                             dilationWFactor=1))

    def dense(self, x: int, features: int, units: int, bias=True) -> int:
        w = self.const(self.rng.normal(0, 0.5, (units, features)))
        b = self.const(self.rng.normal(0, 0.5, units)) if bias else -1
        return self.op("FULLY_CONNECTED", [x, w, b], [1, units], _opts("FullyConnectedOptionsT"))

    def bn(self, x: int, shape, form: str = "sub_mul_mul_add", axis_shape=None,
           activation: str = "NONE") -> int:
        """An unfolded BN on ``x`` as ``form`` (the operators, in order)."""
        c = shape[-1] if axis_shape is None else max(axis_shape)
        p = _bn(self.rng, c, self.positive)
        cshape = [1] * (len(shape) - 1) + [c] if axis_shape is None else list(axis_shape)
        s, t = p["gamma"] * p["inv_std"], p["beta"] - p["mean"] * p["gamma"] * p["inv_std"]
        steps = {"sub_mul_mul_add": [("SUB", p["mean"]), ("MUL", p["inv_std"]), ("MUL", p["gamma"]),
                                     ("ADD", p["beta"])],
                 "sub_mul_add": [("SUB", p["mean"]), ("MUL", p["inv_std"] * p["gamma"]), ("ADD", p["beta"])],
                 "decomposed": [("MUL", s), ("ADD", t)],
                 "mul_sub": [("MUL", s), ("SUB", -t)]}[form]
        for i, (name, values) in enumerate(steps):
            last = i == len(steps) - 1
            kind = {"SUB": "SubOptionsT", "MUL": "MulOptionsT", "ADD": "AddOptionsT"}[name]
            x = self.op(name, [x, self.const(values, cshape)], shape,
                        _opts(kind, activation if last else "NONE"))
        return x

    def pool(self, x: int, builtin: str, shape, padding="VALID") -> int:
        options = _opts("Pool2DOptionsT", padding=getattr(schema().Padding, padding),
                        strideH=2, strideW=2, filterHeight=2, filterWidth=2)
        return self.op(builtin, [x], shape, options)

    def reshape(self, x: int, shape) -> int:
        return self.op("RESHAPE", [x, self.g.tensor([len(shape)], "INT32",
                                                    data=np.array(shape, np.int32))], shape,
                       _opts("ReshapeOptionsT", newShape=list(shape)))

    def mean(self, x: int, axes, shape) -> int:
        return self.op("MEAN", [x, self.g.tensor([len(axes)], "INT32", data=np.array(axes, np.int32))],
                       shape, _opts("ReducerOptionsT", keepDims=False))

    def transpose(self, x: int, perm, shape) -> int:
        return self.op("TRANSPOSE", [x, self.g.tensor([len(perm)], "INT32", data=np.array(perm, np.int32))],
                       shape, _opts("TransposeOptionsT"))

    def pack(self, x: int, y: int) -> bytes:
        return self.g.pack([x], [y])


def conv_bn(seed, float16=False, form="sub_mul_mul_add", activation="RELU"):
    """Conv → BN (→ ReLU fused into the chain's ADD): folds backward into the conv."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    y = f.bn(f.conv(x, 3, C, [1, H - 2, W - 2, C]), [1, H - 2, W - 2, C], form, activation=activation)
    return f.pack(x, f.conv(y, C, 2, [1, H - 4, W - 4, 2], padding="SAME"))


def transpose_conv_bn(seed, float16=False):
    """ConvTranspose without a bias → BN (earlier litert-torch got this wrong): the fold adds one."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    shape = [1, H + 2, W + 2, C]
    w = f.const(f.rng.normal(0, 0.5, (C, 3, 3, 3)))
    out_shape = f.g.tensor([4], "INT32", data=np.array(shape, np.int32))
    y = f.op("TRANSPOSE_CONV", [out_shape, w, x], shape,
             _opts("TransposeConvOptionsT", padding=schema().Padding.VALID, strideH=1, strideW=1))
    return f.pack(x, f.bn(y, shape))


def dwconv_bn(seed, float16=False):
    f = Form(seed, float16)
    x = f.data([1, H, W, C])
    return f.pack(x, f.bn(f.dwconv(x, C, [1, H - 2, W - 2, C]), [1, H - 2, W - 2, C], "sub_mul_add"))


def dense_bn(seed, float16=False):
    f = Form(seed, float16)
    x = f.data([1, 12])
    return f.pack(x, f.bn(f.dense(x, 12, C, bias=False), [1, C], "mul_sub"))


def relu_bn_conv(seed, float16=False):
    """Conv+ReLU → BN → VALID conv: the fused ReLU stops it backward; folds forward."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    a = f.conv(x, 3, C, [1, H - 2, W - 2, C], activation="RELU")
    return f.pack(x, f.conv(f.bn(a, [1, H - 2, W - 2, C]), C, 2, [1, H - 4, W - 4, 2]))


def relu_bn_pool_dense(seed, float16=False, positive=False):
    """Conv+ReLU → BN → MAX_POOL → RESHAPE → Dense: forward only when every scale > 0."""
    f = Form(seed, float16, positive)
    x = f.data([1, H, W, 3])
    a = f.conv(x, 3, C, [1, H - 2, W - 2, C], activation="RELU")
    b = f.bn(a, [1, H - 2, W - 2, C], "decomposed")
    p = f.pool(b, "MAX_POOL_2D", [1, 2, 2, C])
    return f.pack(x, f.dense(f.reshape(p, [1, 4 * C]), 4 * C, 3))


def relu_bn_gap_dense(seed, float16=False):
    """Conv+ReLU → BN → MEAN over H, W → Dense: forward, through the MEAN."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    a = f.conv(x, 3, C, [1, H - 2, W - 2, C], activation="RELU")
    b = f.bn(a, [1, H - 2, W - 2, C], "sub_mul_mul_add")
    return f.pack(x, f.dense(f.mean(b, [1, 2], [1, C]), C, 3))


def relu_bn_same_conv(seed, float16=False):
    """Conv+ReLU → BN → SAME conv: no exact fold; the chain collapses to MUL+ADD."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    a = f.conv(x, 3, C, [1, H - 2, W - 2, C], activation="RELU")
    return f.pack(x, f.conv(f.bn(a, [1, H - 2, W - 2, C]), C, 2, [1, H - 2, W - 2, 2], padding="SAME"))


def concat_bn_relu(seed, float16=False):
    """DenseNet's concat → BN → ReLU → conv (SAME): collapses; nothing can take it."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 2])
    a = f.conv(x, 2, 2, [1, H, W, 2], padding="SAME")
    cat = f.op("CONCATENATION", [x, a], [1, H, W, C], _opts("ConcatenationOptionsT", axis=3))
    b = f.bn(cat, [1, H, W, C], activation="RELU")
    return f.pack(x, f.conv(b, C, 2, [1, H, W, 2], padding="SAME"))


def nchw_input_bn(seed, float16=False):
    """litert-torch's layout: BN on the NCHW input ([C, 1, 1] constants), TRANSPOSE, VALID conv."""
    f = Form(seed, float16)
    x = f.data([1, C, H, W])
    b = f.bn(x, [1, C, H, W], axis_shape=[C, 1, 1])
    t = f.transpose(b, [0, 2, 3, 1], [1, H, W, C])
    return f.pack(x, f.conv(t, C, 2, [1, H - 2, W - 2, 2]))


def bn_output(seed, float16=False):
    """A BN whose output is the model's: the pair is kept as it is (no fold, nothing to collapse)."""
    f = Form(seed, float16)
    x = f.data([1, H, W, C])
    a = f.op("CONCATENATION", [x], [1, H, W, C], _opts("ConcatenationOptionsT", axis=3))
    return f.pack(x, f.bn(a, [1, H, W, C], "decomposed"))


FORMS: dict[str, tuple[Callable[..., bytes], str, str]] = {
    "conv_bn_relu": (conv_bn, "folded", "sub_mul_mul_add"),
    "transpose_conv_bn": (transpose_conv_bn, "folded", "sub_mul_mul_add"),
    "dwconv_bn": (dwconv_bn, "folded", "sub_mul_add"),
    "dense_bn": (dense_bn, "folded", "mul_sub"),
    "relu_bn_conv": (relu_bn_conv, "folded", "sub_mul_mul_add"),
    "relu_bn_gap_dense": (relu_bn_gap_dense, "folded", "sub_mul_mul_add"),
    "relu_bn_same_conv": (relu_bn_same_conv, "collapsed", "sub_mul_mul_add"),
    "concat_bn_relu": (concat_bn_relu, "collapsed", "sub_mul_mul_add"),
    "nchw_input_bn": (nchw_input_bn, "folded", "sub_mul_mul_add"),
    "bn_output": (bn_output, "kept", "decomposed"),
}
