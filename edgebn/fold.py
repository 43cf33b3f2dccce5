"""Fold Batch Normalization into the linear layers around it, in Keras, and prove it exact.

In inference mode a BN layer computes, per channel ``c`` of its axis,

    BN(y) = γ⊗(y − μ)/σ + β,        σ = sqrt(var + ε)

which is an affine map ``BN(y) = s⊗y + t`` with ``s = γ/σ`` and ``t = β − μ⊗s``.

**Backward** (the seed's fold): when ``y = XW + b`` comes from a linear layer whose
output feeds only the BN, the pair computes ``X(W⊗s) + (s⊗b + t)``::

    W' = γ⊗W/σ,        b' = γ⊗(b − μ)/σ + β

with ``s`` broadcast over the axis that indexes output channels in that layer's kernel.

**Forward**: when the BN's input is not linear (an activation, an ``Add``, the model
input) but its output reaches a linear layer ``z = XW + b`` through layers that commute
with a per-channel affine map, that layer absorbs it::

    W' = W⊗s (over input channels),   b' = b + Σ W⊗t (over kernel positions and inputs)

This is valid only where the affine map passes unchanged: through nothing non-linear;
the shift ``t`` cannot pass a convolution's zero padding (border outputs would see 0, not
``t``); a negative scale cannot pass a max-pool (``max(s·x) = s·min(x)`` for ``s < 0``).

Every BN gets a :class:`LayerFold`: folded into which layer and in which direction, or
the exact reason it stays. :func:`fold_model` then checks the folded model against the
original on real inputs and refuses a result whose outputs differ beyond a tolerance.
Weights are folded in float64 and stored in the layer's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgebn.errors import FoldError, InvalidModelError

DEFAULT_TOLERANCE = 1e-5  # max |Δ| allowed, relative to the largest |output| of the original


@dataclass(frozen=True)
class LayerFold:
    bn: str
    folded: bool
    into: str | None = None
    direction: str | None = None  # "backward" | "forward"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.folded:
            return {"bn": self.bn, "folded": True, "into": self.into, "direction": self.direction}
        return {"bn": self.bn, "folded": False, "reason": self.reason}


@dataclass(frozen=True)
class FoldResult:
    model: Any  # the folded keras.Model (BN layers that could not fold are still in it)
    layers: tuple[LayerFold, ...]
    max_abs_diff: float
    max_rel_diff: float  # max |Δ| / max |original output|
    samples: int
    inputs: str  # where the equivalence inputs came from
    tolerance: float
    source: str | None = None
    out: str | None = None

    @property
    def all_folded(self) -> bool:
        return all(f.folded for f in self.layers)

    @property
    def kept(self) -> list[LayerFold]:
        return [f for f in self.layers if not f.folded]

    def to_json(self) -> dict[str, Any]:
        return {"model": self.source, "out": self.out, "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff, "tolerance": self.tolerance,
                "samples": self.samples, "inputs": self.inputs,
                "folded": sum(f.folded for f in self.layers), "kept": len(self.kept),
                "layers": [f.to_json() for f in self.layers]}


# ---------------------------------------------------------------- the graph, as nodes


@dataclass
class _Graph:
    """The functional graph as nodes, with each tensor's producer and consumers."""

    nodes: list[Any] = field(default_factory=list)  # keras Node, topological order
    producer: dict[int, Any] = field(default_factory=dict)  # id(tensor) -> node
    consumers: dict[int, list[Any]] = field(default_factory=dict)  # id(tensor) -> nodes
    outputs: set[int] = field(default_factory=set)  # ids of the model's output tensors
    calls: dict[str, int] = field(default_factory=dict)  # layer name -> nodes in this graph


def _graph(model) -> _Graph:
    g = _Graph(outputs={id(t) for t in model.outputs})
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


def _linear_kinds():
    from keras import layers as L

    # kind -> (layer classes, how the kernel indexes output channels)
    return {
        "dense": (L.Dense,),
        "conv": (L.Conv1D, L.Conv2D, L.Conv3D),
        "depthwise": (L.DepthwiseConv1D, L.DepthwiseConv2D),
        "transpose": (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose),
    }


def _linear_kind(layer) -> str | None:
    for kind, classes in _linear_kinds().items():
        if type(layer) in classes:
            return kind
    return None


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


def _bn_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """``s = γ/σ`` and ``t = β − μ⊗s``, in float64, from the BN's moving statistics."""
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.gamma is not None else np.ones_like(mean)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.beta is not None else np.zeros_like(mean)
    sigma = np.sqrt(var + bn.epsilon)
    scale = gamma / sigma
    return scale, beta - mean * scale


def _weights(layer, state: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The layer's kernel and bias in float64, as already folded so far (bias 0 if none)."""
    if layer.name not in state:
        kernel = np.asarray(layer.kernel.numpy(), np.float64)
        filters = _out_channels(layer, kernel)
        bias = (np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias
                else np.zeros(filters, np.float64))
        state[layer.name] = {"kernel": kernel, "bias": bias}
    return state[layer.name]


def _out_channels(layer, kernel: np.ndarray) -> int:
    kind = _linear_kind(layer)
    if kind == "depthwise":
        return kernel.shape[-2] * kernel.shape[-1]
    if kind == "transpose":
        return kernel.shape[-2]
    return kernel.shape[-1]


def _scale_outputs(kind: str, kernel: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``W⊗s`` over output channels, in each layer's own kernel layout."""
    if kind == "depthwise":  # (*k, in, multiplier): output channel = in * multiplier + m
        return kernel * s.reshape(kernel.shape[-2], kernel.shape[-1])
    if kind == "transpose":  # (*k, out, in)
        return kernel * s[:, None]
    return kernel * s  # dense (in, out), conv (*k, in, out)


# ---------------------------------------------------------------- the two directions


class _Folder:
    def __init__(self, model):
        self.model = model
        self.g = _graph(model)
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
        s, t = _bn_affine(bn)
        backward = self.backward(node, axis, rank, s, t)
        if isinstance(backward, LayerFold):
            return backward
        forward = self.forward(node, axis, rank, s, t)
        if isinstance(forward, LayerFold):
            return forward
        return LayerFold(bn.name, False, reason=f"backward: {backward}; forward: {forward}")

    def backward(self, node, axis: int, rank: int, s, t) -> LayerFold | str:
        bn = node.operation
        x = node.input_tensors[0]
        prev = self.producer(x)
        if prev is None:
            return "its input is the model input"
        layer = prev.operation
        kind = _linear_kind(layer)
        if kind is None:
            return f"its input comes from {layer.name} ({_kind(layer)}), not a Dense or convolution"
        if not _is_identity_activation(layer):
            return f"{layer.name} applies {layer.activation.__name__} before the BN"
        if self.g.calls.get(layer.name, 0) > 1:
            return f"{layer.name} is a shared layer"
        others = [n.operation.name for n in self.consumers(prev.output_tensors[0]) if n is not node]
        if others or self.is_output(prev.output_tensors[0]):
            return f"the output of {layer.name} also feeds {', '.join(others) or 'the model output'}"
        if axis != _channel_axis(layer, rank):
            return f"BN axis {axis} is not the channel axis of {layer.name}"
        w = _weights(layer, self.state)
        w["kernel"] = _scale_outputs(kind, w["kernel"], s)  # W' = γ⊗W/σ
        w["bias"] = w["bias"] * s + t  # b' = γ⊗(b − μ)/σ + β
        self.removed.add(id(node))
        return LayerFold(bn.name, True, into=layer.name, direction="backward")

    def forward(self, node, axis: int, rank: int, s, t) -> LayerFold | str:
        """Follow the BN's output through affine-commuting layers to one linear layer."""
        from keras import layers as L

        bn = node.operation
        tensor = node.output_tensors[0]
        channels_last = axis == rank - 1
        path: list[str] = []  # for messages
        expand = None  # after Flatten: per-feature arrays instead of per-channel
        while True:
            nxt = self.consumers(tensor)
            if self.is_output(tensor) or not nxt:
                return "nothing linear follows it (it reaches the model output)" if not path else \
                    f"nothing linear follows it ({' -> '.join(path)} reaches the model output)"
            if len(nxt) > 1:
                return f"its output feeds {len(nxt)} layers ({', '.join(n.operation.name for n in nxt)})"
            nnode = nxt[0]
            layer = nnode.operation
            if self.g.calls.get(layer.name, 0) > 1:
                return f"{layer.name} after it is a shared layer"
            if len(nnode.input_tensors) != 1:
                return f"{layer.name} after it combines several inputs ({_kind(layer)})"
            kind = _linear_kind(layer)
            if kind is not None:
                break
            if isinstance(layer, (L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
                                  L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout,
                                  L.AlphaDropout, L.ActivityRegularization)):
                pass  # the identity at inference
            elif isinstance(layer, (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
                                    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
                                    L.GlobalMaxPooling3D)):
                if np.any(s < 0):
                    return (f"a negative scale cannot pass the max-pool {layer.name} "
                            f"({int(np.sum(s < 0))} of {s.size} channels have γ < 0)")
                if getattr(layer, "data_format", "channels_last") != \
                        ("channels_last" if channels_last else "channels_first"):
                    return f"{layer.name} pools over the BN's channel axis"
            elif isinstance(layer, (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
                                    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
                                    L.GlobalAveragePooling3D)):
                if getattr(layer, "data_format", "channels_last") != \
                        ("channels_last" if channels_last else "channels_first"):
                    return f"{layer.name} pools over the BN's channel axis"
            elif (isinstance(layer, L.Flatten) and channels_last and expand is None
                  and getattr(layer, "data_format", "channels_last") == "channels_last"):
                positions = int(np.prod(nnode.input_tensors[0].shape[1:-1]))
                expand = positions  # feature f = position * C + c
            else:
                what = "is not linear" if not hasattr(layer, "activation") else \
                    f"applies {getattr(layer.activation, '__name__', layer.activation)}"
                return f"{layer.name} after it ({_kind(layer)}) {what}"
            path.append(layer.name)
            tensor = nnode.output_tensors[0]
            rank = len(tensor.shape)
        layer = nnode.operation  # its activation, if any, comes after XW + b: no matter
        in_rank = len(nnode.input_tensors[0].shape)
        if expand is not None:
            s, t = np.tile(s, expand), np.tile(t, expand)
        in_axis = in_rank - 1 if (channels_last or expand is not None) else 1
        if kind == "dense":
            if in_axis != in_rank - 1:
                return f"{layer.name} (Dense) reads the last axis, the BN scales axis {axis}"
        elif in_axis != _channel_axis(layer, in_rank):
            return f"BN axis {axis} is not the input channel axis of {layer.name}"
        shifted = bool(np.any(t != 0))
        if kind in ("conv", "depthwise") and shifted and layer.padding != "valid":
            return (f"shift cannot pass the zero padding of {layer.name} "
                    f"(padding={layer.padding!r})")
        if kind == "conv" and getattr(layer, "groups", 1) != 1:
            return f"{layer.name} is a grouped convolution (groups={layer.groups})"
        if kind == "transpose" and shifted:
            return (f"shift cannot pass the transposed convolution {layer.name} "
                    "(its outputs sum different numbers of kernel taps)")
        w = _weights(layer, self.state)  # only now: a refused layer keeps its own weights
        kernel = w["kernel"]
        if kind == "transpose":
            w["kernel"] = kernel * s  # (*k, out, in)
        elif kind == "depthwise":  # (*k, in, m): output channel c*m + j reads input channel c
            taps = kernel * t[:, None]
            w["bias"] = w["bias"] + taps.reshape(-1, *kernel.shape[-2:]).sum(0).reshape(-1)
            w["kernel"] = kernel * s[:, None]
        else:  # dense (in, out) and conv (*k, in, out): W' = W⊗s, b' = b + Σ W⊗t
            w["bias"] = w["bias"] + (kernel * t[:, None]).reshape(-1, kernel.shape[-1]).sum(0)
            w["kernel"] = kernel * s[:, None]
        self.removed.add(id(node))
        return LayerFold(bn.name, True, into=layer.name, direction="forward")


# ---------------------------------------------------------------- the folded model


def _as_functional(model):
    import keras

    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise InvalidModelError("a Sequential model needs a known input shape to fold")
        one = lambda ts: ts[0] if len(ts) == 1 else ts  # noqa: E731 - a bare tensor, not a list of one
        return keras.Model(one(model.inputs), one(model.outputs), name=model.name)
    if not hasattr(model, "_inbound_nodes") or not getattr(model, "outputs", None):
        raise InvalidModelError(f"cannot fold a subclassed model ({type(model).__name__}): "
                                "only functional and Sequential models expose their graph")
    return model


def plan_fold(model) -> tuple[Any, list[LayerFold], dict[str, dict[str, np.ndarray]], set[str]]:
    """Decide every BN's fold without building anything: (functional model, folds, weights, removed)."""
    from keras import layers as L

    model = _as_functional(model)
    folder = _Folder(model)
    folds: list[LayerFold] = []
    for node in folder.g.nodes:
        if isinstance(node.operation, L.BatchNormalization):
            folds.append(folder.fold(node))
    nested = [la.name for la in model.layers if hasattr(la, "layers") and
              any(isinstance(x, L.BatchNormalization) for x in _all_layers(la))]
    for name in nested:
        folds.append(LayerFold(name, False, reason=f"BN inside the nested model {name} "
                                                   "(fold that model on its own)"))
    removed = {f.bn for f in folds if f.folded}
    return model, folds, folder.state, removed


def _all_layers(layer):
    for sub in getattr(layer, "layers", []):
        yield sub
        yield from _all_layers(sub)


def _rebuild(model, state: dict[str, dict[str, np.ndarray]], removed: set[str]):
    """Clone ``model`` without the removed BN layers, with the folded weights set."""
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name in state and not layer.use_bias:
            config["use_bias"] = True  # the fold gives it a bias
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in removed:
            return args[0]  # a folded BN is the identity now
        return layer(*args, **kwargs)

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in folded.layers:
        if layer.name in state:
            w = state[layer.name]
            dtype = layer.variable_dtype
            layer.kernel.assign(w["kernel"].astype(dtype))
            layer.bias.assign(w["bias"].astype(dtype))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded


def equivalence(original, folded, x: np.ndarray, batch: int = 256) -> tuple[float, float]:
    """(max |Δ|, max |Δ| / max |original|) over ``x``, in inference mode."""
    diff, peak = 0.0, 0.0
    several = isinstance(x, (list, tuple))  # a model with several inputs
    for start in range(0, len(x[0]) if several else len(x), batch):
        xb = [xi[start:start + batch] for xi in x] if several else x[start:start + batch]
        a = [np.asarray(o, np.float64) for o in _outputs(original(xb, training=False))]
        b = [np.asarray(o, np.float64) for o in _outputs(folded(xb, training=False))]
        for ya, yb in zip(a, b, strict=True):
            diff = max(diff, float(np.max(np.abs(ya - yb))))
            peak = max(peak, float(np.max(np.abs(ya))))
    return diff, diff / peak if peak > 0 else diff


def _outputs(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def fold_model(model, x: np.ndarray, tolerance: float = DEFAULT_TOLERANCE,
               inputs: str = "given") -> FoldResult:
    """Fold every BN that can fold; refuse (FoldError) if outputs on ``x`` move beyond ``tolerance``.

    ``tolerance`` is relative: max |Δ| over the largest |output| of the original model.
    """
    if not tolerance > 0:
        raise FoldError(f"--tolerance must be > 0. Received: {tolerance}")
    functional, folds, state, removed = plan_fold(model)
    folded = _rebuild(functional, state, removed)
    x = [np.asarray(xi, np.float32) for xi in x] if isinstance(x, (list, tuple)) \
        else np.asarray(x, np.float32)
    samples = len(x[0]) if isinstance(x, list) else len(x)
    diff, rel = equivalence(functional, folded, x)
    if not np.isfinite(diff) or rel > tolerance:
        raise FoldError(f"the folded model differs from the original by {diff:.3g} "
                        f"({rel:.3g} relative) on {samples} inputs, above the tolerance "
                        f"{tolerance:g}: nothing written")
    return FoldResult(folded, tuple(folds), diff, rel, samples, inputs, tolerance)


def equivalence_inputs(model, data: str | Path | None = None, dataset: str | None = "digits",
                       data_dir: str | Path | None = None, image_size: int = 32,
                       color: str = "grayscale", samples: int = 256,
                       seed: int = 0, loaded: Any = None) -> tuple[np.ndarray, str]:
    """Real inputs for the equivalence check, and a word on where they came from.

    ``data`` (a .npy of inputs) first; else the dataset's test split when its shape is
    the model's (``loaded``, when the caller already has it); else uniform random values
    in [0, 1) (said so in the result).
    """
    from edgebn.errors import EdgebnError

    if len(model.inputs) != 1:
        raise EdgebnError(f"the model has {len(model.inputs)} inputs: edgebn fold checks "
                          "single-input models (call edgebn.fold.fold_model with a list of arrays)")
    want = tuple(model.input_shape[1:])
    if data is not None:
        from edgebn.bench import load_inputs

        x = load_inputs(data)
        if tuple(x.shape[1:]) != want:
            raise EdgebnError(f"--data {data}: inputs of shape {list(x.shape[1:])}, the model "
                              f"expects {list(want)}")
        return x[:samples].astype(np.float32), f"{Path(data).name} ({min(len(x), samples)})"
    if loaded is not None or dataset is not None or data_dir is not None:
        from edgebn.data import load_dataset

        ds = loaded or load_dataset(dataset or "folder", data_dir, image_size, color, seed)
        if tuple(ds.input_shape) == want:
            return ds.x_test[:samples], f"{ds.name} test split"
    rng = np.random.default_rng(seed)
    return rng.random((samples, *want), dtype=np.float32), "random uniform [0, 1)"


def fold_file(model_path: str | Path, out: str | Path, tolerance: float = DEFAULT_TOLERANCE,
              data: str | Path | None = None, dataset: str | None = "digits",
              data_dir: str | Path | None = None, image_size: int = 32,
              color: str = "grayscale", seed: int = 0) -> FoldResult:
    """``edgebn fold``: load a .keras (safe mode), fold, check, save ``out`` atomically."""
    from edgebn.errors import EdgebnError
    from edgebn.train import load_keras, save_keras

    if Path(out).suffix != ".keras":
        raise EdgebnError(f"--out must end in .keras. Received: {out}")
    model = load_keras(model_path)
    x, where = equivalence_inputs(model, data, dataset, data_dir, image_size, color, seed=seed)
    result = fold_model(model, x, tolerance, inputs=where)
    save_keras(result.model, out)
    return replace(result, source=str(model_path), out=str(out))
