"""The package's architecture, held by tools: no import cycle, the TensorFlow-free side runs
without TensorFlow, and the device's files import only what a Pi has.

The layers themselves are import-linter's contracts in pyproject.toml (``lint-imports``,
run by .ci/run); these tests prove what they cannot say.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "edgebn" / "deploy" / "device"


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[tuple[str, ...]]:
    """Every import A -> B that closes a loop: a chain of imports leads from B back to A."""
    found = []
    for a in sorted(modules):
        for b in sorted(graph.find_modules_directly_imported_by(a) & modules):
            back = graph.find_shortest_chain(importer=b, imported=a)
            if back is not None:
                found.append((a, *back))
    return found


def test_the_import_graph_of_edgebn_has_no_cycle():
    graph = grimp.build_graph("edgebn")
    modules = {m for m in graph.modules if m.startswith("edgebn")}
    assert len(modules) > 40
    assert _cycles(graph, modules) == []


def test_the_cycle_check_sees_a_cycle():
    """The same check on a graph with a loop added: it must find it."""
    graph = grimp.build_graph("edgebn")
    graph.add_import(importer="edgebn.tflite.reader", imported="edgebn.cli.app")
    modules = {m for m in graph.modules if m.startswith("edgebn")}
    cycles = _cycles(graph, modules)
    assert cycles and any(c[0] == "edgebn.tflite.reader" and "edgebn.cli.app" in c for c in cycles)


ALLOWED_ON_THE_DEVICE = {"numpy", "PIL", "ai_edge_litert", "tflite_runtime"}


@pytest.mark.parametrize("script", ["predict.py", "verify.py", "serve.py"])
def test_the_device_files_import_only_the_standard_library_numpy_pil_and_a_runtime(script):
    tree = ast.parse((DEVICE / script).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module.split(".")[0])
    outside = {m for m in found if m not in sys.stdlib_module_names and m != "__future__"}
    assert outside <= ALLOWED_ON_THE_DEVICE, outside
    assert "ai_edge_litert" not in found or script == "predict.py"


BLOCKED = """
import sys
for name in ("tensorflow", "keras"):
    sys.modules[name] = None  # `import tensorflow` now raises ImportError
from typer.testing import CliRunner
from edgebn.cli.app import app
"""


def _without_tensorflow(body: str) -> dict:
    """``body`` in a fresh Python where tensorflow and keras cannot be imported."""
    code = BLOCKED + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tensorflow_free_commands_run_with_tensorflow_unimportable(small_builds, tmp_path):
    from tflite_forms import conv_bn

    build = small_builds["none"]
    model = ROOT / "models" / "digits-cnn" / "model.tflite"
    residual = tmp_path / "conv_bn.tflite"
    residual.write_bytes(conv_bn(0))
    doc = _without_tensorflow(f"""
        import json
        runner = CliRunner()
        out = {{}}
        for name, args in {{
            "inspect": ["inspect", {str(model)!r}, "--json"],
            "profile": ["profile", {str(model)!r}, "--min-time", "0.05", "--json"],
            "bench": ["bench", {str(model)!r}, "--min-time", "0.05", "--json"],
            "check": ["check", {str(build / "report.json")!r}, "--baseline",
                      {str(build / "report.json")!r}, "--bench-time", "0.05", "--json"],
            "bundle": ["bundle", {str(build)!r}, "--out", {str(tmp_path / "b")!r}, "--json"],
            "fold": ["fold", {str(residual)!r}, "--out", {str(tmp_path / "f.tflite")!r}, "--json"],
        }}.items():
            res = runner.invoke(app, args)
            out[name] = [res.exit_code, res.stderr[-300:]]
        out["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
                               and sys.modules[m] is not None)
        print(json.dumps(out))
    """)
    assert doc.pop("loaded") == []
    for name, (code, err) in doc.items():
        assert code == 0, (name, code, err)
    assert (tmp_path / "b" / "manifest.json").is_file() and (tmp_path / "f.tflite").is_file()


def test_every_commands_help_works_with_tensorflow_unimportable():
    doc = _without_tensorflow("""
        import json
        runner = CliRunner()
        names = [c.name or c.callback.__name__ for c in app.registered_commands]
        print(json.dumps({n: runner.invoke(app, [n, "--help"]).exit_code for n in names}))
    """)
    assert len(doc) >= 10 and all(code == 0 for code in doc.values()), doc


def test_the_blocking_works():
    """The same harness, asked for TensorFlow, must fail: the tests above could not be fooled."""
    code = BLOCKED + "import tensorflow\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode != 0 and "import of tensorflow halted" in done.stderr
