"""A BN chain on int8 activations folded backward into the int8 kernel that makes its input.

An int8 CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV / CONV_3D with
symmetric int8 weights ``q_w`` (zero point 0, one scale ``S_w[o]`` per output channel ``o``)
and an int32 bias ``q_b`` at scale ``S_in·S_w[o]`` computes, before requantizing to ``x``::

    x[o] = S_in·S_w[o]·(Σ (q_in − z_in)·q_w[o] + q_b[o])

and the chain ``y = x·s + t``. With

    S_w'[o] = S_w[o]·|s[o]|,   q_w'[o] = sign(s[o])·q_w[o],
    q_b'[o] = round((s[o]·b[o] + t[o]) / (S_in·S_w'[o])),   b[o] = S_in·S_w[o]·q_b[o]

the kernel computes ``s·x + t`` before one requantization, to ``y``'s scale: exact but for
``S_w'`` stored as float32 and the bias rounded to half a bias step. The chain's roundings (of
``x`` and of each step's output) are gone. What cannot be exact is refused with its reason:

* a channel with ``s < 0`` whose weights hold −128 (+128 is not int8);
* weights with one scale for all channels (per tensor) unless every ``|s|`` is the same;
* a folded bias beyond int32.

A channel with ``s == 0`` outputs ``t``: its weights become 0, its scale stays ``S_w[o]``.
NumPy only; the caller (:mod:`edgebn.fold.tflite.rewrite`) writes the result into the flatbuffer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgebn.errors import EdgebnError
from edgebn.tflite.chains import constant_source
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel, schema

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

INT32_MAX = 2 ** 31 - 1
INT8_MIN = -128
FORWARD = ("a scale per input channel would requantize its int8 weights, quantized per output "
           "channel (not exact)")
COLLAPSE = "collapsed, its s and t would be requantized to int8 (not exact)"


@dataclass(frozen=True)
class Int8Kernel:
    """An int8 kernel's weights and bias as stored, with the scales that give them meaning."""

    q: np.ndarray  # int8 weights, in the kernel's own layout
    scale: np.ndarray  # float64: one per output channel, or one for all (per tensor)
    axis: int  # the weights' output-channel axis
    bias: np.ndarray  # int32, one per output channel (zeros where the kernel had none)
    input_scale: float

    @property
    def channel_scale(self) -> np.ndarray:
        """``S_w[o]``, one per output channel (a per-tensor scale repeated)."""
        return np.broadcast_to(self.scale, (self.q.shape[self.axis],)).astype(np.float64)

    @property
    def bias_scale(self) -> np.ndarray:
        """``S_in·S_w[o]``: the scale the kernel reads its int32 bias at."""
        return self.input_scale * self.channel_scale

    @property
    def weights(self) -> np.ndarray:
        """The real weights ``S_w[o]·q_w[o]``, float64."""
        shape = [1] * self.q.ndim
        shape[self.axis] = -1
        return self.q.astype(np.float64) * self.channel_scale.reshape(shape)

    @property
    def real_bias(self) -> np.ndarray:
        """The real bias ``S_in·S_w[o]·q_b[o]``, float64."""
        return self.bias.astype(np.float64) * self.bias_scale


def const_values(model: TFLiteModel, sg: Subgraph, tensor: int,
                 producer: dict[int, Operator]) -> np.ndarray:
    """The real values of a constant (or a DEQUANTIZE's output of one), in float64."""
    source = constant_source(model, sg, tensor, producer)
    t = sg.tensors[source] if source is not None else None
    raw = model.constant(t) if t is not None else None
    if raw is None:
        raise EdgebnError(f"{model.path}: tensor {tensor} of subgraph {sg.index} is not a "
                          "readable constant")
    values = raw.astype(np.float64)
    q = t.quantization
    if raw.dtype.kind in "iu" and q is not None and q.scale:
        shape = [1] * raw.ndim
        if len(q.scale) > 1 and raw.ndim:
            shape[q.quantized_dimension] = len(q.scale)
        zero = np.reshape(q.zero_point or [0], shape if len(q.zero_point) > 1 else [1] * raw.ndim)
        values = (values - zero) * np.reshape(q.scale, shape)
    return values


def after_quantize(sg: Subgraph, quantize: Operator, consumers: dict[int, list[Operator]],
                   outputs: set[int]) -> Operator | str:
    """The QUANTIZE before an int8 chain, when the float tensor it quantizes can take the fold.

    A float kernel, then QUANTIZE, then the chain (the converter's int8 CONV_3D): the float
    kernel absorbs ``s`` and ``t`` and the QUANTIZE writes ``y``, at ``y``'s scale: one
    rounding where the chain had one per step.
    """
    x = quantize.outputs[0]
    if len(consumers.get(x, [])) != 1 or x in outputs:
        return "the QUANTIZE's output is also read elsewhere"
    dtype = sg.tensors[quantize.inputs[0]].dtype
    return quantize if dtype == "FLOAT32" else f"it follows a QUANTIZE of a {dtype} tensor"


def read_kernel(model: TFLiteModel, sg: Subgraph, op: Operator, slots: tuple[int, int, int],
                     data_slot: int) -> Int8Kernel | str:
    """The stored int8 weights and int32 bias of ``op``, or why they are not that form."""
    w_slot, b_slot, axis = slots
    w, x = sg.tensors[op.inputs[w_slot]], sg.tensors[op.inputs[data_slot]]
    q, wq, xq = model.constant(w), w.quantization, x.quantization
    if w.dtype != "INT8" or q is None or wq is None or not wq.scale:
        return f"the {op.op}'s weights are not int8 constants"
    if any(wq.zero_point) or (len(wq.scale) > 1 and (wq.quantized_dimension != axis
                                                    or len(wq.scale) != w.shape[axis])):
        return f"the {op.op}'s int8 weights are not symmetric per output channel"
    if x.dtype != "INT8" or xq is None or len(xq.scale) != 1:
        return f"the {op.op}'s input is not int8 with one scale"
    channels = w.shape[axis]
    b = op.inputs[b_slot] if len(op.inputs) > b_slot else -1
    bias = np.zeros(channels, np.int64)
    if b >= 0:
        raw = model.constant(sg.tensors[b])
        if sg.tensors[b].dtype != "INT32" or raw is None or raw.size != channels:
            return f"the {op.op}'s bias is not an int32 constant"
        bias = raw.reshape(-1).astype(np.int64)
    return Int8Kernel(q, np.array(wq.scale, np.float64), axis, bias, float(xq.scale[0]))


def absorb(k: Int8Kernel, s: np.ndarray, t: np.ndarray, op: str) -> Int8Kernel | str:
    """``k`` with ``y = x·s + t`` absorbed (the module docstring), or why it cannot be exact."""
    if k.q.shape[k.axis] != len(s):
        return f"the {op}'s output channels are not its channels"
    sign, mag = np.sign(s), np.abs(s)
    per_tensor = k.scale.size == 1 and len(s) > 1
    if per_tensor and not (mag == mag[0]).all():
        return (f"the {op}'s int8 weights share one scale (per tensor): a different |s| per "
                "channel would requantize them")
    moved = np.moveaxis(k.q, k.axis, 0).reshape(len(s), -1)
    stuck = [o for o in np.flatnonzero(s < 0) if (moved[o] == INT8_MIN).any()]
    if stuck:
        return (f"channel {stuck[0]} of the {op}'s int8 weights holds −128 and its s < 0: "
                "+128 is not int8")
    if per_tensor and mag[0] == 0:
        return f"every s is 0 and the {op}'s int8 weights share one scale"
    scale = k.scale * (mag[:1] if per_tensor else np.where(mag == 0, 1.0, mag))
    scale = scale.astype(np.float32).astype(np.float64)  # stored as float32
    if not (np.isfinite(scale) & (scale > 0)).all():
        return f"the {op}'s folded weight scale leaves float32"
    shape = [1] * k.q.ndim
    shape[k.axis] = -1
    q = (k.q.astype(np.int16) * sign.reshape(shape).astype(np.int16)).astype(np.int8)
    bias_scale = k.input_scale * np.broadcast_to(scale, (len(s),))
    bias = np.round((s * k.real_bias + t) / bias_scale)
    if not (np.abs(bias) <= INT32_MAX).all():
        o = int(np.argmax(np.abs(bias)))
        return f"channel {o}'s folded bias ({bias[o]:.3g} steps) leaves int32"
    return Int8Kernel(q, scale, k.axis, bias.astype(np.int64), k.input_scale)


def constants(k: Int8Kernel
              ) -> tuple[tuple[np.ndarray, str, str, fb.QuantizationParametersT], ...]:
    """The folded weights and bias to store: values, name, dtype, quantization parameters."""
    return ((k.q.astype(np.int8), "folded_weights", "INT8", quantization(k.scale, k.axis)),
            (k.bias.astype(np.int32), "folded_bias", "INT32",
             quantization(k.input_scale * k.scale, 0)))


def quantization(scale: np.ndarray, axis: int) -> fb.QuantizationParametersT:
    """Symmetric quantization parameters: ``scale`` (float32) along ``axis``, zero points 0."""
    q = schema().QuantizationParametersT()
    q.scale = [float(v) for v in np.asarray(scale, np.float32).reshape(-1)]
    q.zeroPoint, q.quantizedDimension = [0] * len(q.scale), axis
    return q
