"""Where each BN is in a Keras model, at any depth, and a probe that reads their inputs on data.

A BN inside a nested functional model (a keras.applications backbone) is reached through the
chain of graphs that lead to it (its :class:`Site`'s ``route``); :class:`Probe` builds one
model per graph whose outputs are the BN inputs there, run in inference mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgebn.documents import JsonDict
from edgebn.fold.keras.graph import as_functional, graph, is_graph_model
from edgebn.runtime.accuracy import rows_per_chunk

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

    Tensors = keras.KerasTensor | list[keras.KerasTensor]  # a graph's tensor(s) at one point

CHUNK = 512  # samples per forward pass, at most (fewer for large inputs: rows_per_chunk)


@dataclass(frozen=True)
class Site:
    """One BN node: its path, the layer, and the chain of graphs that lead to its input."""

    path: str  # "backbone/conv1_bn"
    layer: keras.layers.BatchNormalization
    axis: int  # the channel axis of its input
    route: tuple[tuple[keras.Model, Tensors], ...]  # (functional model, tensor in it): the last
    # is the BN's input


def is_bn(layer: keras.layers.Layer) -> bool:
    from keras import layers  # lazy: Keras imports TensorFlow (seconds)

    return isinstance(layer, layers.BatchNormalization)


@dataclass(frozen=True)
class Skipped:
    """A BN whose statistics are not measured, and why."""

    bn: str
    reason: str

    def to_json(self) -> JsonDict:
        return asdict(self)


def bn_sites(model: keras.Model) -> tuple[list[Site], list[Skipped]]:
    """Every BN node of ``model``'s graph at any depth, in graph order, and the ones left out."""
    sites: list[Site] = []
    skipped: list[Skipped] = []

    def visit(functional: keras.Model, prefix: str,
              route: tuple[tuple[keras.Model, Tensors], ...]) -> None:
        g = graph(functional)
        for node in g.nodes:
            layer = node.operation
            path = prefix + layer.name
            if is_bn(layer):
                tensor = node.input_tensors[0]
                axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
                if g.calls.get(layer.name, 0) > 1:
                    skipped.append(Skipped(path, f"called {g.calls[layer.name]} times (a shared "
                                                 "layer)"))
                elif len(axes) != 1:
                    skipped.append(Skipped(path, f"normalizes over several axes ({layer.axis})"))
                else:
                    sites.append(Site(path, layer, axes[0] % len(tensor.shape),
                                       (*route, (functional, tensor))))
            elif is_graph_model(layer) and _has_bn(layer):
                if g.calls.get(layer.name, 0) > 1:
                    skipped.extend(Skipped(f"{path}/{p}", f"inside {layer.name}, called "
                                           f"{g.calls[layer.name]} times")
                                   for p in _bn_paths(layer))
                    continue
                inputs = node.input_tensors
                visit(as_functional(layer), f"{path}/",
                      (*route, (functional, inputs[0] if len(inputs) == 1 else list(inputs))))
            elif _has_bn(layer):
                skipped.extend(Skipped(f"{path}/{p}", f"inside {layer.name} "
                                       f"({type(layer).__name__}), whose graph is not visible")
                               for p in _bn_paths(layer))

    visit(as_functional(model), "", ())
    return sites, skipped


def _bn_paths(layer: keras.layers.Layer, prefix: str = "") -> list[str]:
    found = []
    for sub in getattr(layer, "layers", []):
        if is_bn(sub):
            found.append(prefix + sub.name)
        found.extend(_bn_paths(sub, f"{prefix}{sub.name}/"))
    return found


def _has_bn(layer: keras.layers.Layer) -> bool:
    return bool(_bn_paths(layer))


def chunks(x: np.ndarray, most: int = CHUNK) -> Iterator[np.ndarray]:
    rows = rows_per_chunk(int(np.prod(x.shape[1:])), most)
    for start in range(0, len(x), rows):
        yield np.asarray(x[start:start + rows], np.float32)


class Probe:
    """The inputs of ``sites`` on a batch, everything in inference mode.

    One probe model per graph, built once: its outputs are the BN inputs of that graph and
    the inputs of the nested models that hold the other sites, probed in turn.
    """

    def __init__(self, sites: list[Site]):
        import keras  # lazy: Keras imports TensorFlow (seconds)

        self.parts: list[tuple[keras.Model, list[tuple[int, int, list[Site], Probe | None]]]] = []
        by_graph: dict[int, list[Site]] = {}
        for site in sites:
            by_graph.setdefault(id(site.route[0][0]), []).append(site)
        for group in by_graph.values():
            functional = group[0].route[0][0]
            ends: dict[tuple[int, ...], tuple[Tensors, list[Site]]] = {}
            for site in group:  # sites reading the same tensor(s) share an output
                tensor = site.route[0][1]
                key = tuple(id(t) for t in (tensor if isinstance(tensor, list) else [tensor]))
                ends.setdefault(key, (tensor, []))[1].append(site)
            tensors: list[keras.KerasTensor] = []
            outputs = []
            for tensor, at in ends.values():
                many = tensor if isinstance(tensor, list) else [tensor]
                deeper = [Site(s.path, s.layer, s.axis, s.route[1:]) for s in at
                          if len(s.route) > 1]
                outputs.append((len(tensors), len(many), [s for s in at if len(s.route) == 1],
                                Probe(deeper) if deeper else None))
                tensors.extend(many)
            inputs = functional.inputs
            self.parts.append((keras.Model(inputs[0] if len(inputs) == 1 else inputs, tensors),
                               outputs))

    def __call__(self, x: npt.ArrayLike) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for probe, outputs in self.parts:
            values = probe(x, training=False)
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            for first, width, here, deeper in outputs:
                for site in here:
                    found[site.path] = np.asarray(values[first])
                if deeper is not None:
                    part = values[first:first + width]
                    found.update(deeper(part[0] if width == 1 else part))
        return found


def bn_layers_of(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BN layer at any depth (graph or not), each once."""
    found: dict[int, keras.layers.BatchNormalization] = {}

    def visit(layer: keras.layers.Layer) -> None:
        for sub in getattr(layer, "layers", []):
            if is_bn(sub):
                found[id(sub)] = sub
            visit(sub)

    visit(model)
    return list(found.values())
