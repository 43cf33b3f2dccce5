"""``edgebn build --model model.tflite`` (or a SavedModel directory): the .tflite route, whole.

data → fold (on the flatbuffer, :mod:`edgebn.fold.tflite.tflite_fold`, proven tensor by tensor) →
verify (the folded file against the original on the user's labelled data: accuracy of each,
top-1 agreement, max |Δp|) → inspect → bench (both files, interleaved) → bundle (and its
emulated self-test) → report. OUT holds ``original.tflite`` (the file as given),
``model.tflite`` (the folded one), ``samples.npy``, ``report.json`` and ``report.md``; like
every build it is staged beside OUT and swapped in whole. No TensorFlow is imported.

A SavedModel directory (:mod:`edgebn.saved_model`) takes the same route after TensorFlow's
converter: ``original.tflite`` is the converter's file, and verify holds the folded file to the
SavedModel's own outputs, not to the converted file. ``report.json``'s ``route`` says which.

Images and samples are (H, W, C) throughout; an NCHW model (what litert-torch keeps from
PyTorch) gets its input transposed at the interpreter, here and in the bundle's predict.py
(``preprocessing.layout``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgebn import __version__, saved_model
from edgebn.data.dataset import CHECK_SAMPLES, Dataset, DataSpec
from edgebn.data.images import Color, Layout
from edgebn.deploy.bundle import GOLDEN_SAMPLES, BundleResult, BundleSource, bundle
from edgebn.deploy.emulate import EmulationResult, emulate
from edgebn.documents import JsonDict
from edgebn.errors import DatasetError, EdgebnError, FoldError
from edgebn.files import atomic_path, staged_dir, write_atomic
from edgebn.fold.tflite.samples import image_layout
from edgebn.fold.tflite.tflite_fold import TFLiteFoldResult, fold_tflite
from edgebn.pipeline.build import BuildConfig, check_out_dir, refuse_early
from edgebn.pipeline.report import at_chance, markdown_table, tflite_fold_lines
from edgebn.progress import Progress, Stages
from edgebn.runtime.accuracy import VerifyCheck, VerifyLimits, predict_tflite
from edgebn.runtime.ratio import RatioEstimate, latency_ratio
from edgebn.runtime.timing import BenchSettings
from edgebn.saved_model import Reference, SavedModelSource
from edgebn.tflite.reader import TFLiteModel, parse_tflite, read_tflite
from edgebn.tflite.residue import InspectResult, inspect_model

ARTIFACTS = frozenset({"original.tflite", "model.tflite", "samples.npy", "report.json", "report.md",
                       "bundle"})
TFLITE_ROUTE = {"format": "tflite", "verified_against": "the original .tflite"}


@dataclass(frozen=True)
class Agreement:
    """The folded file against the original on the labelled samples."""

    samples: int
    original_accuracy: float
    folded_accuracy: float
    top1_agreement: float
    max_abs_diff: float
    backend: str
    checks: tuple[VerifyCheck, ...] = ()  # against the limits (VerifyLimits)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> JsonDict:
        return {"samples": self.samples, "original_test_accuracy": self.original_accuracy,
                "test_accuracy": self.folded_accuracy, "top1_agreement": self.top1_agreement,
                "max_abs_diff": self.max_abs_diff, "backend": self.backend,
                "passed": self.passed, "checks": [c.to_json() for c in self.checks]}


@dataclass(frozen=True)
class TFLiteBuildResult:
    out: Path
    source: str
    dataset: Dataset
    model: TFLiteModel  # the file the build ships (folded when there was residue to fold)
    fold: TFLiteFoldResult | None
    fold_refused: str | None
    inspected: InspectResult
    verified: Agreement
    speed: RatioEstimate | None = None  # the original's p50 over the folded file's, interleaved
    bundled: BundleResult | None = None
    emulated: EmulationResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    route: JsonDict = field(default_factory=lambda: dict(TFLITE_ROUTE))

    arch = "custom"

    @property
    def quantize(self) -> str:
        sg = self.model.subgraphs[0]
        return "int8" if sg.tensors[sg.inputs[0]].dtype in ("INT8", "UINT8") else "none"

    @property
    def passed(self) -> bool:
        return self.verified.passed

    def failed_checks(self) -> list[str]:
        return [f"model.tflite: {c.describe()}" for c in self.verified.checks if not c.passed]

    def warnings(self) -> list[str]:
        """A model at chance on the labelled data (the file learned nothing, or the data is not
        what it was trained on)."""
        chance = at_chance(self.verified.folded_accuracy, self.dataset.y_test, self.dataset.classes)
        return [] if chance is None else [chance]

    def to_json(self) -> JsonDict:
        v = self.verified
        doc: JsonDict = {
            "edgebn": __version__, "model": {"arch": self.arch, "source": self.source},
            "route": self.route,
            "dataset": self.dataset.to_json(),
            "tflite": {"path": "model.tflite", "original": "original.tflite",
                       "size_bytes": self.model.size_bytes, "quantize": self.quantize,
                       "test_accuracy": v.folded_accuracy, **v.to_json()},
            "inspect": self.inspected.to_json() | {"path": "model.tflite"},
            "verify": {"passed": self.passed, "failed": self.failed_checks(),
                       "checks": [c.to_json() for c in v.checks]},
            "tflite_fold": ({"refused": self.fold_refused} if self.fold is None else
                            {k: self.fold.to_json()[k]
                             for k in ("measure", "max_rel_diff", "tolerance",
                                                                  "bn", "counts")}),
            "warnings": self.warnings(),
            "timings": {f"{k}_s": s for k, s in self.seconds.items()},
        }
        if self.speed is not None:
            e = self.speed
            doc["bench"] = {"original_p50_us": e.current_p50_us, "folded_p50_us": e.baseline_p50_us,
                            **e.interval_json(), "interleaved": True}
        if self.bundled is not None:
            doc["bundle"] = {"path": "bundle", "selftest_here": self.bundled.selftest,
                             "signed": self.bundled.signed}
        return doc

    def rows(self) -> list[tuple[str, str]]:
        d, v, bn = self.dataset, self.verified, self.inspected.bn
        original = "SavedModel" if self.route["format"] == "saved_model" else "original"
        rows = [("dataset", f"{d.name} ({v.samples} labelled samples)"),
                ("model", f"{self.source} ({self.model.size_bytes:,} bytes, "
                          f"{self.dataset.preprocessing.layout.value.upper()} input)"),
                ("route", f"{self.route['format']}: verified against "
                          f"{self.route['verified_against']}"),
                (f"{original} test accuracy", f"{v.original_accuracy:.4f}"),
                ("folded test accuracy", f"{v.folded_accuracy:.4f}"),
                (f"top-1 agreement folded vs {original}", f"{v.top1_agreement:.4f}"),
                ("max |Δp|", f"{v.max_abs_diff:.3g}"),
                ("verify", "passed: " + ", ".join(c.describe() for c in v.checks) if self.passed
                 else "FAILED: " + "; ".join(self.failed_checks())),
                ("BN verdict", f"{bn.verdict} ({len(bn.residual)} residual)")]
        if self.fold is not None:
            counts = self.fold.to_json()["counts"]
            rows.append(("fold in the .tflite", f"{counts['folded']} folded, {counts['collapsed']} "
                                               f"collapsed, {counts['kept']} kept; largest |Δ| of "
                                               f"a tensor {self.fold.max_rel_diff:.3g}"))
        else:
            rows.append(("fold in the .tflite", f"refused: {self.fold_refused}"))
        if self.speed is not None:
            e = self.speed
            rows.append(("p50 original / folded",
                         f"{e.current_p50_us:,.1f} / {e.baseline_p50_us:,.1f} µs "
                                                  f"({e.describe()})"))
        if self.bundled is not None:
            rows.append(("device bundle", "bundle, self-test here "
                         + ("passed" if self.bundled.selftest["passed"] else "FAILED")))
        return rows


def model_input(x: np.ndarray, layout: Layout) -> np.ndarray:
    """(N, H, W, C) samples as the model's input tensor wants them."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout is Layout.nchw else x


def _dataset(model: TFLiteModel, spec: DataSpec) -> Dataset:
    """The labelled samples, (H, W, C), every one for evaluation; the layout recorded."""
    (h, w, c), nchw = image_layout(model)
    layout = Layout.nchw if nchw else Layout.nhwc
    if spec.npz is None and spec.data_dir is None:
        raise EdgebnError("a .tflite build needs labelled data: an .npz of x and y, or images "
                          "in a folder per class (data_dir)", option="npz")
    if spec.npz is None:
        ds = replace(spec.for_model((h, w, c), None), split=False).load()
        return replace(ds, preprocessing=replace(ds.preprocessing, layout=layout))
    ds = replace(spec, split=False).load()
    x, pre = ds.x_test, ds.preprocessing
    if nchw and tuple(x.shape[1:]) == (c, h, w):  # the user's samples in the model's own layout
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        pre = replace(pre, input_shape=(h, w, c), color=Color.grayscale if c == 1 else Color.rgb)
    if tuple(x.shape[1:]) != (h, w, c):
        raise DatasetError(f"{spec.npz}: inputs of shape {list(x.shape)}, the model expects "
                           f"(N, {h}, {w}, {c})" + (f" or (N, {c}, {h}, {w})" if nchw else ""))
    ds = replace(ds, x_train=x, x_test=x)
    return replace(ds, preprocessing=replace(ds.preprocessing, layout=layout))


def file_limits(config: BuildConfig, model: TFLiteModel, fold: TFLiteFoldResult | None
                ) -> VerifyLimits:
    """The folded file against the original: the limits of what the file is (int8, float
    weights stored as float16 again, float32), or the user's."""
    sg = model.subgraphs[0]
    mode = "int8" if sg.tensors[sg.inputs[0]].dtype in ("INT8", "UINT8") else \
        "float16" if fold is not None and any(c.float16 for c in fold.chains) else "none"
    return VerifyLimits.of(mode, config.min_agreement, config.max_prob_diff)


def _agreement(original: TFLiteModel | Callable[[np.ndarray], np.ndarray], folded: TFLiteModel,
               x: np.ndarray, y: np.ndarray, settings: BenchSettings,
               limits: VerifyLimits) -> Agreement:
    """The folded file against ``original``: a .tflite, or a model computing its own outputs."""
    if callable(original):
        p_orig = original(x)
    else:
        p_orig, _ = predict_tflite(original, x, settings.backend)
    p_fold, info = predict_tflite(folded, x, settings.backend)
    if p_fold.ndim != 2 or p_fold.shape[1] < int(y.max()) + 1:
        raise DatasetError(f"the model outputs {list(p_fold.shape[1:])} per sample; the data has "
                           f"{int(y.max()) + 1} classes")
    agreement = float((p_orig.argmax(1) == p_fold.argmax(1)).mean())
    diff = float(np.abs(p_orig - p_fold).max())
    return Agreement(len(y), float((p_orig.argmax(1) == y).mean()),
                     float((p_fold.argmax(1) == y).mean()),
                     agreement, diff, info, limits.judge(agreement, diff))


def build_tflite(config: BuildConfig, stages: Stages, shown: Path,
                 source: SavedModelSource | None = None) -> TFLiteBuildResult:
    """Every stage for ``config.model`` (a .tflite, or a SavedModel ``source`` already
    converted), writing into ``config.out`` (staging)."""
    out = config.out
    truth: TFLiteModel | Reference
    if source is None:
        with stages.stage("load", str(config.model)):
            original = read_tflite(config.model)
            write_atomic(out / "original.tflite", original.data)
        truth = original
    else:
        original = source.converted
        truth = saved_model.reference(source)
    with stages.stage("data", config.data.name):
        ds = _dataset(original, config.data)
    layout = ds.preprocessing.layout
    x, y = ds.x_test, ds.y_test
    fold, refused, model = None, None, original
    with stages.stage("fold", "residual BN folded in the .tflite, every shared tensor compared"):
        try:
            fold = fold_tflite(original, model_input(x[:CHECK_SAMPLES], layout), bench=None)
            model = parse_tflite(fold.data, str(out / "model.tflite"))
        except FoldError as exc:
            refused = str(exc)
        write_atomic(out / "model.tflite", model.data)
    with stages.stage("verify", f"{len(y)} labelled samples, folded against the original"):
        verified = _agreement(truth, model, model_input(x, layout), y, config.bench,
                              file_limits(config, model, fold))
    with stages.stage("inspect", "BN residue in model.tflite"):
        inspected = inspect_model(model)
    result = TFLiteBuildResult(out, str(config.model), ds, model, fold, refused, inspected,
                               verified,
                               route=dict(TFLITE_ROUTE) if source is None else source.route_json())
    if config.run_bench:
        with stages.stage("bench", "the folded file against the original, interleaved"):
            speed = latency_ratio(original, model, config.bench, width=0.02,
                                  data=model_input(x, layout))
        result = replace(result, speed=speed)
    with atomic_path(out / "samples.npy") as tmp:
        np.save(tmp, x[:GOLDEN_SAMPLES])
    if config.bundle or config.emulate or config.sign:
        with stages.stage("bundle", str(shown / "bundle")):
            source = BundleSource(model, ds.preprocessing, ds.class_names,
                                  np.asarray(x[:GOLDEN_SAMPLES], np.float32), result.arch,
                                  result.quantize, verified.folded_accuracy, inspected.bn.verdict)
            result = replace(result, bundled=bundle(source, out / "bundle", config.sign))
        if config.emulate:
            with stages.stage("emulate", ", ".join(r.value for r in config.emulate)):
                result = replace(result, emulated=emulate(
                    out / "bundle", config.emulate, log=stages.progress.note,
                    os_name=config.emulate_os))
    result = replace(result, seconds=dict(stages.seconds))
    with stages.stage("report", str(shown / "report.json")):
        write_report(result)
    return result


def write_report(result: TFLiteBuildResult) -> None:
    """report.json and report.md in ``result.out``, each written once, atomically."""
    write_atomic(result.out / "report.json", json.dumps(result.to_json(), indent=2) + "\n")
    lines = [f"# edgebn build: {result.source}", "",
             *markdown_table(("metric", "value"), result.rows())]
    if result.fold is not None:
        lines += tflite_fold_lines(result.fold, "the file as given")
    write_atomic(result.out / "report.md", "\n".join(lines) + "\n")


def run_tflite_build(config: BuildConfig, progress: Progress,
                     signature: str | None = None) -> TFLiteBuildResult:
    """:func:`build_tflite` staged beside ``config.out`` and swapped in whole; a SavedModel
    directory is converted first (its ``signature``, else serving_default)."""
    refuse_early(config)
    out = check_out_dir(config.out)
    with staged_dir(out, carry=lambda name: name not in ARTIFACTS) as staging:
        stages = Stages(progress)
        source = None
        if saved_model.is_saved_model(config.model):
            with stages.stage("convert", f"{config.model} with TensorFlow's converter"):
                source = saved_model.convert(config.model, staging.path / "original.tflite",
                                             signature)
        result = build_tflite(replace(config, out=staging.path), stages, out, source)
    return replace(result, out=out)  # its files are named relative to OUT: only OUT moved
