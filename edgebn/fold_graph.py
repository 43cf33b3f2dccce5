"""The graph walker of :mod:`edgebn.fold`: which layer absorbs each BN, and its folded weights.

A BN in inference mode is the per-channel affine map ``BN(y) = s⊗y + t``::

    s = γ/σ,    t = β − μ⊗s,    σ = sqrt(var + ε)

**Backward**, into the linear layer ``y = XW + b`` (Dense, Conv, DepthwiseConv, ConvTranspose,
SeparableConv: its pointwise kernel) whose output feeds only the BN::

    W' = γ⊗W/σ (over output channels),   b' = γ⊗(b − μ)/σ + β

and through a ``Concatenate`` along the BN's axis whose every input is such a layer: each
takes its own slice of ``s`` and ``t``.

**Forward**, into the first linear layer ``z = XW + b`` that the BN's output reaches through
layers that commute with a per-channel affine map (dropout, pooling, Flatten)::

    W' = W⊗s (over input channels),   b' = b + Σ W⊗t (over kernel taps and inputs)

For a SeparableConv (depthwise ``D``, pointwise ``P``) the scale goes into ``D`` per input
channel and the shift through both: ``D' = D⊗s``, ``b' = b + Pᵀ(Σ_taps D⊗t)``. The shift
cannot pass zero padding (``padding='same'``: border outputs would see 0, not ``t``), nor a
transposed convolution; a negative scale cannot pass a max-pool (``max(s·x) = s·min(x)``).
Weights are folded in float64, per layer name, in :attr:`Folder.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LayerFold:
    bn: str  # the BN layer; inside a nested model its path, "backbone/conv1_bn"
    folded: bool
    into: str | None = None  # the absorbing layer(s), ", "-joined after a Concatenate
    direction: str | None = None  # "backward" | "forward"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.folded:
            return {"bn": self.bn, "folded": True, "into": self.into, "direction": self.direction}
        return {"bn": self.bn, "folded": False, "reason": self.reason}


# ---------------------------------------------------------------- the graph, as nodes


@dataclass
class Graph:
    """The functional graph as nodes, with each tensor's producer and consumers."""

    nodes: list[Any] = field(default_factory=list)  # keras Node, topological order
    producer: dict[int, Any] = field(default_factory=dict)  # id(tensor) -> node
    consumers: dict[int, list[Any]] = field(default_factory=dict)  # id(tensor) -> nodes
    outputs: set[int] = field(default_factory=set)  # ids of the model's output tensors
    calls: dict[str, int] = field(default_factory=dict)  # layer name -> nodes in this graph


def graph(model) -> Graph:
    g = Graph(outputs={id(t) for t in model.outputs})
    seen: set[int] = set()

    def visit(tensor) -> None:
        op, node_index, _ = tensor._keras_history
        if op is None:
            return
        node = op._inbound_nodes[node_index]
        g.producer[id(tensor)] = node
        if id(node) in seen:
            return
        seen.add(id(node))
        for t in node.input_tensors:
            visit(t)
        g.nodes.append(node)  # after its inputs: topological order
        for t in node.input_tensors:
            g.consumers.setdefault(id(t), []).append(node)
        g.calls[op.name] = g.calls.get(op.name, 0) + 1

    for t in model.outputs:
        visit(t)
    return g


def _kind(layer) -> str:
    return type(layer).__name__


# ---------------------------------------------------------------- layer classification


def _layer_classes():
    from keras import layers as L

    return {  # linear kinds: how the kernel indexes channels
        "dense": (L.Dense,),
        "conv": (L.Conv1D, L.Conv2D, L.Conv3D),
        "depthwise": (L.DepthwiseConv1D, L.DepthwiseConv2D),
        "separable": (L.SeparableConv1D, L.SeparableConv2D),
        "transpose": (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose),
        # layers an affine map passes unchanged (under the conditions in _refuses_to_pass)
        "identity": (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
                     L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.ActivityRegularization),
        "maxpool": (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D,
                    L.GlobalMaxPooling2D, L.GlobalMaxPooling3D),
        "avgpool": (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
                    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D),
        "flatten": (L.Flatten,),
        "concatenate": (L.Concatenate,),
    }


_LINEAR = ("dense", "conv", "depthwise", "separable", "transpose")


def layer_kind(layer) -> str | None:
    for kind, classes in _layer_classes().items():
        if type(layer) in classes:
            return kind
    return None


def _linear_kind(layer) -> str | None:
    kind = layer_kind(layer)
    return kind if kind in _LINEAR else None


def is_graph_model(layer) -> bool:
    """A functional or Sequential model: its graph is visible (a subclassed model's is not)."""
    import keras

    return isinstance(layer, keras.Model) and hasattr(layer, "_inbound_nodes") \
        and bool(getattr(layer, "outputs", None))


def _is_identity_activation(layer) -> bool:
    from keras import activations

    return getattr(layer, "activation", None) in (None, activations.linear)


def _channel_axis(layer, rank: int) -> int:
    """The axis of ``layer``'s output (rank ``rank``) that its kernel's channels index."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return 1
    return rank - 1


def _bn_axis(bn, rank: int) -> int | None:
    axis = bn.axis
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            return None
        axis = axis[0]
    return axis % rank


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """``s = γ/σ`` and ``t = β − μ⊗s``, in float64, from the BN's moving statistics."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.gamma is not None else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.beta is not None else np.zeros_like(mean)
    sigma = np.sqrt(var + bn.epsilon)
    scale = gamma / sigma
    return scale, beta - mean * scale


def _weights(layer, state: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The layer's weights by attribute name, float64, as folded so far (bias 0 if none)."""
    if layer.name not in state:
        names = ("depthwise_kernel", "pointwise_kernel") if _linear_kind(layer) == "separable" \
            else ("kernel",)
        w = {name: np.asarray(getattr(layer, name).numpy(), np.float64) for name in names}
        filters = _out_channels(layer, w)
        w["bias"] = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias
                     else np.zeros(filters, np.float64))
        state[layer.name] = w
    return state[layer.name]


def _out_channels(layer, w: dict[str, np.ndarray]) -> int:
    kind = _linear_kind(layer)
    if kind == "separable":
        return w["pointwise_kernel"].shape[-1]
    kernel = w["kernel"]
    if kind == "depthwise":
        return kernel.shape[-2] * kernel.shape[-1]
    if kind == "transpose":
        return kernel.shape[-2]
    return kernel.shape[-1]


def _scale_outputs(kind: str, w: dict[str, np.ndarray], s: np.ndarray) -> None:
    """``W⊗s`` over output channels, in each layer's own kernel layout."""
    if kind == "separable":  # pointwise (*1, in * multiplier, out)
        w["pointwise_kernel"] = w["pointwise_kernel"] * s
    elif kind == "depthwise":  # (*k, in, multiplier): output channel = in * multiplier + m
        w["kernel"] = w["kernel"] * s.reshape(w["kernel"].shape[-2:])
    elif kind == "transpose":  # (*k, out, in)
        w["kernel"] = w["kernel"] * s[:, None]
    else:  # dense (in, out), conv (*k, in, out)
        w["kernel"] = w["kernel"] * s


def _absorb_inputs(kind: str, w: dict[str, np.ndarray], s: np.ndarray, t: np.ndarray) -> None:
    """``W' = W⊗s`` over input channels, ``b' = b + Σ W⊗t`` (``t`` is 0 for a transpose)."""
    if kind == "transpose":  # (*k, out, in)
        w["kernel"] = w["kernel"] * s
    elif kind == "separable":  # D (*k, in, m), P (*1, in * m, out): b' = b + Pᵀ(Σ_taps D⊗t)
        depthwise, pointwise = w["depthwise_kernel"], w["pointwise_kernel"]
        shift = (depthwise * t[:, None]).reshape(-1, *depthwise.shape[-2:]).sum(0).reshape(-1)
        w["bias"] = w["bias"] + shift @ pointwise.reshape(-1, pointwise.shape[-1])
        w["depthwise_kernel"] = depthwise * s[:, None]
    elif kind == "depthwise":  # (*k, in, m): output channel c*m + j reads input channel c
        kernel = w["kernel"]
        taps = kernel * t[:, None]
        w["bias"] = w["bias"] + taps.reshape(-1, *kernel.shape[-2:]).sum(0).reshape(-1)
        w["kernel"] = kernel * s[:, None]
    else:  # dense (in, out) and conv (*k, in, out)
        kernel = w["kernel"]
        w["bias"] = w["bias"] + (kernel * t[:, None]).reshape(-1, kernel.shape[-1]).sum(0)
        w["kernel"] = kernel * s[:, None]


def _refuses_to_pass(layer, kind: str | None, s: np.ndarray, channels_last: bool) -> str | None:
    """Why the affine map cannot pass ``layer`` unchanged, or None when it can."""
    if kind == "identity":
        return None  # the identity at inference
    if kind in ("maxpool", "avgpool"):
        if kind == "maxpool" and np.any(s < 0):
            return (f"a negative scale cannot pass the max-pool {layer.name} "
                    f"({int(np.sum(s < 0))} of {s.size} channels have γ < 0)")
        if getattr(layer, "data_format", "channels_last") != \
                ("channels_last" if channels_last else "channels_first"):
            return f"{layer.name} pools over the BN's channel axis"
        return None
    if is_graph_model(layer):
        return f"{layer.name} after it is a nested model (a BN folds within its own model)"
    what = "is not linear" if not hasattr(layer, "activation") else \
        f"applies {getattr(layer.activation, '__name__', layer.activation)}"
    return f"{layer.name} after it ({_kind(layer)}) {what}"


# ---------------------------------------------------------------- the two directions


@dataclass(frozen=True)
class _Route:
    """Where a BN's output goes forward: the linear node, and how its channels arrive there."""

    node: Any
    channels_last: bool
    expand: int | None  # after Flatten: positions per channel (feature = position * C + c)


class Folder:
    def __init__(self, model):
        self.model = model
        self.g = graph(model)
        self.removed: set[int] = set()  # ids of BN nodes folded away
        self.state: dict[str, dict[str, np.ndarray]] = {}  # layer name -> folded weights

    # A folded BN is an identity: look through it both ways.
    def producer(self, tensor):
        node = self.g.producer.get(id(tensor))
        while node is not None and id(node) in self.removed:
            node = self.g.producer.get(id(node.input_tensors[0]))
        return node

    def consumers(self, tensor) -> list[Any]:
        found = []
        for node in self.g.consumers.get(id(tensor), []):
            if id(node) in self.removed:
                found.extend(self.consumers(node.output_tensors[0]))
            else:
                found.append(node)
        return found

    def is_output(self, tensor) -> bool:
        if id(tensor) in self.g.outputs:
            return True
        return any(self.is_output(n.output_tensors[0])
                   for n in self.g.consumers.get(id(tensor), []) if id(n) in self.removed)

    def fold(self, node) -> LayerFold:
        bn = node.operation
        if self.g.calls.get(bn.name, 0) > 1:
            return LayerFold(bn.name, False, reason=f"{bn.name} is called {self.g.calls[bn.name]} "
                                                    "times in the graph (a shared layer)")
        rank = len(node.input_tensors[0].shape)
        axis = _bn_axis(bn, rank)
        if axis is None:
            return LayerFold(bn.name, False, reason=f"normalizes over several axes ({bn.axis})")
        s, t = bn_affine(bn)
        backward = self.backward(node, axis, rank, s, t)
        if isinstance(backward, LayerFold):
            return backward
        forward = self.forward(node, axis, rank, s, t)
        if isinstance(forward, LayerFold):
            return forward
        return LayerFold(bn.name, False, reason=f"backward: {backward}; forward: {forward}")

    # -------------------------------------------------------- backward

    def backward(self, node, axis: int, rank: int, s, t) -> LayerFold | str:
        prev = self.producer(node.input_tensors[0])
        if prev is None:
            return "its input is the model input"
        if layer_kind(prev.operation) == "concatenate":
            return self._backward_concat(node, prev, axis, rank, s, t)
        why = self._owned_linear(prev, node, axis, rank)
        if why is not None:
            return why
        self._absorb_outputs(prev.operation, s, t)
        self.removed.add(id(node))
        return LayerFold(node.operation.name, True, into=prev.operation.name, direction="backward")

    def _owned_linear(self, prev, consumer, axis: int, rank: int) -> str | None:
        """Why ``prev`` cannot absorb a BN on its output read only by ``consumer``, or None."""
        layer = prev.operation
        kind = _linear_kind(layer)
        if kind is None:
            return f"its input comes from {layer.name} ({_kind(layer)}), not a Dense or convolution"
        if not _is_identity_activation(layer):
            return f"{layer.name} applies {layer.activation.__name__} before the BN"
        if self.g.calls.get(layer.name, 0) > 1:
            return f"{layer.name} is a shared layer"
        out = prev.output_tensors[0]
        others = [n.operation.name for n in self.consumers(out) if n is not consumer]
        if others or self.is_output(out):
            return f"the output of {layer.name} also feeds {', '.join(others) or 'the model output'}"
        if axis != _channel_axis(layer, rank):
            return f"BN axis {axis} is not the channel axis of {layer.name}"
        return None

    def _absorb_outputs(self, layer, s, t) -> None:
        w = _weights(layer, self.state)
        _scale_outputs(_linear_kind(layer), w, s)  # W' = γ⊗W/σ
        w["bias"] = w["bias"] * s + t  # b' = γ⊗(b − μ)/σ + β

    def _backward_concat(self, node, concat, axis: int, rank: int, s, t) -> LayerFold | str:
        """Each input of the Concatenate absorbs its own slice of ``s`` and ``t``."""
        layer = concat.operation
        out = concat.output_tensors[0]
        others = [n.operation.name for n in self.consumers(out) if n is not node]
        if self.g.calls.get(layer.name, 0) > 1 or others or self.is_output(out):
            return (f"its input comes from {layer.name} (Concatenate), whose output also feeds "
                    f"{', '.join(others) or 'the model output'}")
        if layer.axis % rank != axis:
            return f"{layer.name} concatenates axis {layer.axis % rank}, the BN normalizes axis {axis}"
        parts = [self.producer(x) for x in concat.input_tensors]
        if any(p is None for p in parts) or len({id(p) for p in parts}) < len(parts):
            return f"its input comes from {layer.name} (Concatenate) of the model input or a repeated input"
        for part in parts:
            why = self._owned_linear(part, concat, axis, rank)
            if why is not None:
                return f"its input comes from {layer.name} (Concatenate), and {why}"
        sizes = np.cumsum([x.shape[axis] for x in concat.input_tensors])[:-1]
        for part, s_i, t_i in zip(parts, np.split(s, sizes), np.split(t, sizes), strict=True):
            self._absorb_outputs(part.operation, s_i, t_i)
        self.removed.add(id(node))
        return LayerFold(node.operation.name, True, direction="backward",
                         into=", ".join(p.operation.name for p in parts))

    # -------------------------------------------------------- forward

    def forward(self, node, axis: int, rank: int, s, t) -> LayerFold | str:
        """Follow the BN's output through affine-commuting layers to one linear layer."""
        route = self._follow(node, axis, rank, s)
        if isinstance(route, str):
            return route
        layer = route.node.operation  # its activation, if any, comes after XW + b: no matter
        if route.expand is not None:
            s, t = np.tile(s, route.expand), np.tile(t, route.expand)
        why = self._refuses_to_absorb(route, axis, t)
        if why is not None:
            return why
        w = _weights(layer, self.state)  # only now: a refused layer keeps its own weights
        _absorb_inputs(_linear_kind(layer), w, s, t)
        self.removed.add(id(node))
        return LayerFold(node.operation.name, True, into=layer.name, direction="forward")

    def _next(self, tensor, path: list[str]):
        """The one node that reads ``tensor``, or why there is not one to follow."""
        nxt = self.consumers(tensor)
        if self.is_output(tensor) or not nxt:
            return "nothing linear follows it (it reaches the model output)" if not path else \
                f"nothing linear follows it ({' -> '.join(path)} reaches the model output)"
        if len(nxt) > 1:
            return f"its output feeds {len(nxt)} layers ({', '.join(n.operation.name for n in nxt)})"
        layer = nxt[0].operation
        if self.g.calls.get(layer.name, 0) > 1:
            return f"{layer.name} after it is a shared layer"
        if len(nxt[0].input_tensors) != 1:
            return f"{layer.name} after it combines several inputs ({_kind(layer)})"
        return nxt[0]

    def _follow(self, node, axis: int, rank: int, s) -> _Route | str:
        tensor = node.output_tensors[0]
        channels_last = axis == rank - 1
        path: list[str] = []  # for messages
        expand = None
        while True:
            nnode = self._next(tensor, path)
            if isinstance(nnode, str):
                return nnode
            layer = nnode.operation
            kind = layer_kind(layer)
            if kind in _LINEAR:
                return _Route(nnode, channels_last, expand)
            if (kind == "flatten" and channels_last and expand is None
                    and getattr(layer, "data_format", "channels_last") == "channels_last"):
                expand = int(np.prod(nnode.input_tensors[0].shape[1:-1]))
            else:
                why = _refuses_to_pass(layer, kind, s, channels_last)
                if why is not None:
                    return why
            path.append(layer.name)
            tensor = nnode.output_tensors[0]

    def _refuses_to_absorb(self, route: _Route, axis: int, t) -> str | None:
        layer = route.node.operation
        kind = _linear_kind(layer)
        in_rank = len(route.node.input_tensors[0].shape)
        in_axis = in_rank - 1 if (route.channels_last or route.expand is not None) else 1
        if kind == "dense":
            if in_axis != in_rank - 1:
                return f"{layer.name} (Dense) reads the last axis, the BN scales axis {axis}"
        elif in_axis != _channel_axis(layer, in_rank):
            return f"BN axis {axis} is not the input channel axis of {layer.name}"
        shifted = bool(np.any(t != 0))
        if kind in ("conv", "depthwise", "separable") and shifted and layer.padding != "valid":
            return (f"shift cannot pass the zero padding of {layer.name} "
                    f"(padding={layer.padding!r})")
        if kind == "conv" and getattr(layer, "groups", 1) != 1:
            return f"{layer.name} is a grouped convolution (groups={layer.groups})"
        if kind == "transpose" and shifted:
            return (f"shift cannot pass the transposed convolution {layer.name} "
                    "(its outputs sum different numbers of kernel taps)")
        return None
