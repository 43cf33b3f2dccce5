#!/usr/bin/env python3
"""The measured rollout figures: both engines on loopback fleets of real sshds.

    python tools/rollout_figures.py [BUNDLE] [--hosts 24] [--big 100] [--parallel 8] [--rounds 3] \
        [--write docs/measurements.md]

Each device is an sshd of its own on 127.0.0.1 with its own HOME (tests/sshd_hosts.Device),
its python3 this Python. BUNDLE defaults to a fresh `edgebn build --bundle` of the default
model. For each engine at the same parallelism (--parallel: edgebn's threads, Ansible's
forks), a rollout of BUNDLE to fresh destinations (every host stages, verifies, self-tests
the staged release, switches, self-tests the live one), then the same again (every host
``unchanged``, nothing sent). Times are wall clock around edgebn.deploy's own call, the
bundle's check and packing included; the median of --rounds rounds, engines alternating.
Then --big hosts through Ansible, once: its time per host. While each runs, a sampler counts
the processes this script started (ssh clients, ControlMasters, Ansible's forks) and their
open file descriptors (the controller's side; the sshds are the devices).

Prints a Markdown table (and the machine's CPU beside it: the figures are this machine's).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' sshd devices

from figure_block import add_write_option, captured  # noqa: E402
from sshd_hosts import Device, make_keys  # noqa: E402

from edgebn.deploy.ansible_engine import Connection, rollout_ansible  # noqa: E402
from edgebn.deploy.policy import RolloutPolicy  # noqa: E402
from edgebn.deploy.release import DeployOptions  # noqa: E402
from edgebn.deploy.rollout import rollout_native  # noqa: E402
from edgebn.deploy.rows import Status  # noqa: E402
from edgebn.deploy.ssh import SshTarget  # noqa: E402


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _descendants(pid: int, skip: set[int]) -> list[int]:
    """Every process under ``pid``, not entering the subtrees of ``skip`` (the sshds)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [p for p in children.get(pid, []) if p not in skip]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c in children.get(p, []) if c not in skip]
    return found


class Sampler:
    """Peak processes and open descriptors under this script, its sshds (the devices) not
    counted: the controller's side, sampled every 0.25 s."""

    def __init__(self, devices: list[Device]) -> None:
        self.skip = {d.proc.pid for d in devices}
        self.procs = self.fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mine = _descendants(os.getpid(), self.skip)
            fds = 0
            for p in mine:
                try:
                    fds += len(os.listdir(f"/proc/{p}/fd"))
                except OSError:
                    pass
            self.procs, self.fds = max(self.procs, len(mine)), max(self.fds, fds)
            time.sleep(0.25)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _bundle(arg: str | None, tmp: Path) -> Path:
    if arg:
        return Path(arg)
    out = tmp / "build"
    subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--out", str(out),
                    "--no-bench", "--no-twin", "--bundle"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out / "bundle"


def _run(engine: str, bundle: Path, targets: list[SshTarget], dest: str, parallel: int,
         devices: list[Device]) -> tuple[float, object, Sampler]:
    options = DeployOptions(dest)
    rollout = RolloutPolicy(parallel=parallel)
    with Sampler(devices) as sampler:
        start = time.perf_counter()
        if engine == "native":
            result = rollout_native(bundle, targets, options, rollout)
        else:
            result = rollout_ansible(bundle, Connection(tuple(targets)), options, rollout)
        wall = time.perf_counter() - start
    return wall, result, sampler


def _check(result, want: Status, n: int) -> None:
    bad = [(r.host, r.status.value, r.reason) for r in result.rows if r.status is not want]
    if len(result.rows) != n or bad:
        raise SystemExit(f"expected {n} {want.value}: {bad[:3]}")


def _max_startups(devices: list[Device]) -> str:
    text = (devices[0].dir / "sshd_config").read_text()
    return next((line.split()[1] for line in text.splitlines() if line.startswith("MaxStartups")),
                "10:30:100 (default)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?")
    ap.add_argument("--hosts", type=int, default=24)
    ap.add_argument("--big", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    add_write_option(ap, "rollout")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with tempfile.TemporaryDirectory(prefix="edgebn-rollout-") as tmp:
        tmp = Path(tmp)
        bundle = _bundle(args.bundle, tmp)
        (tmp / "keys").mkdir()
        keys, user = make_keys(tmp / "keys")
        devices: list[Device] = []
        try:
            for i in range(max(args.hosts, args.big)):
                devices.append(Device(tmp, keys, user, i, sys.executable))
            targets = [SshTarget(d.host, d.port, d.identity, d.options) for d in devices]
            startups = _max_startups(devices)
            rows = []
            walls: dict[tuple[str, str], list[float]] = {}
            peaks: dict[str, tuple[int, int]] = {}
            for rnd in range(args.rounds):
                for engine in (("native", "ansible") if rnd % 2 == 0 else ("ansible", "native")):
                    dest = f"~/r{rnd}-{engine}"
                    for phase, want in (("deploy", Status.deployed), ("re-run", Status.unchanged)):
                        wall, result, sampler = _run(engine, bundle, targets[:args.hosts], dest,
                                                     args.parallel, devices)
                        _check(result, want, args.hosts)
                        walls.setdefault((engine, phase), []).append(wall)
                        old = peaks.get(engine, (0, 0))
                        peaks[engine] = (max(old[0], sampler.procs), max(old[1], sampler.fds))
            for engine in ("native", "ansible"):
                d, r = (statistics.median(walls[(engine, p)]) for p in ("deploy", "re-run"))
                rows.append((args.hosts, engine, d, d / args.hosts, r, *peaks[engine]))
            ratio = (statistics.median(walls[("ansible", "deploy")])
                     / statistics.median(walls[("native", "deploy")]))
            big = []
            for engine in ("ansible", "native"):
                wall, result, sampler = _run(engine, bundle, targets[:args.big], "~/big-" + engine,
                                             args.parallel, devices)
                _check(result, Status.deployed, args.big)
                big.append((args.big, engine, wall, wall / args.big, None, sampler.procs,
                            sampler.fds))
        finally:
            for d in devices:
                d.kill()
    with captured(args.write, "rollout", packages=('ansible-core',)):
        print(f"CPU: {_cpu()}, {os.cpu_count()} cores (shared); "
              f"Python {platform.python_version()}; "
              f"{_versions()}; --parallel {args.parallel} (threads / Ansible forks); "
              f"sshd MaxStartups {startups} each, one sshd per host; open files limit "
              f"{soft}/{hard}\n")
        print("| hosts | engine | deploy wall s | s per host | re-run (all unchanged) wall s "
              "| peak processes | peak open fds |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for n, engine, d, per, r, procs, fds in rows + big:
            rerun = "-" if r is None else f"{r:.1f}"
            print(f"| {n} | {engine} | {d:.1f} | {per:.3f} | {rerun} | {procs} | {fds} |")
        print(f"\n{args.hosts} hosts: ansible / native deploy wall time = {ratio:.2f} "
              f"(median of {args.rounds} rounds each)")
    return 0


def _versions() -> str:
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip().split(",")[0]
    try:
        from importlib.metadata import version

        ansible = f"ansible-core {version('ansible-core')}"
    except Exception:
        ansible = "ansible-core not installed"
    return f"{ansible}, {ssh}"


if __name__ == "__main__":
    sys.exit(main())
