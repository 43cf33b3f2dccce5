"""Fold Batch Normalization into the linear layers around it, in Keras, and prove it exact.

In inference mode a BN layer computes, per channel ``c`` of its axis,

    BN(y) = γ⊗(y − μ)/σ + β,        σ = sqrt(var + ε)

an affine map ``s⊗y + t`` (``s = γ/σ``, ``t = β − μ⊗s``) that a linear layer before it
absorbs (backward: ``W' = γ⊗W/σ``, ``b' = γ⊗(b − μ)/σ + β``) or one after it, through
layers that commute with it (forward: ``W' = W⊗s``, ``b' = b + Σ W⊗t``). The graph walk
and each layer's algebra are in :mod:`edgebn.fold.keras.graph`. A model nested as a layer (a
backbone) is folded on its own graph, at any depth, and rebuilt in place under the same
layer names; its BN layers are reported by path (``backbone/conv1_bn``). Every BN gets a
:class:`LayerFold`: folded into which layer and in which direction, or why it stays.

**The check.** A correct fold is exact in real arithmetic, so :func:`fold_model` judges
it where rounding cannot hide an error: the original ``y64`` and the folded ``f64`` run in
float64 (same weights; the folded ones, computed in float64, never rounded)::

    max|f64 − y64| / max|y64|  ≤  EXACT_FLOAT64

and the float32 model that is written (``f32``) is judged against that truth next to the
original's own float32 rounding ``y32``, which grows with depth::

    max|f32 − y64|  ≤  FLOAT32_SLACK · max|y32 − y64| + tolerance · max|y64|

**The reference is proven first.** ``y64`` comes from a float64 copy that edgebn rebuilt,
and a copy rebuilt by the same machinery as the folded model can lose the same state (a
``Normalization`` layer's adapted mean and variance, which Keras sets up when a file is
loaded, not in ``set_weights``). So the copy is the reference only when it is the model:
its outputs must equal the original float32 model's within float32 rounding,
``max|y32 − y64| ≤ REFERENCE_LIMIT · max|y32|``, a bound that does not come from the copy.
When it is not, or when a model cannot run in float64, the measure is float32 alone,
``max|f32 − y32| ≤ tolerance · max|y32|``; :attr:`FoldResult.measure` says which was used
and why. Every layer's state travels through each rebuild as it does through a saved file
(:func:`copy_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebn.data.dataset import DataSpec, sample_inputs
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError, FoldError
from edgebn.files import check_not_source
from edgebn.fold.keras.graph import (
    Folder,
    LayerFold,
    as_functional,
    is_graph_model,
    is_normalization,
)
from edgebn.fold.keras.stats_check import StatsCheck, StatsPolicy, bn_statistics, statistics_json
from edgebn.runtime.accuracy import rows_per_chunk
from edgebn.zoo.keras_io import load_keras, save_keras
from edgebn.zoo.models import fit_data

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

DEFAULT_TOLERANCE = 1e-5  # |Δ| allowed beyond float32 rounding, relative to the largest |output|
# the float64 reference is used only within this of the original float32 model (relative
# to its largest |output|): float32 rounding, <= 1e-6 on every keras.applications family
REFERENCE_LIMIT = 1e-4
EXACT_FLOAT64 = 1e-9  # a correct fold's float64 error is float64 rounding: ~1e-15 relative
FLOAT32_SLACK = 4.0  # the folded float32 model may be this many times as far from float64
# float64 runs ~10x slower than float32 on a CPU; a wrong fold shows on any input
FLOAT64_SAMPLES = 16
MEASURE_FLOAT64 = "float64 reference"
MEASURE_FLOAT32 = "float32"


@dataclass(frozen=True)
class FoldResult:
    model: keras.Model  # folded (BN layers that could not fold are still in it)
    layers: tuple[LayerFold, ...]
    max_abs_diff: float  # folded vs original, both float32
    max_rel_diff: float  # max |Δ| / max |original output|
    samples: int
    inputs: str  # where the equivalence inputs came from
    tolerance: float
    source: str | None = None
    out: str | None = None
    measure: str = MEASURE_FLOAT32  # how the fold was judged (see the module docstring)
    fold_rel_diff: float | None = None  # max|f64 − y64| / max|y64|: the fold's own error
    noise_rel_diff: float | None = None  # max|y32 − y64| / max|y64|: the original's rounding
    folded_rel_error: float | None = None  # max|f32 − y64| / max|y64|
    bn_statistics: StatsCheck | str | None = None  # on the data given; a str: why not measured
    others: tuple[LayerFold, ...] = ()  # Normalization layers: folded where exact, not BN

    @property
    def all_folded(self) -> bool:
        return all(f.folded for f in self.layers)

    @property
    def kept(self) -> list[LayerFold]:
        return [f for f in self.layers if not f.folded]

    def to_json(self) -> JsonDict:
        return {"model": self.source, "out": self.out, "max_abs_diff": self.max_abs_diff,
                "max_rel_diff": self.max_rel_diff, "tolerance": self.tolerance,
                "samples": self.samples, "inputs": self.inputs, "measure": self.measure,
                "fold_rel_diff": self.fold_rel_diff, "noise_rel_diff": self.noise_rel_diff,
                "folded_rel_error": self.folded_rel_error,
                "folded": sum(f.folded for f in self.layers), "kept": len(self.kept),
                "layers": [f.to_json() for f in self.layers],
                "other_affine": [f.to_json() for f in self.others],
                "bn_statistics": self._statistics_json()}

    def _statistics_json(self) -> JsonDict | None:
        return statistics_json(self.bn_statistics)


@dataclass(frozen=True)
class FoldPlan:
    """Every BN's fold in one functional model, and the plans of the models nested in it."""

    model: keras.Model  # the functional model planned (a Sequential is wrapped as one)
    folds: tuple[LayerFold, ...]  # graph order, nested models' BN included (named by path)
    state: dict[str, dict[str, np.ndarray]]  # layer name -> folded weights (float64)
    removed: frozenset[str]  # names of this model's BN (and Normalization) layers folded away
    nested: dict[str, FoldPlan]  # nested model name -> its own plan
    others: tuple[LayerFold, ...] = ()  # Normalization layers: folded where exact, not BN


# ---------------------------------------------------------------- planning


def _is_bn(layer) -> bool:
    from keras import layers as L  # lazy: Keras imports TensorFlow (seconds)

    return isinstance(layer, L.BatchNormalization)


def _walk(layer, prefix: str = ""):
    """(path, layer) for every layer inside ``layer``, at any depth, depth first."""
    for sub in getattr(layer, "layers", []):
        yield prefix + sub.name, sub
        yield from _walk(sub, f"{prefix}{sub.name}/")


def bn_layer_paths(model) -> list[str]:
    """Every BN layer at any depth, by path from ``model`` (``backbone/conv1_bn``), as in
    LayerFold.bn."""
    return [path for path, layer in _walk(model) if _is_bn(layer)]


def all_bn_layer_names(model) -> list[str]:
    """Every BN layer's own name at any depth, once each: the names the converter's tensors
    carry."""
    return list(dict.fromkeys(path.rsplit("/", 1)[-1] for path in bn_layer_paths(model)))


def _prefixed(fold: LayerFold, prefix: str) -> LayerFold:
    into = None if fold.into is None else ", ".join(prefix + n for n in fold.into.split(", "))
    return replace(fold, bn=prefix + fold.bn, into=into)


def plan_fold(model, prefix: str = "") -> FoldPlan:
    """Decide every BN's fold, at any depth, without building anything."""
    model = as_functional(model)
    folder = Folder(model)
    folds: list[LayerFold] = []
    others: list[LayerFold] = []
    nested: dict[str, FoldPlan] = {}
    removed: set[str] = set()
    for node in folder.g.nodes:
        layer = node.operation
        if _is_bn(layer) or is_normalization(layer):
            fold = folder.fold(node)
            removed.update([fold.bn] if fold.folded else [])
            (folds if _is_bn(layer) else others).append(_prefixed(fold, prefix))
        elif layer.name in nested or not bn_layer_paths(layer):
            continue
        elif is_graph_model(layer):
            nested[layer.name] = plan_fold(layer, f"{prefix}{layer.name}/")
            folds.extend(nested[layer.name].folds)
            others.extend(nested[layer.name].others)
        else:
            folds.extend(LayerFold(f"{prefix}{layer.name}/{path}", False,
                                   reason=f"inside {layer.name} ({type(layer).__name__}), a layer "
                                          "whose graph is not visible (subclassed)")
                         for path in bn_layer_paths(layer))
    return FoldPlan(model, tuple(folds), folder.state, frozenset(removed), nested, tuple(others))


# ---------------------------------------------------------------- the folded model


def _rebuild(model, plan: FoldPlan):
    """Clone ``model`` (the planned model or its float64 twin: the same layer names) as planned.

    Folded BN layers are gone, folded weights set in the layer's dtype, nested models rebuilt.
    """
    import keras  # lazy: Keras imports TensorFlow (seconds)

    model = as_functional(model)
    inner = {name: _rebuild(model.get_layer(name), sub) for name, sub in plan.nested.items()}

    def clone(layer):
        if layer.name in inner:
            return inner[layer.name]
        config = layer.get_config()
        if layer.name in plan.state and not layer.use_bias:
            config["use_bias"] = True  # the fold gives it a bias
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        if layer.name in plan.removed:
            return args[0]  # a folded BN is the identity now
        return layer(*args, **kwargs)

    inputs = keras.tree.map_structure(  # named as the input layers were, not as their tensors
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x._keras_history[0].name),
        model.input)
    folded = keras.models.clone_model(model, inputs, clone_function=clone, call_function=call)
    for layer in folded.layers:
        if layer.name in plan.state:
            for attr, value in plan.state[layer.name].items():
                getattr(layer, attr).assign(value.astype(layer.variable_dtype))
        elif layer.weights and layer.name not in inner:
            copy_state(model.get_layer(layer.name), layer)
    return folded


_FLOATS = {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}


def _float64_config(config):
    """``config`` with every floating dtype (a layer's policy, an Input's dtype) made float64."""
    if isinstance(config, list):
        return [_float64_config(c) for c in config]
    if not isinstance(config, dict):
        return config
    out = {}
    for key, value in config.items():
        name = value.get("config", {}).get("name") if isinstance(value, dict) and \
            value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") else value
        out[key] = "float64" if key == "dtype" and isinstance(name, str) and name in _FLOATS \
            else _float64_config(value)
    return out


def _float64_twin(model):
    """The same model computing in float64, with the same (float32) weights and state."""
    twin = model.__class__.from_config(_float64_config(model.get_config()))
    copy_state(model, twin)
    return twin


def _layer_pairs(source, target):
    """(source layer, target layer) for ``target``, a clone of ``source``, at any depth."""
    yield source, target
    for a, b in zip(getattr(source, "layers", []), getattr(target, "layers", []), strict=True):
        yield from _layer_pairs(a, b)


def copy_state(source, target) -> None:
    """``target`` (a clone of ``source``, in any float dtype) takes every layer's variables
    the way loading a saved file gives them: through each layer's ``load_own_variables``,
    where Keras also sets up state that is not a variable (a Normalization's adapted mean
    and variance, made into its constants by ``finalize_state``)."""
    for a, b in _layer_pairs(source, target):
        store: JsonDict = {}
        a.save_own_variables(store)
        if store:
            b.load_own_variables({key: np.asarray(value) for key, value in store.items()})


# ---------------------------------------------------------------- the check


def _predict(model, x, batch: int = 256) -> list[np.ndarray]:
    """The model's outputs on ``x`` (an array, or a list for several inputs), float64, inference."""
    several = isinstance(x, (list, tuple))  # a model with several inputs
    batch = rows_per_chunk(sum(int(np.prod(xi.shape[1:])) for xi in (x if several else [x])),
                           batch)
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(x[0]) if several else len(x), batch):
        xb = [xi[start:start + batch] for xi in x] if several else x[start:start + batch]
        chunks.append([np.asarray(o, np.float64) for o in _outputs(model(xb, training=False))])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def _outputs(y):
    return list(y) if isinstance(y, (list, tuple)) else [y]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(ya - yb))) for ya, yb in zip(a, b, strict=True))


def _peak(a: list[np.ndarray]) -> float:
    peak = max(float(np.max(np.abs(ya))) for ya in a)
    return peak if peak > 0 else 1.0


@dataclass(frozen=True)
class _Check:
    """The measures of one fold (see the module docstring), each relative to the largest output."""

    max_abs_diff: float
    max_rel_diff: float
    measure: str
    fold_rel_diff: float | None = None
    noise_rel_diff: float | None = None
    folded_rel_error: float | None = None


def _float64_measures(plan: FoldPlan, x, y32, f32) -> _Check | str:
    """The float64 measures (on the first FLOAT64_SAMPLES inputs), or why there are none."""
    diff, rel = _max_diff(y32, f32), _max_diff(y32, f32) / _peak(y32)  # float32: every input
    n = FLOAT64_SAMPLES
    x = [xi[:n] for xi in x] if isinstance(x, list) else x[:n]
    y32, f32 = [y[:n] for y in y32], [f[:n] for f in f32]
    try:
        original64 = _float64_twin(plan.model)
        y64 = _predict(original64, x)
        f64 = _predict(_rebuild(original64, plan), x)
    except Exception as e:  # a layer without a float64 kernel or config: judge in float32
        first = str(e).splitlines()[0] if str(e) else ""
        return f"no float64 run: {type(e).__name__}: {first}"[:200]
    reference = _max_diff(y32, y64) / _peak(y32)
    if not reference <= REFERENCE_LIMIT:  # the twin is not the model: it cannot be the truth
        return (f"the float64 reference differs from the original model by {reference:.3g} of "
                f"its largest output, beyond float32 rounding ({REFERENCE_LIMIT:g}): refused as "
                "the reference")
    peak = _peak(y64)
    return _Check(diff, rel, MEASURE_FLOAT64, _max_diff(f64, y64) / peak,
                  _max_diff(y32, y64) / peak, _max_diff(f32, y64) / peak)


def _judge(plan: FoldPlan, folded, x, tolerance: float, samples: int) -> _Check:
    """The measures, or FoldError when the fold is not exact or the folded model drifts."""
    y32, f32 = _predict(plan.model, x), _predict(folded, x)
    folds_any = any(f.folded for f in (*plan.folds, *plan.others))
    check = _float64_measures(plan, x, y32, f32) if folds_any else "nothing folded"
    if isinstance(check, str):
        diff = _max_diff(y32, f32)
        check = _Check(diff, diff / _peak(y32), f"{MEASURE_FLOAT32} ({check})")
        if not np.isfinite(diff) or check.max_rel_diff > tolerance:
            raise FoldError(f"the folded model differs from the original by {diff:.3g} "
                            f"({check.max_rel_diff:.3g} relative) on {samples} inputs, above the "
                            f"tolerance {tolerance:g}, measured in {check.measure}: nothing "
                            "written")
        return check
    samples = min(samples, FLOAT64_SAMPLES)  # the float64 measures' inputs
    if not check.fold_rel_diff <= EXACT_FLOAT64:
        raise FoldError(f"the fold is not exact: in float64 the folded model differs from the "
                        f"original by {check.fold_rel_diff:.3g} relative on {samples} inputs "
                        f"(a correct fold: ≤ {EXACT_FLOAT64:g}): nothing written")
    bound = FLOAT32_SLACK * check.noise_rel_diff + tolerance
    if not check.folded_rel_error <= bound:
        raise FoldError(f"the folded float32 model is {check.folded_rel_error:.3g} (relative) "
                        f"from the float64 outputs on {samples} inputs, the original "
                        f"{check.noise_rel_diff:.3g}: above {FLOAT32_SLACK:g}x that plus the "
                        f"tolerance {tolerance:g}: nothing written")
    return check


def fold_model(model, x: np.ndarray, tolerance: float = DEFAULT_TOLERANCE,
               inputs: str = "given") -> FoldResult:
    """Fold every BN that can fold, at any depth; refuse (FoldError) a fold that is not exact.

    ``tolerance`` is relative to the largest |output|: how much further than the original
    float32 model's own rounding the folded float32 model may be from the float64 outputs
    (or, when the model cannot run in float64, the largest |Δ| between the two in float32).
    """
    if not tolerance > 0:
        raise FoldError(f"the tolerance must be > 0. Received: tolerance={tolerance}")
    plan = plan_fold(model)
    folded = _rebuild(plan.model, plan)
    x = [np.asarray(xi, np.float32) for xi in x] if isinstance(x, (list, tuple)) \
        else np.asarray(x, np.float32)
    samples = len(x[0]) if isinstance(x, list) else len(x)
    check = _judge(plan, folded, x, tolerance, samples)
    return FoldResult(folded, plan.folds, check.max_abs_diff, check.max_rel_diff, samples, inputs,
                      tolerance, measure=check.measure, fold_rel_diff=check.fold_rel_diff,
                      noise_rel_diff=check.noise_rel_diff, folded_rel_error=check.folded_rel_error,
                      others=plan.others)


def fold_file(model_path: str | Path, out: str | Path, tolerance: float = DEFAULT_TOLERANCE,
              data: DataSpec | None = None, bn_stats: StatsPolicy = StatsPolicy()) -> FoldResult:
    """``edgebn fold``: load a .keras (safe mode), fold, check, save ``out`` atomically.

    The check runs on ``data`` (a DataSpec): its .npz/.npy inputs, else its test split
    when it fits the model, else random inputs (said so in the result). The BN statistics
    are measured on the same data first, and recomputed when ``bn_stats`` asks
    (:mod:`edgebn.fold.keras.statistics`); the file at ``model_path`` is never changed.
    """
    if Path(out).suffix != ".keras":
        raise EdgebnError(f"the folded model's path must end in .keras. Received: {out}")
    check_not_source(out, model_path)
    model = load_keras(model_path)
    if len(model.inputs) != 1:
        raise EdgebnError(f"the model has {len(model.inputs)} inputs: edgebn fold checks "
                          "single-input models (call fold_model with a list of arrays)")
    if data is not None and data.data_dir is not None:
        data = fit_data(data, model)[0]
    npz = data.npz if data is not None else None
    dataset = data.load() if data is not None and npz is None else None
    statistics = None if data is None else bn_statistics(model, data, bn_stats, dataset)
    x, where = sample_inputs(model.input_shape[1:], npz, dataset,
                             seed=data.seed if data is not None else 0)
    result = fold_model(model, x, tolerance, inputs=where)
    save_keras(result.model, out)
    return replace(result, source=str(model_path), out=str(out), bn_statistics=statistics)
