"""BN statistics that describe the data: each BN's drift measured, and its statistics recomputed.

At inference a BN layer normalizes its input ``y`` with its moving statistics, the momentum
averages of training batches, ``ẑ = (y − μ_s)/σ_s`` with ``σ_s = sqrt(var_s + ε)``. What it
should compute is ``z = (y − μ_p)/σ_p``, with ``μ_p`` and ``var_p`` the population statistics
of ``y`` on the data, every layer before it in inference mode. Per channel,

    ẑ − z = z·(σ_p/σ_s − 1) + (μ_p − μ_s)/σ_s

so over ``z`` of unit spread the RMS error of the normalized output is

    drift_c = sqrt((σ_p/σ_s − 1)² + ((μ_p − μ_s)/σ_s)²)

in units of the population's own spread: 0 when the statistics describe the data, 1 when
the error is as large as the signal. A BN's ``drift`` is the RMS of ``drift_c`` over its
channels; ``worst_channel`` is the largest. The fold bakes ``μ_s`` and ``σ_s`` into the
weights, so an exact fold of a drifted BN is exactly wrong.

**Sampling noise.** The statistics of N samples are themselves estimates: the same measure
between the statistics of the two halves of the samples (even and odd rows), halved, is
the ``noise`` of the full-sample figure (two half-sample means differ by twice the error of
the full-sample mean). A BN is **stale** when ``drift > STALE_DRIFT`` and ``drift >
NOISE_FACTOR · noise``: far from the data, and beyond what the sample can tell.

**Recomputing** (:func:`recompute`) is exact, not by momentum: layer by layer in graph
order, each BN's ``μ_p`` and ``var_p`` over the N samples with the BNs before it already
recomputed, so every BN normalizes what it will see at inference (what PyTorch's
``torch.optim.swa_utils.update_bn`` does with ``momentum=None``). :func:`recalibrate` then
proves it on held-out samples: every BN's drift must be at the samples' noise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.fold.keras import recompute as one_pass
from edgebn.fold.keras.bn_sites import Probe, Site, Skipped, bn_sites, chunks

if TYPE_CHECKING:  # named in annotations only: importing Keras takes seconds (edgebn.cli.app)
    import keras

    Tensors = keras.KerasTensor | list[keras.KerasTensor]  # a graph's tensor(s) at one point

STALE_DRIFT = 0.25  # a normalized output off by a quarter of its spread (RMS over channels)
NOISE_FACTOR = 4.0  # and this many times the sampling noise of the figure
RECALIBRATE_SAMPLES = 600  # --recalibrate-bn's default N
DRIFT_SAMPLES = 512  # the held-out samples a drift is measured on, at most
WORST = 5  # BN layers named in a summary


class StatisticsError(EdgebnError):
    """BN statistics that cannot be measured or recomputed, or a recalibration that failed its
    check."""


# ---------------------------------------------------------------- per-channel moments


@dataclass
class _Moments:
    """Running count, mean and sum of squared deviations per channel (Chan's merge, float64)."""

    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None

    def add(self, values: np.ndarray) -> None:
        """``values`` (rows, channels)."""
        n = len(values)
        if n == 0:
            return
        mean = values.mean(0)
        m2 = ((values - mean) ** 2).sum(0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.count, 1)


@dataclass
class _Split:
    """The moments of all the samples, and of the even and odd rows apart (the noise)."""

    whole: _Moments = field(default_factory=_Moments)
    halves: tuple[_Moments, _Moments] = field(default_factory=lambda: (_Moments(), _Moments()))

    def add(self, y: np.ndarray, axis: int) -> None:
        y = np.moveaxis(np.asarray(y, np.float64), axis, -1)
        self.whole.add(y.reshape(-1, y.shape[-1]))
        for half, rows in zip(self.halves, (y[0::2], y[1::2]), strict=True):
            half.add(rows.reshape(-1, y.shape[-1]))


def channel_drift(mean_s, var_s, mean_p, var_p, epsilon: float) -> np.ndarray:
    """``drift_c`` of every channel (the module docstring), float64."""
    sigma_s = np.sqrt(np.asarray(var_s, np.float64) + epsilon)
    sigma_p = np.sqrt(np.asarray(var_p, np.float64) + epsilon)
    shift = (np.asarray(mean_p, np.float64) - np.asarray(mean_s, np.float64)) / sigma_s
    return np.sqrt((sigma_p / sigma_s - 1.0) ** 2 + shift**2)


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


def _population(sites: list[Site], x: np.ndarray) -> dict[str, _Split]:
    """Each BN input's moments over every row of ``x``."""
    moments = {site.path: _Split() for site in sites}
    axes = {site.path: site.axis for site in sites}
    probe = Probe(sites)
    for batch in chunks(x):
        for path, value in probe(batch).items():
            moments[path].add(value, axes[path])
    return moments


# ---------------------------------------------------------------- drift


@dataclass(frozen=True)
class BNDrift:
    """One BN's stored statistics against the population of its input on the data."""

    bn: str
    channels: int
    drift: float  # RMS over channels of drift_c (the module docstring)
    worst_channel: float  # the largest drift_c
    mean_shift: float  # RMS over channels of (μ_p − μ_s)/σ_s
    spread_ratio: float  # median over channels of σ_p/σ_s
    noise: float  # the sampling noise of ``drift``
    stale: bool

    def to_json(self) -> JsonDict:
        return asdict(self)


def _noise(split: _Split, eps: float) -> float:
    """The sampling noise of statistics from ``split``'s samples: the drift between its two
    halves' statistics, halved."""
    a, b = split.halves
    return _rms(channel_drift(a.mean, a.var, b.mean, b.var, eps)) / 2 if b.count else float("inf")


def _drift(site: Site, split: _Split, mean_s: np.ndarray, var_s: np.ndarray) -> BNDrift:
    eps = float(site.layer.epsilon)
    whole = split.whole
    per_channel = channel_drift(mean_s, var_s, whole.mean, whole.var, eps)
    noise = _noise(split, eps)
    drift = _rms(per_channel)
    sigma_s = np.sqrt(np.asarray(var_s, np.float64) + eps)
    return BNDrift(site.path, len(per_channel), drift, float(per_channel.max()),
                   _rms((whole.mean - mean_s) / sigma_s),
                   float(np.median(np.sqrt(whole.var + eps) / sigma_s)), noise,
                   drift > STALE_DRIFT and drift > NOISE_FACTOR * noise)


def _stored(layer: keras.layers.BatchNormalization) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(layer.moving_mean.numpy(), np.float64),
            np.asarray(layer.moving_variance.numpy(), np.float64))


@dataclass(frozen=True)
class DriftReport:
    """Every BN's drift on ``samples`` inputs (``inputs`` says which), worst first in
    ``worst()``."""

    samples: int
    inputs: str
    layers: tuple[BNDrift, ...]  # graph order
    skipped: tuple[Skipped, ...] = ()
    stale_drift: float = STALE_DRIFT
    noise_factor: float = NOISE_FACTOR

    @property
    def stale(self) -> list[BNDrift]:
        return [d for d in self.layers if d.stale]

    @property
    def max_drift(self) -> float:
        return max((d.drift for d in self.layers), default=0.0)

    def worst(self, n: int = WORST) -> list[BNDrift]:
        return sorted(self.layers, key=lambda d: -d.drift)[:n]

    def summary(self) -> str:
        """One line: how many are stale, and the worst."""
        if not self.layers:
            return "no BN statistics measured"
        worst = ", ".join(f"{d.bn} {d.drift:.2f}" for d in self.worst(3))
        head = (f"{len(self.stale)} of {len(self.layers)} BN layers stale (drift > "
                f"{self.stale_drift:g})" if self.stale else
                f"all {len(self.layers)} BN layers describe the data")
        return f"{head}; largest drift {worst} (on {self.samples} inputs, {self.inputs})"

    def to_json(self) -> JsonDict:
        return {"samples": self.samples, "inputs": self.inputs, "stale_drift": self.stale_drift,
                "noise_factor": self.noise_factor, "stale": len(self.stale),
                "max_drift": self.max_drift, "worst": [d.bn for d in self.worst()],
                "layers": [d.to_json() for d in self.layers],
                "skipped": [s.to_json() for s in self.skipped]}


def measure_drift(model: keras.Model, x: np.ndarray, inputs: str = "given") -> DriftReport:
    """Each BN's stored statistics against the population of its input on ``x``."""
    x = _samples(x)
    sites, skipped = bn_sites(model)
    moments = _population(sites, x) if sites else {}
    layers = tuple(_drift(s, moments[s.path], *_stored(s.layer)) for s in sites)
    return DriftReport(len(x), inputs, layers, tuple(skipped))


def _samples(x: npt.ArrayLike) -> np.ndarray:
    if isinstance(x, (list, tuple)):
        raise StatisticsError("BN statistics are measured on models with one input. "
                              f"Received: {len(x)} input arrays")
    x = np.asarray(x, np.float32)
    if len(x) < 2:
        raise StatisticsError(f"BN statistics need at least 2 samples. Received: {len(x)}")
    return x


# ---------------------------------------------------------------- recompute, recalibrate


@dataclass(frozen=True)
class Recomputed:
    """The statistics set on each BN: population mean and variance over ``samples`` inputs."""

    samples: int
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # BN path -> (mean, var), float64
    noise: dict[str, float] = field(default_factory=dict)  # BN path -> their sampling noise
    seconds: float = 0.0


def set_statistics(model: keras.Model, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Assign ``stats`` (BN path -> mean, variance) to the BN layers of ``model``."""
    by_path = {s.path: s.layer for s in bn_sites(model)[0]}
    for path, (mean, var) in stats.items():
        layer = by_path[path]
        if np.shape(mean) != tuple(layer.moving_mean.shape):
            raise StatisticsError(f"{path}: statistics of {np.shape(mean)[0]} channels for a BN of "
                                  f"{layer.moving_mean.shape[0]}")
        layer.moving_mean.assign(np.asarray(mean).astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(np.asarray(var).astype(layer.moving_variance.dtype))


def recompute(model: keras.Model, x: np.ndarray,
              only: Callable[[keras.layers.Layer], bool] | None = None) -> Recomputed:
    """Set every BN's statistics (or those ``only(layer)`` accepts) to its population's on
    ``x``, layer by layer in graph order: each with the ones before it already recomputed."""
    start = time.perf_counter()
    x = _samples(x)
    sites = [s for s in bn_sites(model)[0] if only is None or only(s.layer)]
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    noise: dict[str, float] = {}

    def record(path: str, split: _Split, layer: keras.layers.BatchNormalization) -> None:
        stats[path] = (split.whole.mean, split.whole.var)
        noise[path] = _noise(split, float(layer.epsilon))
        layer.moving_mean.assign(split.whole.mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(split.whole.var.astype(layer.moving_variance.dtype))

    if one_pass.fits(model, len(x)):  # the graph once, node by node, over all the samples
        axes = {id(s.layer): s.axis for s in sites}

        def at_bn(path: str, layer: keras.layers.BatchNormalization, value: np.ndarray) -> None:
            split = _Split()
            split.add(value, axes[id(layer)])
            record(path, split, layer)

        one_pass.run(model, x, at_bn, set(axes))
    else:  # too large to keep in memory: each BN probed from the input, in graph order
        for site in sites:
            record(site.path, _population([site], x)[site.path], site.layer)
    return Recomputed(len(x), stats, noise, time.perf_counter() - start)


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` on (x, y), in inference mode."""
    hits, start = 0, 0
    for batch in chunks(x):
        p = np.asarray(model(batch, training=False))
        hits += int((p.argmax(-1) == y[start:start + len(batch)]).sum())
        start += len(batch)
    return hits / max(len(y), 1)


@dataclass(frozen=True)
class Recalibration:
    """``--recalibrate-bn``: the drift before and after, and accuracy on held-out data."""

    samples: int  # inputs the statistics were recomputed on
    source: str  # where they came from
    before: DriftReport  # on the held-out inputs
    after: DriftReport
    accuracy_before: float | None = None  # on the held-out split, when it has labels
    accuracy_after: float | None = None
    seconds: float = 0.0

    def to_json(self) -> JsonDict:
        return {"samples": self.samples, "source": self.source, "seconds": self.seconds,
                "accuracy_before": self.accuracy_before, "accuracy_after": self.accuracy_after,
                "before": self.before.to_json(), "after": self.after.to_json()}

    def summary(self) -> str:
        acc = "" if self.accuracy_before is None else (
            f"held-out accuracy {self.accuracy_before:.4f} -> {self.accuracy_after:.4f}; ")
        return (f"recomputed from {self.samples} inputs ({self.source}): {acc}largest drift "
                f"{self.before.max_drift:.3g} -> {self.after.max_drift:.3g}")


AT_NOISE_FLOOR = 0.05  # a drift this small is at the noise, whatever the estimate says


def check_recalibrated(after: DriftReport, noise: dict[str, float] | None = None) -> None:
    """Every BN's drift after recomputing must be at the sampling noise: else refuse.

    The noise is the held-out samples' (in ``after``) and the recomputing samples' own
    (``noise``, by BN path), combined as independent errors.
    """
    noise = noise or {}
    bound = {d.bn: NOISE_FACTOR * float(np.hypot(d.noise, noise.get(d.bn, 0.0)))
             for d in after.layers}
    off = [d for d in after.layers if d.drift > max(bound[d.bn], AT_NOISE_FLOOR)]
    if off:
        worst = max(off, key=lambda d: d.drift / bound[d.bn])
        raise StatisticsError(f"the recomputed statistics do not describe the held-out data: "
                              f"{len(off)} BN layers drift beyond {NOISE_FACTOR:g}x their "
                              f"sampling noise, the worst {worst.bn} by {worst.drift:.3g} "
                              f"(bound {bound[worst.bn]:.3g})")


def recalibrate(model: keras.Model, x: np.ndarray, held_out: np.ndarray, labels: np.ndarray
                | None = None,
                source: str = "given", held_out_source: str = "held-out") -> Recalibration:
    """Recompute every BN's statistics from ``x`` in place, and prove them on ``held_out``.

    StatisticsError when a BN still drifts beyond its sampling noise afterwards (the
    model's statistics are then the recomputed ones: the caller writes nothing).
    """
    held_out = _samples(held_out)[:DRIFT_SAMPLES]
    labels = None if labels is None else np.asarray(labels)[:len(held_out)]
    before = measure_drift(model, held_out, held_out_source)
    acc_before = None if labels is None else accuracy(model, held_out, labels)
    done = recompute(model, x)
    after = measure_drift(model, held_out, held_out_source)
    check_recalibrated(after, done.noise)
    acc_after = None if labels is None else accuracy(model, held_out, labels)
    return Recalibration(done.samples, source, before, after, acc_before, acc_after, done.seconds)
