"""The documentation against the code: the README and the site (docs/, mkdocs.yml).

- the CLI reference names every command and every option of the Typer app;
- every generated part of a page matches the code (``cog --check``), and the site builds with
  ``mkdocs build --strict``;
- no table of numbers outside a generated block; every measured figure block is stamped with a
  commit of this repository, or says which command fills it (``tools/figure_block.py``);
- every module path the pages name exists, and the layout page lists the tree;
- the JSON reference names every key the documents write;
- the README stays short, keeps the Quickstart's two commands and links only to what exists;
- the guides' blocks marked ``<!-- runnable -->`` run as written, in an empty directory (most
  train a model: marker ``slow``).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import figure_block  # noqa: E402  (tools/ is not a package)

DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
CLI_PAGE = DOCS / "reference" / "cli.md"
JSON_PAGE = DOCS / "reference" / "json.md"
COG_START, COG_OUT, COG_END = "<!-- [[[cog", "]]] -->", "<!-- [[[end]]] -->"
FENCE = re.compile(r"^(\s*)(```+|~~~+)")


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# ---------------------------------------------------------------- what a page says, where


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of what a person wrote: outside fenced code, cog's code and output,
    and figure blocks."""
    kept, fence, skip = [], None, None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
            continue
        if skip is not None:
            if stripped == skip:
                skip = None
            continue
        if stripped.startswith(COG_START):
            skip = COG_END
            continue
        m = figure_block.START.match(stripped)
        if m:
            skip = figure_block.END.format(name=m.group(1))
            continue
        fm = FENCE.match(line)
        if fm:
            fence = fm.group(2)
            continue
        kept.append((number, line))
    return kept


INLINE_CODE = re.compile(r"(`+)(.+?)\1")
NUMBER = re.compile(r"(?<![\w.\-/])[-+−]?\d+(?:[.,]\d+)*(?:e[-+]?\d+)?(?![\w])")


def numeric_cells(row: str) -> list[str]:
    """The cells of a Markdown table row that hold a number outside inline code. Numbers in
    code (`--batches 1,10%`, exit `0`, `int8`) are names and literals, not figures."""
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
    return [c for c in cells if NUMBER.search(INLINE_CODE.sub("", c))]


def test_the_number_rule_itself():
    assert numeric_cells("| TFLite p50 | 61.4 µs |") == ["61.4 µs"]
    assert numeric_cells("| speedup | 19.2x |") == ["19.2x"]
    assert numeric_cells("| params | 43,786 |") == ["43,786"]
    assert numeric_cells("| exit | `0` |") == []
    assert numeric_cells("| `int8` | float32 weights, p50 of CONV_2D |") == []
    assert numeric_cells("| `--batches 1,10%,100%` | a canary |") == []


def numeric_tables(page: Path) -> list[str]:
    found = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        if line.lstrip().startswith("|") and not re.fullmatch(r"\s*\|[\s:|-]+\|?\s*", line):
            cells = numeric_cells(line)
            if cells:
                found.append(f"{rel(page)}:{number}: {cells}")
    return found


def test_no_table_of_numbers_outside_a_generated_block():
    """Every figure comes from a script (a figure block) or from the code (a cog block)."""
    found = [hit for page in PAGES for hit in numeric_tables(page)]
    assert not found, "numbers typed into a table; measure them with a tools/ script instead:\n" + \
        "\n".join(found)


def test_user_words():
    """'BN-free baseline', never 'twin', in what a person wrote (field names in code stay)."""
    found = []
    for page in PAGES:
        for number, line in prose_lines(page.read_text(encoding="utf-8")):
            text = INLINE_CODE.sub("", line)
            if re.search(r"\btwins?\b|seed's ledger", text, re.I):
                found.append(f"{rel(page)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


# ---------------------------------------------------------------- the CLI reference


def cli_sections() -> dict[str, str]:
    text = CLI_PAGE.read_text(encoding="utf-8")
    parts = re.split(r"^## `(edgebn(?: [a-z-]+)?)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def test_the_cli_reference_names_every_command_and_option():
    from typer.main import get_command

    from edgebn.cli.app import app

    group = get_command(app)
    sections = cli_sections()
    missing = [f"edgebn {name}" for name in group.commands if f"edgebn {name}" not in sections]
    for opt in (o for p in group.params for o in p.opts + p.secondary_opts):
        if opt not in sections.get("edgebn", ""):
            missing.append(f"edgebn {opt}")
    for name, command in group.commands.items():
        text = sections.get(f"edgebn {name}", "")
        for param in command.params:
            names = param.opts + param.secondary_opts if param.param_type_name == "option" else \
                [param.name]
            missing += [f"edgebn {name} {n}" for n in names if not re.search(
                rf"(?<![\w-]){re.escape(n)}(?![\w-])", text, re.I)]
    assert not missing, (f"not in {rel(CLI_PAGE)} (regenerate: cog -r -I tools {rel(CLI_PAGE)}): "
                         f"{missing}")


# ---------------------------------------------------------------- generated parts, the site


def cogged() -> list[str]:
    return [rel(p) for p in PAGES if COG_START in p.read_text(encoding="utf-8")]


@pytest.mark.skipif(not has_module("cogapp"),
                    reason="cogapp is not installed (pip install '.[docs]')")
def test_generated_parts_match_the_code():
    done = subprocess.run([sys.executable, "-m", "cogapp", "--check", "-I", "tools", *cogged()],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\nregenerate: cog -r -I tools " + \
        " ".join(cogged())


@pytest.mark.skipif(not has_module("mkdocs") or not has_module("mkdocstrings"),
                    reason="mkdocs is not installed (pip install '.[docs]')")
def test_the_site_builds_strict(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_every_page_is_in_the_navigation():
    yaml = pytest.importorskip("yaml")

    def listed(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        if isinstance(node, dict):
            return [p for v in node.values() for p in listed(v)]
        return [p for v in node for p in listed(v)]

    class Loader(yaml.SafeLoader):  # mkdocs.yml may hold !!python tags elsewhere: none are read
        pass

    nav = listed(yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader)["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages


# ---------------------------------------------------------------- measured figures


def test_figure_blocks_are_stamped_or_say_what_fills_them():
    """A block holds a figure and a stamp that names a commit of this repository, or only the
    line that says which command fills it; a block lives in one place."""
    blocks = figure_block.blocks()
    assert blocks, "no figure block found"
    names = [b.name for b in blocks]
    assert len(names) == len(set(names)), f"a figure in two places: {sorted(names)}"
    problems = []
    for b in blocks:
        where = f"{b.page} {b.name}"
        if b.waiting:
            command = b.waiting["command"]
            script = ROOT / command.split()[1]
            if not script.exists():
                problems.append(f"{where}: {command}: no such script")
                continue
            text = script.read_text(encoding="utf-8")
            block = re.search(r"--block (\S+)", command)
            writes = block.group(1) if block else \
                (re.findall(r'add_write_option\(\w+, "([a-z0-9-]+)"\)', text) or [None])[0]
            if writes != b.name:
                problems.append(f"{where}: {command} writes block {writes!r}")
            if f"--write {b.page}" not in command:
                problems.append(f"{where}: {command} does not write {b.page}")
            continue
        stamp = b.stamp
        if stamp is None:
            problems.append(f"{where}: neither a stamp nor 'Not measured yet: `COMMAND` fills "
                            "this block.'")
            continue
        known = subprocess.run(["git", "cat-file", "-e", f"{stamp['commit']}^{{commit}}"], cwd=ROOT,
                               capture_output=True)
        if known.returncode != 0:
            problems.append(f"{where}: stamped with {stamp['commit']}, "
                            "not a commit of this repository")
        if not b.content.replace(stamp.group(0), "").strip():
            problems.append(f"{where}: a stamp and no figure")
    assert not problems, "\n".join(problems)


def test_the_figure_helper_writes_a_stamped_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- figure: demo -->\nold\n<!-- /figure: demo -->\nafter\n")
    figure_block.write_block(page, "demo", "| a | b |\n| --- | --- |\n| x | 1.5 |\n",
                             command="python tools/demo.py --write page.md")
    text = page.read_text()
    assert text.startswith("before\n<!-- figure: demo -->\n| a | b |") and text.endswith(
        "<!-- /figure: demo -->\nafter\n")
    stamp = figure_block.STAMP.search(text)
    assert stamp and stamp["command"] == "python tools/demo.py --write page.md"
    known = subprocess.run(["git", "cat-file", "-e", f"{stamp['commit']}^{{commit}}"], cwd=ROOT)
    assert known.returncode == 0
    with pytest.raises(SystemExit, match="expected one"):
        figure_block.write_block(page, "other", "x")
    assert figure_block.tables_apart("CPU: x\n| a |\n| --- |") == "CPU: x\n\n| a |\n| --- |"


def test_every_figure_is_measured():
    """No block waits for its script (`python tools/figure_block.py --waiting` lists the
    commands of those that do; `.ci/run` runs `figure_block.py --check` too)."""
    waiting = [f"{b.page} {b.name}: {b.waiting['command']}"
               for b in figure_block.blocks() if b.waiting]
    assert not waiting, "not measured yet:\n" + "\n".join(waiting)


# ---------------------------------------------------------------- module paths and the layout

NOT_MODULES = {
    "edgebn.fleet", "edgebn.fleet.release", "edgebn.fleet.rows",  # the Ansible collection's names
    "edgebn.check",  # the JUnit test cases' class name
}


def _defines(node: ast.AST, name: str) -> ast.AST | None:
    for item in getattr(node, "body", []):
        if (isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and item.name == name):
            return item
        targets = item.targets if isinstance(item, ast.Assign) else \
            [item.target] if isinstance(item, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return item
        if isinstance(item, (ast.ImportFrom, ast.Import)) and any(
                (a.asname or a.name.split(".")[-1]) == name for a in item.names):
            return item
    return None


def resolves(dotted: str) -> bool:
    """``edgebn.a.b`` is a module or package, or names what a module (or its class) defines."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.is_file():
            node: ast.AST | None = ast.parse(source.read_text(encoding="utf-8"))
            for attr in parts[cut:]:
                node = _defines(node, attr) if node is not None else None
            return node is not None
    return False


def named_modules(page: Path) -> list[tuple[str, str]]:
    text = page.read_text(encoding="utf-8")
    paths = re.findall(r"(?<![\w/.~-])(edgebn/[\w/.-]*?\.(?:py|sh))\b", text)
    dotted = re.findall(r"(?<![\w/.~-])(edgebn(?:\.[A-Za-z_]\w*)+)", text)
    return [("path", p) for p in paths] + [("module", d) for d in dotted]


def test_every_module_path_the_pages_name_exists():
    missing = []
    for page in PAGES:
        for kind, name in named_modules(page):
            ok = ((ROOT / name).is_file() if kind == "path"
                  else (name in NOT_MODULES or resolves(name)))
            if not ok:
                missing.append(f"{rel(page)}: {name}")
    assert not missing, "\n".join(sorted(set(missing)))


def test_the_layout_page_lists_the_tree():
    text = (DOCS / "reference" / "layout.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `(.+?)/`\n(.*?)(?=^### |\Z)", text, re.M | re.S))
    missing = []
    for module in sorted((ROOT / "edgebn").rglob("*.py")):
        if "ansible_collections" in module.parts or module.name == "__init__.py":
            continue
        folder = module.parent.relative_to(ROOT).as_posix()
        if ((module.parent / "__init__.py").exists()
                and f"`{module.name}`" not in sections.get(folder, "")):
            missing.append(module.relative_to(ROOT).as_posix())
    assert not missing, ("not in the layout page (cog -r -I tools docs/reference/layout.md): "
                         f"{missing}")


# ---------------------------------------------------------------- the JSON reference

# The documents the reference describes: (file, class.method) of the code that writes them.
DOCUMENTS = [
    ("edgebn/tflite/residue.py", "InspectResult.to_json"),
    ("edgebn/tflite/residue.py", "BNAnalysis.to_json"),
    ("edgebn/tflite/residue.py", "ResidualBN.to_json"),
    ("edgebn/tflite/residue.py", "FoldedBN.to_json"),
    ("edgebn/bench/run.py", "BenchResult.to_json"),
    ("edgebn/runtime/timing.py", "TFLiteStats.to_json"),
    ("edgebn/runtime/timing.py", "CostStats.to_json"),
    ("edgebn/runtime/ratio.py", "RatioEstimate.to_json"),
    ("edgebn/runtime/ratio.py", "RatioEstimate.interval_json"),
    ("edgebn/pipeline/report.py", "BuildResult.to_json"),
    ("edgebn/pipeline/report.py", "BuildResult._baseline_json"),
    ("edgebn/pipeline/report.py", "BuildResult._model_json"),
    ("edgebn/pipeline/report.py", "BuildResult.route_json"),
    ("edgebn/pipeline/tflite_build.py", "TFLiteBuildResult.to_json"),
    ("edgebn/pipeline/tflite_build.py", "Agreement.to_json"),
    ("edgebn/pipeline/precisions.py", "Precision.to_json"),
    ("edgebn/runtime/accuracy.py", "VerifyCheck.to_json"),
    ("edgebn/fold/keras/keras_fold.py", "FoldResult.to_json"),
    ("edgebn/fold/keras/graph.py", "LayerFold.to_json"),
    ("edgebn/fold/keras/stats_check.py", "StatsCheck.to_json"),
    ("edgebn/fold/keras/stats_check.py", "RecalibratedFile.to_json"),
    ("edgebn/fold/keras/statistics.py", "DriftReport.to_json"),
    ("edgebn/fold/keras/statistics.py", "BNDrift.to_json"),
    ("edgebn/fold/keras/statistics.py", "Recalibration.to_json"),
    ("edgebn/train/training.py", "TrainedStatistics.to_json"),
    ("edgebn/train/ledger.py", "SeedLedger.to_json"),
    ("edgebn/train/ledger.py", "LedgerRow.to_json"),
    ("edgebn/train/ledger.py", "SweepLedger.to_json"),
    ("edgebn/fold/tflite/tflite_fold.py", "TFLiteFoldResult.to_json"),
    ("edgebn/fold/tflite/parameters.py", "ParameterCheck.to_json"),
    ("edgebn/fold/tflite/proof.py", "TensorDiff.to_json"),
    ("edgebn/fold/tflite/rewrite.py", "ChainFold.to_json"),
    ("edgebn/runtime/profile/result.py", "ProfileResult.to_json"),
    ("edgebn/runtime/profile/result.py", "OpTime.to_json"),
    ("edgebn/runtime/profile/result.py", "ResidueCost.to_json"),
    ("edgebn/runtime/profile/context.py", "Segment.to_json"),
    ("edgebn/runtime/profile/opdiff.py", "OpDiff.to_json"),
    ("edgebn/pipeline/check.py", "CheckResult.to_json"),
    ("edgebn/pipeline/check.py", "Metric.to_json"),
    ("edgebn/deploy/policy.py", "RolloutResult.to_json"),
    ("edgebn/deploy/rows.py", "HostRow.to_json"),
    ("edgebn/deploy/device/serve.py", "Service.health"),
]


def json_keys(path: str, qualname: str) -> list[str]:
    """The string keys of the dicts a method builds, and of the items it sets."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    cls, method = qualname.split(".")
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    fn = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method), None)
    fields = [n.target.id for n in node.body  # a to_json made from the dataclass: its fields
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    if fn is None:
        assert fields, f"{path}: {qualname} is neither written out nor a dataclass's"
        return fields
    keys = []
    for n in ast.walk(fn):
        if isinstance(n, ast.Dict):
            keys += [k.value for k in n.keys
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store) and \
                isinstance(n.slice, ast.Constant) and isinstance(n.slice.value, str):
            keys.append(n.slice.value)
    return keys


def test_the_json_reference_names_every_key():
    text = JSON_PAGE.read_text(encoding="utf-8")
    named = {word for _, code in INLINE_CODE.findall(text) for word in re.findall(r"\w+", code)}
    missing = sorted({f"{path} {qualname}: {key}" for path, qualname in DOCUMENTS
                      for key in json_keys(path, qualname) if key not in named})
    assert not missing, f"keys {rel(JSON_PAGE)} does not name:\n" + "\n".join(missing)


# ---------------------------------------------------------------- the README

QUICKSTART = ('pip install . && edgebn build', 'pip install ".[test]" && python -m pytest')


def test_the_readme_is_short_and_keeps_the_quickstart():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    for command in QUICKSTART:
        assert f"\n{command}\n" in text
    # the build table, and the device server's cost in two lines (issue 28 asks for it here)
    assert [b.name for b in figure_block.blocks() if b.page == Path("README.md")] == [
        "build", "serve-summary"]
    # no jargon: "twin" only as the build's file names (twin.tflite, twin.keras)
    assert "twin" not in re.sub(r"\btwin\.(tflite|keras)\b", "", INLINE_CODE.sub("", text))


def test_the_readme_links_to_what_exists():
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert targets and not missing, missing


# ---------------------------------------------------------------- runnable guide blocks

RUNNABLE = re.compile(r"^<!-- runnable(?:: ([\w ,-]+))? -->$")


def runnable_blocks(page: Path) -> list[tuple[str, str, str | None, set[str]]]:
    """(language, code, file name, markers) of each block after a ``<!-- runnable -->`` line."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        m = RUNNABLE.match(line.strip())
        if not m:
            continue
        start = next(j for j in range(i + 1, len(lines)) if lines[j].strip())
        head = re.match(r"^```(\w+)(?:\s+title=\"([^\"]+)\")?\s*$", lines[start])
        assert head, f"{rel(page)}:{start + 1}: a runnable marker not followed by a code block"
        end = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("```"))
        markers = {w.strip() for w in (m.group(1) or "").split(",") if w.strip()}
        found.append((head.group(1), "\n".join(lines[start + 1:end]) + "\n", head.group(2),
                      markers))
    return found


def _page_params():
    params = []
    for page in PAGES:
        blocks = runnable_blocks(page)
        if blocks:
            markers = set().union(*(b[3] for b in blocks))
            marks = [pytest.mark.slow] if "slow" in markers else []
            if "torch" in markers:
                marks.append(pytest.mark.skipif(not has_module("litert_torch"),
                                                reason="the torch extra is not installed"))
            params.append(pytest.param(page, marks=marks, id=rel(page)))
    return params


@pytest.mark.parametrize("page", _page_params())
def test_runnable_blocks_run_as_written(page, tmp_path):
    """Each page's runnable blocks, in order, in one empty directory (with the repository's
    committed models/ beside them, as in a clone): a Python block with a title is saved under
    that name, one without is run; shell blocks run with bash -e."""
    (tmp_path / "models").symlink_to(ROOT / "models")
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    # the blocks say python and edgebn: this interpreter's, as an activated venv would give
    bindir = os.path.dirname(sys.executable)
    env = dict(os.environ, PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2",
               PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    env.pop("GITHUB_STEP_SUMMARY", None)
    for number, (language, code, name, _) in enumerate(runnable_blocks(page), 1):
        if language == "python" and name:
            (tmp_path / name).write_text(code, encoding="utf-8")
            continue
        if language == "python":
            command = [sys.executable, "-c", code]
        elif language in ("sh", "bash"):
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            raise AssertionError(f"{rel(page)}: block {number}: cannot run {language}")
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, (f"{rel(page)}: runnable block {number} exited "
                                      f"{done.returncode}:\n{code}\n{done.stdout[-3000:]}\n"
                                      f"{done.stderr[-3000:]}")


def test_runnable_blocks_are_found():
    pages = {p.name for p in PAGES if runnable_blocks(p)}
    assert {"keras.md", "transfer-learning.md", "pytorch.md", "raspberry-pi.md", "fleets.md",
            "ci-gate.md"} <= pages
    assert shutil.which("bash")
