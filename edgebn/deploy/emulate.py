"""Run a bundle's self-test on an emulated 64-bit Raspberry Pi OS, without owning a Pi.

Both releases people run: **trixie** (Debian 13, what Raspberry Pi Imager installs now:
Python 3.13, NumPy 2.2) and **bookworm** (Debian 12: Python 3.11, NumPy 1.24). Each userland
is Debian arm64 made by ``debootstrap --foreign``, which downloads and unpacks but cannot
configure foreign packages. The rest is done by hand:

- every package it fetched is unpacked with ``dpkg-deb`` (``--include`` packages are
  only downloaded by a foreign first stage);
- Debian's BLAS and LAPACK live behind update-alternatives, which never ran, so the
  ``libblas.so.3`` and ``liblapack.so.3`` links that NumPy loads are made here;
- ``qemu-aarch64-static -L ROOT`` looks up absolute paths inside ROOT first, so the
  userland gets a ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` of a Raspberry Pi 4
  (4 x Cortex-A72). Without them the programs see the x86 host's CPU description, and
  ai-edge-litert's CPU detection (cpuinfo, used by XNNPACK) crashes with SIGSEGV while
  creating the interpreter; tflite-runtime 2.14 runs either way.

**The runtime is installed by the bundle's own install steps**, as its README says, run by
the emulated arm64 Python: ``python3 -m venv --system-site-packages`` (``--copies``: the
venv lives outside the userland; ``--without-pip``, with Debian's python3-pip seen through
the system site-packages instead, because qemu-user cannot exec the arm64 child process
ensurepip starts), then ``pip install -r requirements.txt`` — whose markers pick
ai-edge-litert on Python 3.12+ and tflite-runtime 2.14 with NumPy < 2 on 3.11 — or, for
ai-edge-litert on bookworm, the README's ``pip install ai-edge-litert``. So what is proven
is the README. A runtime that has no wheel for the release's Python is refused in one
line. Userlands and venvs are cached in ``pi-<release>-arm64`` of edgebn's cache directory
(``$EDGEBN_CACHE``, default ``~/.cache/edgebn``; the older ``EDGEBN_PI_CACHE`` still names
bookworm's, see :func:`pi_cache_dir`). Latency under emulation means nothing; correctness does.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError
from edgebn.machine import cache_dir
from edgebn.runtime.backends import Backend

MIRROR = os.environ.get("EDGEBN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# python3-venv: the README's venv; python3-pip: its pip (see runtime_venv); openssh-client:
# ssh-keygen checks bundle signatures
DEB_PACKAGES = ("python3", "python3-numpy", "python3-venv", "python3-pip", "openssh-client")


@dataclass(frozen=True)
class PiOS:
    """One Raspberry Pi OS release, as Debian arm64: its suite and its Python."""

    suite: str
    python: str  # major.minor
    runtimes: tuple[Backend, ...]  # the runtimes that have a wheel for that Python

    @property
    def interpreter(self) -> str:
        return f"usr/bin/python{self.python}"


PI_OS = {"trixie": PiOS("trixie", "3.13", (Backend.ai_edge_litert,)),
         "bookworm": PiOS("bookworm", "3.11", (Backend.tflite_runtime, Backend.ai_edge_litert))}
DEFAULT_OS = "trixie"  # what Raspberry Pi Imager installs now
# runtime -> its pip requirement (what the bundle's README installs it with)
RUNTIMES = {Backend.tflite_runtime: "tflite-runtime==2.14.0",
            Backend.ai_edge_litert: "ai-edge-litert"}
SELFTEST_TIMEOUT_S = 600
INSTALL_TIMEOUT_S = 1800
# The Raspberry Pi 4's core. qemu's default ("max") adds every newer extension, and
# with it ai-edge-litert 2.3's int8 kernels return wrong outputs under qemu 7.2
# (measured: 255 steps off, top-1 agreement 0); as a Cortex-A72 they are exact.
QEMU_CPU = os.environ.get("EDGEBN_QEMU_CPU", "cortex-a72")
READY = ".edgebn-ready"


class EmulationUnavailable(EdgebnError):
    """The emulator cannot run here: a tool is missing, or Debian's packages or PyPI are
    unreachable."""


def pi_os(name: str) -> PiOS:
    if name not in PI_OS:
        raise EdgebnError(f"unknown Raspberry Pi OS release {name!r}: choose from "
                          f"{', '.join(PI_OS)}")
    return PI_OS[name]


def check_os_runtimes(name: str, runtimes) -> tuple[Backend, ...]:
    """The runtimes asked for, refused in one line where the release has no wheel for them."""
    release, chosen = pi_os(name), check_runtimes(runtimes)
    for r in chosen:
        if r not in release.runtimes:
            raise EdgebnError(f"{r.value} has no wheel for Python {release.python} (Raspberry Pi "
                              f"OS {release.suite}): use "
                              f"{', '.join(b.value for b in release.runtimes)}")
    return chosen


@dataclass(frozen=True)
class EmulatedRun:
    runtime: str
    passed: bool
    exit_code: int | None
    seconds: float
    selftest: JsonDict | None = None
    error: str | None = None

    def to_json(self) -> JsonDict:
        return {"runtime": self.runtime, "passed": self.passed, "exit_code": self.exit_code,
                "seconds": round(self.seconds, 2), "selftest": self.selftest, "error": self.error}


@dataclass(frozen=True)
class EmulationResult:
    bundle: str
    platform: str
    runs: tuple[EmulatedRun, ...] = field(default_factory=tuple)
    os: str = DEFAULT_OS

    @property
    def passed(self) -> bool:
        return bool(self.runs) and all(r.passed for r in self.runs)

    def to_json(self) -> JsonDict:
        return {"bundle": self.bundle, "platform": self.platform, "os": self.os,
                "passed": self.passed, "runs": [r.to_json() for r in self.runs]}


def pi_cache_dir(os_name: str = DEFAULT_OS) -> Path:
    """A release's userland and venvs: ``pi-<release>-arm64`` in edgebn's cache directory
    (:func:`edgebn.machine.cache_dir`, ``$EDGEBN_CACHE``).

    ``$EDGEBN_PI_CACHE``, when set, is still read and names bookworm's directory itself; it
    is deprecated in favour of ``EDGEBN_CACHE``.
    """
    suite = pi_os(os_name).suite
    if suite == "bookworm" and os.environ.get("EDGEBN_PI_CACHE"):
        return Path(os.environ["EDGEBN_PI_CACHE"])
    return cache_dir() / f"pi-{suite}-arm64"


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


# what a fetch that never reached its server prints ("No matching distribution" is not one:
# pip says it too when the index answered and has no wheel for this Python)
_OFFLINE_HINTS = ("Failed getting release file", "Couldn't download", "Temporary failure",
                  "Name or service not known", "Could not resolve", "Connection refused",
                  "Network is unreachable", "Connection timed out", "Max retries exceeded",
                  "Failed to establish", "NewConnectionError")


def _unreachable(text: str) -> bool:
    return any(h in text for h in _OFFLINE_HINTS)


def userland(cache: Path | None = None, log=lambda msg: None, os_name: str = DEFAULT_OS) -> Path:
    """The cached arm64 root of a release, made once (about 25 s and 50 MB of downloads)."""
    require_tools()
    suite = pi_os(os_name).suite
    cache = Path(cache or pi_cache_dir(os_name))
    root = cache / "root"
    made = f"{suite} arm64 {' '.join(DEB_PACKAGES)} thermal\n"
    if (root / READY).is_file() and (root / READY).read_text() == made:
        return root  # (a root made with other packages is made again)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"root.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"debootstrap {suite} arm64 into {tmp} from {MIRROR}")
    done = _run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                 f"--include={','.join(DEB_PACKAGES)}", suite, str(tmp), MIRROR], 1800,
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
    """/proc/cpuinfo, /sys/devices/system/cpu and a thermal zone of a Raspberry Pi 4
    (4 x Cortex-A72 at 1.8 GHz, 48.3 °C): what predict.py's bench reads there."""
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
        files |= {f"{d}/topology/physical_package_id": "0",
                  f"{d}/topology/cluster_cpus_list": "0-3",
                  f"{d}/topology/core_siblings_list": "0-3",
                  f"{d}/topology/thread_siblings_list": str(i),
                  f"{d}/cpufreq/cpuinfo_max_freq": "1800000",
                  f"{d}/cpufreq/cpuinfo_min_freq": "600000"}
        caches = [(1, "Data", "32K", str(i)), (1, "Instruction", "48K", str(i)),
                  (2, "Unified", "1024K", "0-3")]
        for k, (level, kind, size, shared) in enumerate(caches):
            files |= {f"{d}/cache/index{k}/level": str(level), f"{d}/cache/index{k}/type": kind,
                      f"{d}/cache/index{k}/size": size,
                      f"{d}/cache/index{k}/shared_cpu_list": shared}
    files |= {"cpu0/cpufreq/scaling_cur_freq": "1800000"}
    thermal = root / "sys" / "class" / "thermal" / "thermal_zone0"  # a Pi 4 at rest
    thermal.mkdir(parents=True, exist_ok=True)
    (thermal / "temp").write_text("48312\n")
    (thermal / "type").write_text("cpu-thermal\n")
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


def _qemu(root: Path, *args: str) -> list[str]:
    return [shutil.which("qemu-aarch64-static") or "qemu-aarch64-static", "-L", str(root), *args]


def _env(cache: Path) -> dict[str, str]:
    """A clean environment for the emulated programs; this machine's pip settings (an index,
    a proxy) come along, as a Pi's would be its own."""
    passed = {k: v for k, v in os.environ.items()
              if k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    return passed | {"PYTHONNOUSERSITE": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp",
                     "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                     "PIP_CACHE_DIR": str(cache / "pip-cache")}


def install_steps(os_name: str, runtime: Backend) -> list[list[str]]:
    """The bundle README's install steps for ``runtime`` on the release, as pip arguments."""
    release = pi_os(os_name)
    (runtime,) = check_os_runtimes(os_name, (runtime,))
    if runtime is Backend.ai_edge_litert and release.python == "3.11":
        return [["install", "ai-edge-litert"]]  # the README's alternative on bookworm
    return [["install", "-r", "requirements.txt"]]  # the markers pick the runtime


def runtime_venv(bundle: Path, runtime: Backend, root: Path, os_name: str = DEFAULT_OS,
                 cache: Path | None = None, log=lambda msg: None) -> Path:
    """A venv made as the bundle's README says, by the emulated Python; its python's path."""
    cache = Path(cache or pi_cache_dir(os_name))
    steps = install_steps(os_name, runtime)
    requirements = (bundle / "requirements.txt").read_text(encoding="utf-8")
    key = json.dumps([steps, requirements])
    venv = cache / f"venv-{runtime.value}"
    python = venv / "bin" / "python3"
    if (venv / READY).is_file() and (venv / READY).read_text() == key:
        return python
    release = pi_os(os_name)
    tmp = cache / f"venv-{runtime.value}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"python{release.python} -m venv --system-site-packages, then pip "
        f"{' '.join(steps[0])} (the bundle's README, under qemu-aarch64)")
    # qemu-user cannot exec an arm64 program from an emulated one (no binfmt here), and the
    # venv's ensurepip runs pip in a child process: the venv is made --without-pip, and pip is
    # Debian's python3-pip, which the venv sees through --system-site-packages.
    commands = [_qemu(root, str(root / release.interpreter), "-m", "venv", "--copies",
                      "--without-pip", "--system-site-packages", str(tmp))]
    commands += [_qemu(root, str(tmp / "bin" / "python3"), "-m", "pip", *step)
                 for step in steps]
    for cmd in commands:
        done = _run(cmd, INSTALL_TIMEOUT_S, "the bundle's install steps", cwd=bundle,
                    env=_env(cache))
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            text = done.stdout + done.stderr
            tail = (text.strip().splitlines() or ["(no output)"])[-1]
            no_version = "No matching distribution" in text or "Could not find a version" in text
            if _unreachable(text) or (no_version and not _index_answers(runtime)):
                raise EmulationUnavailable(f"PyPI cannot be reached from here for "
                                           f"{RUNTIMES[runtime]}: {tail}")
            if no_version:
                raise EdgebnError(f"{RUNTIMES[runtime]} has no wheel for Python {release.python} "
                                  f"on arm64: {tail}")
            raise EdgebnError(f"the bundle's install steps failed on emulated {release.suite} "
                              f"(exit {done.returncode}): {tail}")
    # the venv's paths were written as the emulated Python saw them: the same host paths
    (tmp / READY).write_text(key)
    shutil.rmtree(venv, ignore_errors=True)
    os.replace(tmp, venv)
    _relink(tmp, venv)
    return python


def _index_answers(runtime: Backend) -> bool:
    """Whether the package index pip used answers for the runtime's project: pip says "no
    matching distribution" both when it has no wheel and when it never reached the index."""
    index = os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"
    name = RUNTIMES[runtime].split("=")[0].split(">")[0]
    try:
        with urllib.request.urlopen(f"{index.rstrip('/')}/{name}/", timeout=10):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (404: no such project)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _relink(old: Path, new: Path) -> None:
    """A venv moved into place: its pyvenv.cfg and scripts name the staging path; fix them."""
    for path in [new / "pyvenv.cfg", *(new / "bin").glob("*")]:
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1 << 16:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if str(old) in text:
                path.write_text(text.replace(str(old), str(new)), encoding="utf-8")


def run_selftest(bundle: Path, runtime: Backend, root: Path, python: Path,  # noqa: PLR0913
                 timeout: float = SELFTEST_TIMEOUT_S, trust: Path | None = None) -> EmulatedRun:
    """``predict.py --selftest --json`` under qemu-aarch64 in the userland, on ``runtime``,
    with ``python`` (the venv :func:`runtime_venv` made by the bundle's install steps).

    With ``trust`` (an allowed-signers file), the device trusts those keys, and runs the
    bundle as a trusting device does: through the verifier installed beside the trust file
    (edgebn/deploy/device/verify.py, as ``edgebn deploy --trust`` installs it), which checks the
    signature with the userland's own arm64 ``ssh-keygen`` (Debian's openssh-client, run
    through qemu too, as qemu-user without binfmt cannot exec it), the exact file list and
    every hash before predict.py runs (``-I``, as the device README says).
    """
    bundle = Path(bundle).resolve()
    script = [str(bundle / "predict.py")]
    if trust is not None:
        verifier = Path(trust).parent / "verify.py"
        shutil.copyfile(Path(__file__).parent / "device" / "verify.py", verifier)
        script = ["-I", str(verifier), "run", str(bundle)]
    cmd = _qemu(root, str(python), *script, "--selftest", "--json", "--threads", "4",
                "--runtime", runtime.value)
    env = _env(Path(python).parents[2])
    if trust is not None:
        env |= {"EDGEBN_TRUST": str(trust),
                "EDGEBN_SSH_KEYGEN": shlex.join(_qemu(root, str(root / "usr/bin/ssh-keygen")))}
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


def emulate(bundle: str | Path, runtimes=None, cache: Path | None = None,
            log=lambda msg: None, os_name: str = DEFAULT_OS) -> EmulationResult:
    """The bundle's self-test on an emulated arm64 Raspberry Pi OS release, once per runtime
    (default: every runtime that release has a wheel for), each installed by the bundle's
    README steps."""
    bundle = Path(bundle)
    if not (bundle / "predict.py").is_file() or not (bundle / "manifest.json").is_file():
        raise EdgebnError(f"{bundle}: not a bundle (no predict.py and manifest.json): "
                          "run edgebn bundle")
    release = pi_os(os_name)
    runtimes = check_os_runtimes(os_name, release.runtimes if runtimes is None else runtimes)
    root = userland(cache, log, os_name)
    qemu = _run([shutil.which("qemu-aarch64-static"), "--version"], 30, "qemu --version")
    version = qemu.stdout.split("\n")[0].replace("qemu-aarch64 version ", "")
    runs = []
    for runtime in runtimes:
        python = runtime_venv(bundle, runtime, root, os_name, cache, log)
        log(f"self-test with {runtime.value} under qemu-aarch64 ({release.suite})")
        runs.append(run_selftest(bundle, runtime, root, python))
    platform = (f"Raspberry Pi OS {release.suite} as Debian arm64 (Python {release.python}, "
                "Debian's python3-numpy), qemu-aarch64-static "
                f"{version.split()[0] if version else '?'} "
                f"-cpu {QEMU_CPU}, Raspberry Pi 4 CPU description")
    return EmulationResult(str(bundle), platform, tuple(runs), os=release.suite)
