"""The measuring scripts under tools/ still find what they import after code moves: every name
they import from edgebn, from the tests' helpers and from test modules exists. (A figure
script that fails on an import is found here, not when someone re-measures a page.)"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = sorted((ROOT / "tools").glob("*.py"))
EXTRA = re.compile(r'parent\.parent / "tests" / "([\w/]+)"')


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of each absolute ``from M import a, b`` and ``import M`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def missing_imports(path: Path) -> list[str]:
    """What ``path`` imports that is not there, with the tests' folders it adds to sys.path."""
    folders = [ROOT / "tools", ROOT / "tests"]
    folders += [ROOT / "tests" / d for d in EXTRA.findall(path.read_text(encoding="utf-8"))]
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in folders]
    missing = []
    try:
        for module, names in _imports(path):
            top = module.split(".")[0]
            if top == "cog" or (top != "edgebn" and importlib.util.find_spec(top) is not None
                                and not any((f / f"{top}.py").exists() for f in folders)):
                continue  # a third-party package (cog's own, inside a cog block)
            try:
                loaded = importlib.import_module(module)
            except ImportError as exc:
                missing.append(f"{module} ({exc})")
                continue
            missing += [f"{module}.{n}" for n in names if not hasattr(loaded, n) and not (
                hasattr(loaded, "__path__") and importlib.util.find_spec(f"{module}.{n}"))]
    finally:
        sys.path[:] = saved
    return missing


def test_a_script_with_a_moved_name_is_found(tmp_path):
    script = tmp_path / "figure.py"
    script.write_text("from edgebn.runtime.timing import latency_ratio\nimport os\n"
                      "from edgebn.runtime.ratio import latency_ratio as ok\n"
                      "from test_litert_torch import randomise_bn\n")
    assert missing_imports(script) == ["edgebn.runtime.timing.latency_ratio",
                                       "test_litert_torch (No module named 'test_litert_torch')"]


@pytest.mark.parametrize("tool", TOOLS, ids=lambda p: p.name)
def test_every_tool_finds_what_it_imports(tool):
    assert missing_imports(tool) == []
