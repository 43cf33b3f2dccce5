"""Choices as data: one row per quantize mode (edgebn.choices) and per arch
(edgebn.zoo.models); the enums, the CLI's choices and help, the checks, the build's
float32-beside and the bundle's self-test tolerance all come from the rows.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from edgebn.choices import (
    QUANTIZE_MODES,
    Quantize,
    QuantizeSpec,
    choice_enum,
    quantize_spec,
    selftest_tolerance,
)
from edgebn.cli.app import app
from edgebn.cli.options import error_line
from edgebn.convert import ConvertOptions, to_tflite
from edgebn.errors import EdgebnError
from edgebn.pipeline.precisions import FLOAT32_BESIDE
from edgebn.train.training import TrainConfig
from edgebn.zoo.models import ARCHS, BACKBONE_ARCHS, ZOO, Arch, arch_spec, build_model

runner = CliRunner()


def _help(command: str) -> str:
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"}).stdout
    return re.sub(r"[\s│]+", " ", text)  # Rich's box and line breaks out of the way


def test_the_enums_are_the_rows_in_order():
    assert [q.value for q in Quantize] == [s.name for s in QUANTIZE_MODES]
    assert [a.value for a in Arch] == [s.name for s in ARCHS]
    assert Arch.mobilenet_v3_small.value == "mobilenet-v3-small"  # '-' is '_' as an attribute
    assert set(ZOO) | BACKBONE_ARCHS == set(Arch) and not set(ZOO) & BACKBONE_ARCHS
    assert FLOAT32_BESIDE == tuple(Quantize(s.name) for s in QUANTIZE_MODES if s.float32_beside)
    assert FLOAT32_BESIDE == (Quantize.int8,)


def test_an_enum_made_from_rows_has_one_member_per_row():
    rows = (*QUANTIZE_MODES, QuantizeSpec("int4-x", "a mode that is only a row"))
    made = choice_enum("Made", rows, __name__)
    assert [m.value for m in made] == [r.name for r in rows] and made.int4_x.value == "int4-x"
    assert made("int4-x") == "int4-x"  # a str enum, as the CLI and the JSON need


@pytest.mark.parametrize("command", ["build", "convert"])
def test_every_quantize_row_is_a_cli_choice_with_its_help(command):
    text = _help(command)
    choices = re.search(r"--quantize <([^>]*)>", text).group(1).replace(" ", "")
    assert choices.split("|") == [s.name for s in QUANTIZE_MODES]
    for s in QUANTIZE_MODES:
        assert f"{s.name}: {s.help}" in text, s.name


@pytest.mark.parametrize("command", ["build", "train"])
def test_every_arch_row_is_a_cli_choice_and_the_help_names_each_backbone(command):
    text = _help(command)
    choices = re.search(r"--arch <([^>]*)>", text).group(1).replace(" ", "")
    assert choices.split("|") == [s.name for s in ARCHS]
    backbones = re.search(r"backbone with a new head \(([^)]*)\)", text).group(1)
    assert backbones.split(", ") == [s.name for s in ARCHS if s.backbone]


@pytest.mark.parametrize("args, needle", [
    (["build", "--quantize", "int4"], "'int4' is not one of"),
    (["convert", "m.keras", "--quantize", "INT8x"], "'INT8x' is not one of"),
    (["train", "--arch", "mobilenet-v3-huge"], "'mobilenet-v3-huge' is not one of"),
])
def test_the_cli_refuses_a_name_no_row_has(args, needle):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.output


def test_the_library_refuses_a_name_no_row_has_in_one_line():
    with pytest.raises(EdgebnError, match=r"unknown quantize mode 'int4': expected one of "
                                          r"none, float16, dynamic, int8"):
        ConvertOptions("int4")
    with pytest.raises(EdgebnError, match=r"unknown arch 'resnet': expected one of mlp, "):
        TrainConfig(arch="resnet")
    with pytest.raises(EdgebnError, match="unknown quantize mode"):
        quantize_spec(None)
    with pytest.raises(EdgebnError, match="mobilenet-v2 is a backbone"):
        build_model("mobilenet-v2", (32, 32, 3), 2)
    assert ConvertOptions("int8").quantize is Quantize.int8  # a name is coerced to its member
    assert arch_spec(Arch.cnn).twin and not arch_spec("efficientnet-b0").twin


def test_a_backbone_option_error_names_the_backbone_rows():
    with pytest.raises(EdgebnError) as info:
        TrainConfig(arch="cnn", alpha=0.5).validate()
    names = ", ".join(s.name for s in ARCHS if s.backbone)
    assert str(info.value) == f"applies to the backbones only ({names}), not cnn"
    assert error_line(info.value) == f"--alpha: applies to the backbones only ({names}), not cnn"


# Before the rows, the bundle chose by the output's dtype alone: the same numbers here.
@pytest.mark.parametrize("mode", [*[s.name for s in QUANTIZE_MODES], "custom"])
@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8", "int16"])
def test_the_bundle_tolerance_is_the_rows_and_the_file_decides(mode, dtype):
    integer = dtype != "float32"
    want = (1.0, f"{dtype} steps") if integer else (1e-4, "probability")
    assert selftest_tolerance(mode, dtype) == want


def test_each_mode_sets_the_converter_up_as_its_row_says(tmp_path):
    """The converter's setup is data: each row's file has the dtypes the row names (a kernel
    of 2048 weights: dynamic range quantizes only those above 1024)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    calibration = np.random.default_rng(0).normal(size=(32, 32)).astype(np.float32)
    for s in QUANTIZE_MODES:
        converted = to_tflite(model, tmp_path / f"{s.name}.tflite", s.name, calibration)
        assert converted.quantize is Quantize(s.name)
        sg = converted.model.subgraphs[0]
        io = {sg.tensors[i].dtype.lower() for i in (*sg.inputs, *sg.outputs)}
        assert io == {s.io_type or "float32"}, s.name
        dtypes = {t.dtype.lower() for t in sg.tensors}
        assert ("float16" in dtypes) == ("float16" in s.supported_types), s.name
        assert ("int8" in dtypes) == (s.optimize and not s.supported_types), s.name
    with pytest.raises(EdgebnError, match="unknown quantize mode 'int4'"):
        to_tflite(model, tmp_path / "x.tflite", "int4")
    assert not (tmp_path / "x.tflite").exists()


