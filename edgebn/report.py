"""The build report: report.json (../shared/CONTRACTS.md) and report.md, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgebn import __version__
from edgebn.stages import write_atomic


def _rel(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)


def build_report(out, config, ds, trained, twin, conversion, verified, inspected, benched,
                 timings) -> dict[str, Any]:
    converted = conversion.converted
    inspect_doc = inspected.to_json()
    inspect_doc["path"] = _rel(Path(inspect_doc["path"]), out)
    report: dict[str, Any] = {
        "edgebn": __version__,
        "dataset": ds.to_json(),
        "model": {"arch": config.arch.value, "bn": config.bn, "params": trained.params,
                  "bn_layers": len(trained.bn_layers), "bn_layer_names": trained.bn_layers,
                  "epochs_run": trained.epochs_run, "val_accuracy": trained.val_accuracy,
                  "seed": config.seed},
        "keras": {"path": "model.keras", "test_accuracy": trained.test_accuracy},
        "tflite": {"path": _rel(converted.path, out), "size_bytes": converted.size_bytes,
                   "weight_bytes": inspected.model.weight_bytes,
                   "graph_bytes": inspected.model.graph_bytes,
                   "quantize": converted.quantize, "test_accuracy": verified.tflite_accuracy,
                   "top1_agreement": verified.top1_agreement,
                   "max_abs_diff": verified.max_abs_diff, "backend": verified.backend},
        "inspect": inspect_doc,
    }
    fold = conversion.fold_json()
    if fold is not None:
        fold["model"], fold["out"] = "model.keras", "folded.keras"
        fold["converter_only"]["path"] = "converter_only.tflite"
        report["fold"] = fold
    if twin is not None:
        report["twin"] = {"keras_path": "twin.keras", "tflite_path": "twin.tflite",
                          "params": twin.params, "test_accuracy": twin.test_accuracy}
    if benched is not None:
        doc = benched.to_json()
        for key in ("tflite", "baseline"):
            if key in doc:
                doc[key]["model"] = _rel(Path(doc[key]["model"]), out)
        report["bench"] = doc
    report["timings"] = timings
    return report


def render_markdown(report: dict[str, Any]) -> str:
    d, m, k, t = report["dataset"], report["model"], report["keras"], report["tflite"]
    bn = report["inspect"]["bn"]
    lines = [
        f"# edgebn build: {m['arch']}{'' if m['bn'] else ' (no BN)'} on {d['name']}",
        "",
        f"Dataset: {d['name']}, {d['train']}/{d['val']}/{d['test']} train/val/test, "
        f"{d['classes']} classes, input {d['input_shape']}.",
        f"Model: {m['params']} parameters, {m['bn_layers']} BN layers, "
        f"{m['epochs_run']} epochs.",
        "",
        "| metric | Keras | TFLite |",
        "| --- | --- | --- |",
        f"| test accuracy | {k['test_accuracy']:.4f} | {t['test_accuracy']:.4f} |",
        f"| file | {k['path']} | {t['path']} ({t['size_bytes']} bytes, quantize {t['quantize']}) |",
        "",
        f"Top-1 agreement TFLite vs Keras: {t['top1_agreement']:.4f}; "
        f"max |Δp|: {t['max_abs_diff']:.3g}.",
        "",
        f"BN verdict: **{bn['verdict']}** ({len(bn['residual'])} residual"
        + (f"; {report['fold']['folded']} folded in Keras before conversion" if "fold" in report
           else "")
        + ("; folded by the converter: "
           + ", ".join(f"{f['source']} → {f['into']}" for f in bn["folded"]) if bn["folded"]
           else "") + ").",
    ]
    for r in bn["residual"]:
        lines.append(f"- residual {r['kind']} BN {r['source'] or '(unnamed)'}: ops {r['ops']}, "
                     f"{r['channels']} channels, {r['cost_elements']} elements per inference")
    fd = report.get("fold")
    if fd:
        only, pre = fd["converter_only"], fd["pre_folded"]
        lines += ["", f"## Fold in Keras (max |Δ| {fd['max_abs_diff']:.3g}, "
                      f"{fd['max_rel_diff']:.3g} relative, on {fd['samples']} inputs: "
                      f"{fd['inputs']})", "",
                  f"Converter alone: {only['verdict']} ({only['residual']} residual BN, "
                  f"{only['size_bytes']} bytes); folded first: {pre['verdict']} "
                  f"({pre['residual']} residual BN, {pre['size_bytes']} bytes).", ""]
        for f in fd["layers"]:
            lines.append(f"- {f['bn']}: folded {f['direction']} into {f['into']}" if f["folded"]
                         else f"- {f['bn']}: kept, {f['reason']}")
    b = report.get("bench")
    if b:
        tl = b["tflite"]
        lines += ["", f"## Latency ({b['environment']['cpu']}, {tl['threads']} thread, "
                      f"batch {tl['batch']}, {tl['backend']})", "",
                  "| runtime | p50 µs | p90 µs | p99 µs | runs |", "| --- | --- | --- | --- | --- |"]
        rows = [("TFLite", tl)] + ([("TFLite BN-free twin", b["baseline"])] if "baseline" in b else [])
        rows += [(f"Keras {mode}", s) for mode, s in b.get("keras", {}).items()]
        rows += [(f"Keras twin {mode}", s) for mode, s in b.get("keras_baseline", {}).items()]
        rows += [(f"Keras folded {mode}", s) for mode, s in b.get("keras_folded", {}).items()]
        for name, s in rows:
            lat = s["latency_us"]
            lines.append(f"| {name} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
                         f"| {s['runs']} |")
        sp = b.get("speedup")
        if sp:
            lines += ["", f"Speedup of TFLite over the fastest Keras path ({sp['fastest_keras']}): "
                          f"**{sp['vs_fastest_keras']:.1f}x**."]
        cost = b.get("bn_cost")
        if cost:
            lines += ["", "BN cost (BN model p50 / BN-free twin p50): "
                      + ", ".join(f"{k_} {v:.3f}x" for k_, v in cost.items()) + "."]
        gain = b.get("fold_gain")
        if gain:
            lines += ["", "Fold in Keras (BN model p50 / folded model p50): "
                      + ", ".join(f"{k_} {v:.3f}x" for k_, v in gain.items()) + "."]
    em = report.get("emulation")
    if em:
        lines += ["", f"## Self-test on an emulated arm64 Raspberry Pi ({em['platform']})", ""]
        for r in em["runs"]:
            st = r.get("selftest") or {}
            lines.append(f"- {r['runtime']}: {'passed' if r['passed'] else 'FAILED'}"
                         + (f" ({st.get('runtime')}, NumPy {st.get('numpy')}, max |diff| "
                            f"{st.get('max_abs_diff')})" if st else f" ({r.get('error')})"))
    return "\n".join(lines) + "\n"


def write_report_json(out, report: dict[str, Any]) -> None:
    write_atomic(Path(out) / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(Path(out) / "report.md", render_markdown(report))


def write_report(out, config, ds, trained, twin, conversion, verified, inspected, benched,
                 timings) -> dict[str, Any]:
    report = build_report(out, config, ds, trained, twin, conversion, verified, inspected,
                          benched, timings)
    write_report_json(out, report)
    return report
