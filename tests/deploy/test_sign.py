"""Signed bundles: ssh-keygen -Y sign here, predict.py verifies before it trusts any hash."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.deploy.sign import allowed_signers_line, sign_manifest
from edgebn.errors import EdgebnError

runner = CliRunner()
pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")


def _key(d, name):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                    str(d / name)], check=True)
    return d / name


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"mine": _key(d, "mine"), "other": _key(d, "other")}


@pytest.fixture(scope="module")
def signed(bundles, keys, tmp_path_factory):
    b = shutil.copytree(bundles["none"], tmp_path_factory.mktemp("signed") / "b")
    sign_manifest(b, keys["mine"])
    return b


def _trust(tmp_path, pub):
    f = tmp_path / "allowed_signers"
    f.write_text(allowed_signers_line(pub) + "\n")
    return f


def predict(bundle_dir, trust, *args):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(bundle_dir), "EDGEBN_TRUST": str(trust)}
    return subprocess.run([sys.executable, str(bundle_dir / "predict.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def test_the_allowed_signers_line_has_the_namespace_and_the_key(keys):
    pub = keys["mine"].with_suffix(".pub").read_text().split()
    assert allowed_signers_line(keys["mine"].with_suffix(".pub")) == (
        f'edgebn-bundle namespaces="edgebn-bundle" {pub[0]} {pub[1]}')


def test_a_private_key_is_not_a_trust_line(keys):
    with pytest.raises(EdgebnError, match="not an OpenSSH public key"):
        allowed_signers_line(keys["mine"])


def test_bundle_cli_sign_writes_a_signature_that_verifies(small_builds, keys, tmp_path):
    out = tmp_path / "b"
    res = runner.invoke(app, ["bundle", str(small_builds["none"]), "--out", str(out),
                              "--sign", str(keys["mine"]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["signature"] == "manifest.json.sig"
    assert (out / "manifest.json.sig").read_text().startswith("-----BEGIN SSH SIGNATURE-----")
    res = predict(out, _trust(tmp_path, keys["mine"].with_suffix(".pub")), "--selftest", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["signature"].startswith("verified by ED25519 key SHA256:")
    assert doc["selftest"]["signature"] == doc["signature"] and doc["selftest"]["passed"]


def test_without_a_trust_file_the_bundle_runs_unverified(signed, tmp_path):
    res = predict(signed, tmp_path / "nothing-here", "--selftest", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["signature"] == "unverified (no trust file)"


def _rehash(b, victim):
    """Replace ``victim`` and write its new sha256 into manifest.json, as an attacker would."""
    data = bytearray((b / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / victim).write_bytes(bytes(data))
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][victim] = hashlib.sha256(bytes(data)).hexdigest()
    (b / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("case, needle", [
    ("unsigned", "unsigned bundle: this device trusts the keys in"),
    ("other key", "manifest.json.sig does not verify against"),
    ("re-hashed model", "manifest.json.sig does not verify against"),
    ("no ssh-keygen", "ssh-keygen is not installed"),
])
def test_a_trusting_device_refuses_in_one_line(signed, keys, tmp_path, case, needle):
    b = shutil.copytree(signed, tmp_path / "b")
    trust = _trust(tmp_path, keys["mine"].with_suffix(".pub"))
    if case == "unsigned":
        (b / "manifest.json.sig").unlink()
    elif case == "other key":
        sign_manifest(b, keys["other"])
    elif case == "re-hashed model":
        _rehash(b, "model.tflite")
    env_path = "/nonexistent" if case == "no ssh-keygen" else "/usr/bin:/bin"
    res = subprocess.run([sys.executable, str(b / "predict.py"), "--selftest", "--json"],
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": env_path, "HOME": str(b), "EDGEBN_TRUST": str(trust)})
    assert res.returncode == 2, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], lines
    assert res.stdout == ""


def test_a_re_hashed_model_passes_the_manifest_without_trust(signed, tmp_path):
    """What the signature adds: the hashes alone cannot tell a re-hashed bundle."""
    b = shutil.copytree(signed, tmp_path / "b")
    _rehash(b, "golden/outputs.npy")
    res = predict(b, tmp_path / "none", "--selftest", "--json")
    assert res.returncode in (0, 1) and "does not match" not in res.stderr


def test_sign_with_a_missing_key_is_one_line_exit_2(small_builds, tmp_path):
    res = runner.invoke(app, ["bundle", str(small_builds["none"]), "--out", str(tmp_path / "b"),
                              "--sign", str(tmp_path / "nokey")])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_build_sign_writes_a_bundle_a_trusting_device_accepts(cnn, keys, tmp_path):
    from edgebn.pipeline.build import BuildConfig, build

    out = tmp_path / "build"
    result = build(BuildConfig(out=out, model=cnn["keras"], run_bench=False, sign=keys["mine"]))
    assert result.bundled.signed and (out / "bundle" / "manifest.json.sig").is_file()
    assert result.to_json()["bundle"]["path"] == "bundle"
    res = predict(out / "bundle", _trust(tmp_path, keys["mine"].with_suffix(".pub")),
                  "--selftest", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["signature"].startswith("verified")
