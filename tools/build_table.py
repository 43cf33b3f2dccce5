#!/usr/bin/env python3
"""What `edgebn build` shows, as a table for the README: a fresh build, run as a user runs it.

    python tools/build_table.py [--write README.md]
    python tools/build_table.py --lr-sweep 1,3,10 --plots --block lr-sweep \\
        --write docs/measurements.md
    python tools/build_table.py --from BUILD_DIR          # print a finished build's table

Runs ``edgebn build --out TMP`` in a fresh process (the Quickstart's command; any option this
script does not know is passed on to it), then prints the summary table of its report.md: the
rows ``edgebn build`` shows in the terminal. With ``--lr-sweep`` the build trains the BN model
and its BN-free baseline at each multiple of the learning rate, and a second table gives each
rate's rows from report.json's ``lr_sweep``. ``--plots`` copies the build's PNGs beside PAGE
(``figures/BLOCK-NAME.png``) and shows them in the block.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from figure_block import add_write_option, write_block


def summary_table(report_md: str) -> str:
    """report.md's first table (metric | value): what the terminal showed."""
    lines = report_md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| metric | value |"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(lines[start:end])


def _cell(value: object, fmt: str) -> str:
    return "not reached" if value is None else format(value, fmt)


def sweep_table(sweep: dict) -> str:
    """One row per learning rate: each model's best validation accuracy and its way to the
    target."""
    lines = [f"Target: the BN-free baseline's best validation accuracy at any rate, "
             f"{sweep['target_val_accuracy']:.4f}. Best rate: BN x{sweep['best']['bn']:g}, "
             f"BN-free x{sweep['best']['twin']:g}.", "",
             "| rate | model | best val accuracy | epochs to target | steps to target | "
             "seconds to target | seconds per epoch |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for rate in sweep["rates"]:
        for key, label in (("bn", "BN"), ("twin", "BN-free baseline")):
            r = rate[key]
            lines.append(f"| x{rate['multiplier']:g} ({rate['learning_rate']:g}) | {label} | "
                         f"{r['best_val_accuracy']:.4f} | {_cell(r['epochs_to_target'], 'd')} | "
                         f"{_cell(r['steps_to_target'], 'd')} | "
                         f"{_cell(r['seconds_to_target'], '.1f')} | {r['seconds_per_epoch']:.2f} |")
    ratios = sweep["best_against_best"]["ratios"]
    lines += ["", "Each at its own best rate: " + ", ".join(
        f"{what} " + ("n/a" if ratios[key] is None else f"{ratios[key]:.2f}x") for key, what in (
            ("fewer_steps", "BN needs fewer steps by"),
            ("epoch_slowdown", "a BN epoch is slower by"),
            ("wall_speedup", "wall-time speedup to the target")))]
    return "\n".join(lines)


def copy_plots(report: dict, build: Path, page: Path, block: str) -> list[str]:
    """The build's PNGs beside ``page`` (figures/BLOCK-NAME.png), as Markdown images."""
    shown = []
    figures = page.parent / "figures"
    for name, plot in (report.get("plots") or {}).items():
        figures.mkdir(exist_ok=True)
        target = figures / f"{block}-{name}.png"
        shutil.copyfile(build / plot["path"], target)
        shown.append(f"![{name}](figures/{target.name})")
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="build", type=Path, help="a finished build directory")
    parser.add_argument("--lr-sweep", help="passed to edgebn build: multiples of the learning rate")
    parser.add_argument("--block", default="build",
                        help="the figure block to write (default: build)")
    parser.add_argument("--plots", action="store_true",
                        help="also show the build's PNGs in the block")
    add_write_option(parser, "build")
    args, passed = parser.parse_known_args()
    build = args.build
    if build is None:
        build = Path(tempfile.mkdtemp(prefix="edgebn-build-table-")) / "build"
        extra = passed + (["--lr-sweep", args.lr_sweep] if args.lr_sweep else [])
        subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--out", str(build),
                        *extra],
                       check=True, stdout=subprocess.DEVNULL)
    elif passed or args.lr_sweep:
        parser.error(f"--from reads a finished build; these would not reach it: {passed}")
    report = json.loads((build / "report.json").read_text(encoding="utf-8"))
    markdown = summary_table((build / "report.md").read_text(encoding="utf-8"))
    if report.get("lr_sweep"):
        markdown += "\n\n" + sweep_table(report["lr_sweep"])
    print(markdown)
    for page in args.write or ():
        images = copy_plots(report, build, Path(page), args.block) if args.plots else []
        write_block(page, args.block, markdown + "".join(f"\n\n{image}" for image in images))


if __name__ == "__main__":
    main()
