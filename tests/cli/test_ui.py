"""What the user sees (edgebn.cli.ui): foreign lines on file descriptors 1 and 2 kept in a log
that is deleted on success and named on failure, the stage lines and epoch bar, and a result
shown as its JSON document or its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from dataclasses import dataclass

from rich.console import Console

from edgebn.cli import ui

# a command in a fresh interpreter whose fds 1 and 2 are pipes: noise from C++ (fd 2) and
# Python (print), edgebn's own line, then an ending
_COMMAND = textwrap.dedent("""
    import os, sys
    from edgebn.cli.ui import out, quiet
    from edgebn.errors import EdgebnError
    with quiet():
        os.write(2, b"I0000 cudart_stub.cc: noise on fd 2\\n")
        print("noise on sys.stdout")
        out.print("edgebn's result")
        ending = sys.argv[1]
        if ending == "crash":
            raise RuntimeError("boom")
        if ending == "bad-input":
            raise EdgebnError("bad input")
        if ending == "interrupt":
            raise KeyboardInterrupt
""")


def _run(ending: str, tmp_path) -> tuple[subprocess.CompletedProcess, list]:
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "300"}  # the log's path on one line
    proc = subprocess.run([sys.executable, "-c", _COMMAND, ending], capture_output=True,
                          text=True, env=env, timeout=60)
    return proc, sorted(tmp_path.glob("edgebn-*.log"))


def test_quiet_keeps_foreign_lines_off_the_terminal_and_deletes_the_log(tmp_path):
    proc, logs = _run("ok", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "edgebn's result\n"
    assert proc.stderr == ""
    assert logs == []


def test_a_failed_command_names_its_log_which_holds_the_foreign_lines(tmp_path):
    proc, logs = _run("crash", tmp_path)
    assert proc.returncode == 1 and proc.stdout == "edgebn's result\n"
    (log,) = logs
    assert f"(TensorFlow's own log of this run: {log})" in proc.stderr
    assert "noise" not in proc.stderr.split("Traceback")[0]
    assert log.read_text().splitlines() == ["I0000 cudart_stub.cc: noise on fd 2",
                                            "noise on sys.stdout"]


def test_bad_input_and_ctrl_c_delete_the_log_and_ctrl_c_says_interrupted(tmp_path):
    proc, logs = _run("bad-input", tmp_path)
    assert proc.returncode == 1 and "EdgebnError: bad input" in proc.stderr
    assert "own log" not in proc.stderr and logs == []
    proc, logs = _run("interrupt", tmp_path)
    assert proc.stderr.splitlines()[0] == "interrupted" and logs == []


def test_quiet_without_real_fds_silences_python_warnings_and_verbose_does_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ui.quiet():  # pytest's capture: sys.stdout is not fd 1
            warnings.warn("hidden", UserWarning, stacklevel=1)
        with ui.quiet(verbose=True):
            warnings.warn("shown", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown"]


def test_stage_lines_off_a_terminal_are_plain_and_epochs_draw_nothing():
    console = Console(record=True, width=100, force_terminal=False)
    with ui.StageProgress(console) as progress:
        assert progress.live is False
        progress.start("train", "cnn, 4 epochs")
        progress.epoch(1, 4, {"loss": 0.5, "accuracy": 0.75})
        progress.note("early stop at epoch 3")
        progress.done("train", 12.34)
        progress.start("convert", "float32")
        progress.done("convert", 0.5)
    assert console.export_text().splitlines() == [
        "  early stop at epoch 3",
        "✓ train      12.3 s  cnn, 4 epochs",
        "✓ convert     0.5 s  float32",
    ]


def test_on_a_terminal_the_epoch_bar_shows_the_known_metrics_and_goes_with_its_stage():
    console = Console(record=True, width=100, force_terminal=True)
    with ui.StageProgress(console) as progress:
        assert progress.live is True
        progress.start("train", "cnn")
        progress.epoch(2, 5, {"loss": 0.25, "accuracy": 0.875, "lr": 0.001})
        epochs = progress.bar.tasks[-1]
        assert (epochs.description, epochs.total, epochs.completed) == ("  epoch", 5, 2)
        assert epochs.fields["info"] == "2/5  loss 0.2500  accuracy 0.8750"
        progress.done("train", 3.0)
        assert progress.bar.tasks == [] and progress.epochs is None and progress.task is None


@dataclass
class _Result:
    value: int

    def to_json(self) -> dict:
        return {"value": self.value, "unit": "ms"}


def test_show_prints_the_json_document_or_calls_the_table(capsys):
    tables = []
    ui.show(_Result(3), True, tables.append)
    assert json.loads(capsys.readouterr().out) == {"value": 3, "unit": "ms"}
    assert tables == []
    ui.show(_Result(4), False, tables.append)
    assert tables == [_Result(4)] and capsys.readouterr().out == ""


def test_print_json_is_plain_indented_json_on_stdout(capsys):
    ui.print_json({"a": [1, 2], "b": "[red]not markup[/]"})
    assert capsys.readouterr().out == ('{\n  "a": [\n    1,\n    2\n  ],\n'
                                       '  "b": "[red]not markup[/]"\n}\n')
