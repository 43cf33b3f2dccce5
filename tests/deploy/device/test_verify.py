"""A device that trusts a key runs only what was signed: hostile bundles, with a canary.

Each hostile bundle carries code that writes a canary file if it ever runs. It is tried
three ways: predict.py started directly, the device's verifier (``verify.py run``), and
``edgebn deploy`` to a real sshd on 127.0.0.1 whose device trusts the signing key.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from sshd_hosts import _target

from edgebn.deploy.bundle import DEVICE_DIR
from edgebn.deploy.sign import allowed_signers_line, sign_manifest
from edgebn.deploy.ssh import DeployOptions, Shipment, deploy, ship
from edgebn.errors import EdgebnError

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
SHADOWS = ("json.py", "argparse.py", "hashlib.py", "shlex.py", "subprocess.py", "platform.py",
           "numpy/__init__.py", "ai_edge_litert/__init__.py", "math.py", "io.py", "stat.py")


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    d = tmp_path_factory.mktemp("key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "k")], check=True)
    return d / "k"


@pytest.fixture(scope="module")
def signed(bundles, key, tmp_path_factory):
    b = shutil.copytree(bundles["none"], tmp_path_factory.mktemp("signed") / "b")
    sign_manifest(b, key)
    return b


@pytest.fixture
def device(key, tmp_path):
    """A trusting device's config folder: the trust file and the installed verifier."""
    d = tmp_path / "device-config"
    d.mkdir()
    (d / "allowed_signers").write_text(allowed_signers_line(key.with_suffix(".pub")) + "\n")
    shutil.copyfile(DEVICE_DIR / "verify.py", d / "verify.py")
    return d


def _canary_code(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w').write('ran')\n"


def _rehash(b: Path, name: str) -> None:
    """Write ``name``'s new sha256 into the manifest (the signature no longer covers it)."""
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((b / name).read_bytes()).hexdigest()
    (b / "manifest.json").write_text(json.dumps(manifest))


def _env(trust: Path) -> dict:
    return {"PATH": os.environ["PATH"], "HOME": str(trust.parent), "EDGEBN_TRUST": str(trust)}


def _direct(b: Path, trust: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(b / "predict.py"), "--selftest", "--json"],
                          capture_output=True, text=True, timeout=60, env=_env(trust))


def _verifier(b: Path, device: Path, command: str = "run") -> subprocess.CompletedProcess:
    args = [sys.executable, "-I", str(device / "verify.py"), command, str(b)]
    return subprocess.run([*args, "--selftest", "--json"] if command == "run" else args,
                          capture_output=True, text=True, timeout=60,
                          env=_env(device / "allowed_signers"))


def _refused(done: subprocess.CompletedProcess, needle: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, (done.returncode, done.stdout[-300:], done.stderr[-300:])
    assert len(lines) == 1 and needle in lines[0], lines


def _unchecked(b: Path) -> Shipment:
    """A tar of ``b`` as it is (links kept), bypassing this machine's checks: what a
    hostile host, or an older edgebn, would send. Only the device can refuse it then."""
    release = hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()[:16]
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        tar.add(b, arcname=release)
    return Shipment(b, release, stream.getvalue())


@pytest.fixture(scope="module")
def signed_other(bundles, key, tmp_path_factory):
    """Another release signed by the same key (the int8 bundle)."""
    b = shutil.copytree(bundles["int8"], tmp_path_factory.mktemp("signed-int8") / "b")
    sign_manifest(b, key)
    return b


@pytest.fixture
def trusting(sshd, signed_other, key, device, tmp_path):
    """A device (an sshd) that trusts ``key``, with another signed release live on it: a
    hostile copy of ``signed`` is a new release there, and gets sent (a copy of the live
    release's manifest would be ``unchanged``: nothing sent, nothing run)."""
    opts = DeployOptions(str(tmp_path / "dest"), selftest=True, python=sys.executable,
                         trust=key.with_suffix(".pub"), trust_file=str(device / "allowed_signers"))
    first = deploy(signed_other, _target(sshd), opts)
    assert first.passed and first.selftest["signature"].startswith("verified by ED25519")
    later = DeployOptions(opts.dest, selftest=True, python=sys.executable,
                          trust_file=opts.trust_file)
    return {"target": _target(sshd), "options": later, "live": first.release,
            "dest": Path(opts.dest)}


def _device_refuses(trusting, b: Path, needle: str) -> None:
    """The hostile copy sent unchecked: the device's verifier refuses it, current stays."""
    with pytest.raises(EdgebnError, match="the device's verifier refused the bundle") as err:
        ship(_unchecked(b), trusting["target"], trusting["options"])
    assert needle in str(err.value), str(err.value)
    assert os.readlink(trusting["dest"] / "current") == f"releases/{trusting['live']}"
    assert (trusting["dest"] / "releases.log").read_text().split()[-1] == trusting["live"]
    assert not [p for p in (trusting["dest"] / "releases").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("shadow", SHADOWS)
def test_an_unlisted_module_in_a_signed_bundle_never_runs(signed, device, tmp_path, shadow):
    b = shutil.copytree(signed, tmp_path / "b")
    canary = tmp_path / "canary"
    (b / shadow).parent.mkdir(parents=True, exist_ok=True)
    (b / shadow).write_text(_canary_code(canary))
    _refused(_direct(b, device / "allowed_signers"), f"{shadow}: in the bundle but not in manifest")
    _refused(_verifier(b, device), f"{shadow}: in the bundle but not in manifest")
    assert not canary.exists()


def test_unlisted_modules_never_reach_a_trusting_device(trusting, signed, tmp_path):
    b = shutil.copytree(signed, tmp_path / "b")
    canary = tmp_path / "canary"
    for shadow in ("json.py", "numpy/__init__.py"):
        (b / shadow).parent.mkdir(parents=True, exist_ok=True)
        (b / shadow).write_text(_canary_code(canary))
    with pytest.raises(EdgebnError, match="in the bundle but not in manifest.json"):
        deploy(b, trusting["target"], trusting["options"])  # refused here, before connecting
    _device_refuses(trusting, b, "in the bundle but not in manifest.json")
    assert not canary.exists()


def test_a_replaced_predict_py_rehashed_never_runs(trusting, signed, device, key, tmp_path):
    b = shutil.copytree(signed, tmp_path / "b")
    canary = tmp_path / "canary"
    (b / "predict.py").write_text(_canary_code(canary)
                                  + "print('{\"selftest\": {\"passed\": true}}')\n")
    _rehash(b, "predict.py")
    _refused(_verifier(b, device), "manifest.json.sig does not verify")
    with pytest.raises(EdgebnError, match="manifest.json.sig does not verify"):  # --trust: here
        deploy(b, trusting["target"], DeployOptions(
            str(trusting["dest"]), selftest=True, python=sys.executable,
            trust=key.with_suffix(".pub"), trust_file=trusting["options"].trust_file))
    _device_refuses(trusting, b, "manifest.json.sig does not verify")
    (b / "manifest.json.sig").unlink()  # and unsigned altogether
    _device_refuses(trusting, b, "unsigned bundle")
    assert not canary.exists()


def test_symlinks_out_of_a_signed_bundle_are_refused(trusting, signed, device, tmp_path):
    """Links to copies with the very same bytes: every hash and the signature still match."""
    outside = shutil.copytree(signed, tmp_path / "outside")
    for name, needle in (("model.tflite", "model.tflite: a symlink"),
                         ("golden", "golden: a symlink"), ("README.md", "README.md: a symlink")):
        b = shutil.copytree(signed, tmp_path / f"b-{name}")
        shutil.rmtree(b / name) if (b / name).is_dir() else (b / name).unlink()
        (b / name).symlink_to(outside / name)
        _refused(_verifier(b, device, "check"), needle)
        _refused(_direct(b, device / "allowed_signers"), needle)
        with pytest.raises(EdgebnError, match="a symlink in the bundle"):
            deploy(b, trusting["target"], trusting["options"])
        _device_refuses(trusting, b, needle)


@pytest.mark.parametrize("model", ["../outside/model.tflite", "/etc/passwd", "labels.txt.missing"])
def test_bundle_json_naming_a_file_outside_the_manifest_is_refused(bundles, tmp_path, model):
    """An untrusting device, bundle.json edited and re-hashed: no hash covers the model."""
    b = shutil.copytree(bundles["none"], tmp_path / "b")
    (tmp_path / "outside").mkdir()
    shutil.copy(b / "model.tflite", tmp_path / "outside" / "model.tflite")
    spec = json.loads((b / "bundle.json").read_text())
    spec["model"] = model
    (b / "bundle.json").write_text(json.dumps(spec))
    _rehash(b, "bundle.json")
    _refused(_direct(b, tmp_path / "no-trust-file"), "is not a file listed in manifest.json")


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/passwd", "a//b", "./x"])
def test_a_manifest_naming_paths_outside_is_refused(bundles, tmp_path, name):
    b = shutil.copytree(bundles["none"], tmp_path / "b")
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][name] = "0" * 64
    (b / "manifest.json").write_text(json.dumps(manifest))
    _refused(_direct(b, tmp_path / "no-trust-file"), "names a file a bundle may not hold")


def test_special_files_never_hang_the_device(signed, device, tmp_path):
    """A FIFO, /dev/zero behind a link, a 3 MiB manifest: refused at once, nothing read."""
    cases = {}
    b = cases["fifo"] = shutil.copytree(signed, tmp_path / "fifo")
    (b / "golden" / "inputs.npy").unlink()
    os.mkfifo(b / "golden" / "inputs.npy")
    b = cases["zero"] = shutil.copytree(signed, tmp_path / "zero")
    (b / "golden" / "inputs.npy").unlink()
    (b / "golden" / "inputs.npy").symlink_to("/dev/zero")
    b = cases["manifest-zero"] = shutil.copytree(signed, tmp_path / "manifest-zero")
    (b / "manifest.json").unlink()
    (b / "manifest.json").symlink_to("/dev/zero")
    b = cases["big-manifest"] = shutil.copytree(signed, tmp_path / "big-manifest")
    (b / "manifest.json").write_bytes(b" " * (3 << 20))
    needles = {"fifo": "golden/inputs.npy: a special file", "zero": "golden/inputs.npy: a symlink",
               "manifest-zero": "manifest.json: cannot be opened as a regular file",
               "big-manifest": "manifest.json: 3145728 bytes"}
    for case, b in cases.items():
        _refused(_verifier(b, device), needles[case])
        _refused(_direct(b, device / "allowed_signers"), needles[case])


def test_the_verifier_runs_the_signed_bundle_and_says_how_it_was_verified(signed, device):
    done = _verifier(signed, device)
    assert done.returncode == 0, done.stderr
    st = json.loads(done.stdout)["selftest"]
    assert st["passed"] and st["signature"].startswith("verified by ED25519")
    check = _verifier(signed, device, "check")
    assert check.returncode == 0 and json.loads(check.stdout)["files"] == len(
        json.loads((signed / "manifest.json").read_text())["files"])
    assert not list(signed.rglob("__pycache__"))  # nothing written into the bundle
