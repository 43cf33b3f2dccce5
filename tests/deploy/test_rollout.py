"""Rollouts to a fleet of real sshds on 127.0.0.1, through both engines (issue 29).

Each device is an sshd of its own with its own HOME and PATH (tests/sshd_hosts.Device): its
``python3`` is a script a test can point at a Python without NumPy, or slow down to stop
the device in the middle of its self-test. The bundles are edgebn's own, from the session's
small model; the Ansible engine is the real ansible-playbook with the edgebn.fleet collection.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import re
import shutil
import socketserver
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from sshd_hosts import Device, _free_port, make_keys, tarpit
from typer.testing import CliRunner

from edgebn.cli.app import app
from edgebn.deploy import policy
from edgebn.deploy.release import DeployOptions
from edgebn.deploy.rows import Status
from edgebn.deploy.sign import sign_manifest
from edgebn.deploy.ssh import SshTarget, prepare, ship

runner = CliRunner()
HAS_ANSIBLE = importlib.util.find_spec("ansible") is not None
NO_ANSIBLE = "ansible-core is not installed (pip install '.[fleet]')"
ENGINES = ["native", pytest.param("ansible", marks=pytest.mark.skipif(not HAS_ANSIBLE,
                                                                     reason=NO_ANSIBLE))]
NO_NUMPY = f"{sys.executable} -S"  # the device's Python without its site-packages: no NumPy
FLEET = 12


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    (root / "keys").mkdir()
    keys, user = make_keys(root / "keys")
    devices = []
    try:
        for i in range(FLEET):
            devices.append(Device(root, keys, user, i, sys.executable))
        yield devices
    finally:
        for d in devices:
            d.kill()


@pytest.fixture
def devices(fleet):
    """The fleet, each device's python3 the test's own Python again, its call log empty."""
    for d in fleet:
        d.set_python(sys.executable)
        (d.home / "python.log").unlink(missing_ok=True)
    return fleet


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("signers")
    for name in ("trusted", "other"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    return d


def _connection(d: Device) -> list[str]:
    args = ["-i", str(d.identity)]
    for opt in d.options:
        args += ["-o", opt]
    return args


def _hosts(tmp_path: Path, devices, extra=()) -> list[str]:
    """--hosts FILE (the devices, then ``extra`` lines) and the fleet's connection options."""
    f = tmp_path / f"hosts-{len(list(tmp_path.glob('hosts-*')))}"
    f.write_text("".join(f"{d.spec}\n" for d in devices) + "".join(f"{x}\n" for x in extra))
    return ["--hosts", str(f), *_connection(devices[0])]


def _deploy(bundle: Path, hosts: list[str], dest: str, engine: str, *more: str
            ) -> tuple[int, dict]:
    """edgebn deploy through the CLI with --json: its exit code and document."""
    res = runner.invoke(app, ["deploy", str(bundle), *hosts, "--dest", dest, "--engine", engine,
                              *more, "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def _release(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]


def _tree(d: Path) -> list[tuple[str, ...]]:
    """Every entry under ``d``: links with their target, files with their sha256."""
    out = []
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out.append((rel, "link", os.readlink(p)))
        elif p.is_dir():
            out.append((rel, "dir"))
        else:
            out.append((rel, "file", hashlib.sha256(p.read_bytes()).hexdigest()))
    return out


def _stats(d: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of everything under ``d``: a rewrite changes one or the other."""
    return {str(p.relative_to(d)): (p.lstat().st_ino, p.lstat().st_mtime_ns)
            for p in [d, *d.rglob("*")]}


def _signed(bundle: Path, key: Path, out: Path) -> Path:
    b = shutil.copytree(bundle, out)
    sign_manifest(b, key)
    return b


# ---------------------------------------------------------------- policy


@pytest.mark.skipif(not HAS_ANSIBLE, reason=NO_ANSIBLE)
@pytest.mark.parametrize("hosts", [1, 3, 7, 12, 100])
@pytest.mark.parametrize("items", [(), ("1",), ("1", "10%", "100%"), ("3",), ("30%",),
                                   ("1", "3", "100%"), ("2", "50%"), ("150",), ("1%",),
                                   ("1", "2", "3")])
def test_batches_are_cut_as_ansibles_serial_cuts_them(hosts, items, tmp_path):
    """ansible-core's own PlaybookExecutor._get_serialized_batches is the truth."""
    from ansible.executor.playbook_executor import PlaybookExecutor
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook.play import Play
    from ansible.vars.manager import VariableManager

    loader = DataLoader()
    inventory = InventoryManager(loader, sources=",".join(f"h{i}" for i in range(hosts)) + ",")
    play = Play.load({"hosts": "all", "gather_facts": False, "serial": list(items), "tasks": []},
                     variable_manager=VariableManager(loader, inventory), loader=loader)
    theirs = PlaybookExecutor._get_serialized_batches(types.SimpleNamespace(_inventory=inventory),
                                                      play)
    assert policy.batch_sizes(items, hosts) == [len(b) for b in theirs]
    names = [h.name for h in inventory.get_hosts("all")]
    for number, batch in enumerate(theirs, 1):
        assert {policy.batch_of(names.index(h.name), items, hosts) for h in batch} == {number}


@pytest.mark.parametrize("spec, bad", [("0", "'0'"), ("1,,2", "''"), ("x", "'x'"),
                                       ("101%", "'101%'"), ("1, -1", "'-1'"), ("½", "'½'")])
def test_a_batch_spec_is_checked_in_one_line(devices, bundles, tmp_path, spec, bad):
    res = runner.invoke(app, ["deploy", str(bundles["none"]), *_hosts(tmp_path, devices[:1]),
                              "--batches", spec])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1, res.output
    assert "each batch is a host count >= 1 or a percentage 1%..100%" in lines[0]
    assert f"Received: {bad}" in lines[0]


def test_the_budget_counts_failed_refused_and_rolled_back_but_not_offline():
    spent = [Status.failed, Status.refused, Status.rolled_back]
    assert policy.budget_spent(spent, 2) and not policy.budget_spent(spent, 3)
    assert not policy.budget_spent([Status.offline] * 5 + [Status.unchanged], 0)
    assert policy.budget_spent([Status.failed], 0) and not policy.budget_spent(spent, None)


# ---------------------------------------------------------------- both engines


def test_both_engines_agree_on_twelve_hosts(devices, bundles, tmp_path):
    """12/12 deployed by each engine; the same device trees, logs, rows; a re-run is 12
    unchanged with no bundle byte sent and no release directory rewritten."""
    if not HAS_ANSIBLE:
        pytest.skip(NO_ANSIBLE)
    hosts, release = _hosts(tmp_path, devices), _release(bundles["none"])
    docs = {}
    for engine in ("native", "ansible"):
        code, docs[engine] = _deploy(bundles["none"], hosts, f"~/agree-{engine}", engine)
        assert code == 0 and [h["status"] for h in docs[engine]["hosts"]] == ["deployed"] * FLEET
    native, ansible = docs["native"], docs["ansible"]
    assert (native["engine"], ansible["engine"]) == ("native", "ansible")
    same = ("release", "passed", "check", "failed", "batches", "max_failures", "budget_spent",
            "counts")
    assert {k: native[k] for k in same} == {k: ansible[k] for k in same}
    for n, a, d in zip(native["hosts"], ansible["hosts"], devices, strict=True):
        assert set(n) == set(a) and n["host"] == a["host"] == d.spec
        for key in set(n) - {"seconds", "path"}:  # the same rows, to the self-test's numbers
            assert n[key] == a[key], (key, n[key], a[key])
        assert n["selftest"]["passed"] and n["health"] == "ok" and n["bytes_sent"] > 0
        assert n["device"]["runtime"].startswith("ai_edge_litert") and n["batch"] == 1
    for d in devices:
        trees = [_tree(d.home / f"agree-{e}") for e in ("native", "ansible")]
        assert trees[0] == trees[1] and ("current", "link", f"releases/{release}") in trees[0]
        logs = [(d.home / f"agree-{e}" / "releases.log").read_text() for e in ("native", "ansible")]
        assert logs == [f"{release}\n"] * 2
        assert not (d.home / ".ansible").exists()  # nothing of Ansible's was put on the device
    before = {d.port: [_stats(d.home / f"agree-{e}") for e in ("native", "ansible")]
              for d in devices}
    for d in devices:
        (d.home / "python.log").unlink()
    for engine in ("native", "ansible"):
        code, doc = _deploy(bundles["none"], hosts, f"~/agree-{engine}", engine)
        assert code == 0 and [h["status"] for h in doc["hosts"]] == ["unchanged"] * FLEET
        assert all(h["bytes_sent"] == 0 and h["selftest"] is None for h in doc["hosts"])
    for d in devices:
        assert before[d.port] == [_stats(d.home / f"agree-{e}") for e in ("native", "ansible")]
        calls = (d.home / "python.log").read_text().splitlines()
        assert len(calls) == 2 and all(c.startswith("-I -S -c import sys") for c in calls)
    for engine in ("native", "ansible"):  # the table, from either engine
        res = runner.invoke(app, ["deploy", str(bundles["none"]), *hosts, "--dest",
                                  f"~/agree-{engine}", "--engine", engine])
        assert res.exit_code == 0, res.output
        assert f"{FLEET} hosts in batches of {FLEET}, {engine} engine" in res.stdout
        assert res.stdout.rstrip().endswith(f"{FLEET} unchanged")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_host_that_cannot_run_the_release_never_goes_live(devices, bundles, tmp_path, engine):
    devs, dest = devices[:3], f"~/nonumpy-{engine}"
    hosts, old, new = _hosts(tmp_path, devs), _release(bundles["int8"]), _release(bundles["none"])
    assert _deploy(bundles["int8"], hosts, dest, "native")[0] == 0
    devs[1].set_python(NO_NUMPY)  # its PATH's python3 has no NumPy
    code, doc = _deploy(bundles["none"], hosts, dest, engine)
    assert code == 1 and doc["failed"] == 1
    assert [h["status"] for h in doc["hosts"]] == ["deployed", "failed", "deployed"]
    failed = doc["hosts"][1]
    assert failed["reason"] == ("self-test of the staged release failed (exit 1): "
                                "ModuleNotFoundError: No module named 'numpy'")
    assert failed["previous"] == old and failed["selftest"] is None and failed["health"] is None
    home = devs[1].home / dest.removeprefix("~/")
    assert os.readlink(home / "current") == f"releases/{old}"  # never live there
    assert (home / "releases.log").read_text() == f"{old}\n"
    assert sorted(p.name for p in (home / "releases").iterdir()) == [old]  # nothing staged left
    for d in (devs[0], devs[2]):
        assert os.readlink(d.home / dest.removeprefix("~/") / "current") == f"releases/{new}"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_trusting_host_refuses_another_signer_once(devices, bundles, keys, tmp_path, engine):
    d0, d1 = devices[:2]
    dest, trust_file = f"~/signer-{engine}", f"~/signer-{engine}-config/allowed_signers"
    mine = _signed(bundles["int8"], keys / "trusted", tmp_path / "mine")
    other = _signed(bundles["none"], keys / "other", tmp_path / "other")
    code, doc = _deploy(mine, _hosts(tmp_path, [d0]), dest, engine, "--trust",
                        str(keys / "trusted.pub"), "--trust-file", trust_file)
    assert code == 0 and doc["hosts"][0]["selftest"]["signature"].startswith("verified by ED25519")
    assert doc["hosts"][0]["trusted"].startswith('edgebn-bundle namespaces="edgebn-bundle" ')
    assert (d0.home / trust_file[2:]).read_text() == doc["hosts"][0]["trusted"] + "\n"
    (d0.home / "python.log").unlink()
    code, doc = _deploy(other, _hosts(tmp_path, [d0, d1]), dest, engine, "--trust-file", trust_file)
    assert code == 1 and [h["status"] for h in doc["hosts"]] == ["refused", "deployed"]
    refused = doc["hosts"][0]
    assert "the device's verifier refused the bundle: manifest.json.sig does not verify" in \
        refused["reason"]
    assert refused["previous"] == _release(mine) and refused["bytes_sent"] > 0
    assert d0.calls("verify.py check") == 1 and d0.calls("--selftest") == 0  # not retried, not run
    assert os.readlink(d0.home / dest[2:] / "current") == f"releases/{_release(mine)}"
    assert doc["hosts"][1]["selftest"]["signature"] == "unverified (no trust file)"


@pytest.mark.parametrize("engine", ENGINES)
def test_the_budget_stops_the_rollout(devices, bundles, tmp_path, engine):
    """--batches 1,3,100% --max-failures 1, two failing hosts in batch 2: batch 3 never starts."""
    dest = f"~/budget-{engine}"
    for d in devices[1:3]:
        d.set_python(NO_NUMPY)
    code, doc = _deploy(bundles["none"], _hosts(tmp_path, devices), dest, engine,
                        "--batches", "1,3,100%", "--max-failures", "1")
    assert code == 1 and doc["budget_spent"] and doc["batches"] == [1, 3, 8]
    rows = doc["hosts"]
    assert [r["batch"] for r in rows] == [1, 2, 2, 2] + [3] * 8
    assert [r["status"] for r in rows] == ["deployed", "failed", "failed", "deployed"] + [
        "not_attempted"] * 8
    for r, d in zip(rows[4:], devices[4:], strict=True):
        assert r["reason"] == ("not attempted: the failure budget (1) was spent before batch 3: "
                               "2 host(s) failed")
        assert r["bytes_sent"] == 0 and r["seconds"] == 0
        assert not (d.home / dest[2:]).exists() and d.calls("") == 0  # not even asked its status
    assert doc["counts"] == {"deployed": 2, "rolled_back": 0, "refused": 0, "failed": 2,
                             "offline": 0, "unchanged": 0, "not_attempted": 8}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_health_check_rolls_back(devices, bundles, tmp_path, engine):
    """DEST/service.json names a server that never comes up: rolled back to the previous
    release; with --no-rollback the failed release stays live."""
    devs, dest = devices[:2], f"~/health-{engine}"
    hosts, old, new = _hosts(tmp_path, devs), _release(bundles["int8"]), _release(bundles["none"])
    assert _deploy(bundles["int8"], hosts, dest, "native")[0] == 0
    home = devs[0].home / dest[2:]
    (home / "service.json").write_text(json.dumps({"listen": f"127.0.0.1:{_free_port()}",
                                                   "unit": "edgebn.service"}))
    code, doc = _deploy(bundles["none"], hosts, dest, engine, "--health-timeout", "2")
    assert code == 1 and [h["status"] for h in doc["hosts"]] == ["rolled_back", "deployed"]
    back = doc["hosts"][0]
    assert back["reason"].startswith("health check failed: the service at http://127.0.0.1:")
    assert f"did not report {new} healthy within 2 s" in back["reason"]
    assert back["reason"].endswith(f"; rolled back to {old}") and back["previous"] == old
    assert back["selftest"]["passed"]  # the staged self-test passed: the service did not come up
    assert os.readlink(home / "current") == f"releases/{old}"
    assert (home / "releases.log").read_text() == f"{old}\n"
    code, doc = _deploy(bundles["none"], hosts, dest, engine, "--health-timeout", "1",
                        "--no-rollback")
    kept = doc["hosts"][0]
    assert code == 1 and (kept["status"], doc["hosts"][1]["status"]) == ("failed", "unchanged")
    assert kept["reason"].endswith("(kept live: no rollback)")
    assert os.readlink(home / "current") == f"releases/{new}"


class _Health(http.server.BaseHTTPRequestHandler):
    """A stand-in for issue 28's server: its /health as the contract says, from DEST/current."""

    dest: Path
    mode: str

    def do_GET(self):  # noqa: N802 (http.server's name)
        live = os.readlink(self.dest / "current").removeprefix("releases/")
        doc = {"healthy": {"release": live, "selftest_passed": True},
               "rejected": {"release": "0" * 16, "selftest_passed": True,
                            "rejected": {"release": live, "reason": "golden outputs differ"}},
               "stale": {"release": "0" * 16, "selftest_passed": True}}[self.mode]
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        conn, _ = super().get_request()
        return conn, ("unix", 0)


@pytest.mark.parametrize("mode, where, status, needle", [
    ("healthy", "tcp", Status.deployed, None),
    ("healthy", "unix", Status.deployed, None),
    ("rejected", "tcp", Status.rolled_back, "rejected {new}: golden outputs differ"),
    ("stale", "unix", Status.rolled_back, "did not report {new} healthy within 2 s (last: it "
                                          "reports release 0000000000000000, selftest_passed "
                                          "True)"),
    ("bad", "tcp", Status.rolled_back, 'expected {"listen": "HOST:PORT"} or {"socket": "PATH"}'),
])
def test_the_health_check_asks_the_service(devices, bundles, tmp_path, mode, where, status, needle):
    d = devices[0]
    dest = d.home / f"service-{mode}-{where}"
    target = SshTarget(d.host, d.port, d.identity, d.options)
    opts = DeployOptions(str(dest), health_timeout_s=2)
    old, new = prepare(bundles["int8"]), prepare(bundles["none"])
    assert ship(old, target, opts).status is Status.deployed
    handler = type("H", (_Health,), {"dest": dest, "mode": mode})
    if where == "unix":
        server = _UnixHTTPServer(str(tmp_path / "s.sock"), handler)
        service = {"socket": str(tmp_path / "s.sock")}
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        service = {"listen": f"127.0.0.1:{server.server_address[1]}"}
    (dest / "service.json").write_text(json.dumps(service if mode != "bad" else {"listen": "x"}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        row = ship(new, target, opts)
    finally:
        server.shutdown()
        server.server_close()
    assert row.status is status, row
    live = new.release if status is Status.deployed else old.release
    assert os.readlink(dest / "current") == f"releases/{live}"
    if needle is None:
        assert row.health == "ok" and row.reason is None
    else:
        assert needle.replace("{new}", new.release) in row.reason, row.reason
        assert row.reason.endswith(f"rolled back to {old.release}")


@pytest.mark.parametrize("engine", ENGINES)
def test_hosts_that_go_away_are_reported_and_the_rollout_completes(devices, bundles, tmp_path,
                                                                   engine):
    """A tarpit (banner, then silence) and a closed port are offline within 45 s; a device
    that hangs during its self-test (every process of it stopped) is failed within 45 s and
    its current stays; the others finish. After a restart a re-run brings it up to date."""
    devs, dying, dest = devices[:4], devices[3], f"~/faults-{engine}"
    started = dying.home / "selftest-started"
    started.unlink(missing_ok=True)
    dying.set_python(sys.executable, before=f'case "$*" in *--selftest*) touch {started}; '
                                            'sleep 8 ;; esac\n')
    stopped = threading.Event()

    def stop_it():
        for _ in range(1200):
            if started.exists():
                dying.freeze()
                stopped.set()
                return
            time.sleep(0.05)

    with tarpit() as silent:
        closed = _free_port()
        extra = [f"{dying.user}@127.0.0.1:{silent}", f"{dying.user}@127.0.0.1:{closed}"]
        hosts = _hosts(tmp_path, devs, extra)
        killer = threading.Thread(target=stop_it, daemon=True)
        killer.start()
        start = time.perf_counter()
        code, doc = _deploy(bundles["none"], hosts, dest, engine)
        wall = time.perf_counter() - start
        killer.join(5)
    assert stopped.is_set()
    rows = doc["hosts"]
    print(f"{engine}: wall {wall:.1f} s; " + ", ".join(f"{r['host']} {r['status']} {r['seconds']} s"
                                                      for r in rows))
    assert code == 1 and [r["status"] for r in rows] == ["deployed"] * 3 + ["failed", "offline",
                                                                            "offline"]
    assert all(r["seconds"] < 45 for r in rows), [(r["host"], r["seconds"]) for r in rows]
    assert wall < 60, wall
    assert "deploy: ssh" in rows[3]["reason"] and "failed" in rows[3]["reason"], rows[3]["reason"]
    assert rows[4]["reason"].startswith("status: ssh")
    assert rows[5]["reason"].startswith("status: ssh")
    assert "Connection refused" in rows[5]["reason"]
    assert not (dying.home / dest[2:] / "current").exists()  # it never went live there
    dying.restart()
    dying.set_python(sys.executable)
    code, doc = _deploy(bundles["none"], _hosts(tmp_path, devs), dest, engine)
    assert code == 0 and [r["status"] for r in doc["hosts"]] == ["unchanged"] * 3 + ["deployed"]
    home = dying.home / dest[2:]
    assert os.readlink(home / "current") == f"releases/{_release(bundles['none'])}"
    assert [p.name for p in (home / "releases").iterdir()] == [_release(bundles["none"])]


@pytest.mark.parametrize("engine", ENGINES)
def test_a_host_that_refuses_the_deploy_connection_is_offline(devices, bundles, tmp_path,
                                                               monkeypatch, engine):
    """Its status answered, then the deploy's connection is refused (the network, faked by an
    ssh in PATH that says what ssh says): nothing changed there, so offline, 0 bytes sent."""
    real = shutil.which("ssh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(
        f'#!/bin/sh\ncase "$*" in *"class HealthError"*) echo "ssh: connect to host 127.0.0.1 '
        f'port 22: Connection refused" >&2; exit 255 ;; esac\nexec {real} "$@"\n')  # deploy only
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, doc = _deploy(bundles["none"], _hosts(tmp_path, devices[:1]), f"~/refused-{engine}",
                        engine)
    row = doc["hosts"][0]
    assert code == 0 and row["status"] == "offline" and row["bytes_sent"] == 0, row
    assert row["reason"].startswith("deploy: ssh") and row["reason"].endswith("Connection refused")
    assert not (devices[0].home / f"refused-{engine}").exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_per_host_timeout_holds_with_either_engine(devices, bundles, tmp_path, engine):
    """--timeout 3 and a self-test that takes 6 s: the host is failed when its time is up, and
    the device, left alone, does not switch after it (it is out of time, or its controller
    is gone)."""
    d, dest = devices[0], f"~/timeout-{engine}"
    old = _release(bundles["int8"])
    assert _deploy(bundles["int8"], _hosts(tmp_path, [d]), dest, "native")[0] == 0
    d.set_python(sys.executable, before='case "$*" in *--selftest*) sleep 6 ;; esac\n')
    start = time.perf_counter()
    code, doc = _deploy(bundles["none"], _hosts(tmp_path, [d]), dest, engine, "--timeout", "3")
    row = doc["hosts"][0]
    assert code == 1 and row["status"] == "failed" and time.perf_counter() - start < 6 + 5
    assert re.fullmatch(r"deploy: ssh timed out after [0-9.]+ s", row["reason"]), row["reason"]
    assert row["seconds"] < 4.5
    time.sleep(8)  # the device's self-test ends; what it does then is its own
    home = d.home / dest[2:]
    assert os.readlink(home / "current") == f"releases/{old}"
    assert (home / "releases.log").read_text() == f"{old}\n"


@pytest.mark.parametrize("engine", ENGINES)
def test_check_reports_what_would_change_and_changes_nothing(devices, bundles, tmp_path, engine):
    devs, dest = devices[:3], f"~/check-{engine}"
    release = _release(bundles["none"])
    assert _deploy(bundles["none"], _hosts(tmp_path, devs[:1]), dest, "native")[0] == 0
    before = [_stats(devs[0].home / dest[2:]), _tree(devs[0].home / dest[2:])]
    code, doc = _deploy(bundles["none"], _hosts(tmp_path, devs), dest, engine, "--check")
    assert code == 0 and doc["check"] and doc["passed"]
    assert [r["status"] for r in doc["hosts"]] == ["unchanged", "not_attempted", "not_attempted"]
    assert [r["would_change"] for r in doc["hosts"]] == [False, True, True]
    assert doc["hosts"][1]["reason"] == (f"check: would deploy {release} over nothing; the staged "
                                         "self-test and the live self-test would decide")
    assert all(r["bytes_sent"] == 0 for r in doc["hosts"])
    assert before == [_stats(devs[0].home / dest[2:]), _tree(devs[0].home / dest[2:])]
    for d in devs[1:]:
        assert not (d.home / dest[2:]).exists() and d.calls("predict.py") == 0


# ---------------------------------------------------------------- the Ansible side


@pytest.mark.skipif(not HAS_ANSIBLE, reason=NO_ANSIBLE)
def test_an_exported_playbook_runs_with_ansible_playbook(devices, bundles, tmp_path):
    out, dest = tmp_path / "export", "~/exported"
    res = runner.invoke(app, ["deploy", str(bundles["none"]), *_hosts(tmp_path, devices[:2]),
                              "--dest", dest, "--batches", "1", "--export-playbook", str(out),
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["files"] == ["rollout.yml", "inventory.yml", "vars.json", "release.tar",
                            "ansible.cfg"]
    assert not (devices[0].home / "exported").exists()  # nothing run
    cfg = (out / "ansible.cfg").read_text()
    ssh_args = next(line for line in cfg.splitlines() if line.startswith("ssh_args"))
    assert "ServerAliveInterval=5 -o ServerAliveCountMax=4" in ssh_args
    assert "ControlPersist" in ssh_args
    assert " -C" not in ssh_args and "Compression=yes" not in ssh_args
    assert "forks = 1" in cfg.splitlines()  # sized to the largest batch
    assert f"collections_path = {doc['collections_path']}" in cfg
    assert Path(doc["collections_path"], "ansible_collections/edgebn/fleet/galaxy.yml").is_file()
    env = {**os.environ, "ANSIBLE_CONFIG": str(out / "ansible.cfg")}
    env.pop("EDGEBN_ROWS_FILE", None)
    done = subprocess.run([sys.executable, "-m", "ansible", "playbook", "-i", "inventory.yml",
                           "rollout.yml", "-e", "@vars.json"], cwd=out, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for d in devices[:2]:
        release = _release(bundles["none"])
        assert os.readlink(d.home / "exported" / "current") == f"releases/{release}"
        assert f"edgebn: {d.spec}: deployed" in done.stdout  # the callback, without a rows file


@pytest.mark.skipif(not HAS_ANSIBLE, reason=NO_ANSIBLE)
def test_any_ansible_inventory_names_the_hosts(devices, bundles, tmp_path):
    inv = tmp_path / "pis.ini"
    inv.write_text("[pis]\n" + "".join(
        f"pi-{i} ansible_host=127.0.0.1 ansible_port={d.port} ansible_user={d.user}\n"
        for i, d in enumerate(devices[:2])))
    args = ["deploy", str(bundles["none"]), "--inventory", str(inv), "--dest", "~/inventory",
            *_connection(devices[0])]
    res = runner.invoke(app, [*args, "--engine", "ansible", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(h["host"], h["status"]) for h in doc["hosts"]] == [("pi-0", "deployed"),
                                                                 ("pi-1", "deployed")]
    lone = tmp_path / "lone.ini"  # no port in the inventory: --port gives it, as natively
    lone.write_text(f"pi-lone ansible_host=127.0.0.1 ansible_user={devices[2].user}\n")
    res = runner.invoke(app, ["deploy", str(bundles["none"]), "--inventory", str(lone), "--port",
                              str(devices[2].port), "--dest", "~/inventory",
                              *_connection(devices[2]), "--engine", "ansible", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["hosts"][0]["status"] == "deployed"
    assert (devices[2].home / "inventory" / "current").is_symlink()
    native = runner.invoke(app, args)
    assert native.exit_code == 2 and native.stderr.strip().splitlines() == [
        "Error: --inventory is read by Ansible: add --engine ansible (or list the hosts with "
        "--hosts FILE)"]
    inv.write_text("[pis\nnot an inventory = = =\n")
    bad = runner.invoke(app, [*args, "--engine", "ansible"])
    lines = bad.stderr.strip().splitlines()
    assert bad.exit_code == 2 and len(lines) == 1 and "ansible-playbook ran no host" in lines[0]
