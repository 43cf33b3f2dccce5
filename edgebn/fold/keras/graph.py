"""The graph walker of :mod:`edgebn.fold.keras.keras_fold`: which layer absorbs each BN, and its
folded weights.

A BN in inference mode is ``BN(y) = s⊗y + t`` per channel, ``s = γ/σ``, ``t = β − μ⊗s``,
``σ = sqrt(var + ε)``. **Backward**, into the linear layer ``y = XW + b`` whose output feeds
only the BN (Dense, Conv, DepthwiseConv, ConvTranspose; a SeparableConv's pointwise kernel),
or into each input of a ``Concatenate`` along the BN's axis, each its slice of ``s``, ``t``::

    W' = γ⊗W/σ (over output channels),   b' = γ⊗(b − μ)/σ + β

**Forward**, into the first linear layer ``z = XW + b`` that the BN's output reaches through
layers that commute with a per-channel affine map (dropout, pooling, Flatten)::

    W' = W⊗s (over input channels),   b' = b + Σ W⊗t (over kernel taps and inputs)

and for a SeparableConv (depthwise ``D``, pointwise ``P``): ``D' = D⊗s``, ``b' = b + Pᵀ(Σ_taps
D⊗t)``. The shift cannot pass zero padding (``padding='same'``: border outputs would see 0,
not ``t``) nor a transposed convolution; a negative scale cannot pass a max-pool
(``max(s·x) = s·min(x)``). Weights fold in float64, by layer name, in :attr:`Folder.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import InvalidModelError

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras


@dataclass(frozen=True)
class LayerFold:
    bn: str  # the BN layer; inside a nested model its path, "backbone/conv1_bn"
    folded: bool
    into: str | None = None  # the absorbing layer(s), ", "-joined after a Concatenate
    direction: str | None = None  # "backward" | "forward"
    reason: str | None = None
    layer_type: str = "BatchNormalization"  # or "Normalization": input normalization, not BN

    def to_json(self) -> JsonDict:
        key = "bn" if self.layer_type == "BatchNormalization" else "layer"
        extra = {} if key == "bn" else {"type": self.layer_type}
        if self.folded:
            return {key: self.bn, **extra, "folded": True, "into": self.into,
                    "direction": self.direction}
        return {key: self.bn, **extra, "folded": False, "reason": self.reason}


class Node(Protocol):
    """One call of a layer in a functional graph (Keras' Node: its class is not public API)."""

    @property
    def operation(self) -> keras.layers.Layer: ...

    @property
    def input_tensors(self) -> list[keras.KerasTensor]: ...

    @property
    def output_tensors(self) -> list[keras.KerasTensor]: ...


@dataclass
class Graph:
    """The functional graph as nodes, with each tensor's producer and consumers."""

    nodes: list[Node] = field(default_factory=list)  # topological order
    producer: dict[int, Node] = field(default_factory=dict)  # id(tensor) -> node
    consumers: dict[int, list[Node]] = field(default_factory=dict)  # id(tensor) -> nodes
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


_KINDS = {  # linear kinds first (each kernel indexes channels its own way)
    "dense": "Dense",
    "conv": "Conv1D Conv2D Conv3D",
    "depthwise": "DepthwiseConv1D DepthwiseConv2D",
    "separable": "SeparableConv1D SeparableConv2D",
    "transpose": "Conv1DTranspose Conv2DTranspose Conv3DTranspose",
    # layers an affine map passes unchanged (under the conditions in _refuses_to_pass)
    "identity": "Dropout SpatialDropout1D SpatialDropout2D SpatialDropout3D GaussianNoise "
                "GaussianDropout AlphaDropout ActivityRegularization",
    "maxpool": "MaxPooling1D MaxPooling2D MaxPooling3D GlobalMaxPooling1D GlobalMaxPooling2D "
               "GlobalMaxPooling3D",
    "avgpool": "AveragePooling1D AveragePooling2D AveragePooling3D GlobalAveragePooling1D "
               "GlobalAveragePooling2D GlobalAveragePooling3D",
    "flatten": "Flatten",
    "concatenate": "Concatenate",
}
_KIND = {name: kind for kind, names in _KINDS.items() for name in names.split()}
_LINEAR = ("dense", "conv", "depthwise", "separable", "transpose")


def layer_kind(layer) -> str | None:
    """The kind of a Keras layer (exactly that class: a subclass may compute something else)."""
    cls = type(layer)
    return _KIND.get(cls.__name__) if cls.__module__.startswith("keras.") else None


def _linear_kind(layer) -> str | None:
    return kind if (kind := layer_kind(layer)) in _LINEAR else None


def is_graph_model(layer) -> bool:
    """A functional or Sequential model: its graph is visible (a subclassed model's is not)."""
    import keras  # lazy: Keras imports TensorFlow (seconds)

    return isinstance(layer, keras.Model) and hasattr(layer, "_inbound_nodes") \
        and bool(getattr(layer, "outputs", None))


def as_functional(model):
    import keras  # lazy: Keras imports TensorFlow (seconds)

    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise InvalidModelError("a Sequential model needs a known input shape to fold. "
                                    f"Received: {model.name} without an Input")
        one = lambda ts: ts[0] if len(ts) == 1 else ts  # noqa: E731 - a bare tensor, not a [one]
        return keras.Model(one(model.inputs), one(model.outputs), name=model.name)
    if not is_graph_model(model):
        raise InvalidModelError(f"cannot fold a subclassed model ({type(model).__name__}): "
                                "only functional and Sequential models expose their graph")
    return model


def _is_identity_activation(layer) -> bool:
    from keras import activations  # lazy: Keras imports TensorFlow (seconds)

    return getattr(layer, "activation", None) in (None, activations.linear)


def _channel_axis(layer, rank: int) -> int:
    """The axis of ``layer``'s output (rank ``rank``) that its kernel's channels index."""
    return 1 if getattr(layer, "data_format", "channels_last") == "channels_first" else rank - 1


def _bn_axis(bn, rank: int) -> int | None:
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    return axes[0] % rank if len(axes) == 1 else None


def bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """``s = γ/σ`` and ``t = β − μ⊗s``, in float64, from the BN's moving statistics."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.gamma is not None else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.beta is not None else np.zeros_like(mean)
    sigma = np.sqrt(var + bn.epsilon)
    scale = gamma / sigma
    return scale, beta - mean * scale


def is_normalization(layer) -> bool:
    """A Keras Normalization layer (exactly that class)."""
    return type(layer).__name__ == "Normalization" and type(layer).__module__.startswith("keras.")


def normalization_affine(layer, rank: int) -> tuple[np.ndarray, np.ndarray, int] | str:
    """``s`` and ``t`` of a Keras Normalization, ``(x − mean) / max(sqrt(var), ε)`` (or its
    inverse, ``mean + x · max(sqrt(var), ε)``), in float64, and the one axis they run along;
    or why it is not one per-channel map."""
    from keras import backend  # lazy: Keras imports TensorFlow (seconds)

    axes = sorted({a % rank for a in (layer.axis or ())})
    if len(axes) != 1:
        return f"normalizes per {len(axes)} axes ({layer.axis}), not per channel of one axis"
    mean = np.asarray(layer.mean, np.float64).reshape(-1)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)),
                     backend.epsilon())
    if layer.invert:
        return std, mean, axes[0]
    return 1.0 / std, -mean / std, axes[0]


def _weights(layer, state: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The layer's weights by attribute name, float64, as folded so far (bias 0 if none)."""
    if layer.name not in state:
        names = ("depthwise_kernel", "pointwise_kernel") if _linear_kind(layer) == "separable" \
            else ("kernel",)
        w = {name: np.asarray(getattr(layer, name).numpy(), np.float64) for name in names}
        w["bias"] = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias
                     else np.zeros(_out_channels(_linear_kind(layer), w), np.float64))
        state[layer.name] = w
    return state[layer.name]


def _out_channels(kind: str | None, w: dict[str, np.ndarray]) -> int:
    if kind == "separable":
        return w["pointwise_kernel"].shape[-1]
    shape = w["kernel"].shape  # depthwise (*k, in, m), transpose (*k, out, in), else (..., out)
    return {"depthwise": shape[-2] * shape[-1], "transpose": shape[-2]}.get(kind, shape[-1])


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
    elif kind in ("depthwise", "separable"):  # D (*k, in, m): channel c*m + j reads channel c
        name = "kernel" if kind == "depthwise" else "depthwise_kernel"
        depthwise = w[name]
        shift = (depthwise * t[:, None]).reshape(-1, *depthwise.shape[-2:]).sum(0).reshape(-1)
        if kind == "separable":  # b' = b + Pᵀ(Σ_taps D⊗t), P (*1, in * m, out)
            shift = shift @ w["pointwise_kernel"].reshape(-1, w["pointwise_kernel"].shape[-1])
        w["bias"] = w["bias"] + shift
        w[name] = depthwise * s[:, None]
    else:  # dense (in, out) and conv (*k, in, out)
        kernel = w["kernel"]
        w["bias"] = w["bias"] + (kernel * t[:, None]).reshape(-1, kernel.shape[-1]).sum(0)
        w["kernel"] = kernel * s[:, None]


def _refuses_to_pass(layer, kind: str | None, s: np.ndarray, channels_last: bool) -> str | None:
    """Why the affine map cannot pass ``layer`` unchanged, or None when it can."""
    if kind == "maxpool" and np.any(s < 0):
        return (f"a negative scale cannot pass the max-pool {layer.name} "
                f"({int(np.sum(s < 0))} of {s.size} channels have γ < 0)")
    if kind in ("maxpool", "avgpool") and (getattr(layer, "data_format", "channels_last")
                                           == "channels_last") != channels_last:
        return f"{layer.name} pools over the BN's channel axis"
    if kind in ("identity", "maxpool", "avgpool"):
        return None  # dropout and noise are the identity at inference
    if is_graph_model(layer):
        return f"{layer.name} after it is a nested model (a BN folds within its own model)"
    what = "is not linear" if not hasattr(layer, "activation") else \
        f"applies {getattr(layer.activation, '__name__', layer.activation)}"
    return f"{layer.name} after it ({type(layer).__name__}) {what}"


@dataclass(frozen=True)
class _Route:
    """Where a BN's output goes forward: the linear node, and how its channels arrive there."""

    node: Node
    channels_last: bool
    expand: int | None  # after Flatten: positions per channel (feature = position * C + c)


class Folder:
    """Decides each BN's fold in one functional model, keeping the folded weights."""

    def __init__(self, model):
        self.g = graph(model)
        self.removed: set[int] = set()  # ids of BN nodes folded away
        self.state: dict[str, dict[str, np.ndarray]] = {}  # layer name -> folded weights

    # A folded BN is an identity: look through it both ways.
    def producer(self, tensor):
        node = self.g.producer.get(id(tensor))
        while node is not None and id(node) in self.removed:
            node = self.g.producer.get(id(node.input_tensors[0]))
        return node

    def consumers(self, tensor: keras.KerasTensor) -> list[Node]:
        found = []
        for node in self.g.consumers.get(id(tensor), []):
            found.extend(self.consumers(node.output_tensors[0]) if id(node) in self.removed
                         else [node])
        return found

    def is_output(self, tensor) -> bool:
        if id(tensor) in self.g.outputs:
            return True
        return any(self.is_output(n.output_tensors[0])
                   for n in self.g.consumers.get(id(tensor), []) if id(n) in self.removed)

    def fold(self, node) -> LayerFold:
        """Fold the BN (or Normalization) at ``node`` backward, else forward, else say why
        neither."""
        bn = node.operation
        kind = type(bn).__name__ if is_normalization(bn) else "BatchNormalization"
        if self.g.calls.get(bn.name, 0) > 1:
            return LayerFold(bn.name, False, reason=f"{bn.name} is called {self.g.calls[bn.name]} "
                                                    "times in the graph (a shared layer)",
                             layer_type=kind)
        rank = len(node.input_tensors[0].shape)
        if is_normalization(bn):
            affine = normalization_affine(bn, rank)
            if isinstance(affine, str):
                return LayerFold(bn.name, False, reason=affine, layer_type=kind)
            s, t, axis = affine
        else:
            axis = _bn_axis(bn, rank)
            if axis is None:
                return LayerFold(bn.name, False, reason=f"normalizes over several axes ({bn.axis})")
            s, t = bn_affine(bn)
        backward = self.backward(node, axis, rank, s, t)
        if isinstance(backward, LayerFold):
            return replace(backward, layer_type=kind)
        forward = self.forward(node, axis, rank, s, t)
        if isinstance(forward, LayerFold):
            return replace(forward, layer_type=kind)
        return LayerFold(bn.name, False, reason=f"backward: {backward}; forward: {forward}",
                         layer_type=kind)

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
            return (f"its input comes from {layer.name} ({type(layer).__name__}), "
                    "not a Dense or convolution")
        if not _is_identity_activation(layer):
            return f"{layer.name} applies {layer.activation.__name__} before the BN"
        if self.g.calls.get(layer.name, 0) > 1:
            return f"{layer.name} is a shared layer"
        out = prev.output_tensors[0]
        others = [n.operation.name for n in self.consumers(out) if n is not consumer]
        if others or self.is_output(out):
            return (f"the output of {layer.name} also feeds "
                    f"{', '.join(others) or 'the model output'}")
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
            return (f"{layer.name} concatenates axis {layer.axis % rank}, the BN normalizes axis "
                    f"{axis}")
        parts = [self.producer(x) for x in concat.input_tensors]
        if any(p is None for p in parts) or len({id(p) for p in parts}) < len(parts):
            return (f"its input comes from {layer.name} (Concatenate) of the model input or a "
                    "repeated input")
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
            return (f"its output feeds {len(nxt)} layers "
                    f"({', '.join(n.operation.name for n in nxt)})")
        layer = nxt[0].operation
        if self.g.calls.get(layer.name, 0) > 1:
            return f"{layer.name} after it is a shared layer"
        if len(nxt[0].input_tensors) != 1:
            return f"{layer.name} after it combines several inputs ({type(layer).__name__})"
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
        """Why the linear layer at the end of ``route`` cannot absorb the BN, or None."""
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
