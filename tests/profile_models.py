"""Models for the profile's tests, written with edgebn's own writer (no TensorFlow, no download).

* :func:`mediapipe_like` — what MediaPipe's detectors look like to the interpreter: an
  explicit PAD before every strided or 3x3 convolution (XNNPACK makes each the padding of
  the convolution after it), depthwise-separable blocks with residual ADDs, a 3-channel
  input padded first.
* :func:`densenet_like` — DenseNet's pattern: each layer's input a CONCATENATION of every
  earlier feature map, normalized by a residual MUL+ADD (the pre-activation BN the
  converter cannot fold) and a ReLU, then 1x1 and 3x3 convolutions; the weights grow with
  depth.
* :func:`two_halves` — one block, then the same block again: each half costs the same, so
  the prefix ending between them must take about half the model's time.
"""

from __future__ import annotations

import numpy as np
from tflite_forms import _opts

from edgebn.tflite.reader import schema
from edgebn.tflite.writer import Graph


class _Net:
    def __init__(self, seed: int) -> None:
        self.g, self.rng = Graph(), np.random.default_rng(seed)

    def const(self, values) -> int:
        values = np.asarray(values, np.float32)
        return self.g.tensor(list(values.shape), data=values)

    def op(self, builtin: str, inputs, shape, options=None) -> int:
        y = self.g.tensor(list(shape))
        self.g.operator(builtin, inputs, [y], options)
        return y

    def pad(self, x: int, shape, before: int = 1, after: int = 1) -> int:
        paddings = self.g.tensor([4, 2], "INT32", data=np.array(
            [[0, 0], [before, after], [before, after], [0, 0]], np.int32))
        n, h, w, c = shape
        return self.op("PAD", [x, paddings], [n, h + before + after, w + before + after, c])

    def conv(self, x: int, cin: int, cout: int, out_shape, k: int = 3, stride: int = 1,
             padding: str = "VALID", activation: str = "RELU") -> int:
        w = self.const(self.rng.normal(0, (2 / (k * k * cin)) ** 0.5, (cout, k, k, cin)))
        b = self.const(self.rng.normal(0, 0.1, cout))
        return self.op("CONV_2D", [x, w, b], out_shape,
                       _opts("Conv2DOptionsT", activation,
                             padding=getattr(schema().Padding, padding),
                             strideH=stride, strideW=stride, dilationHFactor=1, dilationWFactor=1))

    def dwconv(self, x: int, c: int, out_shape, stride: int = 1, activation: str = "RELU") -> int:
        w = self.const(self.rng.normal(0, 0.3, (1, 3, 3, c)))
        b = self.const(self.rng.normal(0, 0.1, c))
        return self.op("DEPTHWISE_CONV_2D", [x, w, b], out_shape,
                       _opts("DepthwiseConv2DOptionsT", activation, padding=schema().Padding.VALID,
                             strideH=stride, strideW=stride, depthMultiplier=1, dilationHFactor=1,
                             dilationWFactor=1))

    def add(self, a: int, b: int, shape) -> int:
        return self.op("ADD", [a, b], shape, _opts("AddOptionsT"))

    def bn(self, x: int, shape) -> int:
        c = shape[-1]
        s = self.const(self.rng.uniform(0.5, 1.5, (1, 1, 1, c)))
        t = self.const(self.rng.normal(0, 0.1, (1, 1, 1, c)))
        y = self.op("MUL", [x, s], shape, _opts("MulOptionsT"))
        return self.op("ADD", [y, t], shape, _opts("AddOptionsT", "RELU"))

    def concat(self, xs, shape) -> int:
        return self.op("CONCATENATION", list(xs), shape, _opts("ConcatenationOptionsT", axis=3))


def mediapipe_like(seed: int = 0, size: int = 96) -> bytes:
    n = _Net(seed)
    x = n.g.tensor([1, size, size, 3])
    h, c = size // 2, 16
    y = n.conv(n.pad(x, [1, size, size, 3], 0, 1), 3, c, [1, h, h, c], stride=2)
    for block in range(6):
        stride = 2 if block in (2, 4) else 1
        out = h // stride
        d = n.dwconv(n.pad(y, [1, h, h, c], 1, 1) if stride == 1 else n.pad(y, [1, h, h, c], 0, 1),
                     c, [1, out, out, c], stride=stride)
        z = n.conv(d, c, c, [1, out, out, c], k=1, activation="NONE")
        y = n.add(z, y, [1, h, h, c]) if stride == 1 else z
        h = out
    return n.g.pack([x], [y])


def densenet_like(seed: int = 0, size: int = 32, layers: int = 8, growth: int = 32) -> bytes:
    n = _Net(seed)
    x = n.g.tensor([1, size, size, 3])
    c0 = 64
    features = [n.conv(x, 3, c0, [1, size, size, c0], padding="SAME")]
    widths = [c0]
    for _ in range(layers):
        c = sum(widths)
        shape = [1, size, size, c]
        joined = features[0] if len(features) == 1 else n.concat(features, shape)
        y = n.conv(n.bn(joined, shape), c, 4 * growth, [1, size, size, 4 * growth], k=1)
        y = n.conv(y, 4 * growth, growth, [1, size, size, growth], padding="SAME",
                   activation="NONE")
        features.append(y)
        widths.append(growth)
    c = sum(widths)
    out = n.concat(features, [1, size, size, c])
    return n.g.pack([x], [out])


def two_halves(seed: int = 0, size: int = 48, c: int = 64, depth: int = 4) -> bytes:
    n = _Net(seed)
    x = n.g.tensor([1, size, size, c])
    y = x
    for _ in range(2):  # the same block twice: the same shapes, the same costs
        for _ in range(depth):
            y = n.conv(y, c, c, [1, size, size, c], padding="SAME")
    return n.g.pack([x], [y])
