import json
import random
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app

runner = CliRunner()


def _one_error_line(result, needle):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and needle in lines[0]
    assert "Traceback" not in result.output


def test_every_registered_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(commands) == 12 and {"profile", "recalibrate"} <= set(commands)
    for command in commands:
        assert command in result.stdout
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0 and "Usage" in sub.stdout, command
        assert "--json" in sub.stdout, command  # every document can go to a machine


def test_version():
    from edgebn import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"edgebn {__version__}"


def test_inspect_clean_exits_0_and_residual_exits_1(cnn, pattern_files):
    clean = runner.invoke(app, ["inspect", str(cnn["tflite"])])
    assert clean.exit_code == 0 and "BN verdict: clean" in clean.stdout
    residual = runner.invoke(app, ["inspect", str(pattern_files[("bn_last", "none", False)])])
    assert residual.exit_code == 1 and "BN verdict: residual" in residual.stdout


def test_inspect_json_is_the_contract_document(pattern_files):
    path = pattern_files[("add_bn", "int8", True)]
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["path"] == str(path) and doc["size_bytes"] == path.stat().st_size
    assert doc["bn"]["verdict"] == "residual" and doc["bn"]["residual"][0]["source"] is None
    assert sum(doc["op_counts"].values()) == len(doc["subgraphs"][0]["operators"])


def test_inspect_tensors_table(cnn):
    result = runner.invoke(app, ["inspect", str(cnn["tflite"]), "--tensors"])
    assert result.exit_code == 0 and "FLOAT32" in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["inspect", "/nonexistent/model.tflite"], "no such file"),
    (["inspect"], "Missing argument"),
    (["build", "--arch", "resnet"], "'resnet' is not one of"),
    (["build", "--dataset", "imagenet"], "'imagenet' is not one of"),
    (["build", "--epochs", "0"], "--epochs"),
    (["bench", "/nonexistent.tflite"], "does not exist"),
    (["convert", "/nonexistent.keras"], "does not exist"),
    (["build", "--runtime", "litert"], "'litert' is not one of"),
    (["build", "--color", "sepia"], "'sepia' is not one of"),
    (["build", "--emulate", "tensorflow"], "unknown device runtime 'tensorflow'"),
    (["convert", "x.keras", "--tolerance", "0"], "--tolerance"),
    (["nonsense"], "No such command"),
])
def test_bad_usage_is_one_line_exit_2(args, needle):
    _one_error_line(runner.invoke(app, args), needle)


def test_bad_files_are_one_line_exit_2(tmp_path):
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    _one_error_line(runner.invoke(app, ["inspect", str(empty)]), "too short")
    text = tmp_path / "model.tflite"
    text.write_text("hello, this is not a flatbuffer")
    _one_error_line(runner.invoke(app, ["inspect", str(text)]), "file identifier")
    _one_error_line(runner.invoke(app, ["bench", str(text)]), "file identifier")
    fake_keras = tmp_path / "model.keras"
    fake_keras.write_text("not a zip")
    _one_error_line(runner.invoke(app, ["convert", str(fake_keras)]), "not a Keras model")
    _one_error_line(runner.invoke(app, ["inspect", str(tmp_path)]), "not a regular file")


def test_build_bad_inputs(tmp_path):
    a_file = tmp_path / "out"
    a_file.write_text("x")
    _one_error_line(runner.invoke(app, ["build", "--out", str(a_file)]), "is a file")
    _one_error_line(runner.invoke(app, ["build", "--out", str(tmp_path / "o"), "--data-dir",
                                        str(tmp_path / "missing")]), "does not exist")
    (tmp_path / "empty").mkdir()
    _one_error_line(runner.invoke(app, ["build", "--out", str(tmp_path / "o"), "--data-dir",
                                        str(tmp_path / "empty")]), "no images found")


def test_bench_cli_json_on_stdout_a_file_and_a_plot(cnn, cnn_twin, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = runner.invoke(app, ["bench", str(cnn["tflite"]), "--keras", str(cnn["keras"]),
                                 "--baseline", str(cnn_twin["tflite"]), "--dataset", "digits",
                                 "--runs", "20", "--warmup", "2", "--json", "--json-file",
                                 str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # --json: the document alone on stdout
    assert {"environment", "tflite", "baseline", "keras", "speedup"} <= set(doc)
    assert doc["tflite"]["runs"] == 20 and doc["tflite"]["threads"] == 1
    assert json.loads(out.read_text())["tflite"]["latency_us"] == doc["tflite"]["latency_us"]
    assert png.stat().st_size > 1000
    table = runner.invoke(app, ["bench", str(cnn["tflite"]), "--runs", "20", "--warmup", "2"])
    assert table.exit_code == 0 and "p50 µs" in table.stdout


def test_bench_bad_data_file(cnn, tmp_path):
    bad = tmp_path / "x.npy"
    bad.write_text("no")
    _one_error_line(runner.invoke(app, ["bench", str(cnn["tflite"]), "--data", str(bad)]),
                    "not a readable .npy")


def test_inspect_several_files_one_row_or_json_line_each(cnn, pattern_files, tmp_path):
    clean, residual = cnn["tflite"], pattern_files[("bn_last", "none", False)]
    both = runner.invoke(app, ["inspect", str(clean), str(residual), "--json"])
    assert both.exit_code == 1, both.output
    lines = [json.loads(line) for line in both.stdout.splitlines()]
    assert [d["path"] for d in lines] == [str(clean), str(residual)]
    assert [d["bn"]["verdict"] for d in lines] == ["clean", "residual"]
    table = runner.invoke(app, ["inspect", str(clean), str(clean)], terminal_width=200)
    assert table.exit_code == 0 and table.stdout.count("clean") == 2
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"nope")
    mixed = runner.invoke(app, ["inspect", str(clean), str(bad)], terminal_width=200)
    assert mixed.exit_code == 2 and "clean" in mixed.stdout
    assert mixed.stderr.count("Error: ") == 1 and "too short" in mixed.stderr


def test_inspect_never_imports_tensorflow(cnn):
    code = ("import sys; from typer.testing import CliRunner; from edgebn.cli.app import app; "
            f"r = CliRunner().invoke(app, ['inspect', {str(cnn['tflite'])!r}, '--json']); "
            "assert r.exit_code == 0, r.output; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_fuzzed_files_through_the_cli_exit_0_1_or_2(cnn, tmp_path):
    data = cnn["tflite"].read_bytes()
    rng = random.Random(7)
    codes = set()
    for i in range(200):
        b = bytearray(data)
        if i % 2:
            b = b[: rng.randrange(len(b))]
        else:
            for _ in range(4):
                b[rng.randrange(len(b))] = rng.randrange(256)
        path = tmp_path / "f.tflite"
        path.write_bytes(bytes(b))
        result = runner.invoke(app, ["inspect", str(path), "--json"])
        assert result.exit_code in (0, 1, 2), result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        codes.add(result.exit_code)
    assert 2 in codes


def test_train_then_convert_as_separate_steps(tmp_path):
    keras_path = tmp_path / "m.keras"
    trained = runner.invoke(app, ["train", "--out", str(keras_path), "--arch", "mlp-prebn",
                                  "--epochs", "1", "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["arch"] == "mlp-prebn" and summary["bn_layers"] == ["bn1", "bn2"]
    assert keras_path.stat().st_size > 0 and not list(tmp_path.glob(".tmp-*"))
    converted = runner.invoke(app, ["convert", str(keras_path), "--json"])
    assert converted.exit_code == 0, converted.output
    doc = json.loads(converted.stdout)
    assert doc["out"] == str(tmp_path / "m.tflite")
    assert doc["inspect"]["bn"]["verdict"] == "clean"
    # Folded in Keras first: the file has no BN left to trace; the fold says where each went.
    assert [(f["bn"], f["into"]) for f in doc["fold"]["layers"]] == [("bn1", "fc1"), ("bn2", "fc2")]
    assert doc["fold"]["converter_only"]["verdict"] == "clean"
    plain = runner.invoke(app, ["convert", str(keras_path), "--no-fold", "--json"])
    assert plain.exit_code == 0, plain.output
    doc = json.loads(plain.stdout)
    assert doc["fold"] is None
    assert sorted(f["source"] for f in doc["inspect"]["bn"]["folded"]) == ["bn1", "bn2"]


def test_train_out_must_be_keras(tmp_path):
    _one_error_line(runner.invoke(app, ["train", "--out", str(tmp_path / "m.h5")]),
                    "must end in .keras")
