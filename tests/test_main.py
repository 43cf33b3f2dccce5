"""``python -m edgebn`` (edgebn.__main__): the command line of the ``edgebn`` script, run on
``sys.argv`` when the module is imported; in a fresh interpreter its help, its version and its
one-line errors with their exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgebn import __version__


def _python_m_edgebn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-m", "edgebn", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_importing_the_module_runs_the_command_line_on_sys_argv(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["edgebn", "--version"])
    monkeypatch.delitem(sys.modules, "edgebn.__main__", raising=False)
    with pytest.raises(SystemExit) as stopped:
        import edgebn.__main__  # noqa: F401 - the import is the call
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"edgebn {__version__}\n"


def test_help_exits_0_with_the_usage_line_and_the_commands():
    proc = _python_m_edgebn("--help")
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip(" │") for line in proc.stdout.splitlines()]
    assert "Usage: python -m edgebn [OPTIONS] COMMAND [ARGS]..." in lines
    commands = {line.split()[0] for line in lines if line[:1].isalpha() and " " in line}
    assert {"inspect", "train", "convert", "fold", "build", "bench", "deploy"} <= commands


def test_version_prints_the_package_version():
    proc = _python_m_edgebn("--version")
    assert (proc.returncode, proc.stdout) == (0, f"edgebn {__version__}\n")


def test_a_missing_model_is_one_error_line_and_exit_2(tmp_path):
    proc = _python_m_edgebn("inspect", str(tmp_path / "missing.tflite"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "missing.tflite" in lines[0]
    assert proc.stdout == ""
