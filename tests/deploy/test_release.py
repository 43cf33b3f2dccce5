"""One host's release (edgebn.deploy.release): the device's paths, commands and a skipped row."""

import shlex

import pytest

from edgebn.deploy.release import (
    DeployOptions,
    Shipment,
    device_path,
    last_line,
    not_attempted,
    release_command,
)
from edgebn.deploy.rows import Status
from edgebn.errors import EdgebnError


def test_a_device_path_is_a_directory_of_its_own():
    assert device_path("~/edgebn", "--dest") == "~/edgebn"
    for bad in ("", "  ", "/", "//", ".", "~", "~/", "a\nb", "a\0b"):
        with pytest.raises(EdgebnError):
            device_path(bad, "dest")


def test_the_release_command_is_one_shell_quoted_line():
    cmd = release_command("deploy", "a b", 30.7)
    words = shlex.split(cmd)
    assert words[:2] == ["sh", "-c"] and words[3:] == ["release.sh", "deploy", "a b", "30"]
    assert "#!/bin/sh" in words[2] or "set -" in words[2]  # release.sh itself, sent inline


def test_last_line_and_a_host_the_budget_skipped(tmp_path):
    assert last_line("one\ntwo\n\n") == "two" and last_line("  ") == "(no message)"
    shipment = Shipment(tmp_path, "0123456789abcdef", b"")
    row = not_attempted("pi@a", shipment, DeployOptions(dest="~/e"), 3, "budget spent")
    assert (row.status, row.batch, row.path, row.release) == (
        Status.not_attempted, 3, "~/e/current", "0123456789abcdef")
    assert not row.passed
