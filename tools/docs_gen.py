"""What the documentation's cog blocks print: parts of pages generated from the code itself.

Each page that holds a generated part has the Python that makes it inside the page,

    <!-- [[[cog
    import docs_gen
    docs_gen.cli_reference()
    ]]] -->
    ...what it printed...
    <!-- [[[end]]] -->

and ``cog -r -I tools FILE`` rewrites what it printed; ``cog --check -I tools FILE`` (in
.ci/run and tests/test_docs.py) fails when a page no longer matches the code. Run from the
repository's top directory. Constants and dataclass defaults are read from the source with
``ast`` (nothing imported), so a page shows the values the code holds, with the code's own
comment beside each.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HELP_WIDTH = 100  # columns of the --help text in the reference


def out(text: str = "") -> None:
    """Write into the page (cog's output inside a cog run, stdout outside one)."""
    try:
        import cog

        cog.outl(text)
    except (ImportError, AttributeError):  # outside cog: print, for a look at what a block makes
        print(text)


# ---------------------------------------------------------------- the CLI


def commands() -> dict[str, Any]:
    """Every registered command of ``edgebn``, by name, as Click sees it."""
    from typer.main import get_command

    from edgebn.cli.app import app

    return dict(get_command(app).commands)


def help_text(args: list[str]) -> str:
    """``edgebn ARGS --help`` as a terminal HELP_WIDTH columns wide shows it, without colour."""
    import typer.rich_utils as rich_utils
    from typer.testing import CliRunner

    from edgebn.cli.app import app

    (rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL,
     rich_utils.COLOR_SYSTEM) = HELP_WIDTH, False, None
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="edgebn")
    if result.exit_code != 0:
        raise RuntimeError(f"edgebn {' '.join(args)} --help exited {result.exit_code}: "
                           f"{result.output}")
    return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())


def cli_reference() -> None:
    """``edgebn --help``, then every command's ``--help``, each under its own heading."""
    out("## `edgebn`\n")
    out("```text\n" + help_text([]) + "\n```\n")
    for name, command in commands().items():
        summary = (command.help or "").strip().splitlines()[0]
        out(f"## `edgebn {name}`\n\n{summary}\n")
        out("```text\n" + help_text([name]) + "\n```\n")


def commands_table(reference: str = "docs/reference/cli.md") -> None:
    """One row per command: its name, linked to its part of the CLI reference, and the first
    paragraph of its help."""
    out("| command | what it does |")
    out("| --- | --- |")
    for name, command in commands().items():
        summary = " ".join((command.help or "").strip().split("\n\n")[0].split())
        out(f"| [`edgebn {name}`]({reference}#edgebn-{name}) | {_cell(summary)} |")


# ---------------------------------------------------------------- the source, read


def _source(path: str) -> tuple[ast.Module, list[str]]:
    text = (ROOT / path).read_text(encoding="utf-8")
    return ast.parse(text), text.splitlines()


def _trailing(lines: list[str], node: ast.stmt) -> str | None:
    line = lines[node.end_lineno - 1]
    return line.split("#", 1)[1].strip() if "  # " in line else None


def _comments(body: list[ast.stmt], lines: list[str]) -> dict[int, str]:
    """Each statement's comment: the one at the end of its line, and the comment lines under it;
    a statement without one takes the comment lines above it. Where a commented statement is
    followed by comment lines and then one without a comment, those lines split at the last one
    that starts a sentence (a capital letter): before it they go on the first one's, from it on
    they belong to the second."""
    found: dict[int, list[str]] = {}
    for i, node in enumerate(body):
        following = []
        for line in lines[node.end_lineno:]:
            if not line.strip().startswith("#"):
                break
            following.append(line.strip()[1:].strip())
        nxt = body[i + 1] if i + 1 < len(body) else None
        mine = following
        if nxt is not None and following and _trailing(lines, nxt) is None:
            starts = [k for k, text in enumerate(following) if text[:1].isupper()]
            cut = starts[-1] if starts else 0
            mine, theirs = following[:cut], following[cut:]
            found.setdefault(id(nxt), []).extend(theirs)
        trailing = _trailing(lines, node)
        if trailing is not None:
            found[id(node)] = [trailing, *mine]
        elif id(node) not in found:
            found[id(node)] = []
    return {k: " ".join(v) for k, v in found.items()}


def _value(node: ast.AST, lines: list[str]) -> str:
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return ast.get_source_segment("\n".join(lines), node) or "?"


def constants(path: str, names: Iterable[str]) -> list[tuple[str, str, str]]:
    """Module-level ``NAME = value  # comment`` of ``path``: (name, value, comment)."""
    tree, lines = _source(path)
    comments = _comments(tree.body, lines)
    found = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and node.value is not None:
            found[target.id] = (target.id, _value(node.value, lines), comments[id(node)])
    missing = [n for n in names if n not in found]
    if missing:
        raise KeyError(f"{path} defines no {missing}")
    return [found[n] for n in names]


def fields(path: str, cls: str) -> list[tuple[str, str, str]]:
    """A dataclass's (or enum's) fields in ``path``: (name, default or '', comment)."""
    tree, lines = _source(path)
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls), None)
    if node is None:
        raise KeyError(f"{path} defines no class {cls}")
    rows = []
    comments = _comments(node.body, lines)
    for item in node.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            default = "" if item.value is None else _value(item.value, lines)
            rows.append((item.target.id, default, comments[id(item)]))
        elif isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
            rows.append((item.targets[0].id, _value(item.value, lines), comments[id(item)]))
    return rows


def constant_text(path: str, name: str, language: str = "text") -> None:
    """A string constant of ``path``, as it is, in a code block."""
    tree, _ = _source(path)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            out(f"```{language}\n{ast.literal_eval(node.value).rstrip()}\n```")
            out(f"\n<sub>`{name}` in `{path}`.</sub>")
            return
    raise KeyError(f"{path} defines no {name}")


def script_help(path: str) -> None:
    """``python PATH --help`` (a standalone script, such as the bundle's predict.py), in a code
    block."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, COLUMNS=str(HELP_WIDTH))
    done = subprocess.run([sys.executable, str(ROOT / path), "--help"], capture_output=True,
                          text=True, env=env, check=True)
    text = "\n".join(line.rstrip() for line in done.stdout.strip("\n").splitlines())
    out(f"```text\n{text.replace('usage: ' + Path(path).name, 'usage: predict.py')}\n```")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> None:
    out("| " + " | ".join(header) + " |")
    out("| " + " | ".join("---" for _ in header) + " |")
    for row in rows:
        out("| " + " | ".join(_cell(str(c)) for c in row) + " |")


def constants_table(path: str, names: Iterable[str]) -> None:
    """The constants ``names`` of ``path`` with their values and comments, and where they live."""
    table(("constant", "value", "what the code says of it"),
          ((f"`{n}`", f"`{v}`", c) for n, v, c in constants(path, names)))
    out(f"\n<sub>From `{path}`.</sub>")


def fields_table(path: str, cls: str,
                 header: tuple[str, str, str] = ("field", "default", "meaning"),
                 skip: Iterable[str] = ()) -> None:
    rows = [(f"`{n}`", f"`{d}`" if d else "", c) for n, d, c in fields(path, cls) if n not in skip]
    table(header, rows)
    out(f"\n<sub>From `{cls}` in `{path}`.</sub>")


def check_metrics() -> list[str]:
    """The metrics ``edgebn check`` reports, in order: the first argument of each
    ``Metric(...)``."""
    tree, _ = _source("edgebn/pipeline/check.py")
    return [n.args[0].value for n in ast.walk(tree)
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Metric"
            and n.args and isinstance(n.args[0], ast.Constant)]


# ---------------------------------------------------------------- choices and examples


def quantize_table() -> None:
    """Per quantize mode: what verify holds the .tflite to, and the device self-test's tolerance."""
    from edgebn.choices import QUANTIZE_MODES

    table(("`--quantize`", "what it makes", "verify: top-1 agreement at least",
           "verify: max |Δp| at most",
           "bundle self-test: max |Δ| of the outputs", "keeps the float32 file beside it"),
          ((f"`{q.name}`", q.help, f"`{q.min_agreement:g}`", f"`{q.max_prob_diff:g}`",
            f"`{q.selftest_atol:g}` " + q.selftest_units.format(dtype="int8"),
            "yes" if q.float32_beside else "no") for q in QUANTIZE_MODES))
    out("\n<sub>From `QUANTIZE_MODES` in `edgebn/choices.py`.</sub>")


def zoo_table() -> None:
    """The archs ``--arch`` takes: the small zoo (with a BN-free baseline) and the backbones."""
    from edgebn.zoo.models import ARCHS

    def sizes(spec: Any) -> str:
        b = spec.backbone
        return "" if b is None else f"`{b.image_size}` (`{b.min_size}` to `{b.max_size}`)"

    table(("`--arch`", "layers", "BN-free baseline", "image side: default (range)", "`--alpha`"),
          ((f"`{a.name}`", a.summary, "yes" if a.twin else "no", sizes(a),
            "yes" if a.backbone is not None and a.backbone.alpha else "") for a in ARCHS))
    out("\n<sub>From `ARCHS` in `edgebn/zoo/models.py`.</sub>")


def _shorten(doc: Any, keep: int = 2) -> Any:
    """Lists beyond ``keep`` items cut, with a note of how many were left out."""
    if isinstance(doc, dict):
        return {k: _shorten(v, keep) for k, v in doc.items()}
    if isinstance(doc, list):
        head = [_shorten(v, keep) for v in doc[:keep]]
        return head + ([f"... {len(doc) - keep} more"] if len(doc) > keep else [])
    return doc


def inspect_example(path: str = "models/digits-cnn/model.tflite") -> None:
    """``edgebn inspect PATH --json`` on the committed reference model, lists shortened."""
    from edgebn.tflite.residue import inspect_tflite

    doc = inspect_tflite(ROOT / path).to_json()
    doc["path"] = path
    out("```json\n" + json.dumps(_shorten(doc), indent=2, ensure_ascii=False) + "\n```")


def junit_example() -> None:
    """``check --junit``'s document for a check whose latency failed, values as placeholders."""
    from edgebn.pipeline.check import CheckResult, Metric
    from edgebn.pipeline.ci_formats import junit_xml, markdown_summary

    metrics = tuple(Metric(name, "BASELINE", "CURRENT", "LIMIT", name != "latency_p50_ratio")
                    for name in check_metrics())
    result = CheckResult("build/report.json", "models/digits-cnn/report.json", metrics)
    out("```xml\n" + junit_xml(result).strip() + "\n```\n")
    out("The step summary of the same check, as GitHub renders it:\n")
    out(markdown_summary(result).strip())


# ---------------------------------------------------------------- the layout


def _first_line(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def layout(package: str = "edgebn") -> None:
    """The package as it is on disk: each folder, each module and the first sentence it says
    of itself (its docstring's first paragraph)."""
    base = ROOT / package
    packages = (p for p in base.rglob("*") if p.is_dir() and (p / "__init__.py").exists())
    for folder in sorted([base, *packages]):
        if "ansible_collections" in folder.parts:
            continue
        rel = folder.relative_to(ROOT).as_posix()
        init = folder / "__init__.py"
        out(f"### `{rel}/`\n\n{_first_line(init) if init.exists() else ''}\n")
        for module in sorted(folder.glob("*.py")):
            if module.name != "__init__.py":
                out(f"- `{module.name}`: {_first_line(module)}")
        extra = sorted(p.name for p in folder.iterdir()
                       if p.is_dir() and not (p / "__init__.py").exists()
                       and p.name != "__pycache__")
        for name in extra:
            files = sorted(f.name for f in (folder / name).rglob("*") if f.is_file()
                           and "__pycache__" not in f.parts)
            out(f"- `{name}/` (data shipped in the wheel): {', '.join(f'`{f}`' for f in files[:8])}"
                + (f" and {len(files) - 8} more" if len(files) > 8 else ""))
        out()



def tools_list() -> None:
    """Every script under tools/ and the first thing it says of itself."""
    for path in sorted((ROOT / "tools").iterdir()):
        if path.is_file() and not path.name.startswith("."):
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".py":
                first = _first_line(path)
            else:  # a shell script: its first comment after the shebang
                comments = [ln[1:].strip() for ln in text.splitlines()[1:] if ln.startswith("#")]
                first = comments[0] if comments else ""
            out(f"- `{path.name}`: {first}")
