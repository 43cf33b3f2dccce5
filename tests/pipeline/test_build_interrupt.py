"""A build directory always describes one build (issue 22, item 5).

A build writes into a staging directory beside OUT and swaps it in whole when it is
complete. Ctrl-C (a real SIGINT, sent to a real `python -m edgebn build`) at any stage
leaves the previous build's files byte for byte and mtime for mtime, no staging
directory, exit 130 and one line saying so.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

# The smallest build that still has every stage: train, twin, fold, convert, inspect,
# verify, bench, bundle, report (mlp on 100 digits, one epoch, 10 ms per timed runtime).
FAST = ["--arch", "mlp", "--epochs", "1", "--limit", "100", "--bench-time", "0.01"]
BUILD = ["build", *FAST, "--bundle"]

# The CLI as `python -m edgebn` runs it, with a SIGINT the process sends itself at one
# exact point, where a signal from outside could not be timed: between report.json and
# report.md being written, or as the finished build is renamed into place.
_DRIVER = textwrap.dedent("""
    import os, signal, sys
    point = sys.argv.pop(1)
    OUT = os.path.abspath(sys.argv[sys.argv.index("--out") + 1])
    if point == "report.md":
        import edgebn.pipeline.report as report
        write = report.write_atomic

        def interrupted_write(target, data):
            if os.path.basename(target) == "report.md":
                os.kill(os.getpid(), signal.SIGINT)
            return write(target, data)

        report.write_atomic = interrupted_write
    elif point == "swap":
        def hook(event, args):
            if event == "os.rename" and os.path.abspath(os.fsdecode(args[0])) == OUT:
                os.kill(os.getpid(), signal.SIGINT)  # OUT is being renamed aside

        sys.addaudithook(hook)
    from edgebn.cli.app import app
    app(prog_name="edgebn")
""")


def _env(cache):
    return os.environ | {"COLUMNS": "400", "EDGEBN_CACHE": str(cache)}


def _terminal_sigint():
    """The child starts with SIGINT at its default, as from a terminal. A process inherits an
    ignored SIGINT (seen in a CI run: a pytest worker whose SIGINT something had set to
    SIG_IGN), and Python then never raises KeyboardInterrupt: what these tests send would be
    lost, though no user's Ctrl-C is."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _snapshot(out):
    """Every file and directory under OUT: sha256 and mtime (directories: None)."""
    return {str(p.relative_to(out)): None if p.is_dir() else (
        hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(out.rglob("*"))}


def _our_lines(stderr):
    """What the build printed besides its stage lines."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("✓ ")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished build in a directory of its own, and its snapshot."""
    root = tmp_path_factory.mktemp("interrupt")
    out = root / "builds" / "out"
    proc = subprocess.run([sys.executable, "-m", "edgebn", *BUILD, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=_env(root / "cache"),
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"edgebn build -> {out}" in proc.stdout
    assert f"report: {out / 'report.json'}" in proc.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging left beside it
    report = (out / "report.json").read_text()
    assert ".tmp-" not in report and ".old-" not in report  # no path into the staging directory
    assert {"model.keras", "twin.keras", "folded.keras", "model.tflite", "twin.tflite",
            "converter_only.tflite", "samples.npy", "report.json", "report.md",
            "bundle/manifest.json"} <= set(_snapshot(out))
    return root, out, _snapshot(out)


def _assert_untouched(finished, returncode, stderr):
    _, out, before = finished
    assert returncode == 130, stderr[-3000:]
    now = _snapshot(out)
    assert [k for k in before if now.get(k) != before[k]] == [] and now == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging, no old copy
    assert _our_lines(stderr) == [f"interrupted: {out} still holds the previous build"], stderr


@pytest.mark.slow
@pytest.mark.parametrize(("after", "during"), [("data", "train"), ("train", "twin"),
                                               ("fold", "convert"), ("verify", "bench")])
def test_ctrl_c_at_a_stage_leaves_the_previous_build(finished, after, during):
    """SIGINT from outside, as a terminal sends it, once the stage line before `during` shows."""
    root, out, _ = finished
    proc = subprocess.Popen([sys.executable, "-m", "edgebn", *BUILD, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(root / "cache"), cwd=root, preexec_fn=_terminal_sigint)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(f"✓ {after} "):
            proc.send_signal(signal.SIGINT)
            break
    try:
        _, rest = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert any(line.startswith(f"✓ {after} ") for line in seen), "".join(seen)
    _assert_untouched(finished, proc.returncode, "".join(seen) + rest)


@pytest.mark.slow
def test_ctrl_c_between_the_two_reports_leaves_the_previous_build(finished):
    root, out, _ = finished
    proc = subprocess.run([sys.executable, "-c", _DRIVER, "report.md", *BUILD, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=_env(root / "cache"),
                          cwd=root, preexec_fn=_terminal_sigint)
    _assert_untouched(finished, proc.returncode, proc.stderr)


@pytest.mark.slow
def test_ctrl_c_during_the_swap_waits_for_it_and_old_files_go(finished, tmp_path):
    """The swap is never cut in half: the new build is whole, files it does not make are gone."""
    root, reference, before = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)  # a finished build with a twin and a bundle
    proc = subprocess.run([sys.executable, "-c", _DRIVER, "swap", "build", *FAST, "--no-twin",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=_env(root / "cache"), cwd=root, preexec_fn=_terminal_sigint)
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert _our_lines(proc.stderr) == [f"interrupted as the build finished: {out} holds it, "
                                       "complete"], proc.stderr
    after = _snapshot(out)
    assert set(after) == set(before) - {"twin.keras", "twin.tflite"} - {
        k for k in before if k.startswith("bundle")}
    assert all(after[k] != before[k] for k in after)  # every file is this build's
    report = (out / "report.json").read_text()
    assert '"twin"' not in report and '"bundle"' not in report
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


# ---------------------------------------------------------------- the directory swap itself


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_a_swap_cut_between_its_renames_is_undone_by_the_next_one(tmp_path):
    """A process killed (SIGKILL, power loss) between OUT -> old and staging -> OUT."""
    from edgebn.files import staged_dir

    out = tmp_path / "out"
    (out / "bundle").mkdir(parents=True)
    (out / "report.json").write_text("old")
    (out / "bundle" / "manifest.json").write_text("{}")
    before = _snapshot(out)
    pid = _dead_pid()
    old = tmp_path / f".old-out-{pid}-abcdefgh"
    old.mkdir()
    os.rename(out, old / "out")
    (tmp_path / f".tmp-out-{pid}-ijklmnop").mkdir()  # its staging, complete or not
    (tmp_path / f".tmp-out-{pid}-ijklmnop" / "report.json").write_text("new")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), staged_dir(out) as staging:
        assert _snapshot(out) == before  # the previous build is back before anything else
        (staging.path / "report.json").write_text("half")
        raise Boom
    assert _snapshot(out) == before and not staging.swapped
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_live_builds_staging_is_left_alone(tmp_path):
    from edgebn.files import staged_dir

    theirs = tmp_path / f".tmp-out-{os.getppid()}-abcdefgh"  # a live process's staging
    theirs.mkdir()
    with staged_dir(tmp_path / "out") as staging:
        (staging.path / "report.json").write_text("new")
    assert staging.swapped and (tmp_path / "out" / "report.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.name, "out"]


def test_files_a_build_does_not_write_are_kept_across_the_swap(tmp_path):
    """OUT is swapped whole, and what else it held comes along: `pip install .` leaves
    setuptools' build/lib and build/bdist.* in the default `--out build`."""
    from edgebn.cli.app import app

    out = tmp_path / "build"
    (out / "lib" / "edgebn").mkdir(parents=True)
    (out / "lib" / "edgebn" / "x.py").write_text("# setuptools' copy")
    (out / "bdist.linux-x86_64").mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.json").write_text("{}")  # an artifact: replaced by the new build's
    res = CliRunner().invoke(app, ["build", *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "lib" / "edgebn" / "x.py").read_text() == "# setuptools' copy"
    assert (out / "bdist.linux-x86_64").is_dir()
    assert json.loads((out / "report.json").read_text())["model"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]  # no staging or old copy
