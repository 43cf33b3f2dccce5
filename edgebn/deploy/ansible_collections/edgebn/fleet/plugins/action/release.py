"""edgebn.fleet.release: one host of an edgebn rollout, over the play's connection.

The host procedure is edgebn's own (edgebn.deploy.release.host_row, the one the native
engine runs): the device's release.sh, run as raw shell commands through
``_low_level_execute_command`` with the packed release on stdin. No Python module is sent
to the device, and the task needs no facts. The batch and the failure budget are
edgebn.deploy.policy's: the host's batch is cut from ``batches`` exactly as the play's
``serial`` cuts it, and when the hosts of the earlier batches have failed more than
``max_failures`` times, this host is ``not_attempted`` without a connection.

The task's result carries the row (``edgebn_row``, the edgebn.fleet.rows callback writes it
for edgebn), ``changed`` for a release that went live, and ``failed`` for a host that failed,
was refused or rolled back (the playbook ignores it until its report play).
"""

from __future__ import annotations

import signal
import tarfile
from pathlib import Path

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from edgebn.deploy import policy
from edgebn.deploy.release import (
    DeployOptions,
    Ran,
    Shipment,
    Unreachable,
    host_row,
    last_line,
    not_attempted,
)
from edgebn.deploy.rows import FAILING, Status
from edgebn.errors import EdgebnError

REGISTER = "edgebn_result"  # the playbook's register: the earlier batches' rows
SSH_FAILED = "Failed to connect to the host via ssh: "


class _Expired(BaseException):
    """The host's time ran out inside a remote command (raised by SIGALRM)."""


class AnsibleTransport:
    """edgebn.deploy.release's Transport over an action plugin's connection."""

    def __init__(self, action: ActionBase, name: str, login: str) -> None:
        self._action, self._name, self._login = action, name, login

    @property
    def name(self) -> str:
        return self._name

    def run(self, command: str, data: bytes | None, what: str, timeout_s: float) -> Ran:
        def expired(signum, frame):
            raise _Expired()

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            done = self._action._low_level_execute_command(command, sudoable=False, in_data=data)
        except _Expired:
            raise EdgebnError(f"{what}: ssh timed out after {timeout_s:g} s") from None
        except AnsibleConnectionFailure as exc:
            said = last_line(to_text(exc.message)).removeprefix(SSH_FAILED)
            raise Unreachable(f"{what}: ssh {self._login} failed: {said}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return Ran(int(done["rc"]), done["stdout"], done["stderr"])


def _shipment(path: str) -> Shipment:
    """The release edgebn packed: a tar whose top folder is the release id."""
    try:
        with tarfile.open(path) as tar:
            first = tar.next()
        data = Path(path).read_bytes()
    except (OSError, tarfile.TarError) as exc:
        raise AnsibleActionFail(f"tar {path}: not a release packed by edgebn ({exc})") from exc
    release = first.name.split("/", 1)[0] if first is not None else ""
    if len(release) != 16 or any(c not in "0123456789abcdef" for c in release):
        raise AnsibleActionFail(f"tar {path}: its top folder {release!r} is not a release id")
    return Shipment(Path(path), release, data)


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")


def _options(args) -> DeployOptions:
    try:
        return DeployOptions(
            dest=str(args.get("dest") or "edgebn"), selftest=_flag(args.get("selftest", True)),
            python=str(args.get("python") or "python3"), bench=_flag(args.get("bench", False)),
            bench_runs=int(args.get("runs") or 200), trust_file=args.get("trust_file") or None,
            timeout_s=float(args.get("timeout") or 600), profile=_flag(args.get("profile", False)),
            health_timeout_s=float(args.get("health_timeout") or 30),
            rollback=_flag(args.get("rollback", True)))
    except (EdgebnError, ValueError) as exc:
        raise AnsibleActionFail(str(exc)) from exc


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _supports_async = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        me = task_vars["inventory_hostname"]
        hosts = list(task_vars.get("ansible_play_hosts_all") or [me])
        hostvars = task_vars.get("hostvars") or {}
        index = hosts.index(me)
        row = self._host(str(task_vars.get("edgebn_name") or me), index, hosts, hostvars)
        result.update(edgebn_row=row.to_json(), edgebn_index=index,
                      changed=row.status in (Status.deployed, Status.rolled_back)
                      or bool(row.would_change),
                      failed=row.status in FAILING, msg=f"{row.status.value}: {row.reason or ''}")
        if index == 0:  # the rollout's hosts in order, with edgebn's names for them
            result["edgebn_hosts"] = [str((hostvars.get(h) or {}).get("edgebn_name") or h)
                                      for h in hosts]
        return result

    def _host(self, name: str, index: int, hosts: list, hostvars: dict):
        """This host's HostRow: not attempted once the earlier batches spent the failure
        budget, else its release (edgebn.deploy.release.host_row) over Ansible's connection."""
        args = self._task.args
        items = tuple(str(b) for b in (args.get("batches") or ()))
        budget = args.get("max_failures")
        budget = None if budget in (None, "", "None") else int(budget)
        batch = policy.batch_of(index, items, len(hosts))
        shipment, options = _shipment(str(args["tar"])), _options(args)
        earlier = [row["status"] for h in hosts if (row := self._row(hostvars, h)) is not None
                   and (row.get("batch") or batch) < batch]
        if policy.budget_spent(earlier, budget):
            return not_attempted(name, shipment, options, batch, policy.spent_reason(
                budget, policy.failures(earlier), batch))
        login = f"{self._play_context.remote_user}@" if self._play_context.remote_user else ""
        transport = AnsibleTransport(self, name, login + str(self._play_context.remote_addr))
        return host_row(transport, shipment, options, trust_line=args.get("trust_line") or None,
                        batch=batch, check=bool(self._task.check_mode))

    @staticmethod
    def _row(hostvars, host: str):
        registered = (hostvars.get(host) or {}).get(REGISTER)
        return registered.get("edgebn_row") if isinstance(registered, dict) else None
