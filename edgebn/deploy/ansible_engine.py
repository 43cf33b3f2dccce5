"""The Ansible engine: a rollout run by ansible-playbook with the edgebn.fleet collection.

    edgebn deploy BUNDLE --hosts pis.txt --engine ansible --batches 1,10%,100%
    edgebn deploy BUNDLE --inventory aws_ec2.yml --engine ansible --max-failures 3
    edgebn deploy BUNDLE --hosts pis.txt --export-playbook DIR   # for your own Ansible/AWX
    python -m edgebn.deploy.ansible_engine                        # the collections path

The collection ships inside edgebn's wheel (``edgebn/deploy/ansible_collections/edgebn/
fleet``: an action plugin, a callback, a playbook), as ARA ships its callback: an
``ansible.cfg`` points ``collections_path`` at it. A run writes, into a directory of its
own, what ``--export-playbook`` writes for you:

    rollout.yml       the collection's playbook (batches as serial, the budget, a report play)
    inventory.yml     the hosts of --hosts with the connection options (absent with --inventory)
    vars.json         the deploy's options as the playbook's variables
    release.tar       the bundle, checked here and packed once
    ansible.cfg       collections_path, the rows callback, forks sized to the largest batch, and
                      ssh: ControlMaster with a short ControlPath, ServerAlive (a silent host is
                      dropped as edgebn's own ssh drops it), BatchMode, and no -C compression
                      (a .tflite file does not compress; the CPU of a Pi is better spent)

and runs ``python -m ansible playbook`` with this Python (the plugins import edgebn). The
callback writes one JSON line per host; they become the same :class:`RolloutResult` the
native engine returns. The connection options mean what they mean natively: with --hosts
they are written into the inventory per host; with --inventory the ones given are passed
as extra variables (``ansible_port``, ``ansible_ssh_private_key_file``,
``ansible_ssh_common_args``), which override the inventory's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgebn.deploy import policy
from edgebn.deploy.policy import Engine, RolloutPolicy, RolloutResult
from edgebn.deploy.release import (
    KEEPALIVE_COUNT,
    KEEPALIVE_S,
    DeployOptions,
    Shipment,
    last_line,
)
from edgebn.deploy.rows import HostRow, Status
from edgebn.deploy.ssh import SshTarget, check_profile, prepare, trust_line
from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError

COLLECTIONS_PATH = Path(__file__).parent  # holds ansible_collections/edgebn/fleet
COLLECTION = COLLECTIONS_PATH / "ansible_collections" / "edgebn" / "fleet"
PLAYBOOK = COLLECTION / "playbooks" / "rollout.yml"
CONNECT_TIMEOUT_S = 15  # ssh ConnectTimeout, as edgebn's own ssh
CONTROL_PERSIST_S = 30
SSH_ARGS = (f"-o ControlMaster=auto -o ControlPersist={CONTROL_PERSIST_S}s "
            f"-o ServerAliveInterval={KEEPALIVE_S} -o ServerAliveCountMax={KEEPALIVE_COUNT} "
            "-o BatchMode=yes")


def require_ansible() -> None:
    if importlib.util.find_spec("ansible") is None:
        raise EdgebnError("the Ansible engine needs ansible-core in this Python: "
                          "pip install 'edgebn[fleet]'")


@dataclass(frozen=True)
class Connection:
    """How to reach the hosts: a list (--hosts/--host) or an Ansible inventory, and the
    connection options given on the command line."""

    targets: tuple[SshTarget, ...] = ()
    inventory: str | None = None
    base: SshTarget = SshTarget("localhost")  # --port, -i, -o as given
    port_given: bool = False

    def __post_init__(self) -> None:
        if bool(self.targets) == (self.inventory is not None):
            raise EdgebnError("give the hosts either as a list or as an Ansible inventory, "
                              "not both and not neither", option="inventory")


@dataclass(frozen=True)
class Exported:
    dir: Path
    files: tuple[str, ...]
    command: str  # how to run it

    def to_json(self) -> JsonDict:
        return {"dir": str(self.dir), "files": list(self.files), "command": self.command,
                "collections_path": str(COLLECTIONS_PATH)}


def _common_args(options: tuple[str, ...]) -> str:
    return " ".join(f"-o {shlex.quote(o)}" for o in options)


def _host_vars(t: SshTarget) -> JsonDict:
    user, _, address = t.host.rpartition("@")
    out: JsonDict = {"ansible_host": address, "ansible_connection": "ssh",
                           "edgebn_name": t.host if t.port is None else f"{t.host}:{t.port}"}
    if user:
        out["ansible_user"] = user
    if t.port is not None:
        out["ansible_port"] = t.port
    if t.identity is not None:
        out["ansible_ssh_private_key_file"] = str(Path(t.identity).expanduser().resolve())
    if t.options:
        out["ansible_ssh_common_args"] = _common_args(t.options)
    return out


def inventory(targets: tuple[SshTarget, ...]) -> JsonDict:
    """An Ansible inventory (YAML's JSON subset) of the hosts, in their order: hosts named
    ``edgebn-NNN``, each with the connection options and edgebn's name for it."""
    width = max(3, len(str(len(targets))))
    return {"all": {"hosts": {f"edgebn-{i:0{width}d}": _host_vars(t)
                              for i, t in enumerate(targets, 1)}}}


def playbook_vars(shipment_tar: str, options: DeployOptions, rollout: RolloutPolicy,
                  line: str | None, conn: Connection) -> JsonDict:
    out: JsonDict = {
        "edgebn_tar": shipment_tar, "edgebn_dest": options.dest, "edgebn_python": options.python,
        "edgebn_trust_file": options.trust_file, "edgebn_trust_line": line,
        "edgebn_timeout": options.timeout_s, "edgebn_health_timeout": options.health_timeout_s,
        "edgebn_selftest": options.selftest, "edgebn_rollback": options.rollback,
        "edgebn_bench": options.bench, "edgebn_profile": options.profile,
        "edgebn_runs": options.bench_runs, "edgebn_batches": list(rollout.batches),
        "edgebn_max_failures": rollout.max_failures}
    if conn.inventory is not None:  # what was given on the command line overrides the inventory
        b = conn.base
        if conn.port_given and b.port is not None:
            out["ansible_port"] = b.port
        if b.identity is not None:
            out["ansible_ssh_private_key_file"] = str(Path(b.identity).expanduser().resolve())
        if b.options:
            out["ansible_ssh_common_args"] = _common_args(b.options)
    return out


def ansible_cfg(forks: int, control_path_dir: str | None) -> str:
    lines = ["[defaults]", f"collections_path = {COLLECTIONS_PATH}",
             "callbacks_enabled = edgebn.fleet.rows", f"forks = {forks}",
             f"timeout = {CONNECT_TIMEOUT_S}", "retry_files_enabled = False",
             "inventory_unparsed_failed = True", "",
             "[ssh_connection]", f"ssh_args = {SSH_ARGS}", "pipelining = False"]
    if control_path_dir:
        lines.append(f"control_path_dir = {control_path_dir}")
    return "\n".join(lines) + "\n"


def write_run(d: Path, shipment: Shipment, options: DeployOptions, rollout: RolloutPolicy,
              conn: Connection, hosts: int | None, control_path_dir: str | None) -> tuple[str, ...]:
    """The files of a run (or an export) in ``d``; their names."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "release.tar").write_bytes(shipment.tar)
    shutil.copyfile(PLAYBOOK, d / "rollout.yml")
    names = ["rollout.yml", "vars.json", "release.tar", "ansible.cfg"]
    if conn.targets:
        (d / "inventory.yml").write_text(json.dumps(inventory(conn.targets), indent=2) + "\n",
                                         encoding="utf-8")
        names.insert(1, "inventory.yml")
    doc = playbook_vars("{{ playbook_dir }}/release.tar", options, rollout, trust_line(options),
                        conn)
    (d / "vars.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    forks = rollout.forks(hosts) if hosts else rollout.parallel
    (d / "ansible.cfg").write_text(ansible_cfg(forks, control_path_dir), encoding="utf-8")
    return tuple(names)


def _command(d: Path, conn: Connection, check: bool) -> list[str]:
    source = str(d / "inventory.yml") if conn.targets else str(conn.inventory)
    return ["-i", source, str(d / "rollout.yml"), "-e", f"@{d / 'vars.json'}",
            *(["--check"] if check else [])]


def _env(d: Path) -> dict[str, str]:
    """ansible-playbook's environment: this run's ansible.cfg, the rows file, and this edgebn
    importable by the plugins (a checkout on PYTHONPATH too)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "ANSIBLE_CONFIG": str(d / "ansible.cfg"),
            "EDGEBN_ROWS_FILE": str(d / "rows.jsonl"), "PYTHONPATH": path,
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


def _stop_masters(control_dir: Path) -> None:
    """End the run's ssh ControlMasters now rather than after ControlPersist."""
    for sock in control_dir.glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "edgebn"],
                       capture_output=True, timeout=10, check=False)


def _read_rows(path: Path) -> tuple[dict[int, HostRow], list[str] | None, list[HostRow]]:
    """The callback's lines: rows by host index, the hosts' names in order, rows without one."""
    indexed, unplaced, names = {}, [], None
    if path.exists():
        for text in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            row = HostRow.from_json(line["row"])
            names = line.get("hosts") or names
            if isinstance(line.get("index"), int):
                indexed[line["index"]] = row
            else:
                unplaced.append(row)
    return indexed, names, unplaced


def rollout_ansible(bundle: str | Path, conn: Connection, options: DeployOptions,
                    rollout: RolloutPolicy = RolloutPolicy()) -> RolloutResult:
    """The rollout through ansible-playbook and the edgebn.fleet collection."""
    require_ansible()
    check_profile(bundle, options)
    shipment = prepare(bundle, options.trust)
    hosts = len(conn.targets) or None
    with tempfile.TemporaryDirectory(prefix="edgebn-ansible-") as tmp, \
            tempfile.TemporaryDirectory(prefix="ebn-cp-", dir="/tmp") as control:
        d = Path(tmp)
        write_run(d, shipment, options, rollout, conn, hosts, control)
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "ansible", "playbook",
                                   *_command(d, conn, rollout.check)],
                                  cwd=d, env=_env(d), capture_output=True, text=True)
        finally:
            _stop_masters(Path(control))
        seconds = time.perf_counter() - start
        indexed, names, unplaced = _read_rows(d / "rows.jsonl")
    if not indexed and not unplaced:
        said = last_line(done.stderr or done.stdout, "(no output)")
        raise EdgebnError(f"ansible-playbook ran no host (exit {done.returncode}): {said}")
    names = names or [t.host if t.port is None else f"{t.host}:{t.port}" for t in conn.targets]
    total = max(len(names), max(indexed, default=-1) + 1)
    rows = []
    for i in range(total):
        row = indexed.get(i) or (unplaced.pop(0) if unplaced else None)
        if row is None:
            row = HostRow(names[i] if i < len(names) else f"#{i}", Status.not_attempted,
                          shipment.release, batch=policy.batch_of(i, rollout.batches, total),
                          reason=f"ansible-playbook ended before this host (exit "
                                 f"{done.returncode}): {last_line(done.stdout, '(no output)')}",
                          path=f"{options.dest}/current")
        rows.append(row)
    return RolloutResult(Engine.ansible, shipment.release, tuple(rows), seconds,
                         tuple(policy.batch_sizes(rollout.batches, total)), rollout.max_failures,
                         rollout.check)


def export_playbook(d: Path, bundle: str | Path, conn: Connection, options: DeployOptions,
                    rollout: RolloutPolicy = RolloutPolicy()) -> Exported:
    """Write the run's files to ``d`` for your own ansible-playbook or AWX; nothing is run."""
    check_profile(bundle, options)
    if d.exists() and not d.is_dir():
        raise EdgebnError(f"export directory {d}: exists and is not a directory")
    shipment = prepare(bundle, options.trust)
    names = write_run(d, shipment, options, rollout, conn, len(conn.targets) or None, None)
    source = "inventory.yml" if conn.targets else str(conn.inventory)
    command = (f"cd {shlex.quote(str(d))} && ANSIBLE_CONFIG=ansible.cfg ansible-playbook "
               f"-i {shlex.quote(source)} rollout.yml -e @vars.json")
    return Exported(d, names, command)


if __name__ == "__main__":  # as ARA's ``python -m ara.setup.path``: where the collection is
    print(COLLECTIONS_PATH)
