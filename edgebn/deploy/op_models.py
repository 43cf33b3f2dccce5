"""The bundle's operator models, for ``predict.py --profile``: per-operator time on the device.

The machinery of ``edgebn profile``, cut on the host: each operator of the model's main
subgraph becomes a one-operator model (:func:`edgebn.tflite.writer.single_op`: its own
operator code, options, tensors and constants) with the inputs it saw when the whole model ran
on the first golden input (captured with every tensor kept). They are written into the bundle
under ``profile/`` and listed in ``profile/profile.json``, so the manifest covers them like
every other file; the device times each with only NumPy and its interpreter. Operators that
compute constants once, at load (a DEQUANTIZE of float16 weights), are listed with that note
and not timed; an operator that cannot stand alone is listed with its reason. A PAD that
XNNPACK makes the padding of the convolution after it (:mod:`edgebn.runtime.profile.fusion`) is
written into that convolution's model and listed as fused, as ``edgebn profile`` times it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.profile.fusion import fused_pads
from edgebn.runtime.profile.op_timing import AT_LOAD, capture, captured
from edgebn.runtime.profile.operators import CONSTANT_NOTE
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.macs import model_cost
from edgebn.tflite.quantization import make_inputs
from edgebn.tflite.reader import TFLiteModel
from edgebn.tflite.writer import op_group, unpack

PROFILE_DIR = "profile"
INDEX = f"{PROFILE_DIR}/profile.json"


def _feed(model: TFLiteModel, golden: np.ndarray, nchw: bool) -> list[np.ndarray]:
    sg = model.subgraphs[0]
    t = sg.tensors[sg.inputs[0]]
    x = golden[:1].transpose(0, 3, 1, 2) if nchw else golden[:1]
    q = t.quantization
    quant = (q.scale[0], q.zero_point[0]) if q is not None and q.scale else (0.0, 0)
    dtype = {"FLOAT32": np.float32, "INT8": np.int8, "UINT8": np.uint8}.get(t.dtype, np.float32)
    return make_inputs(t.shape, dtype, quant, 1, data=np.ascontiguousarray(x, np.float32))


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def write_operator_models(model: TFLiteModel, golden: np.ndarray, out: Path, nchw: bool = False
                          ) -> JsonDict:
    """``profile/`` in the bundle directory ``out``: one model and its inputs per operator."""
    if len(model.subgraphs[0].inputs) != 1:
        raise EdgebnError(f"{model.path}: operator models need a model with one input")
    reference = capture(model, BenchSettings(cost=False), _feed(model, golden, nchw))
    if reference is None:
        raise EdgebnError(f"{model.path}: the model cannot run with every tensor kept; no operator models")
    sg, unpacked = model.subgraphs[0], unpack(model)
    macs = {c.index: c.macs for c in model_cost(model).ops if c.subgraph == 0}
    static = {t.index for t in sg.tensors if t.is_constant}
    pads = fused_pads(model, 0)
    padded = {conv: pad for pad, conv in pads.items()}
    (out / PROFILE_DIR).mkdir()
    rows = []
    for op in sg.operators:
        row: JsonDict = {"index": op.index, "op": op.op, "macs": macs.get(op.index, 0)}
        rows.append(row)
        if op.op in AT_LOAD and all(t in static for t in op.inputs if t >= 0):
            static |= {t for t in op.outputs if t >= 0}
            row["note"], row["method"] = CONSTANT_NOTE, "at load"
            continue
        if op.index in pads:
            row["note"] = (f"XNNPACK makes it the padding of the {sg.operators[pads[op.index]].op} "
                           f"#{pads[op.index]}: timed with it")
            row["method"] = "fused"
            continue
        group = (padded[op.index], op.index) if op.index in padded else (op.index,)
        if len(group) == 2:
            row["method"] = "with the PAD before it"
        reads = [t for i in group for t in sg.operators[i].inputs]
        frozen = {t: v for t in reads if t in static and not sg.tensors[t].is_constant
                  and (v := captured(reference, 0, t)) is not None}
        try:
            one = op_group(model, unpacked, 0, group, frozen)
        except EdgebnError as exc:
            row["note"] = str(exc)
            continue
        feeds = [captured(reference, 0, t) for t in one.inputs]
        if any(f is None for f in feeds):
            row["note"] = "an input was not kept by the reference run"
            continue
        name = f"{PROFILE_DIR}/op{op.index:04d}"
        (out / f"{name}.tflite").write_bytes(one.data)
        row["model"], row["inputs"] = f"{name}.tflite", []
        for k, f in enumerate(feeds):
            (out / f"{name}_in{k}.npy").write_bytes(_npy(f))
            row["inputs"].append(f"{name}_in{k}.npy")
    doc = {"operators": rows, "source": "edgebn profile's one-operator models, inputs from "
                                        "the first golden input"}
    (out / INDEX).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc
