"""One host's release, over any transport: the device's release.sh, the same for every engine.

    status  ->  (unchanged | offline | --check)  ->  trust  ->  deploy  ->  a HostRow

edgebn's own ssh (edgebn.deploy.ssh) and the edgebn.fleet Ansible collection's action plugin
both call :func:`host_row` with a :class:`Transport` of their own: something that runs one
remote shell command with bytes on its stdin. Everything else, the device script, its
arguments, how its output becomes a row, is here once, so both engines give the same rows.

The device side is edgebn/deploy/device/release.sh (its header has the order: stage, verify on
a trusting device, self-test the staged release, switch ``current``, health check, roll back
what this deploy switched). Before anything is sent, its read-only ``status`` says what the
device has: a host already on the release is ``unchanged`` with 0 bundle bytes sent, and a
host that cannot be reached then is ``offline``: nothing was changed there, and a re-run
brings it up to date.

This module imports nothing beyond the standard library and edgebn.errors (import-linter
holds it): the Ansible plugin loads it in every forked worker.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import posixpath
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgebn.deploy.rows import DeviceFacts, HostRow, Status
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError

DEVICE_DIR = Path(__file__).parent / "device"
SSH_TIMEOUT_S = 600
# ssh's ServerAliveInterval and ServerAliveCountMax: a host that stops answering (hung, powered
# off, a tarpit) is dropped after about KEEPALIVE_S * (KEEPALIVE_COUNT + 1) s in a session and
# KEEPALIVE_S * KEEPALIVE_COUNT s before login (measured: 25 s and 20 s); a slow command on a
# live host is no silence to ssh, its sshd answers the probes.
KEEPALIVE_S = 5
KEEPALIVE_COUNT = 4
HEALTH_TIMEOUT_S = 30.0  # how long a service has to report the new release healthy
DEVICE_TRUST = "~/.config/edgebn/allowed_signers"  # predict.py's default; $EDGEBN_TRUST overrides
VERIFIER = "verify.py"  # installed beside the device's trust file by --trust
# release.sh's own exit codes
EXIT_NOTHING, EXIT_LOCKED, EXIT_NO_SPACE, EXIT_REFUSED = 3, 4, 5, 6
EXIT_SELFTEST, EXIT_ROLLED_BACK, EXIT_KEPT, EXIT_LATE = 7, 8, 9, 10


class Unreachable(EdgebnError):
    """ssh could not reach the host, or lost it; ``changing``: after the deploy had begun."""

    def __init__(self, message: str, changing: bool = False) -> None:
        super().__init__(message)
        self.changing = changing


class Refused(EdgebnError):
    """The device's verifier refused the bundle: not retried."""


def device_path(path: str, what: str) -> str:
    """A path on the device: not empty, not the root, no NUL or line breaks."""
    if not isinstance(path, str) or not path.strip() or any(c in path for c in "\0\n\r"):
        raise EdgebnError(f"{what} {path!r}: expected a directory path on the device "
                          "(not empty, no NUL or line breaks)")
    if posixpath.normpath(path) in ("/", "//", ".") or path.strip("/") in ("", "~"):
        raise EdgebnError(f"{what} {path!r}: refusing the device's root or home itself; "
                          "name a directory of its own (e.g. ~/edgebn)")
    return path


@dataclass(frozen=True)
class DeployOptions:
    dest: str = "edgebn"  # directory on the device (relative to the login's home)
    selftest: bool = True  # self-test the staged release before the switch, and after it
    python: str = "python3"  # the device's Python (one word: it is shell-quoted)
    bench: bool = False
    bench_runs: int = 200
    trust: Path | None = None  # a public key to install in the device's trust file first
    # the device's trust file when not the default (sets EDGEBN_TRUST)
    trust_file: str | None = None
    timeout_s: float = SSH_TIMEOUT_S  # per host: all of one host's ssh calls together
    profile: bool = False  # predict.py --profile on the device (a bundle made with --profile)
    health_timeout_s: float = HEALTH_TIMEOUT_S  # for the service's /health after the switch
    rollback: bool = True  # a failed health check rolls back to the previous release

    def __post_init__(self) -> None:
        device_path(self.dest, "destination")
        if self.trust_file is not None:
            device_path(self.trust_file, "trust file")
        if not self.python or any(c.isspace() or c == "\0" for c in self.python):
            raise EdgebnError(f"device python {self.python!r}: expected one command word")
        if not self.timeout_s > 0:
            raise EdgebnError(f"timeout must be > 0 s. Received: {self.timeout_s}")
        if not self.health_timeout_s > 0:
            raise EdgebnError(f"health timeout must be > 0 s. Received: {self.health_timeout_s}")

    @property
    def device_trust(self) -> str:
        return self.trust_file or DEVICE_TRUST

    @property
    def verifier(self) -> str:
        return posixpath.join(posixpath.dirname(self.device_trust), VERIFIER)


@dataclass(frozen=True)
class Shipment:
    """A bundle checked here and packed once, ready for any number of devices."""

    bundle: Path
    release: str  # first 16 hex of manifest.json's sha256
    tar: bytes


@dataclass(frozen=True)
class Ran:
    """One remote command's outcome."""

    rc: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """What an engine gives :func:`host_row`: one remote shell command at a time.

    ``run`` raises :class:`Unreachable` when ssh itself fails (connection, authentication,
    host key, a dead peer) and EdgebnError when ``timeout_s`` passes.
    """

    @property
    def name(self) -> str: ...

    def run(self, command: str, data: bytes | None, what: str, timeout_s: float) -> Ran: ...


@functools.cache
def _script() -> str:
    return (DEVICE_DIR / "release.sh").read_text(encoding="utf-8")


@functools.cache
def device_file(name: str) -> bytes:
    """A device-side file shipped with edgebn (release.sh, verify.py, health.py)."""
    return (DEVICE_DIR / name).read_bytes()


def release_command(*args: str | float) -> str:
    """The remote command that runs release.sh with ``args`` on the device."""
    words = [a if isinstance(a, str) else str(int(a)) for a in args]
    return shlex.join(["sh", "-c", _script(), "release.sh", *words])


def last_line(text: str, default: str = "(no message)") -> str:
    return (text.strip().splitlines() or [default])[-1]


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic), at least one: the host's remaining budget."""
    return max(1.0, deadline - time.monotonic())


def _pairs(stdout: str) -> dict[str, str]:
    """release.sh's key=value lines (the last of each key)."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@dataclass(frozen=True)
class DeviceStatus:
    """release.sh status: what the device has, read without changing anything."""

    current: str | None
    present: bool  # releases/<the release> exists
    trusting: bool
    trust_sha256: str
    verifier_sha256: str
    service: bool  # DEST/service.json: a health check asks the server
    facts: DeviceFacts


def device_status(t: Transport, release: str, options: DeployOptions, timeout_s: float
                  ) -> DeviceStatus:
    ran = t.run(release_command("status", options.dest, release, options.device_trust,
                                options.verifier, options.python), None, "status", timeout_s)
    said = _pairs(ran.stdout)
    if ran.rc != 0 or "current" not in said:
        raise EdgebnError(f"status of {t.name}:{options.dest} failed (exit {ran.rc}): "
                          f"{last_line(ran.stderr)}")
    milli = said.get("temp_milli_c", "").strip()
    facts = DeviceFacts(os=said.get("os") or None, python=said.get("python") or None,
                        temp_c=int(milli) / 1000 if milli.lstrip("-").isdigit() else None)
    return DeviceStatus(said["current"] or None, said.get("present") == "yes",
                        said.get("trusting") == "yes", said.get("trust_sha256", ""),
                        said.get("verifier_sha256", ""), said.get("service") == "yes", facts)


def install_trust(t: Transport, line: str, options: DeployOptions, timeout_s: float) -> None:
    """Make the device trust the key of ``line`` and install its verifier beside the trust file.

    Both files are replaced atomically (written beside, then renamed); the verifier is
    edgebn's own edgebn/deploy/device/verify.py, sent over stdin.
    """
    ran = t.run(release_command("trust", options.dest, options.device_trust, options.verifier,
                                line), device_file(VERIFIER), "trust", timeout_s)
    if ran.rc != 0:
        raise EdgebnError(f"installing the trust file on {t.name} failed (exit {ran.rc}): "
                          f"{last_line(ran.stderr)}")


def _trust_needed(st: DeviceStatus, line: str | None) -> bool:
    if line is None:
        return False
    return (st.trust_sha256 != hashlib.sha256((line + "\n").encode()).hexdigest()
            or st.verifier_sha256 != hashlib.sha256(device_file(VERIFIER)).hexdigest())


def predict(t: Transport, options: DeployOptions, args: tuple[str, ...], what: str,
            timeout_s: float) -> tuple[JsonDict, int]:
    """predict.py ARGS --json in DEST/current: through the device's verifier when it trusts keys."""
    ran = t.run(release_command("predict", options.dest, options.device_trust, options.verifier,
                                options.python, *args, "--json"), None, what, timeout_s)
    try:
        doc = json.loads(ran.stdout)
    except ValueError:
        raise EdgebnError(f"{what} on {t.name} did not run (exit {ran.rc}): "
                          f"{last_line(ran.stderr, '(no output)')}") from None
    if not isinstance(doc, dict):
        raise EdgebnError(f"{what} on {t.name} printed no document (exit {ran.rc})")
    return doc, ran.rc


def _selftest_reason(doc: JsonDict | None, code: int | None, err: str) -> str:
    if doc and doc.get("passed") is False:
        return (f"self-test of the staged release failed: max |diff| {doc.get('max_abs_diff')} "
                f"{doc.get('units', '')} (allowed {doc.get('atol')}), top-1 agreement "
                f"{doc.get('top1_agreement')} ({doc.get('runtime')})")
    return f"self-test of the staged release failed (exit {code}): {err}"


def _deploy(t: Transport, shipment: Shipment, options: DeployOptions, timeout_s: float
            ) -> tuple[Ran, dict[str, str]]:
    command = release_command(
        "deploy", options.dest, shipment.release, options.device_trust, options.verifier,
        options.python, timeout_s, "1" if options.selftest else "0", options.health_timeout_s,
        "1" if options.rollback else "0", device_file("health.py").decode())
    try:
        ran = t.run(command, shipment.tar, "deploy", timeout_s)
    except Unreachable as exc:
        if "connect to host" in str(exc):  # ssh's words for a connection never made: no change
            raise
        raise Unreachable(f"{exc} (the device keeps current as it was, or finishes the "
                          "deploy and its checks on its own)", changing=True) from None
    return ran, _pairs(ran.stdout)


def _measure(t: Transport, options: DeployOptions, deadline: float) -> JsonDict:
    """--bench and --profile on the live release: their documents, or why they did not run."""
    out: JsonDict = {}
    runs = str(int(options.bench_runs))
    for flag, key, wanted in (("--bench", "bench", options.bench),
                              ("--profile", "profile", options.profile)):
        if not wanted:
            continue
        doc, code = predict(t, options, (flag, "--runs", runs), key, _left(deadline))
        if code != 0 or doc.get(key) is None:
            out["reason"] = f"deployed, but {key} on {t.name} failed (exit {code})"
        out[key] = doc.get(key)
    return out


def _json(text: str | None) -> JsonDict | None:
    try:
        doc = json.loads(text) if text else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


class _Attempt:
    """One host's deploy as it goes: its clock, what the device said, what was sent."""

    def __init__(self, t: Transport, shipment: Shipment, options: DeployOptions,
                 batch: int | None) -> None:
        self.t, self.shipment, self.options, self.batch = t, shipment, options, batch
        self.start, self.deadline = time.perf_counter(), time.monotonic() + options.timeout_s
        self.st: DeviceStatus | None = None
        self.sent = 0

    def left(self) -> float:
        return _left(self.deadline)

    def row(self, status: Status, **kw: object) -> HostRow:
        st = self.st
        base: dict[str, object] = {"previous": st.current if st else None,
                                   "device": st.facts if st else DeviceFacts()}
        return HostRow(self.t.name, status, self.shipment.release, batch=self.batch,
                       path=f"{self.options.dest}/current", bytes_sent=self.sent,
                       seconds=time.perf_counter() - self.start, **(base | kw))


def _failing(exc: EdgebnError, row: HostRow) -> EdgebnError:
    """``exc``, carrying the row so far (what the device had, what was sent) for host_row."""
    exc.row = row  # type: ignore[attr-defined]
    return exc


def _would(st: DeviceStatus, shipment: Shipment, trust: bool) -> str:
    """--check: what a deploy would do on the host, from its status."""
    again = " (its directory there again)" if st.present else ""
    checks = "its verifier, " if st.trusting or trust else ""
    health = "the service's /health" if st.service else "the live self-test"
    return (f"check: would deploy {shipment.release}{again} over {st.current or 'nothing'}"
            + (" and install the trust key" if trust else "")
            + f"; {checks}the staged self-test and {health} would decide")


def release_host(t: Transport, shipment: Shipment, options: DeployOptions, *,
                 trust_line: str | None = None, batch: int | None = None, check: bool = False
                 ) -> HostRow:
    """One host, in issue 29's order. Returns the row of a deploy that ran (deployed,
    unchanged, failed with the device's reason, rolled_back; with ``check`` what would
    change); raises :class:`Unreachable`, :class:`Refused` or EdgebnError when it did not."""
    a = _Attempt(t, shipment, options, batch)
    try:
        a.st = device_status(t, shipment.release, options, a.left())
    except EdgebnError as exc:  # read-only: nothing was changed on a host that did not answer
        raise Unreachable(str(exc)) from None
    trust = _trust_needed(a.st, trust_line)
    if check:
        if a.st.current == shipment.release:
            return a.row(Status.unchanged, would_change=trust)
        return a.row(Status.not_attempted, would_change=True, reason=_would(a.st, shipment, trust))
    try:
        if trust:
            install_trust(t, trust_line, options, a.left())
        trusted = trust_line if trust else None
        if a.st.current == shipment.release:  # nothing of the bundle is sent
            return _measured(a, a.row(Status.unchanged, trusted=trusted))
        a.sent = len(shipment.tar)
        ran, said = _deploy(t, shipment, options, a.left())
    except EdgebnError as exc:
        if isinstance(exc, Unreachable) and not exc.changing:
            a.sent = 0  # the connection was never made
        raise _failing(exc, a.row(Status.failed)) from None
    doc = (_json(said.get("selftest")) or {}).get("selftest")
    code = int(said["selftest_exit"]) if said.get("selftest_exit", "").isdigit() else None
    facts = DeviceFacts(os=(doc or {}).get("os") or a.st.facts.os,
                        python=(doc or {}).get("python") or a.st.facts.python,
                        runtime=(doc or {}).get("runtime"), temp_c=a.st.facts.temp_c)
    row = a.row(Status.failed, selftest=doc, selftest_exit=code, health=said.get("health"),
                device=facts, trusted=trusted)
    try:
        status, reason = _outcome(t, shipment, options, ran, said, doc, code)
    except EdgebnError as exc:
        raise _failing(exc, row) from None
    if status is not Status.deployed:
        return dataclasses.replace(row, status=status, reason=reason)
    return _measured(a, dataclasses.replace(row, status=status))


def _measured(a: _Attempt, row: HostRow) -> HostRow:
    """The live release's row with --bench and --profile run on it (when asked for)."""
    options = a.options
    measured = _measure(a.t, options, a.deadline) if options.bench or options.profile else {}
    bench, facts = measured.get("bench") or {}, row.device
    after = (bench.get("thermal") or {}).get("after") or {}
    if bench:
        facts = DeviceFacts(facts.os, facts.python, facts.runtime,
                            after.get("temp_c", facts.temp_c), after.get("throttled"),
                            bench.get("warning"))
    return dataclasses.replace(row, seconds=time.perf_counter() - a.start, device=facts,
                               bench=measured.get("bench"), profile=measured.get("profile"),
                               reason=measured.get("reason"))


def _outcome(t: Transport, shipment: Shipment, options: DeployOptions, ran: Ran,
             said: dict[str, str], doc: JsonDict | None, code: int | None
             ) -> tuple[Status, str | None]:
    """release.sh deploy's exit code and lines as a status and its reason."""
    err = last_line(ran.stderr)
    where = f"{t.name}:{options.dest}/releases/{shipment.release}"
    if ran.rc == 0:
        return Status.deployed, None
    if ran.rc == EXIT_REFUSED:
        raise Refused(f"deploy to {where} refused (exit {ran.rc}): the device's verifier "
                      f"refused the bundle: {err.removeprefix('Error: ')}")
    if ran.rc == EXIT_SELFTEST:
        return Status.failed, _selftest_reason(doc, code, err)
    if ran.rc == EXIT_ROLLED_BACK:
        back = said.get("rolled_back") or "nothing (there was no release before)"
        return Status.rolled_back, f"{err}; rolled back to {back}"
    if ran.rc == EXIT_KEPT:
        return Status.failed, err + ("" if options.rollback else " (kept live: no rollback)")
    raise EdgebnError(f"deploy to {where} failed (exit {ran.rc}): {err}")


def host_row(t: Transport, shipment: Shipment, options: DeployOptions, *,
             trust_line: str | None = None, batch: int | None = None, check: bool = False
             ) -> HostRow:
    """:func:`release_host` that never raises: what did not happen becomes a row too."""
    start = time.perf_counter()

    def failed(status: Status, reason: str, exc: Exception | None = None) -> HostRow:
        row = getattr(exc, "row", None) or HostRow(t.name, status, shipment.release, batch=batch,
                                                   path=f"{options.dest}/current")
        return dataclasses.replace(row, status=status, reason=reason,
                                   seconds=time.perf_counter() - start)

    try:
        return release_host(t, shipment, options, trust_line=trust_line, batch=batch, check=check)
    except Unreachable as exc:
        return failed(Status.failed if exc.changing else Status.offline, str(exc), exc)
    except Refused as exc:
        return failed(Status.refused, str(exc), exc)
    except EdgebnError as exc:
        return failed(Status.failed, str(exc), exc)
    except Exception as exc:  # a bug for one host must not lose the other hosts' rows
        return failed(Status.failed, f"internal error: {type(exc).__name__}: {exc}")


def not_attempted(name: str, shipment: Shipment, options: DeployOptions, batch: int,
                  reason: str) -> HostRow:
    return HostRow(name, Status.not_attempted, shipment.release, batch=batch, reason=reason,
                   path=f"{options.dest}/current")

