"""Fold the BN a converter left inside a .tflite, on the flatbuffer (``edgebn fold model.tflite``).

Each residual chain (:func:`edgebn.tflite.chains.affine_chains`: ``y = act(x·s + t)`` per
channel, however many SUB/MUL/ADD steps it was written as) is reduced to its ``s`` and ``t``
in float64, then, first that applies:

* **backward** into the CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV /
  CONV_3D that makes ``x`` and whose output only the chain reads: its weights scaled over
  their output channels (``W' = s⊗W``, in each kernel's own layout), ``b' = s⊗b + t``; the
  chain's fused activation moves onto that operator, which now writes ``y``;
* **forward** into the next linear operator ``z = XW + b``, reached through operators that
  commute with a per-channel affine map (RESHAPE, TRANSPOSE, MEAN, an AVERAGE_POOL_2D with
  VALID padding, a MAX_POOL_2D when every ``s > 0``): ``W' = W⊗s`` over its input channels,
  ``b' = b + Σ W⊗t`` (FULLY_CONNECTED; a CONV_2D or DEPTHWISE_CONV_2D with VALID padding:
  zero padding would show the border ``0``, not ``t``). The same rules as the Keras fold;
* else **collapsed** into one MUL and one ADD when it had more operators, or **kept**: each
  with the reason nothing could take it.

Float16 weights are folded from float32 and stored as float16 again. An int8 chain folds
backward only (:mod:`edgebn.fold.tflite.int8`); other quantized chains are kept. Tensor
indices are kept, so the files' tensors compare one by one; :attr:`Rewrite.changed` names
those the fold changes on purpose. Constants nothing reads any more are emptied.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from edgebn.documents import JsonDict
from edgebn.fold.tflite import int8 as fold_int8
from edgebn.fold.tflite.int8 import const_values
from edgebn.tflite.chains import Step, affine_chains, chain_kind, constant_source
from edgebn.tflite.edit import new_const, new_tensor, prune, set_builtin
from edgebn.tflite.provenance import attribute, has_names
from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel, schema
from edgebn.tflite.writer import buffers_of, pack, unpack

if TYPE_CHECKING:  # the schema's object API, named in annotations only: reader.schema() loads it
    from ai_edge_litert import schema_py_generated as fb

# the linear operators a BN folds into: weights input, bias input, the weights' output-channel axis
KERNELS = {"CONV_2D": (1, 2, 0), "DEPTHWISE_CONV_2D": (1, 2, 3), "FULLY_CONNECTED": (1, 2, 0),
           "TRANSPOSE_CONV": (1, 3, 0), "CONV_3D": (1, 2, 4)}
FORWARD_INTO = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
PASS_THROUGH = ("RESHAPE", "TRANSPOSE", "MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D")


@dataclass(frozen=True)
class ChainFold:
    """What became of one residual BN chain."""

    subgraph: int
    ops: tuple[int, ...]  # the chain's operators in the original file
    kind: str
    channels: int
    result: str  # "folded" | "collapsed" | "kept"
    into: int | None = None  # the absorbing operator's index in the original file
    into_type: str | None = None
    direction: str | None = None  # "backward" | "forward"
    reason: str | None = None
    source: str | None = None
    source_type: str = "bn"  # edgebn.tflite.provenance.attribute: bn, normalization, ...
    float16: bool = False  # folded into float16 weights, stored as float16 again
    int8: bool = False  # folded into int8 weights: new scales, flipped signs, a requantized bias

    def to_json(self) -> JsonDict:
        doc: JsonDict = {"subgraph": self.subgraph, "ops": list(self.ops), "kind": self.kind,
                               "channels": self.channels, "result": self.result,
                               "source": self.source, "source_type": self.source_type}
        if self.result == "folded":
            doc |= {"into": {"op": self.into, "type": self.into_type}, "direction": self.direction,
                    "float16": self.float16, "int8": self.int8}
        else:
            doc["reason"] = self.reason
        return doc


@dataclass(frozen=True)
class Rewrite:
    """The folded model's bytes, what became of each chain, and the tensors it changes."""

    data: bytes
    chains: tuple[ChainFold, ...]
    changed: frozenset[tuple[int, int]]  # (subgraph, tensor) whose values differ on purpose

    @property
    def float16(self) -> bool:
        return any(c.float16 for c in self.chains)


def chain_affine(model: TFLiteModel, sg: Subgraph, chain: tuple[Step, ...],
                 producer: dict[int, Operator]) -> tuple[np.ndarray, np.ndarray]:
    """``s`` and ``t`` (float64, one per channel) of ``y = x·s + t``, step by step."""
    s = t = None
    for st in chain:
        c = const_values(model, sg, st.const, producer).reshape(-1)
        if s is None:
            s, t = np.ones_like(c), np.zeros_like(c)
        if st.op.op == "SUB":
            t = t - c
        elif st.op.op == "ADD":
            t = t + c
        else:
            s, t = s * c, t * c
    return s, t


class _Kernel:
    """An operator's weights and bias being rewritten, in float64 until written."""

    def __init__(self, folder: _Folder, op_index: int) -> None:
        sg = folder.sg
        op = sg.operators[op_index]
        self.w_slot, self.b_slot, self.out_axis = KERNELS[op.op]
        w = op.inputs[self.w_slot]
        self.float16 = sg.tensors[w].dtype == "FLOAT32" and folder.producer.get(w) is not None
        self.w = const_values(folder.model, sg, w, folder.producer)
        b = op.inputs[self.b_slot] if len(op.inputs) > self.b_slot else -1
        self.b = (const_values(folder.model, sg, b, folder.producer).reshape(-1) if b >= 0
                  else np.zeros(self.w.shape[self.out_axis]))


class _Folder:
    """Folds the chains of one subgraph into the unpacked model ``m``."""

    def __init__(self, model: TFLiteModel, m: fb.ModelT, sg_index: int) -> None:
        self.model, self.m, self.sg = model, m, model.subgraphs[sg_index]
        self.usg = m.subgraphs[sg_index]
        self.producer = {t: op for op in self.sg.operators for t in op.outputs if t >= 0}
        self.consumers: dict[int, list[Operator]] = {}
        for op in self.sg.operators:
            for t in set(op.inputs):
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op)
        self.outputs = set(self.sg.outputs)
        self.kernels: dict[int, _Kernel] = {}
        self.int8: dict[int, fold_int8.Int8Kernel] = {}
        self.drop: set[int] = set()
        self.changed: set[int] = set()
        self.results: list[ChainFold] = []
        self.names = has_names(model)

    # ------------------------------------------------------------ per chain
    def fold(self, chain: tuple[Step, ...]) -> None:
        sg = self.sg
        ops = tuple(st.op.index for st in chain)
        x = chain[0].data
        who = attribute(self.model, sg, chain, None, self.names)
        base = ChainFold(sg.index, ops, chain_kind(chain), sg.tensors[x].shape[chain[0].axis],
                         "kept", source=who.layer, source_type=who.source_type)
        dtype = sg.tensors[x].dtype
        if dtype not in ("FLOAT32", "INT8"):
            self.results.append(replace(base, reason=f"{dtype} activations: a quantized "
                                      "chain is kept as the converter wrote it"))
            return
        s, t = chain_affine(self.model, sg, chain, self.producer)
        why = []
        for attempt in (self._backward, self._forward):  # backward first, as the Keras fold
            done = attempt(chain, s, t)
            if isinstance(done, ChainFold):
                self.results.append(replace(done, subgraph=base.subgraph, ops=ops, kind=base.kind,
                                          channels=base.channels, source=base.source,
                                          source_type=base.source_type))
                self.drop |= set(ops)
                return
            why.append(done)
        int8, collapse = dtype == "INT8", len(chain) > 2 and dtype != "INT8"
        reason = f"backward: {why[0]}; forward: {why[1]}" + (
            f"; {fold_int8.COLLAPSE}" if int8 and len(chain) > 2 else "")
        if collapse:
            self._collapse(chain, s, t)
        self.results.append(replace(base, result="collapsed" if collapse else "kept",
                                    reason=reason))

    def _kernel(self, index: int) -> _Kernel | str:
        if index in self.kernels:
            return self.kernels[index]
        op = self.sg.operators[index]
        w_slot, b_slot, _ = KERNELS[op.op]
        w = op.inputs[w_slot]
        source = constant_source(self.model, self.sg, w, self.producer)
        if source is None or self.sg.tensors[source].dtype not in ("FLOAT32", "FLOAT16"):
            kind = "computed" if source is None else f"stored as {self.sg.tensors[source].dtype}"
            return f"the {op.op}'s weights are {kind}, not float constants"
        b = op.inputs[b_slot] if len(op.inputs) > b_slot else -1
        if b >= 0 and (constant_source(self.model, self.sg, b, self.producer) is None
                       or self.sg.tensors[b].dtype != "FLOAT32"):
            return f"the {op.op}'s bias is not a float32 constant"
        kernel = _Kernel(self, index)
        self.kernels[index] = kernel
        return kernel

    def _backward(self, chain: tuple[Step, ...], s: np.ndarray, t: np.ndarray) -> ChainFold | str:
        sg, x = self.sg, chain[0].data
        maker = self.producer.get(x)
        int8, quantize = sg.tensors[x].dtype == "INT8", None
        if int8 and maker is not None and maker.op == "QUANTIZE":  # a float kernel, then QUANTIZE
            quantize = fold_int8.after_quantize(sg, maker, self.consumers, self.outputs)
            if isinstance(quantize, str):
                return quantize
            x, maker, int8 = quantize.inputs[0], self.producer.get(quantize.inputs[0]), False
        if maker is None:
            return "it normalizes a model input: no operator before it"
        if maker.op not in KERNELS:
            return f"it follows a {maker.op}, not a linear operator"
        readers = self.consumers.get(x, [])
        if len(readers) != 1 or x in self.outputs:
            return f"the {maker.op}'s output is also read elsewhere"
        if maker.activation != "NONE":
            return f"a {maker.activation} fused into the {maker.op} stands between"
        if chain[0].axis != len(sg.tensors[x].shape) - 1:
            return f"its channels are not the {maker.op}'s output channels"
        activation = chain[-1].op.activation
        options = self.usg.operators[maker.index].builtinOptions
        if activation != "NONE" and not hasattr(options, "fusedActivationFunction"):
            return f"the {maker.op} cannot carry the fused {activation}"
        float16 = self._absorb_output(maker, int8, s, t)
        if isinstance(float16, str):
            return float16
        uop = self.usg.operators[maker.index]
        # the operator that made the chain's input now makes its output (a QUANTIZE: y's scale)
        self.usg.operators[(quantize or maker).index].outputs = [chain[-1].op.outputs[0]]
        if quantize is not None:
            self.changed.add(x)
        if activation != "NONE":
            uop.builtinOptions.fusedActivationFunction = getattr(
                schema().ActivationFunctionType, activation)
        return ChainFold(0, (), "", 0, "folded", maker.index, maker.op, "backward",
                         float16=float16, int8=int8)

    def _absorb_output(self, op: Operator, int8: bool, s: np.ndarray, t: np.ndarray) -> bool | str:
        """``op``'s weights and bias scaled over its output channels (whether float16), or why
        not."""
        if int8:
            kernel = fold_int8.read_kernel(self.model, self.sg, op, KERNELS[op.op],
                                           2 if op.op == "TRANSPOSE_CONV" else 0)
            folded = kernel if isinstance(kernel, str) else fold_int8.absorb(kernel, s, t, op.op)
            if isinstance(folded, str):
                return folded
            self.int8[op.index] = folded
            return False
        kernel = self._kernel(op.index)
        if isinstance(kernel, str):
            return kernel
        if kernel.w.shape[kernel.out_axis] != len(s):
            return f"the {op.op}'s output channels are not its channels"
        shape = [1] * kernel.w.ndim
        shape[kernel.out_axis] = len(s)
        kernel.w = kernel.w * s.reshape(shape)
        kernel.b = kernel.b * s + t
        return kernel.float16

    def _forward(self, chain: tuple[Step, ...], s: np.ndarray, t: np.ndarray) -> ChainFold | str:
        sg = self.sg
        last = chain[-1].op
        if last.activation != "NONE":
            return (f"a {last.activation} fused into its {last.op} stands between it and the next "
                    "operator")
        shape = sg.tensors[chain[0].data].shape
        axis_shape = [1] * len(shape)
        axis_shape[chain[0].axis] = len(s)
        s_full = np.broadcast_to(s.reshape(axis_shape), shape)
        t_full = np.broadcast_to(t.reshape(axis_shape), shape)
        tensor, path = last.outputs[0], []
        while True:
            readers = self.consumers.get(tensor, [])
            if tensor in self.outputs:
                return "it makes a model output"
            if len(readers) != 1:
                return f"its output is read by {len(readers)} operators"
            nxt = readers[0]
            if nxt.inputs[0] != tensor or (nxt.op in KERNELS
                                           and nxt.inputs[KERNELS[nxt.op][0]] == tensor):
                return f"it reaches a {nxt.op} other than as its data input"
            if nxt.op not in PASS_THROUGH:
                break
            moved = self._through(nxt, s_full, t_full)
            if isinstance(moved, str):
                return moved
            s_full, t_full = moved
            path.append(nxt)
            tensor = nxt.outputs[0]
        if nxt.op not in FORWARD_INTO:
            return (f"it reaches a {nxt.op}, which does not commute with a per-channel scale and "
                    "shift")
        padding = getattr(self.usg.operators[nxt.index].builtinOptions, "padding", None)
        if nxt.op != "FULLY_CONNECTED" and padding != schema().Padding.VALID:
            return (f"the {nxt.op} after it pads with zeros (SAME): border outputs would see 0, "
                    "not the shift")
        int8 = sg.tensors[chain[0].data].dtype == "INT8"  # int8 activations, int8 weights
        kernel = (f"the {nxt.op} after it is int8: {fold_int8.FORWARD}" if int8
                  else self._kernel(nxt.index))
        if isinstance(kernel, str):
            return kernel
        done = _absorb_input(kernel, nxt, s_full, t_full)
        if done is not None:
            return done
        # the first operator after the chain reads x; the tensors on the way carry x's image now
        reader = self.usg.operators[(path[0] if path else nxt).index]
        reader.inputs = [chain[0].data if int(i) == last.outputs[0] else int(i)
                         for i in reader.inputs]
        self.changed |= {p.outputs[0] for p in path}
        return ChainFold(0, (), "", 0, "folded", nxt.index, nxt.op, "forward",
                         float16=kernel.float16)

    def _through(self, op: Operator, s_full: np.ndarray, t_full: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray] | str:
        """``s`` and ``t`` per element of ``op``'s output, where it commutes with them."""
        sg = self.sg
        out_shape = sg.tensors[op.outputs[0]].shape
        if op.activation != "NONE":
            return f"a {op.activation} fused into the {op.op} on the way"
        if op.op == "RESHAPE":
            if int(np.prod(out_shape)) != s_full.size:
                return "a RESHAPE on the way has a dynamic shape"
            return s_full.reshape(out_shape), t_full.reshape(out_shape)
        if op.op in ("TRANSPOSE", "MEAN"):
            values = self.model.constant(sg.tensors[op.inputs[1]]) if op.inputs[1] >= 0 else None
            if values is None:
                return f"a {op.op} on the way has computed axes"
            axes = [int(a) % s_full.ndim for a in values.reshape(-1)]
            if op.op == "TRANSPOSE":
                return s_full.transpose(axes), t_full.transpose(axes)
            if not _constant_along(s_full, axes) or not _constant_along(t_full, axes):
                return "a MEAN on the way averages across channels"
            return _reduce(s_full, axes, out_shape), _reduce(t_full, axes, out_shape)
        # pooling, NHWC
        if s_full.ndim != 4 or not (_constant_along(s_full, [1, 2])
                                    and _constant_along(t_full, [1, 2])):
            return f"the {op.op} on the way pools across channels"
        padding = self.usg.operators[op.index].builtinOptions.padding
        if op.op == "AVERAGE_POOL_2D" and padding != schema().Padding.VALID:
            return "an AVERAGE_POOL_2D with SAME padding on the way"
        if op.op == "MAX_POOL_2D" and not (s_full > 0).all():
            return "a MAX_POOL_2D on the way and a scale ≤ 0 (max(s·x) = s·min(x))"
        return (np.broadcast_to(s_full[:, :1, :1, :], out_shape),
                np.broadcast_to(t_full[:, :1, :1, :], out_shape))

    def _collapse(self, chain: tuple[Step, ...], s: np.ndarray, t: np.ndarray) -> None:
        """The chain as one MUL by ``s`` and one ADD of ``t`` (the last operator's activation)."""
        sg, usg = self.sg, self.usg
        rank = len(sg.tensors[chain[0].data].shape)
        shape = [len(s)] + [1] * (rank - 1 - chain[0].axis)
        first, last = usg.operators[chain[0].op.index], usg.operators[chain[-1].op.index]
        s_tensor = new_const(self.m, usg, s.astype(np.float32).reshape(shape), "bn_scale")
        t_tensor = new_const(self.m, usg, t.astype(np.float32).reshape(shape), "bn_shift")
        mid = chain[0].op.outputs[0]
        set_builtin(self.m, first, "MUL", schema().MulOptionsT())
        first.inputs, first.outputs = [chain[0].data, s_tensor], [mid]
        options = schema().AddOptionsT()
        options.fusedActivationFunction = getattr(schema().ActivationFunctionType,
                                                  chain[-1].op.activation)
        set_builtin(self.m, last, "ADD", options)
        last.inputs = [mid, t_tensor]
        self.drop |= {st.op.index for st in chain[1:-1]}
        self.changed.add(mid)

    # ------------------------------------------------------------ writing
    def write_kernels(self) -> dict[int, list[fb.OperatorT]]:
        """Each rewritten kernel's new constants; the DEQUANTIZE ops to run before an op."""
        before: dict[int, list[fb.OperatorT]] = {}
        for index, k in self.kernels.items():
            uop = self.usg.operators[index]
            inputs = [int(i) for i in uop.inputs]
            if k.float16:
                half = new_const(self.m, self.usg, k.w.astype(np.float16), "folded_weights",
                                  "FLOAT16")
                w = new_tensor(self.usg, list(k.w.shape), "FLOAT32", "folded_weights_dequantized")
                deq = schema().OperatorT()
                set_builtin(self.m, deq, "DEQUANTIZE", None)
                deq.inputs, deq.outputs = [half], [w]
                before.setdefault(index, []).append(deq)
            else:
                w = new_const(self.m, self.usg, k.w.astype(np.float32), "folded_weights")
            inputs[k.w_slot] = w
            b = new_const(self.m, self.usg, k.b.astype(np.float32), "folded_bias")
            while len(inputs) <= k.b_slot:
                inputs.append(-1)
            inputs[k.b_slot] = b
            uop.inputs = inputs
        for index, q in self.int8.items():
            uop = self.usg.operators[index]
            w_slot, b_slot, _ = KERNELS[self.sg.operators[index].op]
            inputs = [int(i) for i in uop.inputs] + [-1] * (b_slot + 1 - len(uop.inputs))
            for slot, (values, name, dtype, quantization) in zip((w_slot, b_slot),
                                                                 fold_int8.constants(q),
                                                                 strict=True):
                inputs[slot] = new_const(self.m, self.usg, values, name, dtype, quantization)
            uop.inputs = inputs
        return before


def _constant_along(a: np.ndarray, axes: list[int]) -> bool:
    first = a
    for ax in axes:
        first = np.take(first, [0], axis=ax)
    return bool(np.array_equal(np.broadcast_to(first, a.shape), a))


def _reduce(a: np.ndarray, axes: list[int], out_shape: tuple[int, ...]) -> np.ndarray:
    for ax in axes:
        a = np.take(a, [0], axis=ax)
    return a.reshape(out_shape)


def _absorb_input(kernel: _Kernel, op: Operator, s_full: np.ndarray,
                  t_full: np.ndarray) -> str | None:
    """Scale ``kernel``'s weights over its input channels by ``s``, its bias by ``Σ W⊗t``."""
    w = kernel.w
    if op.op == "FULLY_CONNECTED":
        features = w.shape[1]
        if s_full.size % features:
            return "the FULLY_CONNECTED's input does not split into its features"
        rows_s, rows_t = s_full.reshape(-1, features), t_full.reshape(-1, features)
        if not (rows_s == rows_s[:1]).all() or not (rows_t == rows_t[:1]).all():
            return "the FULLY_CONNECTED sees the batch differently scaled"
        kernel.b = kernel.b + w @ rows_t[0]
        kernel.w = w * rows_s[0][None, :]
        return None
    if s_full.ndim != 4 or not (_constant_along(s_full, [1, 2])
                                and _constant_along(t_full, [1, 2])):
        return f"the {op.op}'s input is not scaled per channel"
    s, t = s_full[0, 0, 0, :], t_full[0, 0, 0, :]
    if op.op == "DEPTHWISE_CONV_2D":
        mult = w.shape[3] // len(s)
        if mult * len(s) != w.shape[3]:
            return "the DEPTHWISE_CONV_2D's channels are not its input's"
        s_out, t_out = np.repeat(s, mult), np.repeat(t, mult)
        kernel.b = kernel.b + (w * t_out).sum(axis=(0, 1, 2))
        kernel.w = w * s_out
        return None
    out_ch, in_ch = w.shape[0], w.shape[3]  # CONV_2D [O, H, W, I/groups]
    groups = len(s) // in_ch if in_ch else 0
    if not groups or groups * in_ch != len(s) or out_ch % groups:
        return "the CONV_2D's input channels are not its input's"
    index = (np.arange(out_ch)[:, None] // (out_ch // groups)) * in_ch + np.arange(in_ch)[None, :]
    s_oi, t_oi = s[index], t[index]  # [O, I/groups]
    kernel.b = kernel.b + (w * t_oi[:, None, None, :]).sum(axis=(1, 2, 3))
    kernel.w = w * s_oi[:, None, None, :]
    return None


def fold_chains(model: TFLiteModel) -> Rewrite:
    """``model`` with every residual BN chain folded, collapsed or kept (the module docstring)."""
    m = unpack(model)
    m.buffers = buffers_of(model)
    results: list[ChainFold] = []
    changed: set[tuple[int, int]] = set()
    for sg in model.subgraphs:
        chains = affine_chains(model, sg)
        if not chains:
            continue
        folder = _Folder(model, m, sg.index)
        for chain in chains:
            folder.fold(chain)
        before = folder.write_kernels()
        ops = []
        for i, op in enumerate(m.subgraphs[sg.index].operators):
            if i not in folder.drop:
                ops += before.get(i, []) + [op]
        m.subgraphs[sg.index].operators = ops
        results += folder.results
        changed |= {(sg.index, t) for t in folder.changed}
    if not results:
        return Rewrite(model.data, (), frozenset())
    prune(m)
    return Rewrite(pack(m), tuple(results), frozenset(changed))
