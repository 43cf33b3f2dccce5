#!/usr/bin/env python3
"""Measured figures written into the pages that show them, stamped with where they came from.

A page holds each figure between two HTML comments, invisible once rendered:

    <!-- figure: NAME -->
    ...the table, then one stamp line...
    <!-- /figure: NAME -->

A script under tools/ measures, prints its table as before, and with ``--write PAGE``
replaces what lies between the markers (:func:`write_block`) with the table and a stamp: the
date, the CPU, the git commit the figures were measured on, and the versions of the packages
that made them. A block not measured yet holds one line, ``*Not measured yet: `COMMAND`
fills this block.*``; tests/test_docs.py holds every page to these rules.

    python tools/figure_block.py                # every block: measured (when, where) or waiting
    python tools/figure_block.py --waiting      # only the commands that fill the waiting ones
    python tools/figure_block.py --check        # exit 1 while a block waits or has no stamp
                                                # (.ci/run)

Standard library only: the stamp reads versions from the installed distributions' metadata,
never importing TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("README.md", "docs")  # where figure blocks may live
START = re.compile(r"^<!-- figure: ([a-z0-9-]+) -->$", re.M)
END = "<!-- /figure: {name} -->"
STAMP = re.compile(r"^<sub>Measured (?P<date>\d{4}-\d{2}-\d{2}) on (?P<cpu>.+?) at commit "
                   r"(?P<commit>[0-9a-f]{7,40})(?P<dirty> with uncommitted changes)?; "
                   r"(?P<versions>.+?); by `(?P<command>[^`]+)`\.</sub>$", re.M)
WAITING = re.compile(r"^\*Not measured yet: `(?P<command>python tools/[\w-]+\.py[^`]*)` fills this "
                     r"block\.\*$")
# Always in the stamp (when installed); a script names what else made its figures.
PACKAGES = ("numpy", "tensorflow", "ai-edge-litert")


def cpu() -> str:
    """The CPU's model name and how many cores this process may use."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                name = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name} ({cores} cores)"


def commit() -> tuple[str, bool]:
    """HEAD of this repository, and whether tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    return head, bool(dirty)


def versions(packages: tuple[str, ...] = ()) -> str:
    found = [f"Python {platform.python_version()}"]
    for dist in dict.fromkeys(PACKAGES + tuple(packages)):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return ", ".join(found)


def stamp(command: str | None = None, packages: tuple[str, ...] = ()) -> str:
    """The line under a figure: when, on what, at which commit, with which packages, by what."""
    head, dirty = commit()
    command = command or "python " + shlex.join([_relative(sys.argv[0]), *sys.argv[1:]])
    return (f"<sub>Measured {dt.date.today().isoformat()} on {cpu()} at commit {head[:12]}"
            f"{' with uncommitted changes' if dirty else ''}; {versions(packages)}; "
            f"by `{command}`.</sub>")


def _relative(path: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(ROOT))
    return path


def waiting(command: str) -> str:
    """What a block holds until its script has run."""
    return f"*Not measured yet: `{command}` fills this block.*"


def span(text: str, name: str) -> tuple[int, int]:
    """Where block NAME's content lies in ``text``: after its start marker, before its end."""
    starts = [m for m in START.finditer(text) if m.group(1) == name]
    end_marker = END.format(name=name)
    if len(starts) != 1 or text.count(end_marker) != 1:
        raise SystemExit(f"figure block {name!r}: expected one '<!-- figure: {name} -->' and one "
                         f"'{end_marker}', found {len(starts)} and {text.count(end_marker)}")
    begin, end = starts[0].end(), text.index(end_marker)
    if end < begin:
        raise SystemExit(f"figure block {name!r}: its end marker comes before its start")
    return begin, end


def tables_apart(markdown: str) -> str:
    """A blank line before each table that follows a line of text: Markdown renders a table
    only as a block of its own."""
    lines, out = markdown.strip().splitlines(), []
    for line in lines:
        if line.startswith("|") and out and out[-1].strip() and not out[-1].startswith("|"):
            out.append("")
        out.append(line)
    return "\n".join(out)


def write_block(page: str | Path, name: str, markdown: str, command: str | None = None,
                packages: tuple[str, ...] = ()) -> Path:
    """Replace block NAME of ``page`` with ``markdown`` and the stamp; the page must hold it."""
    page = Path(page)
    text = page.read_text(encoding="utf-8")
    begin, end = span(text, name)
    body = f"\n{tables_apart(markdown)}\n\n{stamp(command, packages)}\n"
    tmp = page.with_name(f".{page.name}.tmp")
    tmp.write_text(text[:begin] + body + text[end:], encoding="utf-8")
    tmp.replace(page)
    print(f"wrote figure {name!r} into {page}", file=sys.stderr)
    return page


class _Tee(io.TextIOBase):
    def __init__(self, out: io.TextIOBase) -> None:
        self.out, self.seen = out, io.StringIO()

    def write(self, s: str) -> int:
        self.seen.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def captured(pages: list[str] | None, name: str, packages: tuple[str, ...] = ()) -> Iterator[None]:
    """Print as always; when the block completes and ``pages`` are given, write what was
    printed inside it into block NAME of each page."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield
    for page in pages or ():
        write_block(page, name, tee.seen.getvalue(), packages=packages)


def add_write_option(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--write", action="append", metavar="PAGE",
                        help=f"also write the figure into block '{name}' of PAGE (repeatable)")


# ---------------------------------------------------------------- every block, for the lead


@dataclass(frozen=True)
class Block:
    page: Path
    name: str
    content: str

    @property
    def stamp(self) -> re.Match[str] | None:
        return STAMP.search(self.content)

    @property
    def waiting(self) -> re.Match[str] | None:
        return WAITING.match(self.content.strip())


def pages(root: Path = ROOT) -> list[Path]:
    found = []
    for where in PAGES:
        path = root / where
        found += sorted(path.rglob("*.md")) if path.is_dir() else [path]
    return found


def blocks(root: Path = ROOT) -> list[Block]:
    found = []
    for page in pages(root):
        text = page.read_text(encoding="utf-8")
        for m in START.finditer(text):
            begin, end = span(text, m.group(1))
            found.append(Block(page.relative_to(root), m.group(1), text[begin:end]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", action="store_true",
                        help="only the commands of waiting blocks")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 while any block waits for its script or has no stamp")
    args = parser.parse_args()
    found = blocks()
    for b in found:
        if b.waiting:
            print(b.waiting["command"] if args.waiting else f"{b.page} {b.name}: waiting for "
                  f"`{b.waiting['command']}`")
        elif not args.waiting:
            s = b.stamp
            print(f"{b.page} {b.name}: " + (f"measured {s['date']} on {s['cpu']} at {s['commit']}"
                                            if s else "NO STAMP"))
    if args.check and any(b.waiting or not b.stamp for b in found):
        raise SystemExit("figures not measured yet: run the commands above "
                         "(python tools/figure_block.py --waiting lists them)")


if __name__ == "__main__":
    main()
