"""float32 beside int8: a quantized build keeps the float32 conversion of the same model.

With ``--quantize int8`` the build converts the same (folded) Keras model a second
time without quantization, to ``model_float32.tflite``, verifies it against Keras on
the test split and benches it with the same settings, so report.json (``precisions``),
report.md and the terminal show size, accuracy, agreement, p50, GMAC/s and efficiency
of both files side by side. Efficiency is against the float32 probe in both columns:
an int8 model can pass 100 %.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgebn.bench.run import BenchResult
from edgebn.choices import QUANTIZE_MODES, Quantize
from edgebn.convert import Converted
from edgebn.documents import JsonDict
from edgebn.runtime.accuracy import VerifyResult
from edgebn.runtime.timing import CostStats, TFLiteStats
from edgebn.tflite.reader import TFLiteModel

FLOAT32_FILE = "model_float32.tflite"
# quantize modes whose build also keeps FLOAT32_FILE: the rows' float32_beside
FLOAT32_BESIDE = tuple(Quantize(s.name) for s in QUANTIZE_MODES if s.float32_beside)


@dataclass(frozen=True)
class Float32Beside:
    """The unquantized conversion of the model a quantized build converted, verified."""

    converted: Converted
    verified: VerifyResult


def float32_models(float32: Float32Beside | None) -> dict[str, TFLiteModel]:
    """The bench's ``others``: {"float32": the parsed file} when the build kept one."""
    return {} if float32 is None else {"float32": float32.converted.model}


@dataclass(frozen=True)
class Precision:
    """One precision of the built model: its file, its accuracy and, when benched, its speed."""

    precision: str  # float32, int8, float16, dynamic
    path: str  # relative to the build directory
    size_bytes: int
    test_accuracy: float
    top1_agreement: float | None  # against the Keras model, on the test split
    max_abs_diff: float | None
    stats: TFLiteStats | None = None  # its bench (with its cost), when the build benched

    @property
    def p50_us(self) -> float | None:
        return None if self.stats is None else self.stats.latency_us.p50

    @property
    def cost(self) -> CostStats | None:
        return None if self.stats is None else self.stats.cost

    def to_json(self) -> JsonDict:
        c = self.cost
        return {"path": self.path, "size_bytes": self.size_bytes,
                "test_accuracy": self.test_accuracy, "top1_agreement": self.top1_agreement,
                "max_abs_diff": self.max_abs_diff, "p50_us": self.p50_us,
                "macs": None if c is None else c.macs,
                "gmacs_per_s": None if c is None else c.gmacs_per_s,
                "efficiency": None if c is None else c.efficiency}


def side_by_side(float32: Float32Beside | None, main: Converted, main_verified: VerifyResult,
                 b: BenchResult | None, rel: Callable[[str], str] = str) -> list[Precision]:
    """[float32, the quantized model] when the build kept both; else []."""
    if float32 is None:
        return []
    return [_precision("float32", float32.converted, float32.verified,
                       None if b is None else b.others.get("float32"), rel),
            _precision(main.quantize.value, main, main_verified, None if b is None else b.tflite,
                       rel)]


def _precision(name: str, converted: Converted, verified: VerifyResult,
               stats: TFLiteStats | None, rel: Callable[[str], str]) -> Precision:
    return Precision(name, rel(converted.path), converted.size_bytes, verified.tflite_accuracy,
                     verified.top1_agreement, verified.max_abs_diff, stats)


def precision_rows(precisions: list[Precision]) -> list[tuple[str, str]]:
    """The summary rows (terminal and report.md): one metric a row, precisions side by side."""
    if not precisions:
        return []
    names = " / ".join(p.precision for p in precisions)

    def row(metric: str, cell, unit: str = "") -> tuple[str, str]:
        return f"{names} {metric}", " / ".join(cell(p) for p in precisions) + unit

    def maybe(fmt: str, value: float | None) -> str:
        return "-" if value is None else format(value, fmt)

    rows = [row("file", lambda p: f"{p.path} {p.size_bytes:,}", " bytes"),
            row("test accuracy", lambda p: f"{p.test_accuracy:.4f}"),
            row("top-1 agreement vs Keras", lambda p: maybe(".4f", p.top1_agreement))]
    if any(p.stats is not None for p in precisions):
        rows += [row("p50", lambda p: maybe(",.1f", p.p50_us), " µs"),
                 row("GMAC/s (efficiency vs the float32 probe)",
                     lambda p: "-" if p.cost is None else
                     f"{p.cost.gmacs_per_s:.1f} ({p.cost.efficiency:.0%})")]
    return rows
