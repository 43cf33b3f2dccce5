"""The bundle's self-test on both emulated arm64 Raspberry Pi OS releases (qemu-user):
trixie (Python 3.13, NumPy 2.2) and bookworm (Python 3.11, NumPy 1.24), each runtime
installed by the bundle's own README steps (a venv over Debian's NumPy, then pip).

Needs qemu-user-static and debootstrap (.ci/run and tools/pi-emulate install them), and
Debian's packages and PyPI for the first run (userlands and venvs are cached after). When
those cannot be reached the tests say so in a skip, never a pass.
"""

from __future__ import annotations

import shutil

import pytest

from edgebn.deploy.emulate import PI_OS, EmulationUnavailable, emulate, runtime_venv, userland
from edgebn.errors import EdgebnError
from edgebn.runtime.backends import Backend

pytestmark = pytest.mark.emulation


@pytest.fixture(scope="session")
def pi(bundles):
    """Each release's userland and its README-installed venvs, made once: {(os, runtime):
    (root, python)}; a skip with the reason when they cannot be."""
    out = {}
    try:
        for os_name, release in PI_OS.items():
            root = userland(os_name=os_name)
            for runtime in release.runtimes:
                out[(os_name, runtime)] = root, runtime_venv(bundles["none"], runtime, root,
                                                             os_name)
    except EmulationUnavailable as exc:
        pytest.skip(f"arm64 emulation unavailable: {exc}")
    return out


# release -> (runtime, Python, NumPy) each run must report
EXPECTED = {"trixie": [("ai_edge_litert", "3.13", "2.2")],
            "bookworm": [("tflite_runtime 2.14.0", "3.11", "1.24"),
                         ("ai_edge_litert", "3.11", "2.")]}


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    """A key pair and the allowed-signers file of a device that trusts it."""
    import subprocess

    from edgebn.deploy.sign import allowed_signers_line

    d = tmp_path_factory.mktemp("signer")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "key")],
                   check=True)
    (d / "allowed_signers").write_text(allowed_signers_line(d / "key.pub") + "\n")
    return d / "key", d / "allowed_signers"


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("os_name", list(PI_OS))
def test_selftest_passes_on_each_pi_os_with_each_runtime(pi, bundles, signer, os_name, quantize,
                                                         tmp_path):
    """Unsigned, then signed and checked by the device's own verifier (the release's arm64
    ssh-keygen), each runtime installed by the bundle's README steps."""
    from edgebn.deploy.emulate import run_selftest
    from edgebn.deploy.sign import sign_manifest

    signed = shutil.copytree(bundles[quantize], tmp_path / "signed")
    sign_manifest(signed, signer[0])
    for runtime in PI_OS[os_name].runtimes:
        root, python = pi[(os_name, runtime)]
        run = run_selftest(signed, runtime, root, python, trust=signer[1])
        assert run.passed and run.selftest["signature"].startswith("verified"), (runtime, run)
    result = emulate(bundles[quantize], os_name=os_name)
    assert result.os == os_name and f"Raspberry Pi OS {os_name}" in result.platform
    assert [r.runtime for r in result.runs] == [b.value for b in PI_OS[os_name].runtimes]
    for run, (runtime, python, numpy) in zip(result.runs, EXPECTED[os_name], strict=True):
        assert run.passed, run
        st = run.selftest
        assert st["machine"] == "aarch64" and st["python"].startswith(python)
        # Debian's NumPy, or the venv's own where pip chose one
        assert st["numpy"].startswith(numpy), st
        assert st["runtime"].startswith(runtime)
        assert st["top1_agreement"] == 1.0 and st["max_abs_diff"] <= st["atol"]
    assert result.passed


def test_tflite_runtime_on_trixie_is_refused_in_one_line(bundles):
    message = ("tflite-runtime has no wheel for Python 3.13 (Raspberry Pi OS trixie): use "
               "ai-edge-litert")
    with pytest.raises(EdgebnError, match=message.replace("(", r"\(").replace(")", r"\)")):
        emulate(bundles["none"], ("tflite-runtime",), os_name="trixie")
    from typer.testing import CliRunner

    from edgebn.cli.app import app

    res = CliRunner().invoke(app, ["emulate", str(bundles["none"]), "--os", "trixie",
                                   "--runtime", "tflite-runtime"])
    assert res.exit_code == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"Error: {message}"], res.stderr


def test_a_changed_byte_is_refused_on_the_emulated_pi(pi, bundles, tmp_path):
    b = shutil.copytree(bundles["int8"], tmp_path / "b")
    data = bytearray((b / "model.tflite").read_bytes())
    data[100] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    run = emulate(b, ("ai-edge-litert",), os_name="trixie").runs[0]
    assert not run.passed and run.exit_code == 2
    assert "model.tflite: sha256" in run.error and "does not match the manifest" in run.error


def test_unreachable_debian_mirror_is_reported_not_passed(tmp_path, monkeypatch):
    """Nothing listens on port 9: debootstrap fails to fetch, and the reason says so."""
    import edgebn.deploy.emulate as em

    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    monkeypatch.setattr(em, "MIRROR", "http://127.0.0.1:9/debian")
    with pytest.raises(EmulationUnavailable, match="Debian's packages cannot be reached"):
        userland(tmp_path / "cache")
    assert not (tmp_path / "cache" / "root").exists()


def test_unreachable_pypi_is_reported_not_passed(pi, bundles, tmp_path, monkeypatch):
    """The README's pip install, with the index at a port nothing listens on: said so, not
    "no wheel"; and nothing is left half-made."""
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
                       "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_CONFIG_FILE": "/dev/null",
                       "PIP_TIMEOUT": "5", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(key, value)
    root, _ = pi[("trixie", Backend.ai_edge_litert)]
    with pytest.raises(EmulationUnavailable, match="PyPI cannot be reached"):
        runtime_venv(bundles["none"], Backend.ai_edge_litert, root, "trixie", tmp_path / "cache")
    assert not (tmp_path / "cache" / "venv-ai-edge-litert").exists()


def test_build_records_the_emulated_selftest_in_its_report(pi, cnn, tmp_path):
    import json

    from edgebn.pipeline.build import BuildConfig, build

    out = tmp_path / "build"
    build(BuildConfig(out=out, model=cnn["keras"], run_bench=False,
                      emulate=(Backend.tflite_runtime, Backend.ai_edge_litert),
                      emulate_os="bookworm"))
    report = json.loads((out / "report.json").read_text())
    em = report["emulation"]
    assert em["passed"] and [r["runtime"] for r in em["runs"]] == ["tflite-runtime",
                                                                   "ai-edge-litert"]
    assert em["os"] == "bookworm"
    assert all(r["selftest"]["machine"] == "aarch64" for r in em["runs"])
    assert "qemu-aarch64-static" in em["platform"] and "-cpu cortex-a72" in em["platform"]
    assert "## Self-test on an emulated arm64 Raspberry Pi" in (out / "report.md").read_text()


def test_signature_checks_on_an_emulated_pi(pi, bundles, tmp_path):
    """The four cases of a trusting device, with Debian arm64's own ssh-keygen verifying."""
    import hashlib
    import json
    import subprocess

    from edgebn.deploy.emulate import run_selftest
    from edgebn.deploy.sign import allowed_signers_line, sign_manifest

    keys = {}
    for name in ("mine", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        str(tmp_path / name)], check=True)
        keys[name] = tmp_path / name
    trust = tmp_path / "allowed_signers"
    trust.write_text(allowed_signers_line(keys["mine"].with_suffix(".pub")) + "\n")
    cases = {}
    canary = tmp_path / "canary"
    evil = f"open({str(canary)!r}, 'w').write('ran')\n"
    for case, key in (("signed", "mine"), ("unsigned", None), ("other key", "other"),
                      ("re-hashed", "mine"), ("predict.py replaced", "mine"),
                      ("unlisted json.py", "mine"), ("symlink out", "mine")):
        b = shutil.copytree(bundles["none"], tmp_path / case)
        if key is not None:
            sign_manifest(b, keys[key])
        if case in ("re-hashed", "predict.py replaced"):  # sha256 written into the manifest
            name = "model.tflite" if case == "re-hashed" else "predict.py"
            data = bytearray((b / name).read_bytes())
            if case == "re-hashed":
                data[len(data) // 2] ^= 0x01
            else:
                data = bytearray(evil.encode())
            (b / name).write_bytes(bytes(data))
            manifest = json.loads((b / "manifest.json").read_text())
            manifest["files"][name] = hashlib.sha256(bytes(data)).hexdigest()
            (b / "manifest.json").write_text(json.dumps(manifest))
        if case == "unlisted json.py":
            (b / "json.py").write_text(evil)
        if case == "symlink out":  # the very same bytes, outside: every hash still matches
            (b / "model.tflite").unlink()
            (b / "model.tflite").symlink_to(cases["signed"] / "model.tflite")
        cases[case] = b
    root, python = pi[("trixie", Backend.ai_edge_litert)]  # OpenSSH 10's ssh-keygen verifies
    runs = {case: run_selftest(b, Backend.ai_edge_litert, root, python, trust=trust)
            for case, b in cases.items()}
    assert runs["signed"].passed, runs["signed"]
    assert runs["signed"].selftest["machine"] == "aarch64"
    assert runs["signed"].selftest["signature"].startswith("verified")
    for case, needle in (("unsigned", "unsigned bundle"),
                         ("other key", "manifest.json.sig does not verify"),
                         ("re-hashed", "manifest.json.sig does not verify"),
                         ("predict.py replaced", "manifest.json.sig does not verify"),
                         ("unlisted json.py", "json.py: in the bundle but not in manifest.json"),
                         ("symlink out", "model.tflite: a symlink in the bundle")):
        run = runs[case]
        assert not run.passed and run.exit_code == 2, (case, run)
        assert run.error.startswith("Error: ") and needle in run.error, (case, run.error)
    assert not canary.exists()  # nothing of the hostile bundles ran on the emulated Pi


def test_the_device_bench_reads_the_pis_temperature_and_clock_under_emulation(pi, bundles):
    """The userland's Raspberry Pi 4 thermal zone and cpufreq (no vcgencmd: null, with why)."""
    import json
    import subprocess

    root, python = pi[("trixie", Backend.ai_edge_litert)]
    from edgebn.deploy.emulate import _env, _qemu

    done = subprocess.run(_qemu(root, str(python), str(bundles["none"] / "predict.py"), "--bench",
                                "--json", "--threads", "1", "--runs", "20"),
                          capture_output=True, text=True, timeout=300, env=_env(python.parents[2]))
    assert done.returncode == 0, done.stderr
    t = json.loads(done.stdout)["bench"]["thermal"]["after"]
    assert t["temp_c"] == pytest.approx(48.312) and t["clock_mhz"] == 1800.0
    assert t["throttled"] is None and "vcgencmd" in t["throttled_reason"]


def test_predict_profile_under_emulation_gives_a_row_per_operator(pi, profile_bundles):
    import json
    import subprocess

    from edgebn.deploy.emulate import _env, _qemu
    from edgebn.tflite.reader import read_tflite

    root, python = pi[("trixie", Backend.ai_edge_litert)]
    bundle = profile_bundles["int8"]
    done = subprocess.run(_qemu(root, str(python), str(bundle / "predict.py"), "--profile",
                                "--json",
                                "--threads", "1", "--runs", "5"),
                          capture_output=True, text=True, timeout=600, env=_env(python.parents[2]))
    assert done.returncode == 0, done.stderr
    p = json.loads(done.stdout)["profile"]
    ops = read_tflite(bundle / "model.tflite").subgraphs[0].operators
    assert [r["op"] for r in p["operators"]] == [o.op for o in ops]
    assert p["device"]["machine"] == "aarch64" and p["runtime"].startswith("ai_edge_litert")
    assert all(r["time_us"] > 0 for r in p["operators"] if r["note"] is None)


@pytest.fixture(scope="module")
def trixie(bundles):
    """The trixie userland and its README-installed venv (ai-edge-litert), from the cache or
    made once; a skip with the reason when they cannot be."""
    try:
        root = userland(os_name="trixie")
        return root, runtime_venv(bundles["none"], Backend.ai_edge_litert, root, "trixie")
    except EmulationUnavailable as exc:
        pytest.skip(f"arm64 emulation unavailable: {exc}")


def test_the_emulated_pi_takes_a_release_through_the_new_order(trixie, bundles, tmp_path):
    """A device (a real sshd on 127.0.0.1) whose python3 is trixie's, under qemu-aarch64: a
    signed release is staged, verified by its own verifier (with trixie's ssh-keygen), self-
    tested by its own Python and runtime, switched and health-checked; a second one too; and
    a third whose service never comes up is rolled back."""
    import hashlib
    import json
    import os
    import shlex
    import subprocess

    from sshd_hosts import Device, _free_port, make_keys
    from typer.testing import CliRunner

    from edgebn.cli.app import app
    from edgebn.deploy.emulate import QEMU_CPU, _qemu
    from edgebn.deploy.sign import sign_manifest

    root, python = trixie
    (tmp_path / "keys").mkdir()
    keys, user = make_keys(tmp_path / "keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    keygen = shlex.join(_qemu(root, str(root / "usr/bin/ssh-keygen")))
    device = Device(tmp_path, keys, user, 0, shlex.join(_qemu(root, str(python))))
    device.set_python(shlex.join(_qemu(root, str(python))), before=(
        f"export QEMU_CPU={QEMU_CPU} PYTHONNOUSERSITE=1 LANG=C.UTF-8 "
        f"EDGEBN_SSH_KEYGEN={shlex.quote(keygen)}\n"))
    releases = []
    try:
        args = ["--host", device.spec, "-i", str(device.identity), "--dest", "~/pi",
                "--trust-file", "~/pi-config/allowed_signers", "--health-timeout", "5"]
        for opt in device.options:
            args += ["-o", opt]
        for q in ("none", "int8", "none-again"):
            b = shutil.copytree(bundles[q.split("-")[0]], tmp_path / f"signed-{q}")
            if q == "none-again":  # another release: the same bundle with another label line
                (b / "labels.txt").write_text((b / "labels.txt").read_text() + "\n")
                manifest = json.loads((b / "manifest.json").read_text())
                manifest["files"]["labels.txt"] = hashlib.sha256(
                    (b / "labels.txt").read_bytes()).hexdigest()
                (b / "manifest.json").write_text(json.dumps(manifest))
                service = {"listen": f"127.0.0.1:{_free_port()}"}
                (device.home / "pi" / "service.json").write_text(json.dumps(service))
            sign_manifest(b, tmp_path / "k")
            releases.append(hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()[:16])
            trust = ["--trust", str(tmp_path / "k.pub")] if q == "none" else []
            res = CliRunner().invoke(app, ["deploy", str(b), *args, *trust, "--json"])
            row = json.loads(res.stdout)
            st = row["selftest"]
            assert st["machine"] == "aarch64" and st["python"].startswith("3.13"), st
            assert st["runtime"].startswith("ai_edge_litert") and st["passed"]
            assert st["signature"].startswith("verified by ED25519"), st
            if q != "none-again":
                assert res.exit_code == 0 and row["status"] == "deployed", res.output
                assert row["health"] == "ok" and row["device"]["python"].startswith("3.13")
            else:
                assert res.exit_code == 1 and row["status"] == "rolled_back", res.output
                assert row["reason"].endswith(f"rolled back to {releases[1]}")
        live = os.readlink(device.home / "pi" / "current")
        assert live == f"releases/{releases[1]}"
        assert (device.home / "pi" / "releases.log").read_text().split() == releases[:2]
        assert device.calls("verify.py run") == 5  # each staged copy, and each live one after
    finally:
        device.kill()
