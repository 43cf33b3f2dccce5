"""The device bench says when not to believe it: threads that did not apply, temperature,
clock and throttle flags, and a sustained run in windows (predict.py --bench, in its own
process, as on a Pi). Timing figures come from tools/; these tests check what is reported."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

NO_EFFECT = 1.15  # predict.py's own threshold


def _bench(bundle, *args, pin: str | None = None) -> dict:
    cmd = [sys.executable, str(bundle / "predict.py"), "--bench", "--json", *args]
    if pin is not None:
        cmd = ["taskset", "-c", pin, *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["bench"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_threads_pinned_to_one_core_are_said_to_have_no_effect(bundles):
    b = _bench(bundles["none"], "--threads", "2", "--runs", "300", pin="0")
    assert b["cores_available"] == 1 and b["threads"] == 2
    assert b["thread_speedup"] < NO_EFFECT
    assert b["warning"].startswith("threads had no effect: 2 threads ran at")
    assert "pinned" in b["warning"]


def test_the_thread_verdict_follows_the_measured_speedup(bundles):
    b = _bench(bundles["none"], "--threads", "2", "--runs", "300")
    assert b["cores_available"] == len(os.sched_getaffinity(0))
    assert b["one_thread_latency_us"]["p50"] > 0 and b["thread_speedup"] > 0
    assert ("warning" in b) == (b["thread_speedup"] < NO_EFFECT)
    one = _bench(bundles["none"], "--threads", "1", "--runs", "50")
    assert "thread_speedup" not in one and "warning" not in one


def test_thermal_fields_are_there_when_the_files_are_and_null_with_a_reason_when_not(bundles):
    b = _bench(bundles["none"], "--threads", "1", "--runs", "50")
    for moment in ("before", "after"):
        t = b["thermal"][moment]
        if glob.glob("/sys/class/thermal/thermal_zone*/temp"):
            assert isinstance(t["temp_c"], float)
        else:
            assert t["temp_c"] is None and "thermal_zone" in t["temp_reason"]
        if os.path.exists("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"):
            assert t["clock_mhz"] > 0
        else:
            assert t["clock_mhz"] is None and "cpufreq" in t["clock_reason"]
        if shutil.which("vcgencmd") is None:
            assert t["throttled"] is None and "vcgencmd" in t["throttled_reason"]


def test_a_sustained_run_reports_p50_per_window(bundles):
    b = _bench(bundles["none"], "--threads", "1", "--duration", "1.2", "--window", "0.4")
    windows = b["windows"]
    assert [w["start_s"] for w in windows] == pytest.approx([0.0, 0.4, 0.8])
    assert all(w["runs"] > 0 and w["p50_us"] > 0 for w in windows)
    assert sum(w["runs"] for w in windows) <= b["runs"]


# ---------------------------------------------------------------- per-operator time on the device


def _device_profile(bundle, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "predict.py"), "--profile", "--json",
                           "--threads", "1", "--runs", "30", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_predict_profile_gives_a_row_per_operator_of_the_bundles_model(profile_bundles, quantize):
    from edgebn.tflite.reader import read_tflite

    bundle = profile_bundles[quantize]
    done = _device_profile(bundle)
    assert done.returncode == 0, done.stderr
    p = json.loads(done.stdout)["profile"]
    ops = read_tflite(bundle / "model.tflite").subgraphs[0].operators
    assert [(r["index"], r["op"]) for r in p["operators"]] == [(o.index, o.op) for o in ops]
    timed = [r for r in p["operators"] if r["time_us"] is not None]
    assert timed and all(r["time_us"] > 0 for r in timed)
    assert all(r["note"] for r in p["operators"] if r["time_us"] is None)
    assert p["ops_sum_us"] == pytest.approx(sum(r["time_us"] for r in timed))
    assert p["latency_us"]["p50"] > 0 and sum(r["share"] for r in timed) == pytest.approx(1.0)
    conv = max(timed, key=lambda r: r["macs"])  # the widest convolution takes the most time
    assert conv["op"] == "CONV_2D" and conv["time_us"] == max(r["time_us"] for r in timed)


def test_profile_needs_the_operator_models_and_they_are_manifest_checked(bundles, profile_bundles,
                                                                         tmp_path):
    done = _device_profile(bundles["none"])
    assert done.returncode == 2 and "edgebn bundle BUILD --out B --profile" in done.stderr
    b = shutil.copytree(profile_bundles["none"], tmp_path / "b")
    op = sorted((b / "profile").glob("op*.tflite"))[0]
    data = bytearray(op.read_bytes())
    data[len(data) // 2] ^= 0x01
    op.write_bytes(bytes(data))
    done = _device_profile(b)
    assert done.returncode == 2 and "does not match the manifest" in done.stderr
