"""Bundle signatures: OpenSSH file signatures over manifest.json, checked on the device.

    ssh-keygen -Y sign -f KEY -n edgebn-bundle manifest.json     -> manifest.json.sig

The manifest lists the sha256 of every other file, so its signature covers the whole
bundle. A device trusts keys through an OpenSSH allowed-signers file (``man ssh-keygen``,
ALLOWED SIGNERS) whose lines read ``edgebn-bundle namespaces="edgebn-bundle" TYPE KEY``;
``edgebn deploy --trust KEY.pub`` installs it, and predict.py verifies the signature
before it believes any hash (see edgebn/deploy/device/predict.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from edgebn.errors import EdgebnError

NAMESPACE = "edgebn-bundle"  # the signature namespace and the signer's principal
SIGN_TIMEOUT_S = 60


def _keygen() -> str:
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise EdgebnError("ssh-keygen not found: install the OpenSSH client "
                          "(apt-get install openssh-client)")
    return keygen


def sign_manifest(bundle_dir: str | Path, key: str | Path) -> Path:
    """Write ``bundle_dir/manifest.json.sig`` with the SSH private ``key`` (or its agent)."""
    manifest = Path(bundle_dir) / "manifest.json"
    if not manifest.is_file():
        raise EdgebnError(f"{bundle_dir}: not a bundle (no manifest.json)")
    sig = manifest.with_name("manifest.json.sig")
    sig.unlink(missing_ok=True)  # ssh-keygen refuses to overwrite a signature
    try:
        done = subprocess.run([_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE,
                               str(manifest)], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=SIGN_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise EdgebnError(f"{key}: ssh-keygen timed out after {SIGN_TIMEOUT_S} s (a passphrase "
                          "prompt? load the key into ssh-agent)", option="sign") from exc
    if done.returncode != 0 or not sig.is_file():
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise EdgebnError(f"{key}: ssh-keygen -Y sign failed: {why}", option="sign")
    return sig


def allowed_signers_line(public_key: str | Path) -> str:
    """The allowed-signers line that makes a device trust ``public_key`` for bundles."""
    try:
        fields = Path(public_key).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise EdgebnError(f"{public_key}: unreadable public key ({exc})", option="trust") from exc
    if len(fields) < 2 or not (fields[0].startswith("ssh-") or fields[0].startswith("ecdsa-")
                               or fields[0].startswith("sk-")):
        raise EdgebnError(f"{public_key}: not an OpenSSH public key (KEY.pub: "
                          "'ssh-ed25519 AAAA... comment'). Received: "
                          f"{' '.join(fields[:1])[:40]!r}", option="trust")
    if not all(c.isalnum() or c in "+/=" for c in fields[1]):
        raise EdgebnError(f"{public_key}: the key is not base64", option="trust")
    return f'{NAMESPACE} namespaces="{NAMESPACE}" {fields[0]} {fields[1]}'
