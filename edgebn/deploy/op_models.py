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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Interpreter
from edgebn.runtime.profile.fusion import fused_pads
from edgebn.runtime.profile.op_timing import AT_LOAD, capture, captured
from edgebn.runtime.profile.operators import CONSTANT_NOTE
from edgebn.runtime.timing import BenchSettings
from edgebn.tflite.macs import model_cost
from edgebn.tflite.quantization import make_inputs
from edgebn.tflite.reader import Operator, TFLiteModel
from edgebn.tflite.writer import op_group, unpack

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

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
        raise EdgebnError(f"{model.path}: the model cannot run with every tensor kept; no "
                          "operator models")
    sg = model.subgraphs[0]
    macs = {c.index: c.macs for c in model_cost(model).ops if c.subgraph == 0}
    writer = _OperatorModels(model, unpack(model), reference, out, fused_pads(model, 0),
                             {t.index for t in sg.tensors if t.is_constant})
    (out / PROFILE_DIR).mkdir()
    rows = [writer.row(op, macs.get(op.index, 0)) for op in sg.operators]  # execution order
    doc = {"operators": rows, "source": "edgebn profile's one-operator models, inputs from "
                                        "the first golden input"}
    (out / INDEX).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return doc


@dataclass
class _OperatorModels:
    """Writes the main subgraph's operators, one by one in execution order, into ``out``."""

    model: TFLiteModel
    unpacked: fb.ModelT
    reference: Interpreter  # the whole model's run with every tensor kept
    out: Path
    pads: dict[int, int]  # PAD -> the convolution XNNPACK fuses it into
    static: set[int]  # tensors fixed before the first inference, so far

    def row(self, op: Operator, macs: int) -> JsonDict:
        """The operator's row of profile.json: computed at load, fused, or its model's files."""
        sg = self.model.subgraphs[0]
        row: JsonDict = {"index": op.index, "op": op.op, "macs": macs}
        if op.op in AT_LOAD and all(t in self.static for t in op.inputs if t >= 0):
            self.static |= {t for t in op.outputs if t >= 0}
            row["note"], row["method"] = CONSTANT_NOTE, "at load"
            return row
        if op.index in self.pads:
            conv = self.pads[op.index]
            row["note"] = (f"XNNPACK makes it the padding of the {sg.operators[conv].op} "
                           f"#{conv}: timed with it")
            row["method"] = "fused"
            return row
        pad = next((p for p, conv in self.pads.items() if conv == op.index), None)
        if pad is not None:
            row["method"] = "with the PAD before it"
        return row | self._write(op.index, (op.index,) if pad is None else (pad, op.index))

    def _write(self, index: int, group: tuple[int, ...]) -> JsonDict:
        """The group's model and its inputs as files, named in the row; or why there are none."""
        sg = self.model.subgraphs[0]
        reads = [t for i in group for t in sg.operators[i].inputs]
        frozen = {t: v for t in reads if t in self.static and not sg.tensors[t].is_constant
                  and (v := captured(self.reference, 0, t)) is not None}
        try:
            one = op_group(self.model, self.unpacked, 0, group, frozen)
        except EdgebnError as exc:
            return {"note": str(exc)}
        feeds = [captured(self.reference, 0, t) for t in one.inputs]
        if any(f is None for f in feeds):
            return {"note": "an input was not kept by the reference run"}
        name = f"{PROFILE_DIR}/op{index:04d}"
        (self.out / f"{name}.tflite").write_bytes(one.data)
        for k, f in enumerate(feeds):
            (self.out / f"{name}_in{k}.npy").write_bytes(_npy(f))
        return {"model": f"{name}.tflite",
                "inputs": [f"{name}_in{k}.npy" for k in range(len(feeds))]}
