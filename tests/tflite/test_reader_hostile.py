"""Hostile .tflite files: each ends in a result or one line and exit 2, never a crash.

Mutations are made at the flatbuffer level, seeded, of two real models: the committed
digits CNN (float32) and an int8 CONV -> MUL+ADD (a residual BN) -> MAX_POOL built here
without TensorFlow. The library paths of ``bench``, ``profile`` and ``check`` (inspect,
then the interleaved bench) run in worker processes, so that a native crash is seen as
a signal, not as pytest dying; a sample goes through the CLI the same way.
"""

from __future__ import annotations

import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fuzzing import (
    CASE_TIMEOUT_S,
    DIGITS,
    ROOT,
    byte_mutation,
    object_mutation,
    own_rss_mb,
    pack,
    run_worker,
    unpacked,
    worker_env,
)

from edgebn.errors import EdgebnError, InvalidModelError
from edgebn.runtime.profile.operators import profile
from edgebn.runtime.profile.residue_cost import residual_chains
from edgebn.runtime.profile.result import ProfileSettings
from edgebn.runtime.timing import BenchSettings, bench_tflite
from edgebn.tflite.reader import parse_tflite, read_tflite
from edgebn.tflite.reader import schema as _schema
from edgebn.tflite.writer import single_op, unpack

RSS_LIMIT_MB = 1024


s = _schema()


# ---------------------------------------------------------------- the models


def int8_residual_model() -> bytes:
    """int8 CONV_2D(relu) -> MUL -> ADD (a BN left as a pair) -> MAX_POOL_2D, as the
    converter writes a Conv-ReLU-BN-MaxPool (quantization copied from its output)."""
    rng = np.random.default_rng(0)
    buffers = [s.BufferT()]
    tensors = []

    def tensor(shape, dtype, scale, zero, data=None, axis=0):
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = list(shape), dtype, 0, f"t{len(tensors)}"
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint, q.quantizedDimension = list(scale), list(zero), axis
        t.quantization = q
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    i8, i32 = s.TensorType.INT8, s.TensorType.INT32
    x = tensor((1, 8, 8, 3), i8, [0.0039], [-128])
    w = tensor((4, 3, 3, 3), i8, [0.0022] * 4, [0] * 4,
               rng.integers(-127, 127, (4, 3, 3, 3)).astype(np.int8))
    b = tensor((4,), i32, [8.5e-6] * 4, [0] * 4, rng.integers(-500, 500, 4).astype(np.int32))
    conv = tensor((1, 6, 6, 4), i8, [0.0109], [-34])
    scale = tensor((4,), i8, [0.0096], [-4], rng.integers(60, 120, 4).astype(np.int8))
    shift = tensor((4,), i8, [0.0081], [16], rng.integers(-60, 60, 4).astype(np.int8))
    mul = tensor((1, 6, 6, 4), i8, [0.0136], [-43])
    add = tensor((1, 6, 6, 4), i8, [0.0136], [-43])
    out = tensor((1, 3, 3, 4), i8, [0.0136], [-43])
    codes, ops = [], []

    def op(name, options_type, options, inputs, outputs):
        code = s.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = getattr(s.BuiltinOperator, name)
        code.version = 2
        codes.append(code)
        o = s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = len(codes) - 1, inputs, outputs
        o.builtinOptionsType, o.builtinOptions = getattr(s.BuiltinOptions, options_type), options
        ops.append(o)
        return options

    c = op("CONV_2D", "Conv2DOptions", s.Conv2DOptionsT(), [x, w, b], [conv])
    c.padding, c.strideH, c.strideW = s.Padding.VALID, 1, 1
    c.dilationHFactor = c.dilationWFactor = 1
    c.fusedActivationFunction = s.ActivationFunctionType.RELU
    op("MUL", "MulOptions", s.MulOptionsT(), [conv, scale], [mul])
    op("ADD", "AddOptions", s.AddOptionsT(), [mul, shift], [add])
    p = op("MAX_POOL_2D", "Pool2DOptions", s.Pool2DOptionsT(), [add], [out])
    p.padding, p.strideH, p.strideW, p.filterHeight, p.filterWidth = s.Padding.VALID, 2, 2, 2, 2
    sg = s.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = tensors, ops, [x], [out]
    m = s.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, codes, [sg], buffers
    return pack(m)


# ---------------------------------------------------------------- mutations


INDEX_FIELDS = ("operator inputs", "operator outputs", "operator intermediates", "subgraph inputs",
                "subgraph outputs", "tensor buffer", "opcode index", "quantized dimension",
                "signature tensor", "signature subgraph")


def _index_value(rng: random.Random, n: int) -> int:
    return rng.choice([-1, -2, -3, n, n + 1, n + 100, 2**31 - 1, -(2**31),
                       rng.randrange(max(n, 1))])


def _index_mutation(data: bytes, rng: random.Random, field: str) -> bytes:  # noqa: C901 - one case per field
    """One index field of the model set to a value in or (mostly) out of range."""
    m = unpacked(data)
    sg = m.subgraphs[0]
    n = len(sg.tensors)
    op = rng.choice(sg.operators)
    if field in ("operator inputs", "operator outputs"):
        vec = np.array(op.inputs if field == "operator inputs" else op.outputs, dtype=np.int32)
        vec[rng.randrange(len(vec))] = _index_value(rng, n)
        setattr(op, "inputs" if field == "operator inputs" else "outputs", vec)
    elif field == "operator intermediates":
        op.intermediates = np.array([_index_value(rng, n) for _ in range(rng.randint(1, 3))],
                                    dtype=np.int32)
    elif field in ("subgraph inputs", "subgraph outputs"):
        name = field.split()[1]
        vec = np.array(getattr(sg, name), dtype=np.int32)
        vec[rng.randrange(len(vec))] = _index_value(rng, n)
        setattr(sg, name, vec)
    elif field == "tensor buffer":
        rng.choice(sg.tensors).buffer = _index_value(rng, len(m.buffers)) & 0xFFFFFFFF
    elif field == "opcode index":
        op.opcodeIndex = _index_value(rng, len(m.operatorCodes)) & 0xFFFFFFFF
    elif field == "quantized dimension":
        quantized = [t for t in sg.tensors if t.quantization is not None
                     and t.quantization.scale is not None and len(t.quantization.scale) > 1]
        t = rng.choice(quantized or sg.tensors)
        if t.quantization is None or t.quantization.scale is None:
            t.quantization = s.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [0.1, 0.2], [0, 0]
        t.quantization.quantizedDimension = _index_value(rng, len(t.shape if t.shape is not None
                                                                  else []))
    elif m.signatureDefs:
        sig = rng.choice(m.signatureDefs)
        if field == "signature subgraph":
            sig.subgraphIndex = _index_value(rng, len(m.subgraphs)) & 0xFFFFFFFF
        else:
            rng.choice([*(sig.inputs or []), *(sig.outputs or [])]).tensorIndex = \
                _index_value(rng, n) & 0xFFFFFFFF
    return pack(m)


def index_mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    """(name, bytes): ``count`` mutations of every index field, in turn, of both models."""
    rng = random.Random(seed)
    sources = {"digits": DIGITS.read_bytes(), "int8": int8_residual_model()}
    cases = []
    for i in range(count):
        field = INDEX_FIELDS[i % len(INDEX_FIELDS)]
        source = "digits" if field.startswith("signature") else rng.choice(list(sources))
        cases.append((f"{source}-{field}-{i}", _index_mutation(sources[source], rng, field)))
    return cases


def mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    """(name, bytes): ``count`` mutations of the two models, object-level and byte-level."""
    rng = random.Random(seed)
    sources = {"digits": DIGITS.read_bytes(), "int8": int8_residual_model()}
    cases = []
    for i in range(count):
        source = rng.choice(list(sources))
        mutate = object_mutation if rng.random() < 0.6 else byte_mutation
        cases.append((f"{source}-{mutate.__name__.strip('_')}-{i}", mutate(sources[source], rng)))
    return cases


# ---------------------------------------------------------------- the library, in a worker

QUICK_BENCH = BenchSettings(runs=3, warmup=0, cost=False)
QUICK_PROFILE = ProfileSettings(min_time_s=0.01)


def library_case(i: int, data: bytes) -> str:
    """One case through bench, profile or check's .tflite path (by turn): its outcome."""
    from edgebn.tflite.residue import inspect_tflite

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgebn-hostile-{os.getpid()}.tflite"
    path.write_bytes(data)
    try:
        if i % 3 == 0:
            bench_tflite(path, QUICK_BENCH)
        elif i % 3 == 1:
            profile(path, QUICK_PROFILE)
        else:  # check: inspect the new model, then bench it interleaved with the original
            inspect_tflite(path)
            bench_tflite(path, QUICK_BENCH, baseline=DIGITS)
    except EdgebnError as exc:
        assert "\n" not in str(exc), str(exc)
        return "refused"
    finally:
        path.unlink()
    return "ok"


def index_case(i: int, data: bytes) -> str:
    """One index mutation through inspect, then (when the reader takes it) profile, bench and
    the flatbuffer fold: "refused" when any refused it in one line, else "ok"."""
    from edgebn.fold.tflite.tflite_fold import fold_tflite
    from edgebn.tflite.residue import inspect_tflite

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgebn-index-{os.getpid()}.tflite"
    path.write_bytes(data)
    refused = False
    try:
        for run in (lambda: inspect_tflite(path), lambda: profile(path, QUICK_PROFILE),
                    lambda: bench_tflite(path, QUICK_BENCH), lambda: fold_tflite(path, None)):
            try:
                run()
            except EdgebnError as exc:
                assert "\n" not in str(exc), str(exc)
                refused = True
    finally:
        path.unlink()
    return "refused" if refused else "ok"


def _worker(seed: int, start: int, stop: int, index: bool = False) -> None:
    """Run cases [start, stop) of ``mutations(seed, stop)`` (``index``: of
    ``index_mutations``); one JSON line per case."""
    from edgebn.runtime import backends as runtime

    cases = (index_mutations if index else mutations)(seed, stop)
    for i, (name, data) in list(enumerate(cases))[start:]:
        print(json.dumps({"start": i, "name": name}), flush=True)
        try:
            outcome = (index_case if index else library_case)(i, data)
        except Exception as exc:  # noqa: BLE001 - a traceback is the finding
            outcome = f"BUG {type(exc).__name__}: {exc}"
        print(json.dumps({"case": i, "outcome": outcome}), flush=True)
    peak = max((p.peak_rss_mb for p in runtime._PREFLIGHTS.values()), default=0.0)
    print(json.dumps({"preflight_peak_mb": peak, "rss_mb": own_rss_mb()}), flush=True)


# ---------------------------------------------------------------- the CLI, in a worker

CLI_COMMANDS = ("bench", "profile", "check", "fold")


def _cli_case(i: int, path: Path) -> tuple[int, str]:
    """One CLI command on the file: (exit code, stderr), through CliRunner."""
    from typer.testing import CliRunner

    from edgebn.cli.app import app

    command = CLI_COMMANDS[i % len(CLI_COMMANDS)]
    if command == "bench":
        args = ["bench", str(path), "--runs", "3", "--warmup", "0", "--json"]
    elif command == "profile":
        args = ["profile", str(path), "--min-time", "0.01", "--json"]
    elif command == "fold":  # the flatbuffer fold
        args = ["fold", str(path), "--out", str(path.with_suffix(".folded.tflite")), "--json"]
    else:  # check: the case's report beside it, the digits model's in base/
        base_dir = path.parent / "base"
        base_dir.mkdir(exist_ok=True)
        (base_dir / "model.tflite").write_bytes(DIGITS.read_bytes())
        report = json.loads((DIGITS.parent / "report.json").read_text())
        (base_dir / "report.json").write_text(json.dumps(report))
        report["tflite"]["path"] = path.name
        (path.parent / "report.json").write_text(json.dumps(report))
        args = ["check", str(path.parent / "report.json"), "--baseline",
                str(base_dir / "report.json"), "--bench-time", "0.01", "--json"]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stderr if result.exit_code else ""


def _cli_worker(seed: int, count: int) -> None:
    import tempfile

    cases = mutations(seed, count * 4)[::4]
    with tempfile.TemporaryDirectory(prefix="edgebn-hostile-cli-") as tmp:
        for i, (name, data) in enumerate(cases):
            path = Path(tmp) / f"case{i}.tflite"
            path.write_bytes(data)
            print(json.dumps({"start": i, "name": name}), flush=True)
            code, err = _cli_case(i, path)
            print(json.dumps({"case": i, "code": code, "stderr": err}), flush=True)
    print(json.dumps({"rss_mb": own_rss_mb()}), flush=True)


# ---------------------------------------------------------------- the findings


def _swapped(data: bytes, index: int, name: str, drop_options: bool = False) -> bytes:
    m = unpacked(data)
    code = s.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = getattr(s.BuiltinOperator, name)
    code.version = 1
    m.operatorCodes.append(code)
    op = m.subgraphs[0].operators[index]
    op.opcodeIndex = len(m.operatorCodes) - 1
    if drop_options:
        op.builtinOptionsType, op.builtinOptions = 0, None
    return pack(m)


@pytest.mark.parametrize("index, name, message", [
    (0, "SPLIT", r"subgraph 0 operator 0 \(SPLIT\) has 3 inputs; SPLIT takes 2"),
    (3, "STRIDED_SLICE", r"subgraph 0 operator 3 \(STRIDED_SLICE\) has 3 inputs; .* takes 4"),
    (4, "SPLIT",
     r"subgraph 0 operator 4 \(SPLIT\) carries ReducerOptions; SPLIT takes SplitOptions"),
])
def test_a_swapped_opcode_is_refused_by_the_reader(index, name, message):
    """Each of these made the XNNPACK delegate die with SIGSEGV inside edgebn bench."""
    with pytest.raises(InvalidModelError, match=message):
        parse_tflite(_swapped(DIGITS.read_bytes(), index, name), "swapped.tflite")


def test_a_required_input_of_minus_one_is_refused_by_the_reader():
    m = unpacked(DIGITS.read_bytes())
    m.subgraphs[0].operators[0].inputs = np.array([0, -1, 11], dtype=np.int32)
    with pytest.raises(InvalidModelError, match=r"operator 0 \(CONV_2D\) omits a tensor it needs"):
        parse_tflite(pack(m), "minus_one.tflite")


def test_a_split_the_reader_passes_is_refused_before_xnnpack_sees_it(tmp_path):
    """No options to contradict it: the interpreter, preparing it without delegates in a
    child process, refuses it; XNNPACK never reads its missing SplitOptions."""
    path = tmp_path / "split.tflite"
    path.write_bytes(_swapped(DIGITS.read_bytes(), 4, "SPLIT", drop_options=True))
    parse_tflite(path.read_bytes())
    code, err = _in_a_child(f"from edgebn.runtime.timing import bench_tflite, BenchSettings; "
                            f"bench_tflite({str(path)!r}, BenchSettings(runs=3, cost=False))")
    assert code == 1 and "RuntimeBackendError" in err, err
    assert "NumOutputs(node)" in err


def _in_a_child(code: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    return proc.returncode, proc.stderr


def test_the_file_identifier_and_size_are_checked_before_reading(tmp_path):
    big = tmp_path / "big.tflite"
    with big.open("wb") as f:  # sparse: 4 GiB on paper, a few bytes on disk
        f.write(b"\x1c\x00\x00\x00TFL3")
        f.truncate(4 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(InvalidModelError, match=r"4294967296 bytes; .* at most .*2 GiB"):
        read_tflite(big)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    other = tmp_path / "other.tflite"
    with other.open("wb") as f:
        f.write(b"\x1c\x00\x00\x00ABCD")
        f.truncate(4 << 30)
    with pytest.raises(InvalidModelError, match="file identifier b'ABCD'"):
        read_tflite(other)


def test_an_invoke_error_is_one_line(tmp_path):
    """MEAN's code swapped for GATHER: it prepares, then fails when invoked."""
    path = tmp_path / "gather.tflite"
    path.write_bytes(_swapped(DIGITS.read_bytes(), 4, "GATHER", drop_options=True))
    with pytest.raises(EdgebnError, match=r"cannot run this model: gather index out of bounds"):
        bench_tflite(path, QUICK_BENCH)


def test_a_model_without_inputs_is_one_line(tmp_path):
    m = unpacked(DIGITS.read_bytes())
    m.subgraphs[0].inputs = []
    path = tmp_path / "no_inputs.tflite"
    path.write_bytes(pack(m))
    with pytest.raises(EdgebnError, match="has no inputs|lacks data"):
        bench_tflite(path, QUICK_BENCH)


@pytest.mark.parametrize("subgraph, index", [(0, -1), (0, 7), (1, 0), (-1, 0)])
def test_single_op_refuses_an_index_out_of_range(subgraph, index):
    model = read_tflite(DIGITS)
    with pytest.raises(EdgebnError, match="no operator"):
        single_op(model, unpack(model), subgraph, index)


def test_profile_of_int8_residue_stands_when_the_bypassed_copy_cannot_load(tmp_path):
    """Bypassed, the MAX_POOL_2D reads the conv's scale, not its own: XNNPACK refuses it."""
    path = tmp_path / "int8.tflite"
    path.write_bytes(int8_residual_model())
    assert residual_chains(read_tflite(path)) == [(0, 1, 2)]
    result = profile(path, QUICK_PROFILE)
    doc = result.to_json()
    assert doc["residue_cost"] is None and len(doc["operators"]) == 4
    assert "failed to delegate MAX_POOL_2D" in doc["residue_skipped"]


# ---------------------------------------------------------------- the fuzz


def _check_memory(worker_mb: float, peak_mb: float = 0.0) -> None:
    assert worker_mb < RSS_LIMIT_MB and peak_mb < RSS_LIMIT_MB, (worker_mb, peak_mb)


def test_fuzz_the_library_quick():
    result = run_worker(1, 0, 150, __file__)
    assert "ok" in result["outcomes"].values() and "refused" in result["outcomes"].values()
    _check_memory(result["rss_mb"], result["preflight_peak_mb"])


@pytest.mark.slow
def test_fuzz_the_library():
    """1,000 mutations through bench, profile and check's .tflite path, in two workers."""
    t0 = time.perf_counter()
    outcomes: dict = {}
    for start in range(0, 1000, 500):
        result = run_worker(0, start, start + 500, __file__)
        outcomes |= result["outcomes"]
        _check_memory(result["rss_mb"], result["preflight_peak_mb"])
    assert len(outcomes) == 1000
    counts = {o: list(outcomes.values()).count(o) for o in set(outcomes.values())}
    print(f"library fuzz: {counts} in {time.perf_counter() - t0:.1f} s")
    assert counts.get("ok", 0) > 20 and counts.get("refused", 0) > 500


@pytest.mark.slow
def test_fuzz_every_index_field():
    """1,000 seeded mutations of every index field (operator inputs, outputs, intermediates,
    subgraph inputs and outputs, buffers, opcodes, a quantization's dimension, signatures)
    through inspect, profile, bench and fold: a result or one line, never a traceback, a
    signal or a hang."""
    t0 = time.perf_counter()
    outcomes: dict = {}
    for start in range(0, 1000, 500):
        result = run_worker(3, start, start + 500, __file__, mode=("index",))
        outcomes |= result["outcomes"]
        _check_memory(result["rss_mb"], result["preflight_peak_mb"])
    counts = {o: list(outcomes.values()).count(o) for o in set(outcomes.values())}
    print(f"index fuzz: {counts} in {time.perf_counter() - t0:.1f} s")
    assert len(outcomes) == 1000 and counts.get("refused", 0) > 500 and counts.get("ok", 0) > 0


def test_an_intermediate_out_of_range_is_refused_by_the_reader():
    """What made profile raise KeyError: -3 (issue 27): the reader refuses it now."""
    m = unpacked(DIGITS.read_bytes())
    m.subgraphs[0].operators[0].intermediates = np.array([-3], dtype=np.int32)
    with pytest.raises(InvalidModelError, match=r"operator 0 intermediates refers to tensor -3"):
        parse_tflite(pack(m))


@pytest.mark.slow
def test_fuzz_the_cli():
    """30 mutations through bench, profile, check and fold: exit 0, 1 or 2 with one line."""
    proc = subprocess.run([sys.executable, __file__, "cli", "7", "30"], capture_output=True,
                          text=True, timeout=30 * CASE_TIMEOUT_S, cwd=ROOT, env=worker_env())
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln for ln in lines if "start" in ln]
    assert proc.returncode == 0, (proc.returncode, started[-1:], proc.stderr[-2000:])
    done = [ln for ln in lines if "case" in ln]
    assert len(done) == 30
    for case in done:
        assert case["code"] in (0, 1, 2), case
        if case["code"] == 2:
            assert len(case["stderr"].strip().splitlines()) == 1, case
            assert "Traceback" not in case["stderr"], case
    assert sum(c["code"] == 2 for c in done) > 0
    _check_memory([ln for ln in lines if "rss_mb" in ln][-1]["rss_mb"])


if __name__ == "__main__":  # the workers: SEED START STOP, index SEED START STOP, cli SEED COUNT
    if sys.argv[1] == "cli":
        _cli_worker(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "index":
        _worker(*(int(a) for a in sys.argv[2:5]), index=True)
    else:
        _worker(*(int(a) for a in sys.argv[1:4]))
