"""edgebn.fleet.rows: each host's edgebn rollout row, for edgebn (or for you)."""

from __future__ import annotations

DOCUMENTATION = """
name: rows
type: aggregate
short_description: write each host's edgebn rollout row
description:
  - >-
    For every result of the edgebn.fleet.release task, writes one JSON line (the host's index
    in the play and its row) to O(rows_file), the row that edgebn deploy --engine ansible reads
    into its own table and JSON. A result without a row (a task that crashed) becomes a failed
    row with Ansible's message.
  - Without O(rows_file), prints one line per host at the end of the run.
requirements:
  - enable in configuration (callbacks_enabled = edgebn.fleet.rows)
options:
  rows_file:
    description: the JSON lines file to append the rows to
    env:
      - name: EDGEBN_ROWS_FILE
    ini:
      - section: callback_edgebn_rows
        key: rows_file
"""

import json

from ansible.plugins.callback import CallbackBase

ACTIONS = ("edgebn.fleet.release", "release")


def _payload(result):
    """The task result's dict: ``result`` from ansible-core 2.19 on, ``_result`` before."""
    return result.result if hasattr(type(result), "result") else result._result


def _task(result):
    return result.task if hasattr(type(result), "task") else result._task


def _host(result):
    return result.host if hasattr(type(result), "host") else result._host


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edgebn.fleet.rows"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rows = []

    def _record(self, result, status=None):
        payload = dict(_payload(result))
        row = payload.get("edgebn_row")
        if row is None:
            if _task(result).action not in ACTIONS:
                return
            host = _host(result)
            name = str(host.vars.get("edgebn_name") or host.name)
            msg = str(payload.get("msg") or payload.get("reason") or "no result")
            row = {"host": name, "status": status or "failed", "reason": msg.strip()}
        line = {"index": payload.get("edgebn_index"), "row": row}
        if "edgebn_hosts" in payload:
            line["hosts"] = list(payload["edgebn_hosts"])
        self._rows.append(line)
        path = self.get_option("rows_file")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result)

    def v2_runner_on_unreachable(self, result):
        self._record(result, "offline")

    def v2_playbook_on_stats(self, stats):
        if self.get_option("rows_file"):
            return
        for line in sorted(self._rows, key=lambda x: (x["index"] is None, x["index"] or 0)):
            row = line["row"]
            self._display.display(f"edgebn: {row['host']}: {row['status']}"
                                  + (f" ({row['reason']})" if row.get("reason") else ""))
