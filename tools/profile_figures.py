#!/usr/bin/env python3
"""Reproduce the measured "Where the time goes" figures: `edgebn profile` on keras.applications.

    python tools/profile_figures.py [--min-time S] [--repeats N] [--cache DIR] [--tflite F ...] \
        [--write docs/measurements.md] 2>/dev/null

Three models, weights=None, converted float32 by edgebn.convert, 1 thread, XNNPACK on (and
any ``--tflite`` files, e.g. MediaPipe's, profiled as they are). For each: the whole model's
p50, the isolated operators' sum over it (XNNPACK's PAD fusion timed as it runs), the
in-context rows' sum over it (each segment's cost by differences of model prefixes) and the
range of the segments' factors (in context / isolated):

* MobileNetV2 (alpha 0.35, 96x96): the sum of isolated operator times beside the
  whole model's p50 (the issue's target: within 25 %);
* DenseNet121 and ResNet50V2 at 64x64, whose pre-activation BN (BN -> ReLU -> conv, with
  the BN's input also feeding a concat or a residual add) the converter cannot fold: the
  residual MUL+ADD pairs are marked, and the residue cost is measured N times (the model's
  p50 over the p50 of the same graph with the pairs bypassed, interleaved). As a cross-check,
  the issue's own method: the model against the converter's .tflite of the same Keras model
  with every BN layer replaced by a pass-through (the BN-free baseline), interleaved.

With weights=None every BN has beta = 0 and moving mean = 0, so its shift is zero and the
converter drops the ADD, leaving a lone MUL that is not BN-shaped; a trained model has a
shift. So the two pre-activation models get random, non-trivial BN statistics first
(seeded), as training would leave them; timing does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
from figure_block import add_write_option, captured

MODELS = {  # name -> (keras.applications builder, keyword arguments, input, random BN stats)
    "MobileNetV2": ("MobileNetV2", {"alpha": 0.35}, 96, False),
    "DenseNet121": ("DenseNet121", {}, 64, True),
    "ResNet50V2": ("ResNet50V2", {}, 64, True),
}


def _random_bn(model, seed: int = 0) -> None:
    """BN statistics as training leaves them: a non-zero shift, a scale near 1."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            weights = layer.get_weights()
            c = weights[0].shape[0]
            stats = {"gamma": rng.uniform(0.5, 1.5, c), "beta": rng.normal(0, 0.1, c),
                     "moving_mean": rng.normal(0, 0.1, c),
                     "moving_variance": rng.uniform(0.5, 1.5, c)}
            layer.set_weights([stats[w.name.split("/")[-1].split(":")[0]].astype(np.float32)
                               for w in layer.weights])


def _without_bn(model):
    """The same Keras graph with every BatchNormalization replaced by a pass-through."""
    import keras

    class PassThrough(keras.layers.Layer):
        def call(self, x, training=None, mask=None):
            return x

    def clone(layer):
        if isinstance(layer, keras.layers.BatchNormalization):
            return PassThrough(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def build(name: str, cache: Path, twin: bool = False) -> Path:
    """The model's .tflite (or its BN-free twin's) in ``cache``, converted once."""
    path = cache / f"{name}{'_twin' if twin else ''}.tflite"
    if path.exists():
        return path
    import keras

    from edgebn.convert import to_tflite

    builder, kwargs, size, random_bn = MODELS[name]
    model = getattr(keras.applications, builder)(input_shape=(size, size, 3), weights=None,
                                                 **kwargs)
    if random_bn:
        _random_bn(model)
    to_tflite(_without_bn(model) if twin else model, path)
    return path


def _residue(path: Path, twin: Path, settings, repeats: int) -> tuple[list[float], list[float]]:
    """Residue cost (pairs bypassed) and the model against its BN-free twin, ``repeats`` each."""
    from edgebn.runtime.profile.residue_cost import residue_cost
    from edgebn.runtime.timing import bench_tflite

    bypassed, against_twin = [], []
    for _ in range(repeats):
        bypassed.append(residue_cost(path, settings).ratio)
        stats, base = bench_tflite(path, settings.bench_settings(), baseline=twin)
        against_twin.append(stats.latency_us.p50 / base.latency_us.p50)
    return bypassed, against_twin


def _ratios(values: list[float] | None) -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):.3f}x ({min(values):.3f}-{max(values):.3f}, "
            f"{len(values)} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds per timed model")
    parser.add_argument("--repeats", type=int, default=3, help="residue cost measurements")
    parser.add_argument("--cache", type=Path, help="where the .tflite files are kept")
    parser.add_argument("--top", type=int, default=5, help="operators listed per model")
    parser.add_argument("--tflite", type=Path, nargs="*", default=[],
                        help="other .tflite files to profile as they are")
    add_write_option(parser, "profile")
    args = parser.parse_args()
    cache = args.cache or Path(tempfile.mkdtemp(prefix="edgebn-profile-"))
    cache.mkdir(parents=True, exist_ok=True)
    paths = {name: build(name, cache) for name in MODELS}
    twins = {name: build(name, cache, twin=True) for name, spec in MODELS.items() if spec[3]}

    from edgebn.cli.ui import quiet
    from edgebn.machine import environment
    from edgebn.runtime.profile.operators import profile
    from edgebn.runtime.profile.result import ProfileSettings

    settings = ProfileSettings(min_time_s=args.min_time, residue=False)
    load_before = os.getloadavg()[0]
    with quiet(False):  # the interpreters announce their delegate on fd 2
        results = {name: profile(path, settings) for name, path in paths.items()}
        results |= {path.name: profile(path, settings) for path in args.tflite}
        residues = {name: _residue(path, twins[name], settings, args.repeats)
                    for name, path in paths.items() if results[name].residual_pairs()}
    first = next(iter(results.values()))
    env = environment(first.backend, first.xnnpack, first.threads)
    with captured(args.write, "profile"):
        print(f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, {env['backend']}, "
              f"XNNPACK on, 1 thread, batch 1, float32, keras.applications weights=None; "
              f"--min-time {args.min_time:g} s; load average {load_before:.1f} before the timing, "
              f"{os.getloadavg()[0]:.1f} after\n")
        _summary(results, residues)
        print()
        _top(results, args.top)


def _summary(results, residues) -> None:
    print("| model | input | M MACs | operators | residual BN chains | whole p50 µs | "
          "isolated sum / p50 | in context sum / p50 | segment factors | rows by method | "
          "residue cost: chains bypassed (median, range) | "
          "cross-check: against the BN-free Keras baseline |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        if name in MODELS:
            _, kwargs, size, _ = MODELS[name]
            label = f"{size}x{size}" + "".join(f", {k} {v}" for k, v in kwargs.items())
        else:  # the model's input, height x width
            from edgebn.tflite.reader import read_tflite

            sg = read_tflite(r.model).subgraphs[0]
            label = "x".join(map(str, sg.tensors[sg.inputs[0]].shape[1:3]))
        bypassed, twin = residues.get(name, (None, None))
        factors = [g.factor for g in r.segments if g.factor is not None]
        spread = f"{min(factors):.2f}-{max(factors):.2f}" if factors else (r.context_skipped or "-")
        methods = ", ".join(f"{k} {v}" for k, v in r.methods().items())
        print(f"| {name} | {label} | {r.macs / 1e6:,.1f} | {len(r.operators)} | "
              f"{r.residual_pairs()} | {r.latency_us.p50:,.0f} | "
              f"{r.isolated_sum_us / r.latency_us.p50:.2f} | {r.explained:.2f} | {spread} | "
              f"{methods} | {_ratios(bypassed)} | {_ratios(twin)} |")


def _top(results, top: int) -> None:
    print("| model | op # | op | output | µs in context | µs isolated | share | GMAC/s | method | "
          "BN residue |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        for o in r.top(top):
            gmacs = f"{o.gmacs_per_s:.1f}" if o.gmacs_per_s else "-"
            isolated = "-" if o.isolated_us is None else f"{o.isolated_us:,.1f}"
            print(f"| {name} | {o.index} | {o.op} | {'x'.join(map(str, o.shape))} | "
                  f"{o.time_us:,.1f} | {isolated} | {o.share:.1%} | {gmacs} | {o.method} | "
                  f"{'yes' if o.residual_bn else ''} |")
        pairs = [o for o in r.operators if o.residual_bn]
        if pairs:
            spent = sum(o.time_us or 0 for o in pairs)
            print(f"| {name} | all {len(pairs)} residual BN operators | | | {spent:,.1f} | | "
                  f"{spent / r.ops_sum_us:.1%} | | | yes |")


if __name__ == "__main__":
    main()
