import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from edgebn.errors import InvalidModelError
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.residue import analyse_bn

_ANALYZE = """
import contextlib, io, json, sys
import tensorflow as tf
out = {}
for path in sys.argv[1:]:
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        tf.lite.experimental.Analyzer.analyze(model_path=path)
    out[path] = text.getvalue()
print(json.dumps(out))
"""


def _parse_analyzer(text):
    """(op, inputs, outputs) per operator, as tf.lite.experimental.Analyzer prints them."""
    ops = {}
    subgraph = None
    for line in text.splitlines():
        m = re.match(r"Subgraph#(\d+)", line)
        if m:
            subgraph = int(m.group(1))
            ops[subgraph] = []
        m = re.match(r"\s+Op#\d+ (\S+)\((.*)\) -> \[(.*)\]", line)
        if m:
            ints = lambda s: [int(t) for t in re.findall(r"T#(-?\d+)", s)]  # noqa: E731
            ops[subgraph].append((m.group(1), ints(m.group(2)), ints(m.group(3))))
    return ops


ANALYZED = [("relu_bn_pool", "none", False), ("dense_bn", "int8", False), ("add_bn", "int8", True)]


@pytest.fixture(scope="module")
def analyzer(pattern_files, cnn):
    """TensorFlow's Analyzer over every compared file, in one process: {path: ops}."""
    paths = [str(pattern_files[key]) for key in ANALYZED] + [str(cnn["tflite"])]
    proc = subprocess.run([sys.executable, "-c", _ANALYZE, *paths], capture_output=True,
                          text=True, check=True)
    return {p: _parse_analyzer(text) for p,
            text in json.loads(proc.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("key", ANALYZED)
def test_operator_list_equals_tflite_analyzer(pattern_files, cnn, analyzer, key):
    for path in (pattern_files[key], cnn["tflite"]):
        model = read_tflite(path)
        ours = {sg.index: [(op.op, list(op.inputs), list(op.outputs)) for op in sg.operators]
                for sg in model.subgraphs}
        assert ours == analyzer[str(path)]
        assert ours and all(ops for ops in ours.values())  # the Analyzer's text was parsed


def test_reads_tensors_quantization_and_sizes(pattern_files):
    model = read_tflite(pattern_files[("conv_bn_relu", "int8", False)])
    sg = model.subgraphs[0]
    inp = sg.tensors[sg.inputs[0]]
    assert inp.dtype == "INT8" and inp.shape == (1, 8, 8, 3)
    assert inp.quantization is not None and len(inp.quantization.scale) == 1
    weights = [t for t in sg.tensors if t.is_constant and t.dtype == "INT8"]
    assert weights and len(weights[0].quantization.scale) == 4  # per-channel
    assert 0 < model.weight_bytes < model.size_bytes
    assert model.graph_bytes == model.size_bytes - model.weight_bytes
    assert model.signatures[0].key == "serving_default"
    const = model.constant(weights[0])
    assert const.dtype == np.int8 and const.shape == weights[0].shape


@pytest.mark.parametrize("data, message", [
    (b"", "too short"),
    (b"\x00" * 7, "too short"),
    (b"\x10\x00\x00\x00XXXX" + b"\x00" * 32, "file identifier"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 32, "root offset"),
])
def test_malformed_headers_are_refused(data, message):
    with pytest.raises(InvalidModelError, match=message):
        parse_tflite(data, "bad.tflite")


def test_missing_and_directory_paths(tmp_path):
    with pytest.raises(InvalidModelError, match="no such file"):
        read_tflite(tmp_path / "nope.tflite")
    with pytest.raises(InvalidModelError, match="not a regular file"):
        read_tflite(tmp_path)


def _mutations(data: bytes, rng: random.Random, n: int):
    """Truncations, byte flips, forged 32-bit offsets and lengths, spliced garbage."""
    size = len(data)
    for i in range(n):
        kind = i % 4
        b = bytearray(data)
        if kind == 0:
            yield bytes(b[: rng.randrange(0, size)])
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(size)] = rng.randrange(256)
            yield bytes(b)
        elif kind == 2:
            pos = rng.randrange(0, size - 4) & ~3
            value = rng.choice([0xFFFFFFFF, 0x7FFFFFFF, size, size - 4, 0x10000000,
                                rng.randrange(1 << 32)])
            b[pos:pos + 4] = value.to_bytes(4, "little")
            yield bytes(b)
        else:
            pos = rng.randrange(8, size)
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            yield bytes(b)


def test_fuzz_mutated_models_end_in_a_result_or_invalid_model_error(pattern_files, cnn):
    rng = random.Random(1234)
    outcomes = {"ok": 0, "invalid": 0}
    for path in (pattern_files[("add_bn", "int8", False)], cnn["tflite"]):
        data = path.read_bytes()
        for mutated in _mutations(data, rng, 1500):
            try:
                model = parse_tflite(mutated, "fuzz.tflite")
                analyse_bn(model)
                outcomes["ok"] += 1
            except InvalidModelError as exc:
                assert str(exc).startswith("fuzz.tflite:")
                assert "\n" not in str(exc)
                outcomes["invalid"] += 1
    assert sum(outcomes.values()) == 3000
    assert outcomes["ok"] > 0 and outcomes["invalid"] > 0  # both paths were exercised


def test_forged_vector_length_is_refused_without_looping(tmp_path):
    """A vector claiming 2**31 entries must be refused from its length, not iterated."""
    import flatbuffers

    from edgebn.tflite.reader import schema as _schema

    schema = _schema()
    model = schema.ModelT()
    model.version = 3
    sg = schema.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = [], [], [], []
    model.subgraphs = [sg]
    builder = flatbuffers.Builder(64)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    data = bytearray(builder.Output())
    parse_tflite(bytes(data))  # valid as built
    # Find the (empty) subgraphs vector's length field and forge it.
    m = schema.Model.GetRootAs(data, 0)
    vec = m._tab.Vector(m._tab.Offset(8))  # field 2: subgraphs
    data[vec - 4:vec] = (2**31 - 1).to_bytes(4, "little")
    with pytest.raises(InvalidModelError, match="subgraphs claims"):
        parse_tflite(bytes(data), "forged.tflite")


def test_fuzz_the_batch_statistics_detector(tmp_path):
    """Mutations of a training-mode BN graph, so the MEAN/SQUARED_DIFFERENCE path meets hostile
    input."""
    from test_residue import _training_mode_bn_tflite

    data = _training_mode_bn_tflite(tmp_path / "train_bn.tflite").read_bytes()
    rng = random.Random(99)
    outcomes = {"ok": 0, "invalid": 0, "batch_stats": 0}
    for mutated in _mutations(data, rng, 1000):
        try:
            result = analyse_bn(parse_tflite(mutated, "fuzz.tflite"))
            outcomes["ok"] += 1
            outcomes["batch_stats"] += any(r.kind == "batch_stats" for r in result.residual)
        except InvalidModelError as exc:
            assert str(exc).startswith("fuzz.tflite:") and "\n" not in str(exc)
            outcomes["invalid"] += 1
    assert outcomes["ok"] + outcomes["invalid"] == 1000
    assert outcomes["invalid"] > 0 and outcomes["batch_stats"] > 0


