"""The bundle's model in service on the device: ``edgebn deploy --service``.

    edgebn deploy BUNDLE --host pi@raspberrypi.local --service [--listen 127.0.0.1:8750 | --socket
    PATH] edgebn deploy --rollback --host pi@raspberrypi.local --service

After the release is live (edgebn.deploy.ssh), a systemd *user* unit runs the bundle's
server, ``predict.py --serve`` (edgebn/deploy/device/predict.py), from ``DEST/current``:
through the device's verifier on a trusting device
(``python3 -I ~/.config/edgebn/verify.py run DEST/current --serve ...``), else as
``python3 -I DEST/current/predict.py --serve ...``. The server follows ``current`` by
itself, so a later deploy or rollback needs nothing more; the unit's ``reload`` (SIGHUP)
makes it look at once. Three ssh calls, each a POSIX sh script (edgebn/deploy/device/service.sh):

1. ``probe``: the device's home, its Python's absolute path, whether it trusts keys, and
   whether ``systemctl --user`` reaches a user manager;
2. ``install``: the unit file (made here, :func:`unit_text`) written atomically to
   ``~/.config/systemd/user/``, ``daemon-reload``, ``enable``, then ``restart`` when the
   unit changed or is not running, else ``reload``; ``loginctl enable-linger`` so it runs
   from boot, not from login; and last ``DEST/service.json``, written atomically:
   ``{"listen": "127.0.0.1:8750", "unit": "..."}`` or ``{"socket": "/path", "unit": ...}``
   (the rollout's health check reads it);
3. ``health``: ``GET /health`` on the device, until it names the new release (or says why
   that release was not taken).

A device without a systemd user session (a container, qemu-user, a minimal image) gets
one line that says so and the command that runs the server by hand; nothing is installed
and no service.json is written there.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from edgebn.deploy.fleet import DEFAULT_PARALLEL, FleetResult, run_fleet
from edgebn.deploy.rows import HostRow
from edgebn.deploy.ssh import (
    DeployOptions,
    RollbackResult,
    SshTarget,
    check_profile,
    device_script,
    prepare,
    rollback,
    run_remote,
    ship,
)
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError

DEFAULT_LISTEN = "127.0.0.1:8750"  # predict.py's SERVE_LISTEN: loopback unless told otherwise
LISTEN = r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}"  # HOST:PORT, a bracketed IPv6 host too
HEALTH_TIMEOUT_S = 60.0
SCRIPT = "service.sh"
EXIT_NO_SYSTEMD, EXIT_NO_SERVICE, EXIT_NOT_HEALTHY = 7, 8, 9  # service.sh's own exit codes


@dataclass(frozen=True)
class ServiceOptions:
    """Where the server listens on the device, and how long to wait for its /health."""

    listen: str | None = None  # HOST:PORT; default DEFAULT_LISTEN (loopback)
    socket: str | None = None  # a Unix socket's path on the device instead
    workers: int | None = None  # predict.py --workers (default: min(4, cores))
    health_timeout_s: float = HEALTH_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.listen is not None and self.socket is not None:
            raise EdgebnError("give a listen address or a socket, not both")
        if self.listen is not None and not re.fullmatch(LISTEN, self.listen):
            raise EdgebnError(f"listen address {self.listen!r}: expected HOST:PORT, e.g. "
                              f"{DEFAULT_LISTEN}, or 0.0.0.0:8750 for every interface")
        if self.listen is not None and not 0 < int(self.listen.rpartition(":")[2]) < 65536:
            raise EdgebnError(f"listen address {self.listen!r}: the port must be 1..65535")
        if self.socket is not None and not re.fullmatch(r"(~/|/)[A-Za-z0-9._/-]+", self.socket):
            raise EdgebnError(f"socket {self.socket!r}: expected an absolute path (or ~/...) of "
                              "letters, digits and . _ - /")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise EdgebnError(f"workers must be 1..64. Received: {self.workers}")
        if not self.health_timeout_s > 0:
            raise EdgebnError(f"health timeout must be > 0 s. Received: {self.health_timeout_s}")

    def address(self, home: str) -> dict[str, str]:
        """service.json's address: {"listen": HOST:PORT} or {"socket": absolute path}."""
        if self.socket is not None:
            return {"socket": _absolute(self.socket, home)}
        return {"listen": self.listen or DEFAULT_LISTEN}

    def server_args(self, home: str) -> list[str]:
        where = self.address(home)
        args = ["--socket", where["socket"]] if "socket" in where else ["--listen", where["listen"]]
        return args + (["--workers", str(self.workers)] if self.workers else [])


def _absolute(path: str, home: str) -> str:
    """A device path: ``~/x`` and relative paths are under the login's home."""
    if path == "~":
        return home
    if path.startswith("~/"):
        return f"{home}/{path[2:]}"
    return path if path.startswith("/") else f"{home}/{path}"


def unit_name(dest: str) -> str:
    """The user unit of one destination: ``edgebn-serve-<dest as a name>.service``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", dest.removeprefix("~").strip("/")).strip("-.")
    return f"edgebn-serve-{name[-80:] or 'edgebn'}.service"


@dataclass(frozen=True)
class DeviceFacts:
    """What ``service.sh probe`` found on the device."""

    home: str  # the login's home: what ~ is there
    dest: str  # DEST, absolute
    trust: str  # the trust file, absolute
    python: str  # the device's Python, absolute
    trusting: bool  # the trust file exists: run through the installed verifier
    systemd: str  # "ok", or why `systemctl --user` does not work there

    @classmethod
    def parse(cls, text: str) -> DeviceFacts:
        said = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return cls(said["home"], said["dest"], said["trust"], said["python"],
                       said["trusting"] == "1", said["systemd"])
        except KeyError as exc:
            raise EdgebnError(f"the device's probe said too little ({exc} missing)") from None


def server_command(facts: DeviceFacts, options: DeployOptions, service: ServiceOptions
                   ) -> list[str]:
    """The server's command line on the device, every path absolute."""
    current = f"{facts.dest}/current"
    args = ["--serve", *service.server_args(facts.home)]
    if facts.trusting:  # the device's own verifier checks the release, then runs its predict.py
        return [facts.python, "-I", _absolute(options.verifier, facts.home), "run", current, *args]
    return [facts.python, "-I", f"{current}/predict.py", *args]


def _systemd_word(word: str) -> str:
    """One ExecStart argument, quoted for systemd: specifiers (%) and variables ($) literal."""
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def unit_text(command: list[str], trust: str, dest: str) -> str:
    """The systemd user unit that keeps the server running."""
    return "\n".join([
        "[Unit]",
        f"Description=edgebn model server for {dest.replace('%', '%%')}/current",
        "After=network.target",
        "",
        "[Service]",
        "Type=simple",
        f"Environment={_systemd_word('EDGEBN_TRUST=' + trust)}",
        "ExecStart=" + " ".join(_systemd_word(w) for w in command),
        "ExecReload=/bin/kill -HUP $MAINPID",  # the server checks DEST/current at once
        "Restart=on-failure",
        "RestartSec=5",
        "NoNewPrivileges=yes",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


@dataclass(frozen=True)
class ServiceResult:
    host: str
    unit: str
    address: dict[str, str]  # what DEST/service.json says
    command: str  # the server's command line on the device, shell-quoted
    health: JsonDict | None  # the server's last /health answer
    seconds: float
    error: str | None = None  # why /health does not name the release, when it does not
    linger: bool | None = None  # loginctl enable-linger worked: the unit starts at boot

    @property
    def passed(self) -> bool:
        return self.error is None

    def to_json(self) -> JsonDict:
        return {"host": self.host, "unit": self.unit, "address": self.address,
                "command": self.command, "health": self.health, "error": self.error,
                "linger": self.linger, "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class ServedDeploy:
    """A deploy (edgebn.deploy.ssh) and the server that took its release."""

    deploy: HostRow  # the release's own row: staged, verified, self-tested, switched
    service: ServiceResult | None  # None: the release did not go live, no server was touched

    @property
    def passed(self) -> bool:
        return self.deploy.passed and self.service is not None and self.service.passed

    # a fleet's row reads these (edgebn.deploy.fleet.HostOutcome)
    @property
    def bytes_sent(self) -> int:
        return self.deploy.bytes_sent

    @property
    def selftest(self) -> JsonDict | None:
        return self.deploy.selftest

    @property
    def bench(self) -> JsonDict | None:
        return self.deploy.bench

    def to_json(self) -> JsonDict:
        return {**self.deploy.to_json(),
                "service": None if self.service is None else self.service.to_json()}


@dataclass(frozen=True)
class ServedRollback:
    rollback: RollbackResult
    service: ServiceResult
    reloaded: bool  # the unit was sent SIGHUP (else the server saw current switch by polling)

    @property
    def passed(self) -> bool:
        return self.service.passed

    def to_json(self) -> JsonDict:
        return {**self.rollback.to_json(), "reloaded": self.reloaded,
                "service": self.service.to_json()}


def _script(target: SshTarget, what: str, timeout_s: float, *args: str | float,
            data: bytes | None = None):
    return run_remote(target, device_script(SCRIPT, *args), what, timeout_s, data)


def _fail(target: SshTarget, what: str, done) -> EdgebnError:
    why = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
    return EdgebnError(f"{what} on {target.host} failed (exit {done.returncode}): {why}")


def probe(target: SshTarget, options: DeployOptions, timeout_s: float) -> DeviceFacts:
    done = _script(target, "service probe", timeout_s, "probe", options.dest, options.device_trust,
                   options.python)
    if done.returncode != 0:
        raise _fail(target, "probing for the service", done)
    return DeviceFacts.parse(done.stdout.decode(errors="replace"))


def health(target: SshTarget, options: DeployOptions, release: str, wait_s: float,
           timeout_s: float) -> tuple[JsonDict | None, str | None]:
    """The server's /health once it names ``release``; else the last answer and why not."""
    done = _script(target, "health check", timeout_s + wait_s, "health", options.dest,
                   options.python, release, wait_s)
    if done.returncode == EXIT_NO_SERVICE:
        raise _fail(target, "the health check", done)
    try:
        doc = json.loads(done.stdout.decode(errors="replace") or "null")
    except ValueError:
        doc = None
    if done.returncode == 0 and isinstance(doc, dict):
        return doc, None
    why = (done.stderr.decode(errors="replace").strip().splitlines() or ["(no message)"])[-1]
    if isinstance(doc, dict) and doc.get("rejected"):
        why = (f"the server did not take release {release}: {doc['rejected'].get('reason')}; "
               f"it still serves {doc.get('release')}")
    else:
        why = f"/health did not name release {release} within {wait_s:g} s ({why})"
    return (doc if isinstance(doc, dict) else None), why


def install(target: SshTarget, options: DeployOptions, service: ServiceOptions, release: str
            ) -> ServiceResult:
    """The unit on the device, running the server of DEST/current; its /health naming
    ``release``."""
    start = time.perf_counter()
    facts = probe(target, options, options.timeout_s)
    unit = unit_name(options.dest)
    command = server_command(facts, options, service)
    line = shlex.join(command if not facts.trusting
                      else ["env", f"EDGEBN_TRUST={facts.trust}", *command])
    if facts.systemd != "ok":
        raise EdgebnError(f"{target.host} has no systemd user session ({facts.systemd}): release "
                          f"{release} is live in {options.dest}/current but no service was "
                          f"installed; run the server by hand there: {line}")
    address = service.address(facts.home)
    text = unit_text(command, facts.trust, facts.dest)
    done = _script(target, "service install", options.timeout_s, "install", options.dest, unit,
                   json.dumps({**address, "unit": unit}), data=text.encode())
    if done.returncode != 0:
        raise _fail(target, f"installing {unit}", done)
    said = dict(w.split("=", 1) for w in done.stdout.decode(errors="replace").split() if "=" in w)
    doc, error = health(target, options, release, service.health_timeout_s, options.timeout_s)
    return ServiceResult(target.host, unit, address, line, doc, time.perf_counter() - start, error,
                         said.get("linger") == "1")


def deploy_service(bundle: str | Path, target: SshTarget, options: DeployOptions,
                   service: ServiceOptions = ServiceOptions()) -> ServedDeploy:
    """``edgebn deploy --service`` on one device: the release live, then the server on it."""
    check_profile(bundle, options)
    shipment = prepare(bundle, options.trust)
    return _ship_and_serve(shipment, target, options, service)


def _ship_and_serve(shipment, target: SshTarget, options: DeployOptions, service: ServiceOptions
                    ) -> ServedDeploy:
    row = ship(shipment, target, options)
    if not row.passed:  # the release is not live (or was rolled back): no server to start on it
        return ServedDeploy(row, None)
    return ServedDeploy(row, install(target, options, service, shipment.release))


def deploy_service_fleet(bundle: str | Path, targets: list[SshTarget], options: DeployOptions,
                         service: ServiceOptions = ServiceOptions(),
                         parallel: int = DEFAULT_PARALLEL) -> FleetResult:
    check_profile(bundle, options)
    shipment = prepare(bundle, options.trust)
    return run_fleet(targets, lambda t: _ship_and_serve(shipment, t, options, service), parallel)


def rollback_service(target: SshTarget, options: DeployOptions,
                     service: ServiceOptions = ServiceOptions()) -> ServedRollback:
    """``--rollback --service``: current back one release, the server told at once (SIGHUP
    through systemd; a server run by hand sees the switch by itself), then its /health."""
    start = time.perf_counter()
    done = _script(target, "service lookup", options.timeout_s, "where", options.dest)
    if done.returncode != 0:  # before anything changes: no service, no rollback
        raise _fail(target, "finding the service", done)
    try:
        where = json.loads(done.stdout.decode(errors="replace").partition("service=")[2])
    except ValueError:
        where = {}
    back = rollback(target, options)
    done = _script(target, "service reload", options.timeout_s, "reload", options.dest)
    if done.returncode != 0:
        raise _fail(target, "reloading the service", done)
    reloaded = "reloaded=1" in done.stdout.decode(errors="replace").split()
    doc, error = health(target, options, back.release, service.health_timeout_s, options.timeout_s)
    address = {k: v for k, v in where.items() if k in ("listen", "socket")}
    result = ServiceResult(target.host, where.get("unit") or unit_name(options.dest), address,
                           "", doc, time.perf_counter() - start, error)
    return ServedRollback(back, result, reloaded)


def rollback_service_fleet(targets: list[SshTarget], options: DeployOptions,
                           service: ServiceOptions = ServiceOptions(),
                           parallel: int = DEFAULT_PARALLEL) -> FleetResult:
    return run_fleet(targets, lambda t: rollback_service(t, options, service), parallel)
