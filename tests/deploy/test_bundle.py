"""The device bundle: predict.py checks its manifest, predicts, benches and self-tests."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()


def predict(bundle_dir, *args):
    return subprocess.run([sys.executable, str(bundle_dir / "predict.py"), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_bundle_has_every_file_and_a_matching_manifest(bundles, quantize):
    b = bundles[quantize]
    manifest = json.loads((b / "manifest.json").read_text())
    expected = {"model.tflite", "labels.txt", "bundle.json", "predict.py", "verify.py", "serve.py",
                "requirements.txt", "README.md", "golden/inputs.npy", "golden/outputs.npy"}
    assert set(manifest["files"]) == expected
    spec = json.loads((b / "bundle.json").read_text())
    assert (b / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert spec["preprocessing"]["input_shape"] == [8, 8, 1]
    if quantize == "int8":
        assert spec["input"]["dtype"] == "int8" and spec["input"]["quantization"][0] > 0
        assert spec["selftest"]["units"] == "int8 steps"
    else:
        assert spec["input"]["dtype"] == "float32" and spec["input"]["quantization"] is None
    assert "tflite-runtime==2.14.0" in (b / "requirements.txt").read_text()
    assert np.load(b / "golden" / "inputs.npy").shape == (16, 8, 8, 1)


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_predict_selftest_passes_here(bundles, quantize):
    res = predict(bundles[quantize], "--selftest", "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)["selftest"]
    assert st["passed"] and st["samples"] == 16 and st["top1_agreement"] == 1.0


def test_predict_top_k_on_npy_and_images(bundles, tmp_path):
    from PIL import Image

    b = bundles["none"]
    x = np.load(b / "golden" / "inputs.npy")
    np.save(tmp_path / "one.npy", x[0])
    # An 8-bit picture of the first golden input: pixel = x / scale * 255 / raw_max.
    spec = json.loads((b / "bundle.json").read_text())["preprocessing"]
    pixels = np.clip(x[0, :, :, 0] / spec["scale"] * 255 / spec["raw_max"], 0, 255)
    Image.fromarray(pixels.round().astype(np.uint8)).save(tmp_path / "digit.png")
    res = predict(b, str(tmp_path / "one.npy"), str(tmp_path / "digit.png"), "--top-k", "2",
                  "--json")
    assert res.returncode == 0, res.stderr
    preds = json.loads(res.stdout)["predictions"]
    assert [len(p["top"]) for p in preds] == [2, 2]
    assert preds[0]["top"][0]["label"] == preds[1]["top"][0]["label"]  # same digit both ways
    assert preds[0]["top"][0]["score"] >= preds[0]["top"][1]["score"]


def test_predict_bench(bundles):
    res = predict(bundles["int8"], "--bench", "--runs", "50", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    lat = json.loads(res.stdout)["bench"]["latency_us"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]


@pytest.mark.parametrize("victim", ["model.tflite", "golden/outputs.npy", "bundle.json"])
def test_one_changed_byte_is_refused_before_loading(bundles, tmp_path, victim):
    import shutil

    b = shutil.copytree(bundles["none"], tmp_path / "b")
    data = bytearray((b / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / victim).write_bytes(bytes(data))
    res = predict(b, "--selftest")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]  # one line
    assert f"Error: {victim}: sha256" in res.stderr and "does not match the manifest" in res.stderr
    assert "XNNPACK" not in res.stderr  # refused before any interpreter was made


def test_a_missing_file_and_a_missing_manifest_are_refused(bundles, tmp_path):
    import shutil

    b = shutil.copytree(bundles["none"], tmp_path / "b")
    (b / "labels.txt").unlink()
    res = predict(b, "--selftest")
    assert res.returncode == 2
    assert "labels.txt: listed in manifest.json but missing from the bundle" in res.stderr
    (b / "manifest.json").unlink()
    res = predict(b, "--selftest")
    assert res.returncode == 2 and "missing or unreadable manifest" in res.stderr


def test_a_wrong_golden_output_fails_the_selftest_with_exit_1(bundles, tmp_path):
    """Re-sign a bundle whose golden outputs are wrong: the manifest passes, the self-test fails."""
    import hashlib
    import shutil

    b = shutil.copytree(bundles["none"], tmp_path / "b")
    y = np.load(b / "golden" / "outputs.npy")
    np.save(b / "golden" / "outputs.npy", y[::-1].copy())
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"]["golden/outputs.npy"] = hashlib.sha256(
        (b / "golden" / "outputs.npy").read_bytes()).hexdigest()
    (b / "manifest.json").write_text(json.dumps(manifest))
    res = predict(b, "--selftest", "--json")
    assert res.returncode == 1
    assert json.loads(res.stdout)["selftest"]["passed"] is False


@pytest.mark.parametrize("args, needle", [
    ([], "nothing to do"),
    (["missing.npy"], "missing.npy: not a readable .npy"),
    (["--threads", "0", "--selftest"], "must be >= 1"),
])
def test_predict_bad_input_is_one_line_exit_2(bundles, args, needle):
    res = predict(bundles["none"], *args)
    assert res.returncode == 2 and needle in res.stderr
    assert "Traceback" not in res.stderr


def test_bundle_cli_and_atomic_replacement(small_builds, tmp_path):
    out = tmp_path / "bundle"
    first = runner.invoke(app, ["bundle", str(small_builds["none"]), "--out", str(out), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["selftest"]["passed"]
    (out / "stale.txt").write_text("from an older bundle")
    again = runner.invoke(app, ["bundle", str(small_builds["int8"]), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert not (out / "stale.txt").exists()  # replaced as a whole, not merged
    assert json.loads((out / "bundle.json").read_text())["input"]["dtype"] == "int8"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp or old dirs left


def test_bundle_refuses_a_directory_that_is_not_a_build(tmp_path):
    res = runner.invoke(app, ["bundle", str(tmp_path), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "not a build directory" in res.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("victim, content, needle", [
    ("report.json", b"{not json", "not a readable JSON report"),
    ("samples.npy", b"\x93NUMPY garbage", "samples.npy: .npy format version"),
    ("model.tflite", b"TFL3" + b"\xff" * 64, "model.tflite"),
])
def test_bundle_refuses_a_damaged_build_in_one_line(small_builds, tmp_path, victim, content,
                                                    needle):
    import shutil

    build = shutil.copytree(small_builds["none"], tmp_path / "build")
    (build / victim).write_bytes(content)
    res = runner.invoke(app, ["bundle", str(build), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "b").exists()


def test_bundle_never_replaces_what_is_not_a_bundle(small_builds, tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "important.txt").write_text("mine")
    for out, needle in ((a_file, "exists and is not a directory"),
                        (docs, "not an edgebn bundle (no manifest.json)")):
        res = runner.invoke(app, ["bundle", str(small_builds["none"]), "--out", str(out)])
        assert res.exit_code == 2 and needle in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert a_file.read_text() == "mine" and (docs / "important.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    done = runner.invoke(app, ["bundle", str(small_builds["none"]), "--out", str(empty)])
    assert done.exit_code == 0


def test_build_refuses_a_bad_emulate_runtime_before_training(tmp_path):
    res = runner.invoke(app, ["build", "--out", str(tmp_path / "b"), "--emulate", "foo"])
    assert res.exit_code == 2 and "'foo' is not one of" in res.stderr
    res = runner.invoke(app, ["build", "--out", str(tmp_path / "b"), "--emulate", "auto"])
    assert res.exit_code == 2 and "unknown device runtime 'auto'" in res.stderr
    assert not (tmp_path / "b").exists()  # refused before the out dir, so before training


def test_requirements_pick_the_runtime_for_each_pi_os_python(bundles):
    """The markers, evaluated as pip does: tflite-runtime with NumPy < 2 on Python 3.11
    (bookworm), ai-edge-litert on 3.13 (trixie); the emulation tests install them for real."""
    from packaging.requirements import Requirement

    lines = [ln for ln in (bundles["none"] / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    reqs = [Requirement(ln) for ln in lines]
    for python, wanted in (("3.11", {"tflite-runtime", "numpy"}), ("3.13", {"ai-edge-litert"}),
                           ("3.12", {"ai-edge-litert"})):
        env = {"python_version": python, "python_full_version": f"{python}.0"}
        named = {r.name for r in reqs if r.marker is None or r.marker.evaluate(env)}
        assert named == wanted, python
    numpy = next(r for r in reqs if r.name == "numpy")
    assert not numpy.specifier.contains("2.0") and numpy.specifier.contains("1.24.2")
