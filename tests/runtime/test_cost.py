"""MACs counted from the flatbuffer, and the compute-bound ceiling they are measured against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgebn.bench.run import BenchTargets, bench
from edgebn.runtime.cost import PROBE_LAYERS, probe_ceiling, probe_model
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.macs import model_cost
from edgebn.tflite.reader import parse_tflite, read_tflite


def _layer(kind: str):
    import keras

    specs = {  # name -> (input shape, layer)
        "conv_same": ((8, 8, 3), lambda: keras.layers.Conv2D(4, 3, padding="same")),
        "conv_valid_s2": ((9, 9, 3), lambda: keras.layers.Conv2D(5, 3, strides=2)),
        "depthwise": ((8, 8, 6), lambda: keras.layers.DepthwiseConv2D(3, padding="same")),
        "dense": ((10,), lambda: keras.layers.Dense(5)),
        "transpose": ((4, 4, 3), lambda: keras.layers.Conv2DTranspose(2, 3, strides=2,
                                                                      padding="same")),
    }
    if kind == "batch_matmul":
        a, b = keras.Input((3, 4)), keras.Input((4, 5))
        return keras.Model([a, b], keras.ops.matmul(a, b))
    if kind == "conv3d":
        return keras.Sequential([keras.Input((4, 4, 4, 2)), keras.layers.Conv3D(3, 2)])
    shape, make = specs[kind]
    return keras.Sequential([keras.Input(shape), make()])


# Counted by hand: output positions x multiply-accumulates per output (or per input, transposed).
HAND_COUNTS = {
    "conv_same": ("CONV_2D", 8 * 8 * 4 * (3 * 3 * 3)),  # Ho Wo Co . Kh Kw Ci = 6912
    "conv_valid_s2": ("CONV_2D", 4 * 4 * 5 * (3 * 3 * 3)),  # (9-3)/2+1 = 4 -> 2160
    "depthwise": ("DEPTHWISE_CONV_2D", 8 * 8 * 6 * (3 * 3)),  # Ho Wo Co . Kh Kw = 3456
    "dense": ("FULLY_CONNECTED", 5 * 10),  # units . features = 50
    "transpose": ("TRANSPOSE_CONV", 4 * 4 * 3 * (3 * 3) * 2),  # Hi Wi Ci . Kh Kw . Co = 864
    "conv3d": ("CONV_3D", 3 * 3 * 3 * 3 * (2 * 2 * 2 * 2)),  # Do Ho Wo Co . Kd Kh Kw Ci = 1296
    "batch_matmul": ("BATCH_MATMUL", 3 * 5 * 4),  # M N . K = 60
}


@pytest.mark.parametrize("kind", sorted(HAND_COUNTS))
def test_macs_equal_a_hand_count(kind, tmp_path):
    from edgebn.convert import to_tflite

    op, macs = HAND_COUNTS[kind]
    converted = to_tflite(_layer(kind), tmp_path / f"{kind}.tflite")
    model = read_tflite(converted.path)
    cost = model_cost(model)
    counted = [(o.op, o.macs) for o in cost.ops if o.macs]
    assert counted == [(op, macs)]
    assert cost.macs == cost.to_json()["macs"] == macs
    assert cost.weight_bytes == model.weight_bytes


def test_conv_weight_bytes_are_its_filter_and_bias(tmp_path):
    from edgebn.convert import to_tflite

    converted = to_tflite(_layer("conv_same"), tmp_path / "conv.tflite")
    (conv,) = [o for o in model_cost(read_tflite(converted.path)).ops if o.op == "CONV_2D"]
    assert conv.weight_bytes == 4 * (4 * 3 * 3 * 3 + 4)  # float32 filter [4, 3, 3, 3] + bias


def test_probe_parses_runs_and_counts_its_macs(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    probe = parse_tflite(probe_model(), "probe")
    assert probe.op_counts() == {"CONV_2D": PROBE_LAYERS}
    assert model_cost(probe).macs == 3 * 28 * 28 * 256 * 256
    assert probe_model() == probe_model()  # seeded
    assert probe_ceiling(threads=1) > 0


def test_probe_constants_are_16_byte_aligned():
    probe = parse_tflite(probe_model(), "probe")
    starts = [start for start, length in probe._buffers if length]
    assert len(starts) == 2 * PROBE_LAYERS and all(s % 16 == 0 for s in starts)


def test_one_cache_directory_for_the_ceiling_and_the_emulator(tmp_path, monkeypatch):
    from edgebn.deploy.emulate import pi_cache_dir
    from edgebn.machine import cache_dir

    monkeypatch.delenv("EDGEBN_PI_CACHE", raising=False)
    monkeypatch.delenv("EDGEBN_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "edgebn"
    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    assert pi_cache_dir("bookworm") == tmp_path / "pi-bookworm-arm64"
    assert pi_cache_dir() == pi_cache_dir("trixie") == tmp_path / "pi-trixie-arm64"  # the default
    monkeypatch.setenv("EDGEBN_PI_CACHE", str(tmp_path / "old"))  # deprecated, still read
    assert pi_cache_dir("bookworm") == tmp_path / "old"
    assert pi_cache_dir("trixie") == tmp_path / "pi-trixie-arm64"  # it named bookworm's only
    monkeypatch.setenv("EDGEBN_PI_CACHE", "")
    assert pi_cache_dir("bookworm") == tmp_path / "pi-bookworm-arm64"


def test_ceiling_is_cached_per_machine_and_settings(tmp_path, monkeypatch):
    import edgebn.runtime.cost

    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    first = probe_ceiling(threads=1)
    (key,) = json.loads((tmp_path / "ceiling.json").read_text())

    def no_rerun(*args, **kwargs):
        raise AssertionError("the probe ran again instead of using the cache")

    monkeypatch.setattr(edgebn.runtime.cost, "bench_tflite", no_rerun)
    assert probe_ceiling(threads=1) == first
    assert "threads=1" in key and "xnnpack=True" in key
    with pytest.raises(AssertionError, match="ran again"):
        probe_ceiling(threads=2)  # another setting is another measurement


def test_bench_reports_cost_of_the_default_cnn(cnn, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    result = bench(BenchTargets(cnn["tflite"]), BenchSettings(runs=300, warmup=20))
    cost = result.to_json()["tflite"]["cost"]
    assert cost["macs"] == model_cost(read_tflite(cnn["tflite"])).macs > 0
    p50 = result.tflite.latency_us.p50
    assert cost["gmacs_per_s"] == pytest.approx(cost["macs"] / p50 / 1e3)
    assert cost["efficiency"] == pytest.approx(cost["gmacs_per_s"] / cost["ceiling_gmacs_per_s"])
    assert 0 < cost["efficiency"] < 1.2


def test_cost_can_be_turned_off(cnn, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path))
    result = bench(BenchTargets(cnn["tflite"]), BenchSettings(runs=30, warmup=0, cost=False))
    assert "cost" not in result.to_json()["tflite"]
    assert not (tmp_path / "ceiling.json").exists()
