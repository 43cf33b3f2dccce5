"""The build's result and its report: report.json (docs/reference/json.md) and report.md.

:class:`BuildResult` is the typed outcome of ``edgebn build``; ``to_json()`` is the
report document, ``rows()`` the summary that the terminal table and the Markdown both
show. Reports are read back (``edgebn bundle``, ``edgebn check``) by
:mod:`edgebn.pipeline.report_read`, where hostile ones are met.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edgebn import __version__
from edgebn.bench.run import BenchResult
from edgebn.convert import ConversionResult
from edgebn.data.dataset import Dataset, DataSpec
from edgebn.deploy.bundle import GOLDEN_SAMPLES, BundleResult, BundleSource
from edgebn.deploy.emulate import EmulationResult
from edgebn.documents import JsonDict
from edgebn.files import write_atomic
from edgebn.fold.keras.stats_check import StatsCheck, statistics_json
from edgebn.fold.tflite.tflite_fold import TFLiteFoldResult
from edgebn.pipeline import plots
from edgebn.pipeline.precisions import Float32Beside, Precision, precision_rows, side_by_side
from edgebn.runtime.accuracy import VerifyResult
from edgebn.runtime.profile.result import ProfileResult
from edgebn.train.ledger import SeedLedger, SweepLedger, seed_ledger
from edgebn.train.training import TrainResult


def _name(path: str | Path) -> str:
    """A file the build wrote, as report.json gives it: relative to OUT, where every artifact
    is a name (:data:`edgebn.pipeline.build.ARTIFACTS`), wherever OUT was staged."""
    return Path(path).name


@dataclass(frozen=True)
class BuildResult:
    out: Path
    data: DataSpec  # as used: for a model brought by the user, fitted to its input
    dataset: Dataset
    trained: TrainResult  # trained here, or the user's model as loaded
    twin: TrainResult | None  # the BN-free twin (zoo models only)
    conversion: ConversionResult
    verified: VerifyResult
    benched: BenchResult | None = None
    bundled: BundleResult | None = None
    emulated: EmulationResult | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    float32: Float32Beside | None = None  # the float32 file kept beside a quantized one
    given_statistics: StatsCheck | str | None = None  # a brought model's BN statistics
    profiled: ProfileResult | None = None  # each operator's time (the profile plot)
    sweep: SweepLedger | None = None  # --lr-sweep: each model at its own best learning rate
    plots: dict[str, plots.Plot] = field(default_factory=dict)  # written beside report.md

    @property
    def ledger(self) -> SeedLedger | None:
        """BN against the BN-free baseline: at one rate, or each at its best (--lr-sweep)."""
        return self.sweep.ledger if self.sweep is not None else seed_ledger(self.trained, self.twin)

    @property
    def passed(self) -> bool:
        """Verify's checks held: the .tflite (and the float32 file beside it) against Keras."""
        return self.verified.passed and (self.float32 is None or self.float32.verified.passed)

    def failed_checks(self) -> list[str]:
        found = [f"{self.conversion.converted.path.name}: {c.describe()}"
                 for c in self.verified.checks if not c.passed]
        if self.float32 is not None:
            found += [f"{self.float32.converted.path.name}: {c.describe()}"
                      for c in self.float32.verified.checks if not c.passed]
        return found

    def route_json(self) -> JsonDict:
        """Which route the build took: a zoo model trained here, or the user's .keras or .h5."""
        source = self.trained.source
        fmt = "zoo" if source is None else Path(source).suffix.lstrip(".")
        return {"format": fmt, "path": source,
                "verified_against": "the Keras model" + (" trained here" if source is None
                                                         else f" loaded from the .{fmt} file")}

    def statistics_json(self) -> JsonDict | None:
        """The BN statistics: training's (a zoo model), or the brought model's check."""
        trained = self.trained.bn_statistics
        return trained.to_json() if trained is not None else statistics_json(self.given_statistics)

    def warnings(self) -> list[str]:
        """What the build found wrong without failing: stale BN statistics, a model at chance."""
        found = []
        check = self.trained.bn_statistics.check if self.trained.bn_statistics else \
            self.given_statistics
        if isinstance(check, StatsCheck) and check.warning():
            found.append(check.warning())
        labels = self.dataset.test_split[1]
        chance = at_chance(self.verified.tflite_accuracy, labels, self.dataset.classes)
        if chance is not None:
            found.append(chance)
        return found

    @property
    def arch(self) -> str:
        return self.trained.arch

    def bundle_source(self) -> BundleSource:
        """What the device bundle ships of this build: the .tflite, its preprocessing and labels,
        the first test inputs as golden samples."""
        converted = self.conversion.converted
        return BundleSource(converted.model, self.dataset.preprocessing, self.dataset.class_names,
                            np.asarray(self.dataset.x_test[:GOLDEN_SAMPLES], np.float32),
                            self.arch, converted.quantize.value, self.verified.tflite_accuracy,
                            self.conversion.inspected.bn.verdict)

    @property
    def keras_accuracy(self) -> float:
        """Trained here: measured after training; brought: measured by verify, on the same data."""
        t = self.trained.test_accuracy
        return self.verified.keras_accuracy if t is None else t

    def to_json(self) -> JsonDict:
        """report.json; paths inside it are relative to ``out``."""
        converted, inspected = self.conversion.converted, self.conversion.inspected
        doc: JsonDict = {
            "edgebn": __version__,
            "route": self.route_json(),
            "dataset": self.dataset.to_json(),
            "model": self._model_json(),
            "keras": {"path": "model.keras", "test_accuracy": self.keras_accuracy},
            "tflite": {"path": _name(converted.path), "size_bytes": converted.size_bytes,
                       "weight_bytes": converted.model.weight_bytes,
                       "graph_bytes": converted.model.graph_bytes,
                       "quantize": converted.quantize.value,
                       "test_accuracy": self.verified.tflite_accuracy,
                       "top1_agreement": self.verified.top1_agreement,
                       "max_abs_diff": self.verified.max_abs_diff,
                       "backend": self.verified.backend},
            "inspect": inspected.to_json() | {"path": _name(inspected.model.path)},
        }
        fold = self.conversion.fold_json()
        if fold is not None:
            fold |= {"model": "model.keras", "out": "folded.keras"}
            fold["converter_only"]["path"] = "converter_only.tflite"
            doc["fold"] = fold
        if self.conversion.tflite_fold_json() is not None:
            doc["tflite_fold"] = self.conversion.tflite_fold_json()
        doc |= self._baseline_json()
        if self.benched is not None:
            doc["bench"] = self._bench_json()
        if self.precisions():
            doc["precisions"] = {p.precision: p.to_json() for p in self.precisions()}
        doc["verify"] = {"passed": self.passed, "failed": self.failed_checks(),
                         "checks": [c.to_json() for c in self.verified.checks]}
        if self.statistics_json() is not None:
            doc["bn_statistics"] = self.statistics_json()
        doc["warnings"] = self.warnings()
        if self.plots:
            doc["plots"] = {name: {"path": plot.path.name, "shows": list(plot.shows)}
                            for name, plot in self.plots.items()}
        doc["timings"] = {f"{k}_s": v for k, v in self.seconds.items()}
        if self.bundled is not None:
            doc["bundle"] = {"path": _name(self.bundled.out),
                             "selftest_here": self.bundled.selftest,
                             "signed": self.bundled.signed}
        if self.emulated is not None:
            doc["emulation"] = self.emulated.to_json() | {"bundle": str(self.out / "bundle")}
        return doc

    def _baseline_json(self) -> JsonDict:
        """The BN-free baseline ("twin" in the document), the BN vs no-BN training ledger, and
        the learning-rate sweep."""
        doc: JsonDict = {}
        if self.twin is not None:
            doc["twin"] = {"available": True, "keras_path": "twin.keras",
                           "tflite_path": "twin.tflite", "params": self.twin.params,
                           "test_accuracy": self.twin.test_accuracy,
                           "history": self.twin.history.to_json()}
        elif not self.trained.has_twin:
            doc["twin"] = {"available": False, "reason": "the BN-free baseline exists only for the "
                           "small zoo models (mlp, mlp-prebn, cnn); what BN costs is measured "
                           "against the folded model (bench.fold_gain: BN model p50 / folded p50)"}
        if self.ledger is not None:
            doc["seed_ledger"] = self.ledger.to_json()
        if self.sweep is not None:
            doc["lr_sweep"] = self.sweep.to_json()
        return doc

    def _model_json(self) -> JsonDict:
        t = self.trained
        return {"arch": self.arch, "bn": t.bn, "params": t.params,
                "bn_layers": len(t.bn_layers), "bn_layer_names": t.bn_layers,
                "epochs_run": t.epochs_run, "val_accuracy": t.val_accuracy,
                "seed": self.dataset.seed, "source": t.source or "trained by edgebn",
                "fine_tune_epochs_run": t.fine_tune_epochs_run,
                "strategy": t.distribution.to_json(), "history": t.history.to_json(),
                "train": t.config.to_json() if t.config else None}

    def _bench_json(self) -> JsonDict:
        doc = self.benched.to_json()
        for key in ("tflite", "baseline"):
            if key in doc:
                doc[key]["model"] = _name(doc[key]["model"])
        for other in doc.get("others", {}).values():
            other["model"] = _name(other["model"])
        return doc

    def precisions(self) -> list[Precision]:
        """float32 beside the quantized model, when the build kept both
        (edgebn.pipeline.precisions)."""
        return side_by_side(self.float32, self.conversion.converted, self.verified, self.benched,
                            rel=_name)

    def rows(self) -> list[tuple[str, str]]:
        """The summary, metric by metric: the terminal's table and report.md's."""
        d, t, v = self.dataset, self.trained, self.verified
        c = self.conversion.converted
        rows = [("dataset", f"{d.name} ({'/'.join(map(str, d.counts))} train/val/test"
                            f"{', streamed' if d.streams else ''})"),
                ("model", f"{self.arch}{'' if t.bn else ' (no BN)'}, {t.params:,} params, "
                          f"{len(t.bn_layers)} BN layers, "
                          + (training_summary(t) if t.config else f"from {t.source}")),
                ("Keras test accuracy", f"{self.keras_accuracy:.4f}"),
                ("TFLite test accuracy", f"{v.tflite_accuracy:.4f}"),
                ("top-1 agreement TFLite vs Keras", f"{v.top1_agreement:.4f}"),
                ("max |Δp|", f"{v.max_abs_diff:.3g}"),
                ("verify", "passed: " + ", ".join(c.describe() for c in v.checks) if self.passed
                 else "FAILED: " + "; ".join(self.failed_checks())),
                ("TFLite file", f"{_name(c.path)}, {c.size_bytes:,} bytes "
                                f"(quantize {c.quantize.value})")]
        rows += self._bn_rows()
        statistics = self._statistics_row()
        if statistics is not None:
            rows.append(("BN statistics", statistics))
        ledger = self.ledger
        if ledger is not None:
            rows.append(("BN vs no-BN training", ledger.summary()))
        if self.sweep is not None:
            rows.append(("learning-rate sweep", self.sweep.summary()))
        if self.benched is not None:
            if not t.has_twin and self.benched.fold_gain():
                rows.append(("BN cost", f"no BN-free baseline for {self.arch}: BN's cost is the "
                                        "fold gain (BN model p50 / folded p50)"))
            rows += _bench_summary(self.benched)
        rows += precision_rows(self.precisions())
        if self.bundled is not None:
            st = self.bundled.selftest
            rows.append(("device bundle", f"{_name(self.bundled.out)}, self-test here "
                                          f"{'passed' if st['passed'] else 'FAILED'}"))
        if self.emulated is not None:
            rows += [(f"emulated Pi, {r.runtime}", "passed" if r.passed else f"FAILED {r.error}")
                     for r in self.emulated.runs]
        return rows

    def _statistics_row(self) -> str | None:
        ts = self.trained.bn_statistics
        if ts is None:
            given = self.given_statistics
            if given is None:
                return None
            return f"not measured: {given}" if isinstance(given, str) else given.summary()
        momentum = "" if ts.momentum is None else (
            f"; trained at momentum {ts.momentum:.3f} (the model's "
            f"{'/'.join(f'{m:g}' for m in ts.momentum_from)} remembers more steps than an epoch)")
        done = ts.check.recalibration
        if done is None:
            return f"{ts.kept}: {ts.check.drift.summary()}{momentum}"
        return (f"recomputed from {done.samples} training inputs: test accuracy "
                f"{ts.test_accuracy_stored:.4f} with training's, {self.keras_accuracy:.4f} "
                f"recomputed; largest drift {done.before.max_drift:.2f} -> "
                f"{done.after.max_drift:.2f}{momentum}")

    def _bn_rows(self) -> list[tuple[str, str]]:
        bn = self.conversion.inspected.bn
        fold = self.conversion.fold
        rows = [("BN verdict", f"{bn.verdict} ({len(bn.residual)} residual; "
                               f"{len(bn.folded)} folded by the converter)")]
        if fold is not None:
            only = self.conversion.converter_only.bn
            rows += [("fold in Keras", f"{len(fold.layers) - len(fold.kept)} folded, "
                                       f"{len(fold.kept)} kept, max |Δ| {fold.max_abs_diff:.3g}"),
                     ("converter alone / folded first",
                      f"{only.verdict} ({len(only.residual)}) / {bn.verdict} "
                      f"({len(bn.residual)})")]
        refold, refused = self.conversion.tflite_fold, self.conversion.tflite_fold_refused
        if refold is not None:
            counts = refold.to_json()["counts"]
            rows.append(("fold in the .tflite", f"{counts['folded']} folded, {counts['collapsed']} "
                                               f"collapsed, {counts['kept']} kept"))
        elif refused is not None:
            rows.append(("fold in the .tflite", f"refused: {refused}"))
        return rows


CHANCE_MARGIN = 0.05  # accuracy within this (or 3 standard errors) of chance: nothing learned


def at_chance(accuracy: float, labels: npt.ArrayLike, classes: int) -> str | None:
    """A warning when ``accuracy`` is within a small margin of chance: the larger of
    1 / classes and the majority class's share of ``labels``; else None."""
    labels = np.asarray(labels)
    if not len(labels) or classes < 2:
        return None
    majority = float(np.bincount(labels).max() / len(labels))
    chance = max(1.0 / classes, majority)
    margin = max(CHANCE_MARGIN, 3 * float(np.sqrt(chance * (1 - chance) / len(labels))))
    if accuracy > chance + margin:
        return None
    return (f"test accuracy {accuracy:.4f} is at chance ({chance:.4f}: "
            f"{'the majority class' if majority > 1.0 / classes else f'1 of {classes} classes'}, "
            f"margin {margin:.3f}): the model learned nothing")


def training_summary(t: TrainResult) -> str:
    """How it was trained, in a few words: epochs, fine-tuning, devices."""
    text = f"{t.epochs_run} epochs"
    if t.fine_tune_epochs_run:
        text += f" ({t.fine_tune_epochs_run} fine-tuning)"
    if t.config.weights != "none":
        text += f", weights {Path(t.config.weights).name}"
    if t.config.augment:
        text += ", augmented"
    if t.distribution.replicas > 1 or t.distribution.strategy.value != "none":
        text += f", {t.distribution.strategy.value} on {t.distribution.replicas} replicas"
    return text


def _bench_summary(b: BenchResult) -> list[tuple[str, str]]:
    rows = [(f"{r.label} p50", f"{r.latency_us.p50:,.1f} µs") for r in b.rows()]
    sp = b.speedup()
    if sp:
        rows.append(("speedup vs fastest Keras", f"{sp['vs_fastest_keras']:.1f}x "
                                                 f"({sp['fastest_keras']})"))
    rows += [(f"BN cost {k}", f"{v:.3f}x (BN model p50 / {b.baseline_label} p50)")
             for k, v in b.bn_cost().items()]
    rows += [(f"fold gain {k}", f"{v:.3f}x (BN model p50 / folded p50)")
             for k, v in b.fold_gain().items()]
    c, t = b.tflite.cost, b.tflite
    if c is not None:  # edgebn.runtime.cost: MACs from the file, the ceiling probed on this machine
        rows += [("TFLite MACs per inference", f"{c.macs:,} ({c.macs / 1e6:.2f} M)"),
                 ("TFLite GMAC/s at p50", f"{c.gmacs_per_s:.1f}"),
                 ("TFLite efficiency", f"{c.efficiency:.0%} of the probe's "
                                       f"{c.ceiling_gmacs_per_s:.1f} GMAC/s ({t.threads} "
                                       "thread(s))")]
    return rows


# ---------------------------------------------------------------- Markdown


def markdown_table(header: tuple[str, ...], rows: list[tuple[object, ...]]) -> list[str]:
    def cell(x: object) -> str:
        return str(x).replace("|", "\\|")

    return ([f"| {' | '.join(header)} |", f"| {' | '.join('---' for _ in header)} |"]
            + [f"| {' | '.join(cell(x) for x in row)} |" for row in rows])


def tflite_fold_lines(fold: TFLiteFoldResult, what: str) -> list[str]:
    """report.md's section on a fold in the .tflite: the proof, then each chain's outcome."""
    return ["", f"## Fold in the .tflite ({what}; {fold.measure}, largest |Δ| "
                f"{fold.max_rel_diff:.3g})", ""] + [
        f"- ops {list(c.ops)} ({c.kind}): {c.result}"
        + (f" {c.direction} into op {c.into} {c.into_type}" if c.result == "folded"
           else f", {c.reason}")
        for c in fold.chains]


def render_markdown(result: BuildResult) -> str:
    t = result.trained
    lines = [f"# edgebn build: {result.arch}{'' if t.bn else ' (no BN)'} on "
             f"{result.dataset.name}", ""]
    lines += [f"> **Warning:** {w}" for w in result.warnings()]
    lines += ([""] if result.warnings() else []) + markdown_table(("metric", "value"),
                                                                 result.rows())
    bn = result.conversion.inspected.bn
    lines += [f"- residual {r.kind} BN {r.source or '(unnamed)'}: ops {list(r.ops)}, "
              f"{r.channels} channels, {r.cost_elements} elements per inference"
              for r in bn.residual]
    fold = result.conversion.fold
    if fold is not None:
        lines += ["", f"## Fold in Keras (max |Δ| {fold.max_abs_diff:.3g}, "
                      f"{fold.max_rel_diff:.3g} relative, on {fold.samples} inputs: "
                      f"{fold.inputs})", ""]
        lines += [f"- {f.bn}: folded {f.direction} into {f.into}" if f.folded
                  else f"- {f.bn}: kept, {f.reason}" for f in fold.layers]
    refold = result.conversion.tflite_fold
    if refold is not None:
        lines += tflite_fold_lines(refold, "the residue the converter left")
    b = result.benched
    if b is not None:
        tl = b.tflite
        lines += ["", f"## Latency ({b.environment['cpu']}, {tl.threads} thread(s), "
                      f"batch {tl.batch}, {tl.backend})", ""]
        lines += markdown_table(("runtime", "p50 µs", "p90 µs", "p99 µs", "runs"),
                        [(r.label, f"{r.latency_us.p50:.1f}", f"{r.latency_us.p90:.1f}",
                          f"{r.latency_us.p99:.1f}", r.runs) for r in b.rows()])
    if result.plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({plot.path.name})"
                                         for name, plot in result.plots.items()]
    em = result.emulated
    if em is not None:
        lines += ["", f"## Self-test on an emulated arm64 Raspberry Pi ({em.platform})", ""]
        lines += [f"- {r.runtime}: {'passed' if r.passed else 'FAILED'} ("
                  + (f"{r.selftest['runtime']}, NumPy {r.selftest['numpy']}, max |diff| "
                     f"{r.selftest['max_abs_diff']:.3g})" if r.selftest else f"{r.error})")
                  for r in em.runs]
    return "\n".join(lines) + "\n"


PLOTS = {"training": "training.png", "latency": "latency.png", "profile": "profile.png"}


def training_curves(result: BuildResult) -> tuple[list[plots.Curve], float | None]:
    """The BN model's and its BN-free baseline's validation curves, and the target: the
    baseline's best validation accuracy (as the seed's ledger takes it)."""
    curves = []
    sweep = result.sweep
    for label, t, m in (("BN", result.trained, sweep.best_bn.multiplier if sweep else None),
                        ("BN-free baseline", result.twin,
                         sweep.best_twin.multiplier if sweep else None)):
        if t is not None and t.history.val_accuracy:
            label += "" if m is None else f" (its best learning rate, x{m:g})"
            curves.append(plots.Curve(label, t.history.val_accuracy, t.history.steps_per_epoch))
    ledger = result.ledger
    return curves, None if ledger is None else ledger.target


def write_plots(result: BuildResult) -> dict[str, plots.Plot]:
    """training.png, latency.png, profile.png: each when the build has what it shows."""
    made: dict[str, plots.Plot] = {}
    curves, target = training_curves(result)
    if curves:
        made["training"] = plots.training(
            curves, target, result.out / PLOTS["training"],
            f"{result.arch} on {result.dataset.name}: validation accuracy against steps")
    b = result.benched
    if b is not None:
        made["latency"] = plots.latency(
            b.rows(), result.out / PLOTS["latency"],
            f"{b.environment.get('cpu', '')}, {b.tflite.threads} thread(s), batch {b.tflite.batch}")
    if result.profiled is not None:
        p = result.profiled
        made["profile"] = plots.profile(
            p.operators, result.out / PLOTS["profile"],
            f"{Path(str(p.model)).name}: the slowest operators ({p.method}), "
            f"{p.latency_us.p50:,.1f} µs p50")
    return made


def write_report(result: BuildResult) -> BuildResult:
    """The plots, then report.json and report.md, each written once, atomically; the result
    with its plots."""
    result = replace(result, plots=write_plots(result))
    write_atomic(result.out / "report.json", json.dumps(result.to_json(), indent=2) + "\n")
    write_atomic(result.out / "report.md", render_markdown(result))
    return result
