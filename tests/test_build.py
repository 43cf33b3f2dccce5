import json

import pytest
from typer.testing import CliRunner

from edgebn.bench import BenchSettings
from edgebn.build import BuildConfig, build
from edgebn.cli import app
from edgebn.models import Arch
from edgebn.stages import write_atomic

runner = CliRunner()


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    result = runner.invoke(app, ["build", "--out", str(out), "--epochs", "3",
                                 "--bench-time", "0.05", "--bundle"])
    assert result.exit_code == 0, result.output
    return out, result


def test_default_build_writes_every_artifact_and_the_report(default_build):
    out, result = default_build
    for name in ("model.keras", "model.tflite", "twin.keras", "twin.tflite", "report.json",
                 "report.md"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".tmp-*"))
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "digits" and report["dataset"]["classes"] == 10
    assert report["model"]["arch"] == "cnn"
    assert report["model"]["bn_layers"] == 4
    assert report["keras"]["path"] == "model.keras"
    t = report["tflite"]
    assert t["path"] == "model.tflite" and t["size_bytes"] == (out / "model.tflite").stat().st_size
    assert t["quantize"] == "none" and t["top1_agreement"] >= 0.995 and t["max_abs_diff"] < 1e-4
    assert abs(t["test_accuracy"] - report["keras"]["test_accuracy"]) <= 0.005
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["inspect"]["path"] == "model.tflite"
    b = report["bench"]
    assert {"environment", "tflite", "baseline", "keras", "speedup", "bn_cost"} <= set(b)
    assert b["tflite"]["model"] == "model.tflite" and b["baseline"]["model"] == "twin.tflite"
    md = (out / "report.md").read_text()
    assert "BN verdict: **clean**" in md and "Speedup of TFLite" in md
    assert "speedup vs fastest Keras" in result.stdout
    # The fold (on by default): both verdicts, the folded model, and its bench rows.
    fold = report["fold"]
    assert fold["folded"] == 4 and fold["kept"] == 0 and fold["max_rel_diff"] <= 1e-5
    assert fold["converter_only"]["verdict"] == fold["pre_folded"]["verdict"] == "clean"
    assert (out / "folded.keras").is_file() and (out / "converter_only.tflite").is_file()
    assert set(b["keras_folded"]) == set(b["keras"]) and set(b["fold_gain"]) == {
        f"keras_{m}" for m in b["keras"]}
    assert "## Fold in Keras" in md and "Keras folded compiled" in md
    # --bundle: the device bundle, self-tested here.
    assert report["bundle"]["path"] == "bundle" and report["bundle"]["selftest_here"]["passed"]
    assert (out / "bundle" / "manifest.json").is_file() and (out / "samples.npy").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(Arch))
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_every_arch_builds_with_and_without_bn(tmp_path, arch, bn):
    config = BuildConfig(out=tmp_path, arch=arch, bn=bn, epochs=1, twin=False,
                         bench_settings=BenchSettings(warmup=2, runs=20))
    result = build(config, log=lambda _: None, verbose=0)
    report = result.report
    assert report["model"]["arch"] == arch.value and report["model"]["bn"] is bn
    assert report["model"]["bn_layers"] == ({"mlp": 3, "mlp-prebn": 2, "cnn": 4}[arch.value]
                                            if bn else 0)
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["tflite"]["top1_agreement"] >= 0.99
    assert "keras" in report["bench"] and "baseline" not in report["bench"]


def test_build_on_an_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("light", 210)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    config = BuildConfig(out=tmp_path / "out", data_dir=tmp_path / "imgs", image_size=8,
                         epochs=2, twin=False, bench=False)
    report = build(config, log=lambda _: None, verbose=0).report
    assert report["dataset"]["class_names"] == ["dark", "light"]
    assert report["dataset"]["input_shape"] == [8, 8, 1]
    assert "bench" not in report


def test_interrupted_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    class Boom(Exception):
        pass

    from edgebn.stages import atomic_path

    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise Boom
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new"


def test_atomic_writes_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "m.tflite", b"x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
