"""Run a bundle's self-test on an emulated 64-bit Raspberry Pi OS, without owning a Pi.

The userland is Debian bookworm arm64 (what Raspberry Pi OS 64-bit is built on:
Python 3.11, NumPy 1.24 from Debian's packages), made by ``debootstrap --foreign``,
which downloads and unpacks but cannot configure foreign packages. The rest is done
by hand:

- every package it fetched is unpacked with ``dpkg-deb`` (``--include`` packages are
  only downloaded by a foreign first stage);
- Debian's BLAS and LAPACK live behind update-alternatives, which never ran, so the
  ``libblas.so.3`` and ``liblapack.so.3`` links that NumPy loads are made here;
- ``qemu-aarch64-static -L ROOT`` looks up absolute paths inside ROOT first, so the
  userland gets a ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` of a Raspberry Pi 4
  (4 x Cortex-A72). Without them the programs see the x86 host's CPU description, and
  ai-edge-litert's CPU detection (cpuinfo, used by XNNPACK) crashes with SIGSEGV while
  creating the interpreter; tflite-runtime 2.14 runs either way.

The runtimes come from PyPI as aarch64 wheels, unpacked beside the userland and put on
PYTHONPATH, over Debian's NumPy. Userland and wheels are cached in
``pi-bookworm-arm64`` of edgebn's cache directory (``$EDGEBN_CACHE``, default
``~/.cache/edgebn``; the older ``EDGEBN_PI_CACHE`` is still read, see
:func:`pi_cache_dir`); a first run downloads about 60 MB.
Latency under emulation means nothing; correctness does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgebn.errors import EdgebnError
from edgebn.machine import cache_dir
from edgebn.runtime.backends import Backend

SUITE = "bookworm"
MIRROR = os.environ.get("EDGEBN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEB_PACKAGES = ("python3", "python3-numpy", "openssh-client")  # ssh-keygen: bundle signatures
PYTHON = "usr/bin/python3.11"
# runtime -> the pip requirement of its aarch64 wheel (no dependencies: the interpreter
# modules need only NumPy, which Debian provides, as on the Pi)
RUNTIMES = {Backend.tflite_runtime: "tflite-runtime==2.14.0",
            Backend.ai_edge_litert: "ai-edge-litert"}
WHEEL_PLATFORMS = ("manylinux_2_34_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
                   "manylinux2014_aarch64")
SELFTEST_TIMEOUT_S = 600
# The Raspberry Pi 4's core. qemu's default ("max") adds every newer extension, and
# with it ai-edge-litert 2.3's int8 kernels return wrong outputs under qemu 7.2
# (measured: 255 steps off, top-1 agreement 0); as a Cortex-A72 they are exact.
QEMU_CPU = os.environ.get("EDGEBN_QEMU_CPU", "cortex-a72")
READY = ".edgebn-ready"


class EmulationUnavailable(EdgebnError):
    """The emulator cannot run here: a tool is missing, or Debian's packages or PyPI are unreachable."""


@dataclass(frozen=True)
class EmulatedRun:
    runtime: str
    passed: bool
    exit_code: int | None
    seconds: float
    selftest: dict[str, Any] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "passed": self.passed, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 2), "selftest": self.selftest, "error": self.error}


@dataclass(frozen=True)
class EmulationResult:
    bundle: str
    platform: str
    runs: tuple[EmulatedRun, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    def to_json(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "platform": self.platform, "passed": self.passed,
                "runs": [r.to_json() for r in self.runs]}


def pi_cache_dir() -> Path:
    """The userland and wheels: ``pi-bookworm-arm64`` in edgebn's cache directory
    (:func:`edgebn.machine.cache_dir`, ``$EDGEBN_CACHE``).

    ``$EDGEBN_PI_CACHE``, when set, is still read and names this directory itself; it is
    deprecated in favour of ``EDGEBN_CACHE``.
    """
    return Path(os.environ.get("EDGEBN_PI_CACHE") or cache_dir() / "pi-bookworm-arm64")


def require_tools() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("debootstrap", "qemu-aarch64-static",
                                                   "dpkg-deb", "tar")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        raise EmulationUnavailable(
            f"missing {', '.join(missing)}: sudo apt-get install qemu-user-static debootstrap "
            "(tools/pi-emulate installs them)")
    return tools  # type: ignore[return-value]


def _run(cmd: list[str], timeout: float, what: str, **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as exc:
        raise EmulationUnavailable(f"{what} timed out after {timeout:.0f} s") from exc


_OFFLINE_HINTS = ("Failed getting release file", "Couldn't download", "Temporary failure",
                  "Name or service not known", "Could not resolve", "Connection refused",
                  "Network is unreachable", "No matching distribution", "Connection timed out",
                  "Max retries exceeded", "Failed to establish")


def _unreachable(text: str) -> bool:
    return any(h in text for h in _OFFLINE_HINTS)


def userland(cache: Path | None = None, log=lambda msg: None) -> Path:
    """The cached arm64 bookworm root, made once (about 25 s and 50 MB of downloads)."""
    require_tools()
    cache = Path(cache or pi_cache_dir())
    root = cache / "root"
    made = f"{SUITE} arm64 {' '.join(DEB_PACKAGES)}\n"
    if (root / READY).is_file() and (root / READY).read_text() == made:
        return root  # (a root made with other packages is made again)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"root.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap {SUITE} arm64 into {tmp} from {MIRROR}")
    done = _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                 f"--include={','.join(DEB_PACKAGES)}", SUITE, str(tmp), MIRROR], 1800,
                "debootstrap")
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["(no output)"]
        if _unreachable(done.stdout + done.stderr):
            raise EmulationUnavailable(f"Debian's packages cannot be reached from here "
                                       f"({MIRROR}): {tail[0]}")
        raise EdgebnError(f"debootstrap failed (exit {done.returncode}): {tail[0]}")
    _unpack_debs(tmp)
    _blas_links(tmp)
    _raspberry_pi_cpu(tmp)
    (tmp / READY).write_text(made)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def _unpack_debs(root: Path) -> None:
    """Unpack what the foreign first stage only downloaded; keep /lib -> usr/lib a link."""
    archives = root / "var" / "cache" / "apt" / "archives"
    names = (root / "debootstrap" / "base").read_text().split()
    for name in names:
        debs = sorted(archives.glob(f"{name}_*.deb"))
        if not debs:
            raise EdgebnError(f"debootstrap did not fetch {name}")
        deb = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE)
        tar = subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(root)],
                             stdin=deb.stdout, capture_output=True)
        deb.stdout.close()
        if deb.wait() != 0 or tar.returncode != 0:
            raise EdgebnError(f"cannot unpack {debs[0].name}: {tar.stderr.decode()[-200:]}")


def _blas_links(root: Path) -> None:
    """update-alternatives never ran: make the links NumPy loads, as it would have."""
    lib = root / "usr" / "lib" / "aarch64-linux-gnu"
    for name in ("blas", "lapack"):
        target = lib / name / f"lib{name}.so.3"
        link = lib / f"lib{name}.so.3"
        if target.exists() and not link.exists():
            link.symlink_to(f"{name}/lib{name}.so.3")


def _raspberry_pi_cpu(root: Path) -> None:
    """/proc/cpuinfo and /sys/devices/system/cpu of a Raspberry Pi 4 (4 x Cortex-A72)."""
    proc = root / "proc"
    if proc.is_symlink() or proc.is_file():
        proc.unlink()
    proc.mkdir(exist_ok=True)
    core = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
            "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
            "CPU part\t: 0xd08\nCPU revision\t: 3\n\n")
    (proc / "cpuinfo").write_text("".join(core.format(i=i) for i in range(4))
                                  + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n")
    cpu = root / "sys" / "devices" / "system" / "cpu"
    files = {"possible": "0-3", "present": "0-3", "online": "0-3", "kernel_max": "3"}
    for i in range(4):
        d = f"cpu{i}"
        files |= {f"{d}/topology/physical_package_id": "0", f"{d}/topology/cluster_cpus_list": "0-3",
                  f"{d}/topology/core_siblings_list": "0-3", f"{d}/topology/thread_siblings_list": str(i),
                  f"{d}/cpufreq/cpuinfo_max_freq": "1800000", f"{d}/cpufreq/cpuinfo_min_freq": "600000"}
        caches = [(1, "Data", "32K", str(i)), (1, "Instruction", "48K", str(i)),
                  (2, "Unified", "1024K", "0-3")]
        for k, (level, kind, size, shared) in enumerate(caches):
            files |= {f"{d}/cache/index{k}/level": str(level), f"{d}/cache/index{k}/type": kind,
                      f"{d}/cache/index{k}/size": size, f"{d}/cache/index{k}/shared_cpu_list": shared}
    for rel, text in files.items():
        path = cpu / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def check_runtimes(runtimes) -> tuple[Backend, ...]:
    """The device runtimes named, as Backends; refuse one a Pi cannot install."""
    out = []
    for r in runtimes:
        if r not in {b.value for b in RUNTIMES} | set(RUNTIMES):
            raise EdgebnError(f"unknown device runtime {getattr(r, 'value', r)!r}: choose from "
                              f"{', '.join(b.value for b in RUNTIMES)}")
        out.append(Backend(r))
    return tuple(out)


def site_packages(runtime: Backend, cache: Path | None = None, log=lambda msg: None) -> Path:
    """The runtime's aarch64 wheel from PyPI, unpacked into a directory for PYTHONPATH."""
    (runtime,) = check_runtimes((runtime,))
    cache = Path(cache or pi_cache_dir())
    site = cache / f"site-{runtime.value}"
    if (site / READY).is_file():
        return site
    wheels = cache / "wheels" / runtime.value
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"pip download {RUNTIMES[runtime]} (aarch64, cp311)")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.11", "--implementation", "cp", "--dest", str(wheels),
           *[a for p in WHEEL_PLATFORMS for a in ("--platform", p)], RUNTIMES[runtime]]
    done = _run(cmd, 900, "pip download")
    if done.returncode != 0:
        text = done.stdout + done.stderr
        tail = text.strip().splitlines()[-1:] or ["(no output)"]
        if _unreachable(text):
            raise EmulationUnavailable(f"PyPI cannot be reached from here for {RUNTIMES[runtime]}: "
                                       f"{tail[0]}")
        raise EdgebnError(f"pip download {RUNTIMES[runtime]} failed: {tail[0]}")
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise EdgebnError(f"pip download {RUNTIMES[runtime]} left no wheel in {wheels}")
    tmp = cache / f"site-{runtime.value}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(tmp)
    (tmp / READY).write_text(" ".join(w.name for w in found) + "\n")
    shutil.rmtree(site, ignore_errors=True)
    os.replace(tmp, site)
    return site


def run_selftest(bundle: Path, runtime: Backend, root: Path, site: Path,  # noqa: PLR0913
                 timeout: float = SELFTEST_TIMEOUT_S, trust: Path | None = None) -> EmulatedRun:
    """``predict.py --selftest --json`` under qemu-aarch64 in the userland, on ``runtime``.

    With ``trust`` (an allowed-signers file), the device trusts those keys, and runs the
    bundle as a trusting device does: through the verifier installed beside the trust file
    (edgebn/deploy/device/verify.py, as ``edgebn deploy --trust`` installs it), which checks the
    signature with the userland's own arm64 ``ssh-keygen`` (Debian's openssh-client, run
    through qemu too, as qemu-user without binfmt cannot exec it), the exact file list and
    every hash before predict.py runs. (``-s``, not ``-I``: the runtime comes on PYTHONPATH
    here, where a Pi has it in a venv.)
    """
    qemu = shutil.which("qemu-aarch64-static")
    bundle = Path(bundle).resolve()
    script = [str(bundle / "predict.py")]
    if trust is not None:
        verifier = Path(trust).parent / "verify.py"
        shutil.copyfile(Path(__file__).parent / "device" / "verify.py", verifier)
        script = ["-s", str(verifier), "run", str(bundle)]
    cmd = [qemu, "-L", str(root), str(root / PYTHON), *script,
           "--selftest", "--json", "--threads", "4", "--runtime", runtime.value]
    env = {"PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin",
           "HOME": "/tmp", "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU}
    if trust is not None:
        env |= {"EDGEBN_TRUST": str(trust),
                "EDGEBN_SSH_KEYGEN": shlex.join([qemu, "-L", str(root),
                                                 str(root / "usr/bin/ssh-keygen")])}
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return EmulatedRun(runtime.value, False, None, time.perf_counter() - start,
                           error=f"timed out after {timeout:.0f} s")
    seconds = time.perf_counter() - start
    try:
        doc = json.loads(done.stdout)["selftest"]
    except (ValueError, KeyError, TypeError):
        err = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return EmulatedRun(runtime.value, False, done.returncode, seconds, error=err)
    return EmulatedRun(runtime.value, done.returncode == 0 and doc.get("passed") is True,
                       done.returncode, seconds, selftest=doc)


def emulate(bundle: str | Path, runtimes=tuple(RUNTIMES), cache: Path | None = None,
            log=lambda msg: None) -> EmulationResult:
    """The bundle's self-test on an emulated arm64 Raspberry Pi, once per runtime."""
    bundle = Path(bundle)
    if not (bundle / "predict.py").is_file() or not (bundle / "manifest.json").is_file():
        raise EdgebnError(f"{bundle}: not a bundle (no predict.py and manifest.json): "
                          "run edgebn bundle")
    runtimes = check_runtimes(runtimes)
    root = userland(cache, log)
    qemu = _run([shutil.which("qemu-aarch64-static"), "--version"], 30, "qemu --version")
    version = qemu.stdout.split("\n")[0].replace("qemu-aarch64 version ", "")
    runs = []
    for runtime in runtimes:
        site = site_packages(runtime, cache, log)
        log(f"self-test with {runtime.value} under qemu-aarch64")
        runs.append(run_selftest(bundle, runtime, root, site))
    platform = (f"Debian {SUITE} arm64 userland (python3, python3-numpy), qemu-aarch64-static "
                f"{version.split()[0] if version else '?'} -cpu {QEMU_CPU}, Raspberry Pi 4 "
                "CPU description")
    return EmulationResult(str(bundle), platform, tuple(runs))
