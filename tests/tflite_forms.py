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
                 "sub_mul_add": [("SUB", p["mean"]), ("MUL", p["inv_std"] * p["gamma"]),
                                 ("ADD", p["beta"])],
                 "decomposed": [("MUL", s), ("ADD", t)],
                 "sub_mul": [("SUB", p["mean"]), ("MUL", p["inv_std"])],  # a BN without γ and β
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
        return self.op("MEAN", [x, self.g.tensor([len(axes)], "INT32",
                                                 data=np.array(axes, np.int32))],
                       shape, _opts("ReducerOptionsT", keepDims=False))

    def transpose(self, x: int, perm, shape) -> int:
        return self.op("TRANSPOSE",
                       [x, self.g.tensor([len(perm)], "INT32", data=np.array(perm, np.int32))],
                       shape, _opts("TransposeOptionsT"))

    def pack(self, x: int, y: int) -> bytes:
        return self.g.pack([x], [y])


def conv_bn(seed, float16=False, form="sub_mul_mul_add", activation="RELU"):
    """Conv → BN (→ ReLU fused into the chain's ADD): folds backward into the conv."""
    f = Form(seed, float16)
    x = f.data([1, H, W, 3])
    y = f.bn(f.conv(x, 3, C, [1, H - 2, W - 2, C]), [1, H - 2, W - 2, C], form,
             activation=activation)
    return f.pack(x, f.conv(y, C, 2, [1, H - 4, W - 4, 2], padding="SAME"))


def transpose_conv_bn(seed, float16=False):
    """ConvTranspose without a bias → BN (earlier litert-torch got this wrong): the fold adds
    one."""
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
    return f.pack(x, f.bn(f.dwconv(x, C, [1, H - 2, W - 2, C]), [1, H - 2, W - 2, C],
                          "sub_mul_add"))


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
    return f.pack(x, f.conv(f.bn(a, [1, H - 2, W - 2, C]), C, 2, [1, H - 2, W - 2, 2],
                            padding="SAME"))


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
    """A BN whose output is the model's: the pair is kept as it is (no fold, nothing to
    collapse)."""
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


# ---------------------------------------------------------------- int8 forms
# Written as the TensorFlow converter writes a full-integer file: int8 activations with one
# scale and zero point each (from a float64 run on calibration inputs), symmetric int8 weights
# per output channel in [−127, 127], an int32 bias at S_in·S_w[o], int8 constants of the BN
# steps with one scale and zero point each.

INT8_INPUT = (0.02, 3)  # the input's scale and zero point: random int8 inputs span ±2.6


def _affine(values: np.ndarray, margin: float = 1.1) -> tuple[float, int]:
    """Asymmetric int8 scale and zero point covering ``values`` and 0 (the converter's rule)."""
    lo, hi = min(float(values.min()) * margin, 0.0), max(float(values.max()) * margin, 0.0)
    scale = max(hi - lo, 1e-6) / 255
    return scale, int(np.clip(round(-128 - lo / scale), -128, 127))


def conv2d(x: np.ndarray, w: np.ndarray, same: bool = False) -> np.ndarray:
    """NHWC stride-1 convolution, w [O, kh, kw, I], float64."""
    kh, kw = w.shape[1:3]
    if same:
        x = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(np.einsum("nhwc,oc->nhwo", x[:, i:i + ho, j:j + wo], w[:, i, j])
               for i in range(kh) for j in range(kw))


def depthwise(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NHWC stride-1 VALID depthwise convolution, w [1, kh, kw, C·M]."""
    kh, kw, cm = w.shape[1:]
    x = np.repeat(x, cm // x.shape[3], axis=3)
    ho, wo = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(x[:, i:i + ho, j:j + wo] * w[0, i, j] for i in range(kh) for j in range(kw))


def transpose_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """NHWC stride-1 VALID transposed convolution, w [O, kh, kw, I]."""
    kh, kw = w.shape[1:3]
    n, h, wd, _ = x.shape
    out = np.zeros((n, h + kh - 1, wd + kw - 1, w.shape[0]))
    for i in range(kh):
        for j in range(kw):
            out[:, i:i + h, j:j + wd] += np.einsum("nhwc,oc->nhwo", x, w[:, i, j])
    return out


class Int8Form:
    """An int8 graph under construction; ``values`` carries each tensor's float64 calibration
    run."""

    def __init__(self, seed: int, shape, samples: int = 32) -> None:
        self.g, self.rng = Graph(), np.random.default_rng(seed)
        q = self.rng.integers(-128, 128, (samples, *shape[1:]))
        self.values: dict[int, np.ndarray] = {}
        self.input = self.tensor(list(shape), "INT8", INT8_INPUT,
                                 (q - INT8_INPUT[1]) * INT8_INPUT[0])

    def tensor(self, shape, dtype: str, quant, values=None, data=None, axis: int = 0) -> int:
        t = schema().TensorT()
        t.shape, t.type = list(shape), getattr(schema().TensorType, dtype)
        t.buffer = 0 if data is None else self.g.add_buffer(np.ascontiguousarray(data).tobytes())
        q = schema().QuantizationParametersT()
        scale, zero = quant
        q.scale = [float(v) for v in np.atleast_1d(scale)]
        q.zeroPoint = [int(v) for v in np.atleast_1d(zero)]
        q.quantizedDimension = axis
        t.quantization = q
        index = self.g.add_tensor(t)
        if values is not None:
            self.values[index] = values
        return index

    def activation(self, values: np.ndarray, shape) -> int:
        return self.tensor(shape, "INT8", _affine(values), values)

    def weights(self, w: np.ndarray, axis: int, extreme: int | None = None
                ) -> tuple[int, np.ndarray, np.ndarray]:
        """Symmetric per-channel int8 weights; channel ``extreme``'s largest |w| made negative
        (it stores −127), or −128 forced into it when ``extreme`` is given as ``-1 - channel``."""
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1).copy()
        scale = np.abs(moved).max(axis=1) / 127
        q = np.round(moved / scale[:, None])
        if extreme is not None:
            o = extreme if extreme >= 0 else -1 - extreme
            k = int(np.argmax(np.abs(q[o])))
            q[o, k] = -127 if extreme >= 0 else -128
        q = np.moveaxis(q.reshape(np.moveaxis(w, axis, 0).shape), 0, axis).astype(np.int8)
        real = q * np.expand_dims(scale, [i for i in range(w.ndim) if i != axis])
        index = self.tensor(w.shape, "INT8", (scale.astype(np.float32), np.zeros(len(scale))),
                            data=q,
                            axis=axis)
        return index, real, scale

    def bias(self, b: np.ndarray, s_in: float, s_w: np.ndarray) -> tuple[int, np.ndarray]:
        step = (s_in * s_w).astype(np.float32)
        q = np.round(b / step).astype(np.int32)
        return self.tensor([len(b)], "INT32", (step, np.zeros(len(b))), data=q), q * step

    def scale_of(self, x: int) -> float:
        return self.g.tensors[x].quantization.scale[0]

    def kernel(self, builtin: str, x: int, w: np.ndarray, shape, extreme=None, bias=True) -> int:
        """An int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV (stride 1,
        VALID)."""
        axis = 3 if builtin == "DEPTHWISE_CONV_2D" else 0
        wt, real, scale = self.weights(w, axis, extreme)
        channels = w.shape[axis]
        b = self.rng.normal(0, 0.5, channels)
        bt, b = self.bias(b, self.scale_of(x), scale) if bias else (-1, np.zeros(channels))
        v = self.values[x]
        y = {"CONV_2D": lambda: conv2d(v, real), "DEPTHWISE_CONV_2D": lambda: depthwise(v, real),
             "FULLY_CONNECTED": lambda: v @ real.T,
             "TRANSPOSE_CONV": lambda: transpose_conv(v, real)}[builtin]() + b
        out = self.activation(y, shape)
        valid = schema().Padding.VALID
        if builtin == "TRANSPOSE_CONV":
            spec = self.g.tensor([4], "INT32", data=np.array(shape, np.int32))
            options = _opts("TransposeConvOptionsT", padding=valid, strideH=1, strideW=1)
            self.g.operator(builtin, [spec, wt, x] + ([bt] if bias else []), [out], options)
            return out
        options = {"CONV_2D": lambda: _opts("Conv2DOptionsT", padding=valid, strideH=1, strideW=1,
                                            dilationHFactor=1, dilationWFactor=1),
                   "DEPTHWISE_CONV_2D": lambda: _opts(
                       "DepthwiseConv2DOptionsT", padding=valid, strideH=1, strideW=1,
                       depthMultiplier=channels // v.shape[3], dilationHFactor=1,
                       dilationWFactor=1),
                   "FULLY_CONNECTED": lambda: _opts("FullyConnectedOptionsT")}[builtin]()
        self.g.operator(builtin, [x, wt, bt], [out], options)
        return out

    def bn(self, x: int, form: str = "decomposed", activation: str = "NONE") -> int:
        """An unfolded BN on ``x`` with int8 constants, each step requantized."""
        shape = self.g.tensors[x].shape
        p = _bn(self.rng, shape[-1])
        s, t = p["gamma"] * p["inv_std"], p["beta"] - p["mean"] * p["gamma"] * p["inv_std"]
        steps = {"decomposed": [("MUL", s), ("ADD", t)],
                 "sub_mul_mul_add": [("SUB", p["mean"]), ("MUL", p["inv_std"]), ("MUL", p["gamma"]),
                                     ("ADD", p["beta"])]}[form]
        for i, (name, c) in enumerate(steps):
            scale, zero = _affine(c, margin=1.0)
            q = np.clip(np.round(c / scale) + zero, -128, 127).astype(np.int8)
            ct = self.tensor([len(c)], "INT8", (scale, zero), data=q)
            c = (q.astype(np.float64) - zero) * scale
            v = self.values[x]
            y = {"SUB": v - c, "MUL": v * c, "ADD": v + c}[name]
            last = i == len(steps) - 1
            if last and activation == "RELU":
                y = np.maximum(y, 0)
            out = self.activation(y, shape)
            kind = {"SUB": "SubOptionsT", "MUL": "MulOptionsT", "ADD": "AddOptionsT"}[name]
            self.g.operator(name, [x, ct], [out], _opts(kind, activation if last else "NONE"))
            x = out
        return x

    def pack(self, y: int) -> bytes:
        return self.g.pack([self.input], [y])


def int8_kernel_bn(seed: int, builtin: str = "CONV_2D", form: str = "decomposed",
                   activation: str = "NONE", extreme: int | None = 0, bias: bool = True) -> bytes:
    """An int8 kernel → BN (int8 MUL+ADD, or litert-torch's SUB → MUL → MUL → ADD), its output
    the model's. γ[0] < 0 and channel 0's weights hold −127 (``extreme``)."""
    shapes = {"CONV_2D": ([1, H, W, 3], (C, 3, 3, 3), [1, H - 2, W - 2, C]),
              "DEPTHWISE_CONV_2D": ([1, H, W, 2], (1, 3, 3, C), [1, H - 2, W - 2, C]),
              "FULLY_CONNECTED": ([1, 12], (C, 12), [1, C]),
              "TRANSPOSE_CONV": ([1, H, W, 3], (C, 3, 3, 3), [1, H + 2, W + 2, C])}
    x_shape, w_shape, y_shape = shapes[builtin]
    f = Int8Form(seed, x_shape)
    w = f.rng.normal(0, 0.5, w_shape)
    y = f.kernel(builtin, f.input, w, y_shape, extreme, bias)
    return f.pack(f.bn(y, form, activation))


INT8_FORMS: dict[str, Callable[[int], bytes]] = {
    "conv_bn": lambda seed: int8_kernel_bn(seed),
    "conv_bn_relu": lambda seed: int8_kernel_bn(seed, activation="RELU"),
    "dwconv_bn": lambda seed: int8_kernel_bn(seed, "DEPTHWISE_CONV_2D"),
    "dense_bn": lambda seed: int8_kernel_bn(seed, "FULLY_CONNECTED"),
    "transpose_conv_bn": lambda seed: int8_kernel_bn(seed, "TRANSPOSE_CONV", bias=False),
    "conv_sub_mul_mul_add": lambda seed: int8_kernel_bn(seed, form="sub_mul_mul_add"),
}


def float64_run(model, x: np.ndarray) -> np.ndarray:
    """The independent truth: ``model``'s graph run in float64 from its dequantized constants
    (weights, bias, BN steps) on the dequantized int8 input ``x``, rounding nowhere."""
    sg = model.subgraphs[0]

    def real(i: int) -> np.ndarray:
        t = sg.tensors[i]
        q, raw = t.quantization, model.constant(t)
        if q is None:  # TRANSPOSE_CONV's output shape
            return raw
        shape = [1] * raw.ndim
        if len(q.scale) > 1:
            shape[q.quantized_dimension] = -1
        zero = np.array(q.zero_point, np.float64)
        zero = zero.reshape(shape) if zero.size > 1 else zero
        if t.dtype == "INT32":  # the bias, at the kernel's S_in·S_w[o]
            return raw.astype(np.float64) * np.reshape(q.scale, -1)
        return (raw.astype(np.float64) - zero) * np.reshape(q.scale, shape)

    q = sg.tensors[sg.inputs[0]].quantization
    values = {sg.inputs[0]: (x.astype(np.float64) - q.zero_point[0]) * q.scale[0]}
    for op in sg.operators:
        ins = [values[i] if i in values else (real(i) if i >= 0 else None) for i in op.inputs]
        y = _float64_op(op.op, ins)
        values[op.outputs[0]] = np.maximum(y, 0) if op.activation == "RELU" else y
    return values[sg.outputs[0]]


def _float64_op(builtin: str, ins: list) -> np.ndarray:
    if builtin == "TRANSPOSE_CONV":
        return transpose_conv(ins[2], ins[1]) + (ins[3] if len(ins) > 3 else 0)
    if builtin in ("MUL", "ADD", "SUB"):
        return {"MUL": np.multiply, "ADD": np.add, "SUB": np.subtract}[builtin](ins[0], ins[1])
    linear = {"CONV_2D": conv2d, "DEPTHWISE_CONV_2D": depthwise,
              "FULLY_CONNECTED": lambda x, w: x @ w.T}[builtin]
    return linear(ins[0], ins[1]) + (ins[2] if ins[2] is not None else 0)


def wrong_scale(real, channel: int = 1, factor: float = 1 + 1e-3):
    """``chain_affine`` made wrong on purpose: one channel's ``s`` times ``factor``."""
    def wrong(*args):
        s, t = real(*args)
        s = s.copy()
        s[channel] *= factor
        return s, t
    return wrong
