"""Files a run writes: atomic writes, and directories staged beside their target and swapped in
whole."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgebn.errors import EdgebnError


def check_not_source(out: str | Path, source: str | Path) -> None:
    """Refuse an output path that is the input file itself: a command that promises to leave
    its input as it was cannot write its result over it."""
    if Path(out).resolve() == Path(source).resolve():
        raise EdgebnError(f"{out} is the input model itself; the input is never changed: "
                          "write the result to another file", option="out")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    The temporary name keeps the target's suffix (Keras insists on ``.keras``), and
    an interrupted writer leaves at most a hidden ``.tmp-*`` file, never a
    half-written artifact under the real name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.stem}-", suffix=target.suffix,
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(target: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``target`` atomically (temp file + rename)."""
    with atomic_path(target) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(target)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; swap it in only on success.

    An existing ``target`` is replaced as a whole (see :func:`staged_dir`), so a reader
    sees the old directory or the new one, never a mixture.
    """
    with staged_dir(target) as staging:
        yield staging.path


@dataclass
class Staging:
    path: Path  # the staging directory, beside the target, on the same filesystem
    swapped: bool = False  # it is the target now


@contextlib.contextmanager
def staged_dir(target: str | Path, carry: Callable[[str], bool] | None = None
               ) -> Iterator[Staging]:
    """A directory written in ``.tmp-NAME-PID-*`` beside ``target``, renamed into place whole.

    On success the old ``target`` (if any) is renamed to ``.old-NAME-PID-*/NAME``, the
    staging directory to ``target``, and the old one removed. On any exception, Ctrl-C
    included, ``target`` is left as it was and the staging directory removed. Ctrl-C
    during the two renames waits until both are done (:func:`held_interrupts`). A process
    killed between them (SIGKILL, power loss) leaves ``target`` missing and the old
    directory whole beside it: the next :func:`recover_dir` (every ``staged_dir`` starts
    with one) renames it back. ``target`` as a symlink: the directory it points to is swapped.
    ``carry(name)``: the old target's entries it names (files a build does not write, such
    as setuptools' ``build/lib`` beside a default ``--out build``) are hard-linked (copied
    where a link cannot be) into the new directory before the swap, so they stay, and
    the old target is whole until the swap.
    """
    target = Path(os.path.realpath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    try:
        staging = Staging(Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-{os.getpid()}-",
                                                dir=target.parent)))
    except OSError as exc:
        raise EdgebnError(f"{target.parent}: cannot write a directory in it ({exc.strerror})"
                          ) from exc
    old = None
    try:
        yield staging
        if carry is not None and target.is_dir():
            _carry(target, staging.path, carry)
        with held_interrupts():
            old = _swap(staging.path, target)
            staging.swapped = True
    finally:
        with held_interrupts():  # a second Ctrl-C leaves no half-removed directory
            leftover = old if staging.swapped else staging.path
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)


def _carry(old: Path, new: Path, carry: Callable[[str], bool]) -> None:
    """Link (or copy) ``old``'s entries that ``carry`` names into ``new``, where new has none."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in os.scandir(old):
        dst = new / entry.name
        if not carry(entry.name) or os.path.lexists(dst):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), dst)
        elif entry.is_dir():
            shutil.copytree(entry.path, dst, symlinks=True, copy_function=link)
        else:
            link(entry.path, str(dst))


def _swap(new: Path, target: Path) -> Path | None:
    """Rename ``target`` aside and ``new`` to ``target``; return the directory holding the old."""
    mode = target.stat().st_mode if target.is_dir() else 0o777 & ~_umask()
    os.chmod(new, stat.S_IMODE(mode))
    _fsync_dir(new)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-{os.getpid()}-",
                                    dir=target.parent))
        os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except OSError:
        if old is not None:
            os.rename(old / target.name, target)
            old.rmdir()
        raise
    _fsync_dir(target.parent)
    return old


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def recover_dir(target: str | Path) -> None:
    """Undo what a killed :func:`staged_dir` left beside ``target``: restore, then clean up.

    A ``.old-NAME-PID-*`` while ``target`` is missing holds the previous ``target`` whole
    (the swap was cut between its renames): it is renamed back. Staging and old directories
    of processes no longer running are removed; a running one's are left alone.
    """
    target = Path(os.path.realpath(target))
    if not target.parent.is_dir():
        return
    for kind in ("old", "tmp"):
        for leftover in sorted(target.parent.glob(f".{kind}-{glob.escape(target.name)}-*-*")):
            # NAME-PID-random exactly: not the directories of a sibling such as NAME-2
            owner = re.fullmatch(r"(\d+)-[a-z0-9_]+",
                                 leftover.name[len(f".{kind}-{target.name}-"):])
            if owner is None or not leftover.is_dir() or _running(int(owner[1])):
                continue
            kept = leftover / target.name
            if kind == "old" and kept.is_dir() and not target.exists():
                os.rename(kept, target)
            shutil.rmtree(leftover, ignore_errors=True)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Ctrl-C waits for the end of the block, then comes as it would have (a swap is never cut).

    Only the main thread receives signals; elsewhere the block runs as it is.
    """
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
        if got:
            signal.raise_signal(signal.SIGINT)
