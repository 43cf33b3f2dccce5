"""The Ansible engine (edgebn.deploy.ansible_engine): the inventory it writes, its refusals."""

import pytest

from edgebn.deploy.ansible_engine import Connection, inventory
from edgebn.deploy.ssh import SshTarget
from edgebn.errors import EdgebnError


def test_the_inventory_carries_each_hosts_connection_in_order(tmp_path):
    key = tmp_path / "id_ed25519"
    targets = (SshTarget("pi@10.0.0.1", 2222, key, ("ConnectTimeout=5", "A B")),
               SshTarget("10.0.0.2"))
    hosts = inventory(targets)["all"]["hosts"]
    assert list(hosts) == ["edgebn-001", "edgebn-002"]
    assert hosts["edgebn-001"] == {
        "ansible_host": "10.0.0.1", "ansible_connection": "ssh", "edgebn_name": "pi@10.0.0.1:2222",
        "ansible_user": "pi", "ansible_port": 2222,
        "ansible_ssh_private_key_file": str(key.resolve()),
        "ansible_ssh_common_args": "-o ConnectTimeout=5 -o 'A B'"}
    assert hosts["edgebn-002"] == {"ansible_host": "10.0.0.2", "ansible_connection": "ssh",
                                   "edgebn_name": "10.0.0.2"}
    assert list(inventory(tuple(SshTarget(f"h{i}") for i in range(1000)))["all"]["hosts"])[0] \
        == "edgebn-0001"


def test_hosts_come_as_a_list_or_an_inventory_not_both_and_not_neither():
    for targets, inv in (((SshTarget("a"),), "inv.yml"), ((), None)):
        with pytest.raises(EdgebnError, match="not both and not neither") as err:
            Connection(targets, inv)
        assert err.value.option == "inventory"
