"""The user's choices as data: one row per quantize mode, and the helpers that turn rows
into an enum and validate a name against them.

A quantize mode is one :class:`QuantizeSpec` row in :data:`QUANTIZE_MODES`: how the
converter is set up, whether it calibrates, whether a build keeps the float32 file
beside it, the device self-test's tolerance and the CLI's help. The :class:`Quantize`
enum (the CLI's ``--quantize`` choices), ``FLOAT32_BESIDE`` (edgebn.pipeline.precisions)
and the bundle's tolerance (edgebn.deploy.bundle) are derived from the rows. The archs
are rows too, in edgebn.zoo.models (their builders are Keras code).

Plain data, no TensorFlow: the TensorFlow-free side (edgebn.deploy) reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

from edgebn.errors import EdgebnError


class Named(Protocol):
    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=Named)


def choice_enum(name: str, rows: Iterable[Named], module: str) -> type[Enum]:
    """A ``str`` enum with one member per row: value ``row.name``, attribute with ``-`` as ``_``."""
    return Enum(name, [(r.name.replace("-", "_"), r.name) for r in rows], type=str,
                module=module, qualname=name)


def by_name(rows: Iterable[R]) -> dict[str, R]:
    table: dict[str, R] = {}
    for row in rows:
        if row.name in table:
            raise ValueError(f"two rows named {row.name}")
        table[row.name] = row
    return table


def pick(table: Mapping[str, R], value: object, what: str) -> R:
    """The row named ``value`` (a name or an enum member), or a one-line EdgebnError."""
    key = getattr(value, "value", value)
    if isinstance(key, str) and key in table:
        return table[key]
    raise EdgebnError(f"unknown {what} {key!r}: expected one of {', '.join(table)}")


@dataclass(frozen=True)
class QuantizeSpec:
    """One quantize mode: the converter's setup (by TensorFlow's names), and what follows."""

    name: str
    help: str  # the CLI's help for this choice
    optimize: bool = False  # converter.optimizations = [tf.lite.Optimize.DEFAULT]
    supported_types: tuple[str, ...] = ()  # target_spec.supported_types, tf dtype names
    calibrate: bool = False  # needs representative samples (the training split)
    ops: tuple[str, ...] = ()  # target_spec.supported_ops, tf.lite.OpsSet names
    io_type: str | None = None  # inference_input_type and inference_output_type (tf dtype)
    float32_beside: bool = False  # a build also keeps and verifies the float32 conversion
    selftest_atol: float = 1e-4  # the device self-test's max |Δ| on the raw outputs ...
    selftest_units: str = "probability"  # ... in these units ({dtype}: the output's dtype)
    # a build's verify: the .tflite against the model it came from, on the test split
    min_agreement: float = 0.99  # top-1 agreement at least this ...
    max_prob_diff: float = 1e-4  # ... and max |Δp| at most this (float32: its rounding)

    @property
    def integer_output(self) -> bool:
        return self.io_type is not None and self.io_type.startswith(("int", "uint"))


QUANTIZE_MODES: tuple[QuantizeSpec, ...] = (
    QuantizeSpec("none", "float32, as trained"),
    QuantizeSpec("float16", "float16 weights, float32 compute", optimize=True,
                 supported_types=("float16",), min_agreement=0.98, max_prob_diff=0.02),
    QuantizeSpec("dynamic", "int8 weights, float activations", optimize=True,
                 min_agreement=0.95, max_prob_diff=0.25),
    # float32 kernels differ between CPUs by ~1e-7; quantized outputs by one step (rounding)
    QuantizeSpec("int8", "full integer: int8 weights, activations, input and output, "
                         "calibrated on training samples", optimize=True, calibrate=True,
                 ops=("TFLITE_BUILTINS_INT8",), io_type="int8", float32_beside=True,
                 selftest_atol=1.0, selftest_units="{dtype} steps", min_agreement=0.9,
                 max_prob_diff=0.5),
)
QUANTIZE = by_name(QUANTIZE_MODES)
Quantize = choice_enum("Quantize", QUANTIZE_MODES, __name__)
QUANTIZE_HELP = "Post-training quantization: " + "; ".join(
    f"{s.name}: {s.help}" for s in QUANTIZE_MODES) + "."
INTEGER_DTYPES = ("int8", "uint8", "int16")


def quantize_spec(mode: object) -> QuantizeSpec:
    """The row of ``mode`` (a name or a :class:`Quantize`); EdgebnError for any other."""
    return pick(QUANTIZE, mode, "quantize mode")


def selftest_tolerance(mode: str, output_dtype: str) -> tuple[float, str]:
    """The device self-test's (atol, units) for a model of ``mode`` whose output is
    ``output_dtype``.

    The file decides where it and the mode disagree (a report names any mode): an integer
    output takes the first integer-output row's tolerance, a float one the first float row's.
    """
    integer = output_dtype in INTEGER_DTYPES
    spec = QUANTIZE.get(mode)
    if spec is None or spec.integer_output != integer:
        spec = next(s for s in QUANTIZE_MODES if s.integer_output == integer)
    return spec.selftest_atol, spec.selftest_units.format(dtype=output_dtype)
