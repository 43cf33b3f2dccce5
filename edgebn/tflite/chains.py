"""The forms an unfolded BN takes in a .tflite: runs of per-channel steps ``x − c``, ``x · c``,
``x + c`` (``c`` a constant, or what a DEQUANTIZE makes of a float16 one), each read only by the
next, that scale and shift (:func:`affine_chains`). What each chain was is
:mod:`edgebn.tflite.provenance`; the verdict, :mod:`edgebn.tflite.residue`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgebn.tflite.reader import Operator, Subgraph, TFLiteModel

# the per-channel steps a BN is written as, once unfolded: y = x - c, x * c, x + c
AFFINE_OPS = ("SUB", "MUL", "ADD")


@dataclass(frozen=True)
class Step:
    """One operator of an unfolded BN: ``y = x <op> c`` with ``c`` one value per channel."""

    op: Operator
    data: int  # the tensor x it reads
    const: int  # the tensor c: a constant, or a DEQUANTIZE's output of one
    axis: int  # the channel axis of x that c runs along


def channel_axis(const_shape: tuple[int, ...], data_shape: tuple[int, ...]) -> int | None:
    """The axis of ``data_shape`` along which a constant of ``const_shape`` gives one value
    per channel (broadcast from the right: ``[C]``, ``[1, 1, 1, C]``, ``[C, 1, 1]`` of NCHW
    data), or None: a scalar, or more than one axis, is not per channel."""
    if not const_shape or len(const_shape) > len(data_shape):
        return None
    offset = len(data_shape) - len(const_shape)
    axes = [offset + i for i, d in enumerate(const_shape) if d != 1]
    if len(axes) != 1 or const_shape[axes[0] - offset] != data_shape[axes[0]] \
            or data_shape[axes[0]] < 2:
        return None
    return axes[0]


def constant_source(model: TFLiteModel, sg: Subgraph, tensor: int,
                    producer: dict[int, Operator]) -> int | None:
    """The stored constant behind ``tensor``: itself, or the input of the DEQUANTIZE that makes
    it (float16 weights); None when the runtime computes it."""
    if tensor < 0:
        return None
    if sg.tensors[tensor].is_constant:
        return tensor
    maker = producer.get(tensor)
    if maker is not None and maker.op == "DEQUANTIZE" and maker.inputs and maker.inputs[0] >= 0 \
            and sg.tensors[maker.inputs[0]].is_constant:
        return maker.inputs[0]
    return None


def _step(model: TFLiteModel, sg: Subgraph, op: Operator,
          producer: dict[int, Operator]) -> Step | None:
    if op.op not in AFFINE_OPS or len(op.inputs) != 2 or len(op.outputs) != 1 or min(op.inputs) < 0:
        return None
    for data, const in (op.inputs, op.inputs[::-1]):
        if op.op == "SUB" and data != op.inputs[0]:
            continue  # c - x negates x: not a step of the BN form
        d = sg.tensors[data]
        if constant_source(model, sg, data, producer) is not None or \
                constant_source(model, sg, const, producer) is None:
            continue
        axis = channel_axis(sg.tensors[const].shape, d.shape)
        if axis is not None and sg.tensors[op.outputs[0]].shape == d.shape:
            return Step(op, data, const, axis)
    return None


def affine_chains(model: TFLiteModel, sg: Subgraph) -> list[tuple[Step, ...]]:
    """Every maximal run of per-channel steps, each read only by the next, that scales and
    shifts (a MUL and an ADD or SUB among them): the forms an unfolded BN takes."""
    producer = {t: op for op in sg.operators for t in op.outputs if t >= 0}
    readers = consumers(sg)
    outputs = set(sg.outputs)
    steps = {op.index: st for op in sg.operators if (st := _step(model, sg, op, producer))}

    def successor(st: Step) -> Step | None:
        out = st.op.outputs[0]
        users = readers.get(out, [])
        if len(users) != 1 or out in outputs or st.op.activation != "NONE":
            return None
        nxt = steps.get(users[0].index)
        return nxt if nxt is not None and nxt.data == out and nxt.axis == st.axis else None

    followers = {n.op.index for st in steps.values() if (n := successor(st)) is not None}
    chains = []
    for index, st in steps.items():
        if index in followers:
            continue
        chain = [st]
        while (nxt := successor(chain[-1])) is not None and len(chain) < 64:
            chain.append(nxt)
        names = {s.op.op for s in chain}
        if len(chain) >= 2 and "MUL" in names and names & {"ADD", "SUB"}:
            chains.append(tuple(chain))
    return chains


def chain_kind(chain: tuple[Step, ...]) -> str:
    """``decomposed`` for the MUL+ADD pair; other forms by their operators: ``sub_mul_mul_add``."""
    names = [s.op.op for s in chain]
    return "decomposed" if names == ["MUL", "ADD"] else "_".join(n.lower() for n in names)


def consumers(sg: Subgraph) -> dict[int, list[Operator]]:
    """Tensor index -> the operators that read it."""
    consumers: dict[int, list[Operator]] = {}
    for op in sg.operators:
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op)
    return consumers
