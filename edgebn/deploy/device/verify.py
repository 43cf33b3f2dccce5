#!/usr/bin/env python3
"""The device's bundle verifier: installed once, outside every bundle, it decides what runs.

    python3 -I ~/.config/edgebn/verify.py check BUNDLE          # exit 0: signed, exact, intact
    python3 -I ~/.config/edgebn/verify.py run BUNDLE [ARGS...]  # check, then predict.py ARGS

TUF's rule: the code that checks an update is not part of the update. ``edgebn deploy
--trust KEY.pub`` installs this file beside the device's trust file (an OpenSSH
allowed-signers file, ~/.config/edgebn/allowed_signers or $EDGEBN_TRUST); every later
deploy checks a release with it before ``current`` switches, and runs predict.py through
it. Nothing of the bundle is imported, opened or run before these checks, in this order:

1. manifest.json is a regular file of at most 1 MiB (no link, FIFO or device), read once;
2. on a device that trusts keys, manifest.json.sig verifies over those bytes with
   ``ssh-keygen -Y verify`` (an unsigned bundle, or one signed by another key, is refused);
3. the bundle holds exactly the files the manifest lists: the tree is walked without
   following links, and an unlisted file, a symlink, a special file or a listed name that
   is not a plain relative path is refused;
4. every listed file is a regular file within its size limit whose sha256 matches.

``run`` then executes the verified bytes of predict.py in this process, with the bundle's
folder not on ``sys.path`` (start this file with ``python3 -I`` and the verifier's own
folder is not on it either). predict.py ships a copy of this file and runs the same checks
itself when started directly. Standard library only: any Python 3.9+. Exit codes: 0
verified, 2 refused (one line on stderr), else predict.py's own.
"""

import os  # frozen, loaded at start-up: no file of any folder is read for it
import sys  # built in

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.dont_write_bytecode = True  # a release is never written to: no __pycache__ in it

import builtins  # noqa: E402  (every import below comes from the standard library only)
import hashlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402

NAMESPACE = "edgebn-bundle"  # ssh-keygen -Y's signature namespace, and the signer's principal
TRUST_ENV = "EDGEBN_TRUST"
KEYGEN_ENV = "EDGEBN_SSH_KEYGEN"  # another ssh-keygen command (the emulator runs arm64's via qemu)
VERIFIED_ENV = "EDGEBN_VERIFIED"  # set for predict.py by `run`: how the bundle was verified
DEFAULT_TRUST = "~/.config/edgebn/allowed_signers"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
VERIFY_TIMEOUT_S = 30
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 64 << 10
MAX_FILE_BYTES = 1 << 30  # a model of 1 GiB is beyond any device this targets
MAX_BUNDLE_BYTES = 2 << 30
MAX_FILES = 1000
MAX_NAME_CHARS = 200
EXIT_REFUSED = 2


class BundleError(Exception):
    """A bundle this device must not run: what is wrong, in one line."""


def trust_file():
    """Where this device keeps the keys it trusts: $EDGEBN_TRUST, else ~/.config/edgebn/."""
    return os.path.expanduser(os.environ.get(TRUST_ENV) or DEFAULT_TRUST)


def open_regular(path, limit, what=None):
    """A file descriptor of ``path`` if it is a regular file of at most ``limit`` bytes.

    Never follows a symlink at the last component and never blocks on a FIFO (O_NONBLOCK
    until fstat has said it is a regular file). The caller closes the descriptor.
    """
    what = what or path
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BundleError(f"{what}: cannot be opened as a regular file ({exc.strerror})") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"{st.st_size} bytes"
        raise BundleError(f"{what}: {kind}; a bundle file must be a regular file of at most "
                          f"{limit} bytes")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def read_regular(path, limit, what=None):
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    fd = open_regular(path, limit, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{what or path}: grew beyond {limit} bytes while being read")
    return data


def verify_signature(root, data, allowed=None):
    """Check manifest.json.sig over ``data`` (the manifest's bytes) against a trust file.

    ``allowed`` defaults to this device's trust file. Returns how the bundle stands
    ("verified by ..." or "unverified (no trust file)"); raises BundleError when the
    device trusts a key and the bundle is not signed by it.
    """
    allowed = allowed or trust_file()
    if not os.path.lexists(allowed):  # (a dangling link is a trust file that fails closed)
        return "unverified (no trust file)"
    sig = os.path.join(root, SIGNATURE)
    if not os.path.lexists(sig):
        raise BundleError(f"unsigned bundle: this device trusts the keys in {allowed} and "
                          f"{SIGNATURE} is missing (edgebn bundle --sign KEY)")
    read_regular(sig, MAX_SIGNATURE_BYTES, SIGNATURE)
    keygen = shlex.split(os.environ.get(KEYGEN_ENV, "")) or [shutil.which("ssh-keygen")]
    if keygen[0] is None:
        raise BundleError(f"this device trusts the keys in {allowed} but ssh-keygen is not "
                          "installed to verify signatures (sudo apt install openssh-client)")
    try:
        done = subprocess.run([*keygen, "-Y", "verify", "-f", allowed, "-I", NAMESPACE,
                               "-n", NAMESPACE, "-s", sig], input=data, capture_output=True,
                              timeout=VERIFY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"ssh-keygen -Y verify did not run: {exc}") from exc
    if done.returncode != 0:
        why = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
        raise BundleError(f"{SIGNATURE} does not verify against {allowed}: the bundle was not "
                          f"signed by a trusted key, or was changed after signing ({why})")
    said = done.stdout.decode(errors="replace").strip()  # Good "ns" signature for ID with KEY
    return "verified by " + (said.split(" with ", 1)[-1] if " with " in said else NAMESPACE)


def plain_name(name):
    """True for a listed name a bundle may hold: a/b.c, no '..', '.', '', '/' at the ends."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
        return False
    if not all(c.isascii() and (c.isalnum() or c in "._-/") for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def parse_manifest(data):
    """{name: sha256} from manifest.json's bytes, every entry checked."""
    try:
        manifest = json.loads(data.decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BundleError(f"{MANIFEST}: missing or unreadable manifest ({exc})") from exc
    if len(files) > MAX_FILES:
        raise BundleError(f"{MANIFEST}: lists {len(files)} files, at most {MAX_FILES} allowed")
    for name, want in files.items():
        if not plain_name(name) or name in (MANIFEST, SIGNATURE):
            raise BundleError(f"{MANIFEST} names a file a bundle may not hold: {name[:80]!r} "
                              "(plain relative names only: letters, digits, . _ - /)")
        if not (isinstance(want, str) and len(want) == 64
                and all(c in "0123456789abcdef" for c in want)):
            raise BundleError(f"{MANIFEST}: {name}: expected a sha256 in hex")
    return manifest


def walk(root):
    """Every regular file under ``root`` as a relative name; links and special files refused."""
    found, stack = [], [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(root, rel) if rel else root))
        except OSError as exc:
            raise BundleError(f"{rel or root}: cannot list the bundle ({exc.strerror})") from exc
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            mode = entry.stat(follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{name}: a symlink in the bundle (refused: a bundle holds "
                                  "regular files only)")
            if stat.S_ISDIR(mode):
                stack.append(name)
            elif stat.S_ISREG(mode):
                found.append(name)
            else:
                raise BundleError(f"{name}: a special file in the bundle (FIFO, socket or "
                                  "device: refused)")
            if len(found) + len(stack) > MAX_FILES + 2:
                raise BundleError(f"{root}: more than {MAX_FILES} files in the bundle")
    return found


def sha256_of(path, limit, name):
    """The sha256 of a regular file and its bytes when it is predict.py (run from them)."""
    fd = open_regular(path, limit, name)
    digest, kept = hashlib.sha256(), []
    with os.fdopen(fd, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            if name == "predict.py":
                kept.append(block)
    return digest.hexdigest(), b"".join(kept)


def check_bundle(root, allowed=None):
    """Verify the bundle at ``root`` in the order of the module docstring.

    ``allowed``: the trust file (default: this device's, see :func:`trust_file`).
    Returns ``(manifest, predict_bytes)``: the parsed manifest (its "signature" says how
    the bundle stands) and the verified bytes of predict.py (b"" when it is not listed).
    """
    root = os.path.realpath(root)
    if not os.path.lexists(os.path.join(root, MANIFEST)):
        raise BundleError(f"{root}: missing or unreadable manifest (no {MANIFEST}): not an "
                          "edgebn bundle")
    data = read_regular(os.path.join(root, MANIFEST), MAX_MANIFEST_BYTES, MANIFEST)
    signature = verify_signature(root, data, allowed)
    manifest = parse_manifest(data)
    files = manifest["files"]
    present = set(walk(root)) - {MANIFEST, SIGNATURE}
    unlisted = sorted(present - set(files))
    if unlisted:
        raise BundleError(f"{unlisted[0]}: in the bundle but not in {MANIFEST} (refused: "
                          "only listed files may be there)")
    missing = sorted(set(files) - present)
    if missing:
        raise BundleError(f"{missing[0]}: listed in {MANIFEST} but missing from the bundle")
    total, predict = 0, b""
    for name, want in sorted(files.items()):
        got, kept = sha256_of(os.path.join(root, name), MAX_FILE_BYTES, name)
        predict = kept or predict
        total += os.path.getsize(os.path.join(root, name))
        if total > MAX_BUNDLE_BYTES:
            raise BundleError(f"the bundle's files add up to more than {MAX_BUNDLE_BYTES} bytes")
        if got != want:
            raise BundleError(f"{name}: sha256 {got[:16]}... does not match the manifest "
                              f"({want[:16]}...): the bundle is damaged or was modified; "
                              "copy it again")
    manifest["signature"] = signature
    return manifest, predict


def run_predict(root, predict, args, signature):
    """Execute predict.py's verified bytes as __main__ with ``args``; its exit code."""
    path = os.path.join(os.path.realpath(root), "predict.py")
    os.environ[VERIFIED_ENV] = signature
    sys.argv = [path, *args]
    module = {"__name__": "__main__", "__file__": path, "__builtins__": builtins}
    try:
        exec(compile(predict, path, "exec"), module)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("check", "run"):
        print("usage: verify.py check BUNDLE | verify.py run BUNDLE [predict.py args]",
              file=sys.stderr)
        return EXIT_REFUSED
    command, root, rest = args[0], args[1], args[2:]
    try:
        manifest, predict = check_bundle(root)
        if command == "run" and not predict:
            raise BundleError(f"predict.py: not listed in {MANIFEST}")
    except BundleError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if command == "check":
        print(json.dumps({"verified": True, "signature": manifest["signature"],
                          "files": len(manifest["files"])}))
        return 0
    return run_predict(root, predict, rest, manifest["signature"])


if __name__ == "__main__":
    sys.exit(main())
