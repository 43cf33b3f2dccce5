"""The error boundary: the library names the parameter, the CLI spells its flag (issue 31)."""

import ast
import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.cli.options import error_line
from edgebn.errors import DatasetError, EdgebnError, path_text, reason

PACKAGE = Path(__file__).resolve().parent.parent / "edgebn"
FLAG = re.compile(r"(?<![\w-])--[a-z]")
runner = CliRunner()


def _library_modules() -> list[Path]:
    """Every module below the CLI that runs on this machine (the device's files print their own
    usage, as programs of their own)."""
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not {"cli", "device", "ansible_collections"} & set(p.relative_to(PACKAGE).parts)]


def _error_classes(trees: list[ast.Module]) -> set[str]:
    """EdgebnError and every class derived from it, anywhere in ``trees``."""
    found, grew = {"EdgebnError"}, True
    while grew:
        grew = False
        for tree in trees:
            for node in ast.walk(tree):
                bases = {getattr(b, "id", getattr(b, "attr", None)) for b in
                         getattr(node, "bases", ())}
                if isinstance(node, ast.ClassDef) and node.name not in found and bases & found:
                    found.add(node.name)
                    grew = True
    return found


def flag_spelling_errors(sources: dict[str, str]) -> list[str]:
    """``path:line: message`` of each error made with a message that spells a flag (``--out``)."""
    trees = {path: ast.parse(text) for path, text in sources.items()}
    classes = _error_classes(list(trees.values()))
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            func = getattr(node, "func", None)
            name = getattr(func, "id", getattr(func, "attr", None))
            if isinstance(node, ast.Call) and name in classes and node.args:
                text = "".join(n.value for n in ast.walk(node.args[0])
                               if isinstance(n, ast.Constant) and isinstance(n.value, str))
                if FLAG.search(text):
                    found.append(f"{path}:{node.lineno}: {text}")
    return found


def test_no_library_error_spells_a_flag():
    sources = {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8")
               for p in _library_modules()}
    assert len(sources) > 60
    assert flag_spelling_errors(sources) == []


def test_the_flag_check_sees_a_flag_in_an_error_of_any_kind():
    sources = {"a.py": 'class DatasetError(EdgebnError):\n    pass\n'
                       'class Refused(DatasetError):\n    pass\n',
               "b.py": 'raise Refused(f"--hosts {path}: no hosts in it")\n'
                       'raise EdgebnError("no hosts in it", option="hosts")\n'
                       'err = EdgebnError("give " "--data-dir" " or an npz")\n'}
    assert flag_spelling_errors(sources) == ["b.py:1: --hosts : no hosts in it",
                                             "b.py:3: give --data-dir or an npz"]


def test_the_cli_puts_the_commands_own_flag_before_the_message():
    build = get_command(app).flags(["build", "--out", "b"])
    assert (build["npz"], build["scale"], build["data_dir"], build["model"]) == (
        "--data", "--input-scale", "--data-dir", "--model")
    err = EdgebnError("a .tflite build needs labelled data", option="npz")
    assert error_line(err, build) == "--data: a .tflite build needs labelled data"
    assert error_line(err) == "--npz: a .tflite build needs labelled data"  # no command to ask
    no_bn = EdgebnError("no BN-free baseline", option="bn")
    assert error_line(no_bn) == "--no-bn: no BN-free baseline"
    assert error_line(DatasetError("x.npz: no such file")) == "x.npz: no such file"


def test_a_library_error_reaches_the_terminal_with_its_flag(tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text("# nobody\n")
    bundle = tmp_path / "b"
    bundle.mkdir()
    r = runner.invoke(app, ["deploy", str(bundle), "--hosts", str(hosts)])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"Error: --hosts: {hosts}: no hosts in it"


def test_path_text_and_reason_are_one_printable_line():
    assert path_text(b"caf\xe9.png") == repr(b"caf\xe9.png")
    assert path_text("a\nb.npz") == repr(b"a\nb.npz")
    assert path_text("plain.npz") == "plain.npz"
    assert reason(ValueError("two\n  lines")) == "two lines"
    assert reason(KeyError()) == "KeyError"
    assert reason(ValueError("\udcff")) == "\\udcff"


@pytest.mark.parametrize("cls", [EdgebnError, DatasetError])
def test_an_error_keeps_its_option(cls):
    err = cls("must be >= 1. Received: 0", option="parallel")
    assert err.option == "parallel" and str(err) == "must be >= 1. Received: 0"
