import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.files import write_atomic
from edgebn.pipeline.build import BuildConfig, build
from edgebn.runtime.timing import BenchSettings
from edgebn.train.training import TrainConfig
from edgebn.zoo.models import ZOO

runner = CliRunner()

# Runs `edgebn build` as a user would, in its own process, counting what it reads, inspects
# and writes: Python's audit hook sees every open() and rename; inspection is counted at
# edgebn.tflite.residue.analyse_bn, which every inspection goes through. The build writes in a
# staging directory beside OUT (.tmp-out-PID-*) swapped in whole at the end: a path in it
# is counted as the OUT path it becomes.
_COUNTED_BUILD = textwrap.dedent("""
    import collections, json, os, re, sys
    counts = collections.Counter()
    out_file = sys.argv.pop(1)

    def relpath(name, out):
        rel = os.path.relpath(name, out)
        staged = re.escape(os.path.join(os.pardir, f".tmp-{os.path.basename(out)}-"))
        return re.sub(rf"^{staged}\\d+-[a-z0-9_]+{re.escape(os.sep)}", "", rel)

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            name = os.fsdecode(args[0])
            if name.endswith(".tflite"):
                mode, flags = args[1], args[2]
                if isinstance(mode, str):
                    reading = "r" in mode and "+" not in mode
                else:
                    reading = (flags & os.O_ACCMODE) == os.O_RDONLY
                counts["read " + relpath(name, OUT)] += reading
        elif event == "os.rename":
            counts["rename -> " + os.path.basename(os.fsdecode(args[1]))] += 1

    OUT = os.path.abspath(sys.argv[sys.argv.index("--out") + 1])
    sys.addaudithook(hook)
    import edgebn.tflite.residue as analysis
    original = analysis.analyse_bn

    def counted(model, *rest):
        counts["inspect " + relpath(model.path, OUT)] += 1
        return original(model, *rest)

    analysis.analyse_bn = counted
    from edgebn.cli.app import app
    try:
        app(prog_name="edgebn")
    finally:
        with open(out_file, "w") as f:
            json.dump(counts, f)
""")

# Log lines edgebn never writes: absl/glog (I0000 00:00:..., E0000 ... cuda_platform.cc:52]),
# TensorFlow's and absl's Python loggers, oneDNN/CUDA notes, Keras' fit progress and warnings.
_FOREIGN = re.compile(r"^[IWEF]\d{4} |WARNING:(tensorflow|absl)|^WARNING: All log messages|"
                      r"oneDNN|cuda|cuInit|TF-TRT|tensorflow/|Epoch \d+/\d+|\d+/\d+ ━|"
                      r"UserWarning|DeprecationWarning|INFO: Created TensorFlow Lite|"
                      r"To enable the following instructions|Saved artifact at", re.I)


def _counted_build(tmp_path, out, *args):
    counts = tmp_path / "counts.json"
    proc = subprocess.run([sys.executable, "-c", _COUNTED_BUILD, str(counts), "build", "--out",
                           str(out), *args], capture_output=True, text=True, timeout=900)
    return proc, json.loads(counts.read_text())


@pytest.fixture(scope="module")
def default_build(tmp_path_factory):
    """A default `edgebn build` (fewer epochs, shorter bench) in its own process, with --bundle."""
    tmp = tmp_path_factory.mktemp("build")
    out = tmp / "out"
    proc, counts = _counted_build(tmp, out, "--epochs", "3", "--bench-time", "0.05", "--bundle")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc, counts


def test_a_default_build_shows_only_edgebns_own_lines(default_build):
    _, proc, _ = default_build
    foreign = [line for line in (proc.stdout + proc.stderr).splitlines() if _FOREIGN.search(line)]
    assert foreign == []
    stages = [line.split()[1] for line in proc.stderr.splitlines() if line.startswith("✓")]
    assert stages == ["data", "train", "twin", "fold", "convert", "inspect", "verify", "bench",
                      "profile", "bundle", "report"]  # one progress display: each stage once
    assert "speedup vs fastest Keras" in proc.stdout


def test_verbose_brings_tensorflows_own_log_back(cnn, tmp_path):
    """The default build above shows none of these lines; --verbose shows them as they come."""
    proc = subprocess.run([sys.executable, "-m", "edgebn.cli.app", "convert", str(cnn["keras"]),
                           "--out", str(tmp_path / "m.tflite"), "--no-fold", "--verbose"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(_FOREIGN.search(line) for line in proc.stderr.splitlines()), proc.stderr[-2000:]


def test_a_default_build_reads_inspects_and_writes_each_thing_once(default_build):
    _, _, counts = default_build
    # Every .tflite is parsed from the converter's bytes in memory; none is read back from
    # disk by the build (the bundle hashes its own copy once for the manifest).
    reads = {k: v for k, v in counts.items() if k.startswith("read ") and v}
    assert all(v <= 1 for v in reads.values()), reads
    assert not any("/" not in k for k in reads), reads  # OUT/*.tflite: never read back
    inspected = {k: v for k, v in counts.items() if k.startswith("inspect ")}
    assert inspected == {"inspect model.tflite": 1, "inspect converter_only.tflite": 1}
    assert counts["rename -> report.json"] == 1 and counts["rename -> report.md"] == 1


def test_default_build_writes_every_artifact_and_the_report(default_build):
    out, _, _ = default_build
    for name in ("model.keras", "model.tflite", "twin.keras", "twin.tflite", "report.json",
                 "report.md"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".tmp-*"))
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["name"] == "digits" and report["dataset"]["classes"] == 10
    assert report["dataset"]["preprocessing"]["resize"] == "bilinear"
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
    assert set(report["timings"]) == {f"{s}_s" for s in (
        "data", "train", "twin", "fold", "convert", "inspect", "verify", "bench", "profile",
        "bundle")}
    md = (out / "report.md").read_text()
    assert "| BN verdict | clean" in md and "| speedup vs fastest Keras |" in md
    # The fold (on by default): both verdicts, the folded model, and its bench rows.
    fold = report["fold"]
    assert fold["folded"] == 4 and fold["kept"] == 0 and fold["max_rel_diff"] <= 1e-5
    assert fold["converter_only"]["verdict"] == fold["pre_folded"]["verdict"] == "clean"
    assert (out / "folded.keras").is_file() and (out / "converter_only.tflite").is_file()
    assert set(b["keras_folded"]) == set(b["keras"]) and set(b["fold_gain"]) == {
        f"keras_{m}" for m in b["keras"]}
    assert "## Fold in Keras" in md and "| Keras folded compiled |" in md
    # --bundle: the device bundle, self-tested here.
    assert report["bundle"]["path"] == "bundle" and report["bundle"]["selftest_here"]["passed"]
    assert (out / "bundle" / "manifest.json").is_file() and (out / "samples.npy").is_file()


def test_the_table_and_the_markdown_show_the_same_rows(cnn, tmp_path):
    from edgebn.pipeline.report import render_markdown

    result = build(BuildConfig(out=tmp_path, model=cnn["keras"],
                               bench=BenchSettings(warmup=2, runs=20, keras_time_s=0.01)))
    md = render_markdown(result)
    def cell(text):
        return text.replace("|", "\\|")

    for metric, value in result.rows():
        assert f"| {cell(metric)} | {cell(value)} |" in md
    terminal = runner.invoke(app, ["build", "--out", str(tmp_path / "again"), "--model",
                                   str(cnn["keras"]), "--no-bench"], terminal_width=250)
    assert terminal.exit_code == 0, terminal.output
    for metric in ("BN verdict", "top-1 agreement TFLite vs Keras", "fold in Keras"):
        assert metric in terminal.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ZOO))
@pytest.mark.parametrize("bn", [True, False], ids=["bn", "no-bn"])
def test_every_arch_builds_with_and_without_bn(tmp_path, arch, bn):
    config = BuildConfig(out=tmp_path, train=TrainConfig(arch=arch, bn=bn, epochs=1), twin=False,
                         run_bench=False)  # bench: the default build and tests/bench/test_run.py
    report = build(config).to_json()
    assert report["model"]["arch"] == arch.value and report["model"]["bn"] is bn
    assert report["model"]["bn_layers"] == ({"mlp": 3, "mlp-prebn": 2, "cnn": 4}[arch.value]
                                            if bn else 0)
    assert report["inspect"]["bn"]["verdict"] == "clean"
    assert report["tflite"]["top1_agreement"] >= 0.99
    assert "bench" not in report and "twin" not in report


def test_build_on_an_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, level in (("dark", 40), ("light", 210)):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(level, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    from edgebn.data.dataset import DataSpec

    config = BuildConfig(out=tmp_path / "out", data=DataSpec(data_dir=tmp_path / "imgs",
                                                             image_size=8),
                         train=TrainConfig(epochs=2), twin=False, run_bench=False)
    report = build(config).to_json()
    assert report["dataset"]["class_names"] == ["dark", "light"]
    assert report["dataset"]["input_shape"] == [8, 8, 1]
    assert "bench" not in report


# ---------------------------------------------------------------- cost and precisions (issue 15)


def _shown_in_terminal_and_markdown(result, monkeypatch):
    """Every summary row, metric and value, in the terminal's table and in report.md."""
    from edgebn.cli import render
    from edgebn.pipeline.report import render_markdown

    monkeypatch.setattr(render.out, "_width", 250)  # one line per row, in any terminal
    with render.out.capture() as captured:
        render.build(result)
    terminal, md = captured.get(), render_markdown(result)
    assert md == (result.out / "report.md").read_text()
    def cell(text):
        return text.replace("|", "\\|")

    for metric, value in result.rows():
        assert f"| {cell(metric)} | {cell(value)} |" in md
        assert metric in terminal and value in terminal, (metric, value)
    return terminal, md


def test_int8_build_keeps_float32_beside_it(cnn, tmp_path, monkeypatch):
    from edgebn.convert import ConvertOptions, Quantize

    monkeypatch.setenv("EDGEBN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = build(BuildConfig(out=out, model=cnn["keras"], convert=ConvertOptions(Quantize.int8),
                               bench=BenchSettings(warmup=2, runs=50, keras_time_s=0.01)))
    report = json.loads((out / "report.json").read_text())
    assert report["tflite"]["quantize"] == "int8" and report["tflite"]["path"] == "model.tflite"
    p = report["precisions"]
    assert list(p) == ["float32", "int8"]
    assert p["float32"]["path"] == "model_float32.tflite" and p["int8"]["path"] == "model.tflite"
    assert p["float32"]["size_bytes"] == (out / "model_float32.tflite").stat().st_size
    assert p["int8"]["size_bytes"] == report["tflite"]["size_bytes"] < p["float32"]["size_bytes"]
    assert p["int8"]["test_accuracy"] == report["tflite"]["test_accuracy"]
    assert p["float32"]["top1_agreement"] >= 0.995 and p["int8"]["top1_agreement"] >= 0.8
    for name in ("float32", "int8"):
        assert p[name]["p50_us"] > 0 and p[name]["macs"] == p["float32"]["macs"] > 0
        assert p[name]["gmacs_per_s"] > 0 and p[name]["efficiency"] > 0
    assert p["float32"]["efficiency"] < 1.2  # the probe is float32; int8 may pass it
    b = report["bench"]
    assert b["others"]["float32"]["model"] == "model_float32.tflite"
    assert b["others"]["float32"]["latency_us"]["p50"] == p["float32"]["p50_us"]
    assert b["tflite"]["latency_us"]["p50"] == p["int8"]["p50_us"]
    assert "float32_s" in report["timings"]
    _, md = _shown_in_terminal_and_markdown(result, monkeypatch)
    for metric in ("file", "test accuracy", "top-1 agreement vs Keras", "p50",
                   "GMAC/s (efficiency vs the float32 probe)"):
        assert f"| float32 / int8 {metric} |" in md
    rows, cost = dict(result.rows()), b["tflite"]["cost"]  # the build's own cost rows
    assert rows["TFLite MACs per inference"].startswith(f"{cost['macs']:,} (")
    assert rows["TFLite GMAC/s at p50"] == f"{cost['gmacs_per_s']:.1f}"
    assert rows["TFLite efficiency"].startswith(f"{cost['efficiency']:.0%} of the probe's")
    # A float32 build into the same directory: one precision, no stale float32 file.
    again = build(BuildConfig(out=out, model=cnn["keras"], run_bench=False))
    assert again.precisions() == [] and not (out / "model_float32.tflite").exists()


def test_a_default_build_reports_the_seeds_ledger_from_the_training_history(default_build):
    """Steps and wall time to the twin's best validation accuracy, recomputed from each
    model's per-epoch history in the report; the ratios from those."""
    import statistics

    out, proc, _ = default_build
    report = json.loads((out / "report.json").read_text())
    ledger = report["seed_ledger"]
    bn, twin = report["model"]["history"], report["twin"]["history"]
    assert len(bn["val_accuracy"]) == report["model"]["epochs_run"] == len(bn["epoch_s"])
    target = max(twin["val_accuracy"])
    assert ledger["target_val_accuracy"] == target
    for row, hist in ((ledger["bn"], bn), (ledger["twin"], twin)):
        reached = [i + 1 for i, a in enumerate(hist["val_accuracy"]) if a >= target]
        assert row["epochs_to_target"] == (reached[0] if reached else None)
        if reached:
            assert row["steps_to_target"] == reached[0] * hist["steps_per_epoch"] > 0
            assert row["seconds_to_target"] == pytest.approx(sum(hist["epoch_s"][:reached[0]]))
        assert row["seconds_per_epoch"] == pytest.approx(statistics.median(hist["epoch_s"][1:]))
    assert ledger["twin"]["epochs_to_target"] is not None  # the twin reaches its own best
    r = ledger["ratios"]
    assert r["epoch_slowdown"] == pytest.approx(ledger["bn"]["seconds_per_epoch"]
                                                / ledger["twin"]["seconds_per_epoch"])
    if ledger["bn"]["steps_to_target"]:
        assert r["fewer_steps"] == pytest.approx(ledger["twin"]["steps_to_target"]
                                                 / ledger["bn"]["steps_to_target"])
    assert "| BN vs no-BN training |" in (out / "report.md").read_text()


def test_a_build_at_chance_warns_in_the_table_and_the_report(tmp_path):
    """Random labels: nothing to learn. The build still succeeds (it made what was asked),
    and says, in the table, report.json and report.md, that the model learned nothing."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "noise.npz"
    np.savez(npz, x=rng.uniform(0, 1, (600, 8, 8, 1)).astype(np.float32),
             y=rng.integers(0, 3, 600))
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--data", str(npz), "--epochs", "2", "--no-twin",
                            "--no-bench", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "the model learned nothing" in r.output
    report = json.loads((out / "report.json").read_text())
    assert [w for w in report["warnings"] if "learned nothing" in w]
    assert "> **Warning:** test accuracy" in (out / "report.md").read_text()


def one_weight_perturbed(m, factor: float = 1.01) -> bytes:
    """The bytes of ``m`` (a parsed .tflite) with the largest weight of its last
    FULLY_CONNECTED times ``factor``."""
    sg = m.subgraphs[0]
    fc = [op for op in sg.operators if op.op == "FULLY_CONNECTED"][-1]
    weights = sg.tensors[fc.inputs[1]]
    raw = m.buffer_bytes(weights.buffer)
    values = m.constant(weights).reshape(-1).copy()
    values[int(np.abs(values).argmax())] *= factor
    data = bytearray(m.data)
    start = bytes(data).find(raw)
    data[start:start + len(raw)] = values.astype("<f4").tobytes()
    return bytes(data)


def _one_weight_perturbed(converted):
    from edgebn.convert import Converted
    from edgebn.tflite.reader import parse_tflite

    data = one_weight_perturbed(converted.model)
    write_atomic(converted.path, data)
    return Converted(parse_tflite(data, str(converted.path)), converted.quantize,
                     converted.convert_s)


def test_a_wrong_tflite_fails_the_build(cnn, tmp_path, monkeypatch):
    """The converter's file with one weight 1 % off: verify measures it against Keras, and the
    build exits 1, its table and report naming the check that failed."""
    import edgebn.convert as convert

    real = convert.to_tflite

    def wrong(model, out, *args, **kwargs):
        converted = real(model, out, *args, **kwargs)
        return _one_weight_perturbed(converted) if str(out).endswith("model.tflite") else converted

    monkeypatch.setattr(convert, "to_tflite", wrong)
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--model", str(cnn["keras"]), "--no-bench", "--out", str(out)])
    assert r.exit_code == 1, r.output
    assert "verify failed" in r.output and "max |Δp|" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["passed"] is False
    failed = [c for c in report["verify"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["max_abs_diff"] and failed[0]["value"] > 1e-4
    assert "| verify | FAILED: model.tflite: max \\|Δp\\|" in (out / "report.md").read_text()
    # the user may loosen the limit, knowingly
    r = runner.invoke(app, ["build", "--model", str(cnn["keras"]), "--no-bench", "--out",
                            str(tmp_path / "c"), "--max-prob-diff", "0.5"])
    assert r.exit_code == 0, r.output


def test_a_wrong_fold_of_a_tflite_fails_the_build(cnn, digits, tmp_path, monkeypatch):
    """``build --model x.tflite``: the folded file against the original on the labelled data;
    a folded file with one weight 1 % off makes the build exit 1."""
    from dataclasses import replace

    import edgebn.pipeline.tflite_build as tflite_build

    real = tflite_build.fold_tflite

    def wrong(model, *args, **kwargs):
        return replace(real(model, *args, **kwargs), data=one_weight_perturbed(model))

    npz = tmp_path / "digits.npz"
    np.savez(npz, x=digits.x_test, y=digits.y_test)
    out = tmp_path / "b"
    args = ["build", "--model", str(cnn["tflite"]), "--data", str(npz), "--no-bench", "--out",
            str(out)]
    assert runner.invoke(app, args).exit_code == 0  # the honest fold passes
    monkeypatch.setattr(tflite_build, "fold_tflite", wrong)
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    assert "verify failed" in r.output
    report = json.loads((out / "report.json").read_text())
    assert report["verify"]["passed"] is False and report["verify"]["failed"]


def test_a_default_build_plots_training_latency_and_profile(default_build):
    """report.md links three PNGs; the training plot shows both curves and the target line."""
    out, _, _ = default_build
    report = json.loads((out / "report.json").read_text())
    plots = report["plots"]
    assert set(plots) == {"training", "latency", "profile"}
    for name, plot in plots.items():
        assert (out / plot["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![{name}]({plot['path']})" in (out / "report.md").read_text()
    assert plots["training"]["shows"] == ["BN", "BN-free baseline", "target"]
    assert report["seed_ledger"]["target_val_accuracy"] > 0


@pytest.mark.slow
def test_a_learning_rate_sweep_compares_best_against_best(tmp_path):
    out = tmp_path / "b"
    r = runner.invoke(app, ["build", "--lr-sweep", "1,3,10", "--epochs", "2", "--no-bench",
                            "--out", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "report.json").read_text())
    sweep = report["lr_sweep"]
    assert [row["multiplier"] for row in sweep["rates"]] == [1.0, 3.0, 10.0]
    assert all({"bn", "twin", "learning_rate"} <= set(row) for row in sweep["rates"])
    best = sweep["best_against_best"]
    assert best == report["seed_ledger"]
    assert set(best["ratios"]) == {"fewer_steps", "epoch_slowdown", "wall_speedup"}
    shows = report["plots"]["training"]["shows"]
    assert shows == [f"BN (its best learning rate, x{sweep['best']['bn']:g})",
                     f"BN-free baseline (its best learning rate, x{sweep['best']['twin']:g})",
                     "target"]
    assert "| learning-rate sweep |" in (out / "report.md").read_text()
    bad = runner.invoke(app, ["build", "--lr-sweep", "1,0", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "--lr-sweep" in bad.output
