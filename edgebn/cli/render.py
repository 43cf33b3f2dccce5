"""Rich tables for people, one per result type; each reads the result's own rows.

The same rows feed report.md (edgebn.pipeline.report) and the bench plot, so a number is
formatted in one place. Nothing here imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from edgebn.bench.run import BenchResult
from edgebn.bench.scaling import ThreadScaling
from edgebn.cli.ui import out
from edgebn.convert import ConversionResult
from edgebn.deploy.emulate import EmulationResult
from edgebn.fold.keras.keras_fold import FoldResult
from edgebn.fold.keras.stats_check import RecalibratedFile, StatsCheck
from edgebn.fold.tflite.tflite_fold import TFLiteFoldResult
from edgebn.pipeline.check import CheckResult
from edgebn.pipeline.plots import latency
from edgebn.pipeline.report import BuildResult, training_summary
from edgebn.pipeline.tflite_build import TFLiteBuildResult
from edgebn.runtime.profile.opdiff import OpDiff
from edgebn.runtime.profile.result import OpTime, ProfileResult
from edgebn.tflite.reader import tensor_bytes
from edgebn.tflite.residue import InspectResult
from edgebn.train.training import SavedTraining

_LATENCY_FIELDS = ("min", "p50", "p90", "p99", "mean", "std")


def new_table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def inspect(result: InspectResult, show_tensors: bool = False) -> None:
    m = result.model
    out.print(f"[bold]{m.path}[/]: {m.size_bytes} bytes ({m.weight_bytes} weights, "
              f"{m.graph_bytes} graph and metadata), schema v{m.version}")
    for sig in m.signatures:
        out.print(f"signature {sig.key!r}: inputs {sig.inputs}, outputs {sig.outputs}")
    for sg in m.subgraphs:
        table = new_table(f"subgraph {sg.index} {sg.name!r}: inputs {list(sg.inputs)}, "
                       f"outputs {list(sg.outputs)}", ("#", "op", "inputs", "outputs",
                                                       "output shape"))
        for op in sg.operators:
            shape = sg.tensors[op.outputs[0]].shape if op.outputs and op.outputs[0] >= 0 else ()
            table.add_row(str(op.index), op.op, str(list(op.inputs)), str(list(op.outputs)),
                          str(list(shape)))
        out.print(table)
        if show_tensors:
            tt = new_table(f"subgraph {sg.index} tensors",
                        ("#", "name", "shape", "dtype", "bytes", "const", "quantization"))
            for t in sg.tensors:
                q = t.quantization
                qs = "" if q is None else (f"scale {q.scale[0]:.3g} zp {q.zero_point[0]}"
                                           if len(q.scale) == 1 else f"{len(q.scale)} channels")
                tt.add_row(str(t.index), t.name[:60], str(list(t.shape)), t.dtype,
                           str(tensor_bytes(t)), "yes" if t.is_constant else "", qs)
            out.print(tt)
    out.print("op counts: " + ", ".join(f"{k} {v}" for k, v in m.op_counts().items()))
    bn_verdict(result)


def bn_verdict(result: InspectResult) -> None:
    bn = result.bn
    for f in bn.folded:
        out.print(f"  folded: {f.source} -> op {f.op} {f.into}")
    for r in bn.residual:
        what = "BN" if r.source_type == "bn" else "per-channel affine, unknown source"
        out.print(f"  [red]residual[/] {r.kind} {what} {r.source or ''}: subgraph {r.subgraph} "
                  f"ops {list(r.ops)}, {r.channels} channels, {r.cost_elements} elements x "
                  f"(mul + add) per inference ({r.rule})")
    for r in bn.not_bn:
        out.print(f"  per-channel affine, not BN: {r.source_type} {r.source or ''} ({r.kind}): "
                  f"subgraph {r.subgraph} ops {list(r.ops)}, {r.channels} channels, "
                  f"{len(r.ops) * r.cost_elements:,} operations per inference ({r.rule})")
    colour = "green" if result.clean else "red"
    names = "" if bn.names else "; the file has no tensor names (stripped): attributed by form"
    out.print(f"BN verdict: [bold {colour}]{bn.verdict}[/] "
              f"({len(bn.residual)} residual, {len(bn.folded)} folded, "
              f"{len(bn.not_bn)} not BN{names})")


def inspect_many(results: list[InspectResult]) -> None:
    table = new_table("edgebn inspect", ("model", "bytes", "ops", "verdict", "residual", "folded"))
    for r in results:
        colour = "green" if r.clean else "red"
        table.add_row(r.model.path, f"{r.model.size_bytes:,}",
                      str(sum(r.model.op_counts().values())), f"[{colour}]{r.bn.verdict}[/]",
                      str(len(r.bn.residual)), str(len(r.bn.folded)))
    out.print(table)


def fold(result: FoldResult) -> None:
    bn_statistics(result.bn_statistics)
    table = new_table(f"fold: max |Δ| {result.max_abs_diff:.3g} ({result.max_rel_diff:.3g} "
                   f"relative, tolerance {result.tolerance:g}) on {result.samples} inputs "
                   f"({result.inputs})", ("BN", "result", "into / reason"))
    for f in result.layers:
        if f.folded:
            table.add_row(f.bn, f"[green]folded {f.direction}[/]", f.into)
        else:
            table.add_row(f.bn, "[red]kept[/]", f.reason)
    for f in result.others:  # input normalization: folded where exact, else not BN residue
        table.add_row(f"{f.bn} ({f.layer_type}, not BN)",
                      f"[green]folded {f.direction}[/]" if f.folded else "[yellow]kept[/]",
                      f.into if f.folded else f.reason)
    out.print(table)


def bn_statistics(check: StatsCheck | str | None) -> None:
    """The BN statistics a command measured: the worst layers, what recomputing did."""
    if check is None:
        return
    if isinstance(check, str):
        out.print(f"BN statistics: not measured ({check})")
        return
    drift = check.drift
    table = new_table(f"BN statistics on {drift.samples} inputs ({drift.inputs}): drift of the "
                   "normalized output, in units of its own spread",
                   ("BN", "channels", "drift", "worst channel", "noise", ""))
    for d in drift.worst():
        table.add_row(d.bn, str(d.channels), f"{d.drift:.3f}", f"{d.worst_channel:.3f}",
                      f"{d.noise:.3f}", "[red]stale[/]" if d.stale else "")
    out.print(table)
    out.print(f"BN statistics: {check.summary()}")
    if check.warning():
        warnings([f"{check.warning()} (--recalibrate-bn)"])


def recalibrated(result: RecalibratedFile) -> None:
    r = result.recalibration
    out.print(f"wrote {result.out}: {r.summary()}")
    for label, drift in (("before", r.before), ("after", r.after)):
        out.print(f"  {label}: {drift.summary()}")


def fold_tflite(result: TFLiteFoldResult) -> None:
    """``edgebn fold model.tflite``: each BN chain and what became of it, the proof, the p50s."""
    worst = result.worst
    title = (f"fold: {result.measure} ({result.inputs}); largest |Δ| {result.max_rel_diff:.3g} of "
             f"a tensor's largest value, tolerance {result.tolerance:.3g}")
    table = new_table(title, ("BN", "form", "result", "into / reason"))
    for c in result.chains:
        name = c.source or f"ops {list(c.ops)}"
        if c.result == "folded":
            table.add_row(name, c.kind, f"[green]folded {c.direction}[/]",
                          f"op {c.into} {c.into_type}"
                          + (" (float16 weights)" if c.float16 else ""))
        else:
            colour = "yellow" if c.result == "collapsed" else "red"
            table.add_row(name, c.kind, f"[{colour}]{c.result}[/]", c.reason)
    out.print(table)
    if not result.chains:
        out.print("no residual BN: the file is written unchanged")
    if worst is not None:
        out.print(f"worst tensor: {worst.tensor} {worst.name or '(unnamed)'}")
    e = result.speed
    if e is not None:
        out.print(f"p50 {e.current_p50_us:,.1f} µs before, {e.baseline_p50_us:,.1f} µs after "
                  f"({e.describe()})")


def folded(result: FoldResult | TFLiteFoldResult, written: Path) -> None:
    """``edgebn fold``: the fold of a .keras or of a .tflite, then where it was written."""
    fold_tflite(result) if isinstance(result, TFLiteFoldResult) else fold(result)
    out.print(f"wrote {written}")


def conversion(result: ConversionResult) -> None:
    c = result.converted
    out.print(f"wrote {c.path} ({c.size_bytes} bytes, quantize {c.quantize.value})")
    inspect(result.inspected)
    bn_statistics(result.bn_statistics)
    if result.fold is not None:
        fold(result.fold)
        for label, inspected in (("converter alone", result.converter_only),
                                 ("folded first", result.inspected)):
            bn = inspected.bn
            colour = "green" if inspected.clean else "red"
            out.print(f"{label}: [{colour}]{bn.verdict}[/] ({len(bn.residual)} residual BN, "
                      f"{inspected.model.size_bytes} bytes)")
    if result.tflite_fold is not None:
        out.print("the residue the converter left, folded in the .tflite:")
        fold_tflite(result.tflite_fold)
    elif result.tflite_fold_refused is not None:
        out.print(f"[red]fold in the .tflite refused[/]: {result.tflite_fold_refused}")


def summary(title: str, rows: list[tuple[str, str]]) -> None:
    table = new_table(title, ("metric", "value"))
    for metric, value in rows:
        table.add_row(metric, value)
    out.print(table)


def build(result: BuildResult | TFLiteBuildResult) -> None:
    summary(f"edgebn build -> {result.out}", result.rows())
    warnings(result.warnings())
    for failed in result.failed_checks():
        out.print(f"[bold red]verify failed[/]: {failed} (--min-agreement, --max-prob-diff "
                  "loosen the limits)")
    if result.emulated is not None:
        emulation(result.emulated)
    out.print(f"report: {result.out / 'report.json'}, {result.out / 'report.md'}")


def warnings(lines: list[str]) -> None:
    for line in lines:
        out.print(f"[bold yellow]warning[/]: {line}")


def bench(result: BenchResult) -> None:
    env, t = result.environment, result.tflite
    table = Table(title=f"{env['cpu']} ({env['cores']} cores), {t.backend}, threads {t.threads}, "
                        f"batch {t.batch}, XNNPACK {'on' if t.xnnpack else 'off'}")
    for col in ("runtime", "runs", *(f"{f} µs" for f in _LATENCY_FIELDS)):
        table.add_column(col, justify="left" if col == "runtime" else "right")
    for row in result.rows():
        table.add_row(row.label, str(row.runs),
                      *(f"{getattr(row.latency_us, f):.1f}" for f in _LATENCY_FIELDS))
    out.print(table)
    out.print(f"TFLite: init {t.init_ms:.1f} ms, first invoke {t.first_us:.0f} µs, "
              f"{t.throughput_per_s:.0f} invocations/s ({t.throughput_per_s * t.batch:.0f} "
              f"samples/s), peak RSS {t.peak_rss_mb:.0f} MB")
    sp = result.speedup()
    if sp:
        out.print("speedup (Keras p50 / TFLite p50): " + ", ".join(
            f"{k} {v:.1f}x" for k, v in sp.items() if isinstance(v, float))
            + f"; headline vs fastest Keras ({sp['fastest_keras']}): {sp['vs_fastest_keras']:.1f}x")
    for label, ratios in ((f"BN cost (BN model p50 / {result.baseline_label} p50)",
                           result.bn_cost()),
                          ("fold in Keras (BN model p50 / folded p50)", result.fold_gain())):
        if ratios:
            out.print(f"{label}: " + ", ".join(f"{k} {v:.3f}x" for k, v in ratios.items()))
    if result.baseline_ratio is not None:
        out.print(f"p50 / baseline p50 in interleaved rounds: {result.baseline_ratio.describe()}")
    if t.cost is not None:
        c = t.cost
        out.print(f"cost: {c.macs / 1e6:,.2f} M MACs per inference, {c.gmacs_per_s:.1f} GMAC/s "
                  f"at p50, {c.efficiency:.0%} of the probe's {c.ceiling_gmacs_per_s:.1f} GMAC/s")
    if result.scaling is not None:
        scaling(result.scaling, Path(t.model).name)


def scaling(result: ThreadScaling, model: str) -> None:
    """The thread-scaling table: one row per thread count (edgebn.bench.scaling.ThreadScaling)."""
    table = Table(title=f"{model} by interpreter threads (speedup: p50 at "
                        f"{result.reference_threads} thread(s) / p50; efficiency: GMAC/s / "
                        "the probe's ceiling at the same threads)")
    for col in result.HEADER:
        table.add_column(col, justify="right")
    for row in result.rows:
        table.add_row(*row.cells())
    out.print(table)


def plot(result: BenchResult, path: Path) -> Path:
    """Latency distributions per runtime on a log axis, written atomically as PNG."""
    title = (f"{result.environment.get('cpu', '')}, {result.tflite.threads} thread(s), "
             f"batch {result.tflite.batch}")
    return latency(result.rows(), path, title).path


def emulation(result: EmulationResult) -> None:
    table = new_table(f"self-test on {result.platform}",
                   ("runtime", "result", "NumPy", "max |diff|", "top-1", "seconds"))
    for r in result.runs:
        st = r.selftest or {}
        table.add_row(st.get("runtime", r.runtime),
                      "[green]passed[/]" if r.passed else f"[red]FAILED[/] {r.error or ''}",
                      str(st.get("numpy", "-")),
                      f"{st['max_abs_diff']:.3g} {st['units']}" if st else "-",
                      "-" if "top1_agreement" not in st else f"{st['top1_agreement']:.3f}",
                      f"{r.seconds:.1f}")
    out.print(table)


def check(result: CheckResult) -> None:
    table = new_table(f"edgebn check {result.report} against {result.baseline}",
                   ("metric", "baseline", "current", "threshold", "result"))
    for m in result.metrics:
        table.add_row(m.name, str(m.baseline), str(m.current), m.threshold,
                      "[green]pass[/]" if m.passed else "[red]FAIL[/]")
    out.print(table)
    grown_ops(result.grown_ops)
    out.print("[green]no regression[/]" if result.passed else "[red]regression[/]")


def grown_ops(diffs: Sequence[OpDiff]) -> None:
    """The operators that grew most (edgebn.runtime.profile.opdiff.OpDiff), as ``edgebn check``
    names them."""
    if diffs:
        out.print("operators that grew most (isolated time, baseline -> current):")
    for d in diffs:
        where = f"op {d.index}" + ("" if d.baseline_index is None else
                                   f" (baseline op {d.baseline_index})")
        out.print(f"  {d.op} {_shape(d.shape)} {where}: {_us(d.baseline_time_us)} -> "
                  f"{_us(d.time_us)} µs ([red]{d.delta_us:+,.1f}[/], {d.status})")


def train(result: SavedTraining) -> None:
    t = result.trained
    out.print(f"saved {result.path}: {t.arch}, {t.params:,} params, {training_summary(t)}, "
              f"test accuracy {t.test_accuracy:.4f}")


# ---------------------------------------------------------------- profile
# (edgebn.runtime.profile.operators)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _shape(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "x".join(str(d) for d in shape)


def profile(result: ProfileResult, top: int = 15) -> None:
    """``edgebn profile``: the slowest operators, then the sums, notes and the residue's cost."""
    out.print(_operators_table(result, top))
    out.print("by op type: " + ", ".join(f"{k} {v['share']:.0%} ({v['count']})"
                                         for k, v in result.by_op().items()))
    out.print(f"sum of isolated operators {result.ops_sum_us:,.1f} µs beside the whole model's "
              f"p50 {result.latency_us.p50:,.1f} µs ({result.explained:.0%}); each less an "
              f"empty invoke() ({result.invoke_overhead_us:.2f} µs); "
              f"{result.macs / 1e6:,.2f} M MACs")
    _operator_notes(result.operators)
    if result.residual_pairs():
        residual = [o for o in result.operators if o.residual_bn]
        spent = sum(o.time_us or 0.0 for o in residual)
        out.print(f"[red]residual BN[/]: {result.residual_pairs()} chains ({len(residual)} "
                  f"operators), {spent:,.1f} µs "
                  f"isolated ({spent / (result.ops_sum_us or 1):.1%} of the sum)")
    _residue_cost(result)
    if result.baseline is not None:
        profile_diff(result, top)


def _operators_table(result: ProfileResult, top: int) -> Table:
    ops = result.operators
    table = Table(title=f"{Path(result.model).name}: {result.method}, {result.backend}, "
                        f"threads {result.threads}, XNNPACK {'on' if result.xnnpack else 'off'} "
                        f"(top {min(top, len(ops))} of {len(ops)} operators)")
    for col in ("#", "op", "output", "µs", "share", "MACs", "GMAC/s", "BN"):
        table.add_column(col, justify="left" if col in ("op", "output", "BN") else "right",
                         no_wrap=col == "op")
    for o in result.top(top):
        where = str(o.index) if o.subgraph == 0 else f"{o.subgraph}:{o.index}"
        table.add_row(where, o.op, _shape(o.shape), _us(o.time_us),
                      "-" if o.share is None else f"{o.share:.1%}",
                      f"{o.macs:,}" if o.macs else "",
                      f"{o.gmacs_per_s:.1f}" if o.gmacs_per_s else "",
                      "[red]residue[/]" if o.residual_bn else "")
    return table


FUSED_NOTE = "fused by XNNPACK into the convolution after it: timed with it"


def _operator_notes(ops: Sequence[OpTime]) -> None:
    """Each note once, with the first three operators it is about."""
    notes: dict[str, list[str]] = {}
    for o in (o for o in ops if o.note):
        notes.setdefault(o.note if o.method != "fused" else FUSED_NOTE, []).append(
            f"{o.index} {o.op}")
    for note, which in notes.items():
        more = f" and {len(which) - 3} more" if len(which) > 3 else ""
        out.print(f"  op {', '.join(which[:3])}{more}: {note}")


def _residue_cost(result: ProfileResult) -> None:
    if result.residue is None:
        if result.residue_skipped:
            out.print(f"residue cost: not measured ({result.residue_skipped})")
        return
    r = result.residue
    measured = f"{r.ratio:.3f}x" if r.estimate is None else r.estimate.describe()
    out.print(f"residue cost: {measured} (p50 {r.model_p50_us:,.1f} µs against "
              f"{r.bypassed_p50_us:,.1f} µs with the {r.pairs} chains bypassed); an estimate: "
              "the bypassed graph computes different outputs")
    if r.lost_delegation:
        out.print(f"  [yellow]the bypassed copy has {r.partitions[1]} XNNPACK partitions against "
                  f"the model's {r.partitions[0]}: an operator fell out of the delegate, so the "
                  "cost is understated[/]")


def profile_diff(result: ProfileResult, top: int = 15) -> None:
    base = result.baseline
    table = Table(title=f"against {Path(base.model).name}: whole p50 "
                        f"{base.latency_us.p50:,.1f} -> {result.latency_us.p50:,.1f} µs, "
                        f"operators' sum {base.ops_sum_us:,.1f} -> {result.ops_sum_us:,.1f} µs")
    for col in ("op", "output", "baseline µs", "µs", "Δ µs", "change"):
        table.add_column(col, justify="left" if col in ("op", "output", "change") else "right")
    for d in sorted(result.diff, key=lambda d: -abs(d.delta_us))[:top]:
        colour = "red" if d.delta_us > 0 else "green"
        table.add_row(d.op, _shape(d.shape if d.shape is not None else d.baseline_shape),
                      _us(d.baseline_time_us), _us(d.time_us),
                      f"[{colour}]{d.delta_us:+,.1f}[/]", d.status)
    out.print(table)
