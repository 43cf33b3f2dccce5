"""Every BN's statistics recomputed in one pass over the data, when its activations fit memory.

:func:`edgebn.fold.keras.statistics.recompute` must give each BN the population statistics of its
input with every BN before it already recomputed. Probing each BN from the model's input
(its fallback) runs the network once per BN. Here the graph runs once, node by node in
graph order, over **all** the samples at a time (each node in chunks of rows): when a BN's
node comes, its whole input is there, its statistics are computed and set, and only then
is the BN applied, so every later BN sees the recomputed ones, as the definition wants.
A model nested as a layer (a backbone) is run the same way, inside.

Every tensor is kept until its last reader has run; the plan (:func:`fits`) adds up the
largest set of tensors alive at once, times the samples, and refuses a model whose
activations would pass ``budget`` bytes (MobileNetV2 at 224 px on 600 samples needs about
3 GB: the fallback probes it instead).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from edgebn.fold.keras.bn_sites import bn_layers_of
from edgebn.fold.keras.graph import as_functional, graph, is_graph_model
from edgebn.runtime.accuracy import rows_per_chunk

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

BUDGET_BYTES = 1 << 30  # activations held at once, all samples together
CHUNK = 512  # rows per layer call, at most (fewer for large tensors)

# (BN path, layer, its whole input) -> set the statistics
Stats = Callable[[str, "keras.layers.BatchNormalization", np.ndarray], None]


def _numel(tensor: keras.KerasTensor) -> int:
    return int(np.prod([d or 1 for d in tensor.shape[1:]]))


def _last_readers(nodes: list[keras.ops.node.Node]) -> dict[int, int]:
    """Each tensor's (by id) last reader: the index of the last node that takes it in."""
    return {id(t): i for i, node in enumerate(nodes) for t in node.input_tensors}


def _peak(functional: keras.Model, nested: Callable[[keras.layers.Layer], bool]) -> int:
    """The most values per sample alive at once while running ``functional`` node by node."""
    g = graph(functional)
    last = _last_readers(g.nodes)
    outputs = {id(t) for t in functional.outputs}
    alive = {id(t): _numel(t) for t in functional.inputs}
    peak = sum(alive.values())
    for i, node in enumerate(g.nodes):
        if not node.input_tensors:
            continue
        inner = _peak(as_functional(node.operation), nested) if nested(node.operation) else 0
        made = sum(_numel(t) for t in node.output_tensors)
        peak = max(peak, sum(alive.values()) + made + inner)
        for t in node.output_tensors:
            alive[id(t)] = _numel(t)
        for t in node.input_tensors:
            if last.get(id(t)) == i and id(t) not in outputs:
                alive.pop(id(t), None)
    return peak


def _has_bn_inside(layer: keras.layers.Layer) -> bool:
    return is_graph_model(layer) and bool(bn_layers_of(layer))


def fits(model: keras.Model, samples: int, budget: int = BUDGET_BYTES) -> bool:
    """Whether one pass over ``samples`` inputs keeps at most ``budget`` bytes of float32."""
    return _peak(as_functional(model), _has_bn_inside) * samples * 4 <= budget


def _call(node: keras.ops.node.Node, values: dict[int, np.ndarray],
          rows: slice) -> list[np.ndarray]:
    """``node``'s layer on ``rows`` of its inputs, in inference mode: its outputs, as arrays."""
    layer = node.operation
    chunk = {key: value[rows] for key, value in values.items()}
    args, kwargs = node.arguments.fill_in(chunk)
    if "training" in inspect.signature(layer.call).parameters:
        kwargs["training"] = False
    out = layer(*args, **kwargs)
    out = list(out) if isinstance(out, (list, tuple)) else [out]
    return [np.asarray(o, np.float32) for o in out]


def _outputs(node: keras.ops.node.Node, needed: dict[int, np.ndarray], on_bn: Stats,
             targets: set[int], prefix: str, nested_once: bool) -> list[np.ndarray]:
    """One node's outputs on all the rows of its inputs: a nested model with BNs inside is
    run node by node itself (its BNs recomputed on the way), any other layer in chunks."""
    layer = node.operation
    if id(layer) in targets:
        on_bn(prefix + layer.name, layer, needed[id(node.input_tensors[0])])
    if nested_once and _has_bn_inside(layer):
        given = [needed[id(t)] for t in node.input_tensors]
        return run(layer, given if len(given) > 1 else given[0], on_bn, targets,
                   f"{prefix}{layer.name}/")
    n = len(next(iter(needed.values())))
    rows = rows_per_chunk(max(_numel(t) for t in node.input_tensors), CHUNK)
    parts = [_call(node, needed, slice(s, s + rows)) for s in range(0, n, rows)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def run(model: keras.Model, x: np.ndarray | list[np.ndarray], on_bn: Stats, targets: set[int],
        prefix: str = "") -> list[np.ndarray]:
    """``model``'s outputs on ``x`` (all rows), calling ``on_bn`` with each target BN's whole
    input (``targets``: ids of the BN layers to recompute) before that BN runs."""
    functional = as_functional(model)
    g = graph(functional)
    inputs = x if isinstance(x, list) else [x]
    values = {id(t): v for t, v in zip(functional.inputs, inputs, strict=True)}
    last = _last_readers(g.nodes)
    keep = {id(t) for t in functional.outputs}
    for i, node in enumerate(g.nodes):
        if not node.input_tensors:  # an input layer: its tensor is given
            continue
        needed = {id(t): values[id(t)] for t in node.input_tensors}
        once = g.calls.get(node.operation.name, 0) == 1  # a model shared by two calls: a layer
        outs = _outputs(node, needed, on_bn, targets, prefix, once)
        values.update((id(t), v) for t, v in zip(node.output_tensors, outs, strict=True))
        for t in node.input_tensors:
            if last.get(id(t)) == i and id(t) not in keep:
                values.pop(id(t), None)
    return [values[id(t)] for t in functional.outputs]
