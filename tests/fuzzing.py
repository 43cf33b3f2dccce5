"""Shared by the fuzz tests of hostile .tflite files (tests/tflite/test_reader_hostile.py,
tests/fold/tflite/test_tflite_fold_fuzz.py): seeded mutations of a flatbuffer, and the worker
process each fuzz runs its cases in, so that a native crash is a signal, not pytest dying."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import flatbuffers
import numpy as np

from edgebn.tflite.reader import FILE_IDENTIFIER, parse_tflite
from edgebn.tflite.reader import schema as _schema

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DIGITS = ROOT / "models" / "digits-cnn" / "model.tflite"
CASE_TIMEOUT_S = 30  # per case, in the worker
SWAPS = ("SPLIT", "STRIDED_SLICE", "GATHER", "RESHAPE", "CONCATENATION", "WHILE", "SOFTMAX",
         "MAX_POOL_2D", "ADD", "TRANSPOSE")

s = _schema()


def pack(m) -> bytes:
    builder = flatbuffers.Builder(4096)
    builder.Finish(m.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def unpacked(data: bytes):
    return s.ModelT.InitFromPackedBuf(bytearray(data), 0)


def table_region(data: bytes) -> tuple[int, int]:
    """Bytes before the first constant buffer: the graph's tables, not weights."""
    model = parse_tflite(data)
    starts = [start for start, length in model._buffers if length]
    return 8, min(starts) if starts else len(data)


def object_mutation(data: bytes, rng: random.Random) -> bytes:  # noqa: C901 - one case per kind
    m = unpacked(data)
    sg = m.subgraphs[0]
    op = rng.choice(sg.operators)
    n = len(sg.tensors)
    kind = rng.randrange(8)
    if kind == 0:  # opcode swapped (keeping the operator's options)
        code = s.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = getattr(s.BuiltinOperator,
                                                                rng.choice(SWAPS))
        code.version = 1
        m.operatorCodes.append(code)
        op.opcodeIndex = len(m.operatorCodes) - 1
        if rng.random() < 0.5:
            op.builtinOptionsType, op.builtinOptions = 0, None
    elif kind == 1:  # opcode index out of range
        op.opcodeIndex = rng.choice([len(m.operatorCodes), 2**31 - 1, 255])
    elif kind in (2, 3):  # a tensor index -1, out of range, huge, negative
        vec = op.inputs if kind == 2 or not len(op.outputs) else op.outputs
        vec = np.array(vec, dtype=np.int32)
        vec[rng.randrange(len(vec))] = rng.choice([-1, n, n + 7, 2**31 - 1, -2, -(2**31)])
        if kind == 2:
            op.inputs = vec
        else:
            op.outputs = vec
    elif kind == 4:  # a shape truncated, grown or a dimension forged
        t = rng.choice(sg.tensors)
        shape = list(t.shape if t.shape is not None else [])
        choice = rng.randrange(3)
        if choice == 0 and shape:
            shape = shape[:rng.randrange(len(shape))]
        elif choice == 1 and shape:
            shape[rng.randrange(len(shape))] = rng.choice([0, -1, 2**31 - 1, 10**6, 3])
        else:
            shape = shape + [rng.choice([1, 2, 1000])]
        t.shape = shape
    elif kind == 5:  # a constant buffer truncated, or a tensor pointed at another buffer
        t = rng.choice(sg.tensors)
        if t.buffer and m.buffers[t.buffer].data is not None and rng.random() < 0.5:
            buf = m.buffers[t.buffer]
            buf.data = buf.data[:rng.randrange(len(buf.data))]
        else:
            t.buffer = rng.randrange(len(m.buffers))
    elif kind == 6:  # graph inputs or outputs changed
        target = rng.choice(["inputs", "outputs"])
        vec = [rng.randrange(n)] if rng.random() < 0.7 else []
        setattr(sg, target, vec)
    else:  # operator options dropped, or tensor type changed
        if rng.random() < 0.5:
            op.builtinOptionsType, op.builtinOptions = 0, None
        else:
            rng.choice(sg.tensors).type = rng.randrange(18)
    return pack(m)


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    lo, hi = table_region(data)
    kind = rng.randrange(3)
    if kind == 0:  # random bytes flipped in the tables
        for _ in range(rng.randint(1, 4)):
            out[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
    elif kind == 1:  # an offset or length forged
        at = rng.randrange(lo, hi - 4) & ~3
        value = rng.choice([0, 4, 0xFFFFFFFF, 0x7FFFFFFF, len(data), len(data) - 4,
                            int.from_bytes(out[at:at + 4], "little") + rng.choice([-8, -4, 4, 8])])
        out[at:at + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    else:  # truncated
        out = out[:rng.randrange(len(out))]
    return bytes(out)


def own_rss_mb() -> float:
    """This worker's own peak resident memory (VmHWM: per address space, so not inherited
    from the pytest process it was forked from, as getrusage's ru_maxrss is across exec).
    The preflight children report theirs in preflight_peak_mb; the CLI worker's commands run
    in this process."""
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def run_worker(seed: int, start: int, stop: int, script: str, per_case_s: float = 5,
               mode: tuple[str, ...] = ()) -> dict:
    """The worker's (``script``'s) outcomes; a signal, a hang or a traceback fails with the
    case named."""
    budget = CASE_TIMEOUT_S + per_case_s * (stop - start)
    proc = subprocess.run([sys.executable, script, *mode, str(seed), str(start), str(stop)],
                          capture_output=True, text=True, timeout=budget, cwd=ROOT,
                          env=worker_env())
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    started = [ln for ln in lines if "start" in ln]
    assert proc.returncode == 0, (f"worker ended with {proc.returncode} in case "
                                  f"{started[-1] if started else None}: {proc.stderr[-2000:]}")
    outcomes = {ln["case"]: ln["outcome"] for ln in lines if "case" in ln}
    bugs = {i: o for i, o in outcomes.items() if o.startswith("BUG")}
    assert not bugs, bugs
    assert len(outcomes) == stop - start
    return {"outcomes": outcomes, "preflight_peak_mb": lines[-1]["preflight_peak_mb"],
            "rss_mb": lines[-1]["rss_mb"]}


def worker_env() -> dict[str, str]:
    """The environment of a worker script: the tests' helper modules importable, as in pytest."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
