"""The bundle's self-test on an emulated arm64 Raspberry Pi OS (qemu-user, Debian bookworm).

Needs qemu-user-static and debootstrap (.ci/run and tools/pi-emulate install them), and
Debian's packages and PyPI for the first run (the userland is cached after). When those
cannot be reached the tests say so in a skip, never a pass.
"""

from __future__ import annotations

import shutil

import pytest

from edgebn.deploy.emulate import RUNTIMES, EmulationUnavailable, emulate, site_packages, userland
from edgebn.runtime.backends import Backend

pytestmark = pytest.mark.emulation


@pytest.fixture(scope="session")
def pi_cache(tmp_path_factory):
    """The cached userland and wheels, made once; a skip with the reason when it cannot be."""
    from edgebn.deploy.emulate import pi_cache_dir

    try:
        userland()
        for runtime in RUNTIMES:
            site_packages(runtime)
    except EmulationUnavailable as exc:
        pytest.skip(f"arm64 emulation unavailable: {exc}")
    return pi_cache_dir()


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_selftest_passes_on_an_emulated_pi_with_both_runtimes(pi_cache, bundles, quantize):
    result = emulate(bundles[quantize], tuple(RUNTIMES))
    assert [r.runtime for r in result.runs] == list(RUNTIMES)
    for run in result.runs:
        assert run.passed, run
        st = run.selftest
        assert st["machine"] == "aarch64" and st["python"].startswith("3.11")
        assert st["numpy"].startswith("1.24")  # Debian bookworm's NumPy, as on the Pi
        assert st["top1_agreement"] == 1.0 and st["max_abs_diff"] <= st["atol"]
    assert result.runs[0].selftest["runtime"] == "tflite_runtime 2.14.0"
    assert result.runs[1].selftest["runtime"].startswith("ai_edge_litert")
    assert result.passed


def test_a_changed_byte_is_refused_on_the_emulated_pi(pi_cache, bundles, tmp_path):
    b = shutil.copytree(bundles["int8"], tmp_path / "b")
    data = bytearray((b / "model.tflite").read_bytes())
    data[100] ^= 0xFF
    (b / "model.tflite").write_bytes(bytes(data))
    run = emulate(b, ("tflite-runtime",)).runs[0]
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


def test_unreachable_pypi_is_reported_not_passed(tmp_path, monkeypatch):
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
                       "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_CONFIG_FILE": "/dev/null",
                       "PIP_TIMEOUT": "5"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(EmulationUnavailable, match="PyPI cannot be reached"):
        site_packages(Backend.tflite_runtime, tmp_path / "cache")


def test_build_records_the_emulated_selftest_in_its_report(pi_cache, cnn, tmp_path):
    import json

    from edgebn.pipeline.build import BuildConfig, build

    out = tmp_path / "build"
    build(BuildConfig(out=out, model=cnn["keras"], run_bench=False,
                      emulate=(Backend.tflite_runtime, Backend.ai_edge_litert)))
    report = json.loads((out / "report.json").read_text())
    em = report["emulation"]
    assert em["passed"] and [r["runtime"] for r in em["runs"]] == ["tflite-runtime", "ai-edge-litert"]
    assert all(r["selftest"]["machine"] == "aarch64" for r in em["runs"])
    assert "qemu-aarch64-static" in em["platform"] and "-cpu cortex-a72" in em["platform"]
    assert "## Self-test on an emulated arm64 Raspberry Pi" in (out / "report.md").read_text()


def test_signature_checks_on_an_emulated_pi(pi_cache, bundles, tmp_path):
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
    root, site = userland(), site_packages(Backend.tflite_runtime)
    runs = {case: run_selftest(b, Backend.tflite_runtime, root, site, trust=trust)
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
