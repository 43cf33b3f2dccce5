"""The JSON document types (edgebn.documents): what ``to_json()`` returns and what is read back
before it is checked, and the module costing nothing to import (every result module names it)."""

from __future__ import annotations

import json
import subprocess
import sys
import typing

from edgebn.deploy.rows import DeviceFacts, HostRow, Status
from edgebn.documents import JsonDict, JsonValue


def test_a_document_is_a_dict_of_str_keys_and_a_read_value_is_anything():
    assert typing.get_origin(JsonDict) is dict
    assert typing.get_args(JsonDict) == (str, typing.Any)
    assert JsonValue is typing.Any


def test_a_to_json_document_survives_json_both_ways():
    row = HostRow("pi@a", Status.offline, reason="no route to host", seconds=0.126,
                  device=DeviceFacts(temp_c=48.0))
    doc: JsonDict = row.to_json()
    back: JsonValue = json.loads(json.dumps(doc))
    assert back == doc
    assert (back["status"], back["seconds"], back["passed"]) == ("offline", 0.13, False)
    assert back["device"]["temp_c"] == 48.0 and back["device"]["os"] is None


def test_importing_the_module_loads_no_third_party_package():
    code = ("import sys, edgebn.documents; print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'numpy', 'tensorflow', 'keras', 'rich', 'typer'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
