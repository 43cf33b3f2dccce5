"""A seeded mutation fuzz of ``edgebn fold model.tflite``: every case a result or one clear error.

Mutations (tests/fuzzing.py's object- and byte-level ones, plus constants replaced
by NaN, infinities and huge values) of residue forms written with edgebn's writer run through
the library's fold, proof included, in worker processes: a native crash is a signal there,
a hang a timeout, a traceback a finding.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fuzzing import byte_mutation, object_mutation, own_rss_mb, pack, run_worker, unpacked
from tflite_forms import (
    FORMS,
    INT8_FORMS,
    conv_bn,
    nchw_input_bn,
    relu_bn_gap_dense,
    transpose_conv_bn,
)

from edgebn.errors import EdgebnError

CASES = 2000


def _constant_mutation(data: bytes, rng: random.Random) -> bytes:
    m = unpacked(data)
    full = [b for b in m.buffers if b.data is not None and len(b.data) >= 4]
    buf = rng.choice(full)
    values = np.frombuffer(bytes(buf.data), dtype=np.uint8).copy()
    bad = np.array([np.nan, np.inf, -np.inf, 3e38, 0.0, -1e-45], np.float32)
    at = rng.randrange(len(values) // 4) * 4
    values[at:at + 4] = np.frombuffer(bad[rng.randrange(len(bad))].tobytes(), np.uint8)
    buf.data = values
    return pack(m)


def fold_mutations(seed: int, count: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    sources = {"conv_bn": conv_bn(1), "concat": FORMS["concat_bn_relu"][0](1),
               "nchw": nchw_input_bn(1),
               "gap_dense_f16": relu_bn_gap_dense(1, float16=True), "tconv": transpose_conv_bn(1),
               "int8_conv": INT8_FORMS["conv_bn"](1),
               "int8_chain": INT8_FORMS["conv_sub_mul_mul_add"](1),
               "int8_dense": INT8_FORMS["dense_bn"](1)}
    cases = []
    for i in range(count):
        source = rng.choice(list(sources))
        mutate = rng.choice([object_mutation, object_mutation, byte_mutation,
                             _constant_mutation])
        cases.append((f"{source}-{mutate.__name__.strip('_')}-{i}", mutate(sources[source], rng)))
    return cases


def _worker(seed: int, start: int, stop: int) -> None:
    from edgebn.fold.tflite.tflite_fold import fold_tflite
    from edgebn.tflite.reader import read_tflite

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgebn-fold-fuzz-{os.getpid()}.tflite"
    for i, (name, data) in list(enumerate(fold_mutations(seed, stop)))[start:]:
        print(json.dumps({"start": i, "name": name}), flush=True)
        path.write_bytes(data)
        try:
            result = fold_tflite(read_tflite(path))
            outcome = f"ok {sorted({c.result for c in result.chains})}"
        except EdgebnError as exc:
            outcome = "refused" if "\n" not in str(exc) else f"BUG two lines: {exc}"
        except Exception as exc:  # noqa: BLE001 - a traceback is the finding
            outcome = f"BUG {type(exc).__name__}: {exc}"
        print(json.dumps({"case": i, "outcome": outcome}), flush=True)
    path.unlink(missing_ok=True)
    from edgebn.runtime import backends

    peak = max((p.peak_rss_mb for p in backends._PREFLIGHTS.values()), default=0.0)
    print(json.dumps({"preflight_peak_mb": peak, "rss_mb": own_rss_mb()}), flush=True)


def _run(seed: int, start: int, stop: int) -> dict[int, str]:
    return run_worker(seed, start, stop, script=__file__, per_case_s=2)["outcomes"]


def test_fold_fuzz_quick():
    outcomes = _run(1, 0, 100)
    assert any(o.startswith("ok") for o in outcomes.values())
    assert "refused" in outcomes.values()


@pytest.mark.slow
def test_fold_fuzz():
    """2,000 seeded mutations through fold and its proof: a result or exit 2, never a crash or
    hang."""
    t0 = time.perf_counter()
    outcomes: dict[int, str] = {}
    for start in range(0, CASES, 500):
        outcomes |= _run(0, start, start + 500)
    assert len(outcomes) == CASES
    counts = {o: list(outcomes.values()).count(o) for o in set(outcomes.values())}
    print(f"fold fuzz: {counts} in {time.perf_counter() - t0:.1f} s")
    assert sum(n for o, n in counts.items() if o.startswith("ok")) > 100
    assert counts.get("refused", 0) > 200


if __name__ == "__main__":  # the worker: SEED START STOP
    _worker(*(int(a) for a in sys.argv[1:4]))
