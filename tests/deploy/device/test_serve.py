"""predict.py --serve: a real server on 127.0.0.1, real HTTP requests, real bundles.

Releases sit in a device's layout (DEST/releases/<id>, DEST/current), switched as the
device switches them (``ln -sfn`` to a temporary link, then ``mv -T`` over current), or by
``edgebn deploy`` and ``--rollback`` through a real sshd for the reloads under load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serving import Served, ServerExited, UnixHTTPConnection, call, raw, untrusting_env
from test_predict import _npy, _png

from edgebn.deploy.bundle import DEVICE_DIR, load_predict_module

TIMEOUT_S = 1.0  # the server's request timeout in the hostile tests


@pytest.fixture(scope="module")
def predict():
    return load_predict_module()


def release_id(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()[:16]


def install(dest: Path, bundle: Path) -> str:
    """``bundle`` as DEST/releases/<id> (not live); its id."""
    rid = release_id(bundle)
    shutil.copytree(bundle, dest / "releases" / rid)
    return rid


def switch(dest: Path, rid: str) -> None:
    """Point DEST/current at releases/<rid> as release.sh does: one rename(2)."""
    subprocess.run(["sh", "-c", 'ln -sfn "releases/$1" "$2/.current.tmp" && '
                                'mv -T "$2/.current.tmp" "$2/current"', "sh", rid, str(dest)],
                   check=True)


def rehash(bundle: Path) -> None:
    """Write every file's sha256 into manifest.json (what a hostile or careless edit does)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in manifest["files"]:
        manifest["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def variant(bundle: Path, out: Path, change) -> Path:
    """A copy of ``bundle`` changed by ``change(copy)`` and re-hashed: a release of its own."""
    shutil.copytree(bundle, out)
    change(out)
    rehash(out)
    return out


@pytest.fixture
def dest(tmp_path, bundles):
    """A device's DEST with the float32 bundle live (A) and the int8 one beside it (B)."""
    d = tmp_path / "device"
    (d / "releases").mkdir(parents=True)
    a, b = install(d, bundles["none"]), install(d, bundles["int8"])
    switch(d, a)
    return {"path": d, "A": a, "B": b}


def serve(dest_path: Path, tmp_path: Path, *args: str, name: str = "logs") -> Served:
    return Served.predict_py(dest_path / "current", "--listen", "127.0.0.1:0", *args,
                             env=untrusting_env(tmp_path / "home"), logs=tmp_path / name)


# --- what it answers -------------------------------------------------------------------------

def _cli(bundle: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-I", str(bundle / "predict.py"), *args, "--json"],
                          capture_output=True, text=True, timeout=120,
                          env=untrusting_env(bundle.parent / "cli-home"))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                       r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                       r'(-?[0-9.]+(e[-+]?[0-9]+)?|\+Inf|NaN)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus' text format, every line checked: {'name{labels}': value}."""
    samples, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line.startswith("# HELP "):
            continue
        else:
            assert PROM_LINE.match(line), line
            key, value = line.rsplit(" ", 1)
            family = re.sub(r"(_bucket|_sum|_count)$", "", key.split("{")[0])
            assert family in typed or key.split("{")[0] in typed, f"no # TYPE for {line}"
            samples[key] = float(value)
    return samples


def test_predict_health_and_metrics_answer_as_the_cli_does(dest, tmp_path, bundles):
    srv = serve(dest["path"], tmp_path, "--threads", "1", "--workers", "2")
    try:
        image = tmp_path / "digit.png"
        image.write_bytes(_png())
        status, headers, body = srv.call("POST", "/predict?top_k=10", image.read_bytes())
        assert status == 200 and headers["Content-Type"] == "application/json", body
        got = json.loads(body)
        want = _cli(dest["path"] / "current", str(image), "--threads", "1", "--top-k", "10")
        assert got["release"] == dest["A"] and got["signature"] == want["signature"]
        assert got["predictions"][0]["input"] == "body"
        assert got["predictions"][0]["top"] == want["predictions"][0]["top"]

        x = np.load(bundles["none"] / "golden" / "inputs.npy")[:3]
        np.save(tmp_path / "three.npy", x)
        status, _, body = srv.call("POST", "/predict", (tmp_path / "three.npy").read_bytes())
        want = _cli(dest["path"] / "current", str(tmp_path / "three.npy"), "--threads", "1")
        assert status == 200
        assert [p["top"] for p in json.loads(body)["predictions"]] == [p["top"]
                                                                       for p in want["predictions"]]

        health = srv.health()
        model = (dest["path"] / "releases" / dest["A"] / "model.tflite").read_bytes()
        assert health["status"] == "ok" and health["release"] == dest["A"]
        assert health["sha256"] == hashlib.sha256(model).hexdigest()
        assert health["selftest_passed"] is True and health["rejected"] is None
        assert 0 < health["uptime_s"] < 600 and health["workers"] == 2

        status, headers, body = srv.call("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        m = parse_metrics(body.decode())
        assert m['edgebn_requests_total{path="/predict",code="200"}'] == 2
        assert m['edgebn_requests_total{path="/health",code="200"}'] == 1
        assert m["edgebn_predict_duration_seconds_count"] == 2
        assert m['edgebn_predict_duration_seconds_bucket{le="+Inf"}'] == 2
        buckets = [v for k, v in m.items()
                   if k.startswith("edgebn_predict_duration_seconds_bucket")]
        assert buckets == sorted(buckets)  # cumulative
        assert m[f'edgebn_model_load_seconds{{release="{dest["A"]}"}}'] > 0
        assert m[f'edgebn_selftest_passed{{release="{dest["A"]}"}}'] == 1
        info = [k for k in m if k.startswith("edgebn_release_info")]
        assert len(info) == 1 and f'release="{dest["A"]}"' in info[0]
        assert not [k for k in m if k.startswith("edgebn_release_rejected")]

        status, _, body = srv.call("POST", "/predict", b"not an image")
        assert status == 400 and body.count(b"\n") == 1
        assert json.loads(body)["error"].startswith("body: not a readable image")
        m = parse_metrics(srv.call("GET", "/metrics")[2].decode())
        assert m['edgebn_request_errors_total{code="400"}'] == 1
        assert m["edgebn_predict_duration_seconds_count"] == 2  # only answers 200 are timed
    finally:
        assert srv.stop() == 0
    assert srv.stderr() == ""
    assert srv.events()[-1] == {"event": "stopped", "release": dest["A"]}


def test_a_known_npy_header_is_still_checked_and_a_float32_body_is_not_copied(predict, bundles):
    """The server keeps the .npy headers it has parsed (NumPy's parser costs more than a
    small request): a kept header must not let a body through that the parser would
    refuse, and a float32 body reaches the model without a copy."""
    manifest = json.loads((bundles["none"] / "manifest.json").read_text())
    served = predict.load_serve(str(bundles["none"]), manifest)
    decode = served["npy_from_bytes"]
    x = np.load(bundles["none"] / "golden" / "inputs.npy")[:2]
    shape = x.shape[1:]
    good = _npy(x)
    for _ in range(2):  # parsed, then kept
        got = decode(good, shape, "body")
        assert got.dtype == np.float32 and np.array_equal(got, x)
        assert not got.flags.owndata and not got.flags.writeable  # the body's own bytes
    assert np.array_equal(decode(_npy(x.astype(np.float64)), shape, "body"), x)
    assert np.array_equal(decode(_npy(np.asfortranarray(x)), shape, "body"), x)
    header_len = len(good) - x.nbytes
    with pytest.raises(predict.BundleError, match="bytes follow it"):
        decode(good[:-4], shape, "body")  # the kept header, the data cut short
    with pytest.raises(predict.BundleError, match="bytes follow it"):
        decode(good + b"\0" * 4, shape, "body")
    with pytest.raises(predict.BundleError, match="bytes follow it"):
        decode(good[:header_len], shape, "body")
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(predict.BundleError, match="NaN or infinite"):
        decode(_npy(bad), shape, "body")  # the same header: the values are checked each time
    for _ in range(2):  # a refused header is never kept
        with pytest.raises(predict.BundleError, match="dtype object"):
            decode(_npy(np.array([None] * 64, object), allow_pickle=True), shape, "body")
    with pytest.raises(predict.BundleError, match="the model expects"):
        decode(_npy(x[:, :4]), shape, "body")
    for i in range(served["NPY_HEADERS_KEPT"] + 5):  # many shapes: the kept ones stay bounded
        with pytest.raises(predict.BundleError):
            decode(_npy(np.zeros((i + 1, 3), np.float32)), shape, "body")
    assert len(served["NPY_HEADERS"]) <= served["NPY_HEADERS_KEPT"]
    assert np.array_equal(decode(good, shape, "body"), x)


def test_an_answer_says_where_its_time_went(dest, tmp_path, bundles):
    """Server-Timing: reading the body, decoding it and running the model, in ms."""
    srv = serve(dest["path"], tmp_path, "--threads", "1", "--workers", "1")
    try:
        x = np.load(bundles["none"] / "golden" / "inputs.npy")[:1]
        for body in (_npy(x), _png()):
            t0 = time.perf_counter()
            status, headers, _ = srv.call("POST", "/predict", body)
            seconds = time.perf_counter() - t0
            assert status == 200
            parts = dict(part.split(";dur=") for part in headers["Server-Timing"].split(", "))
            assert list(parts) == ["read", "decode", "model"]
            ms = [float(v) for v in parts.values()]
            assert all(v >= 0 for v in ms) and ms[2] > 0
            assert sum(ms) <= seconds * 1e3
        status, headers, _ = srv.call("POST", "/predict", b"not an image")
        assert status == 400 and "Server-Timing" not in headers
    finally:
        assert srv.stop() == 0


def test_a_passing_selftest_writes_nothing_to_stderr(bundles, tmp_path):
    """LiteRT's XNNPACK line is printed by C++ on fd 2: kept off it unless --verbose."""
    env = untrusting_env(tmp_path / "home")
    cmd = [sys.executable, "-I", str(bundles["none"] / "predict.py"), "--selftest"]
    quiet = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert quiet.returncode == 0 and "self-test PASSED" in quiet.stdout
    assert quiet.stderr == ""
    loud = subprocess.run([*cmd, "--verbose"], capture_output=True, text=True, timeout=120, env=env)
    assert loud.returncode == 0 and "XNNPACK" in loud.stderr  # what the redirection keeps off


def test_an_input_file_over_max_input_bytes_is_refused_unread(predict, bundles, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.setenv("EDGEBN_TRUST", str(tmp_path / "no-trust-file"))
    big = tmp_path / "big.npy"
    with open(big, "wb") as f:  # sparse: no disk is used
        f.truncate(predict.MAX_INPUT_BYTES + 1)
    code = predict.main([str(big), "--json"], root=str(bundles["none"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0] == (f"Error: {big}: {predict.MAX_INPUT_BYTES + 1} bytes, over the limit of "
                      f"{predict.MAX_INPUT_BYTES} for one input file")
    x = np.load(bundles["none"] / "golden" / "inputs.npy")[:1]
    np.save(tmp_path / "small.npy", x)
    assert predict.main([str(tmp_path / "small.npy"), "--json"], root=str(bundles["none"])) == 0


# --- reloads ---------------------------------------------------------------------------------

def live_intervals(events: list[dict]) -> list[tuple[str, float, float]]:
    """(release, from, to) in CLOCK_MONOTONIC seconds, from the server's own log lines."""
    first = next(e for e in events if e["event"] == "serving")
    live, since, out = first["release"], first["monotonic"], []
    for e in events:
        if e["event"] == "live":
            before, after = e["swapped_monotonic"]
            assert e["previous"] == live
            out.append((live, since, after))
            live, since = e["release"], before
    out.append((live, since, float("inf")))
    return out


def test_reloads_under_load_drop_nothing(sshd, bundles, tmp_path):
    """4 clients send 1,000 requests while 20 deploys and rollbacks (edgebn's own, through a
    real sshd) switch current between two releases: none fails, each answer names a release
    the server had live while answering it, and /health ends on the last one."""
    from sshd_hosts import _target

    from edgebn.deploy.ssh import DeployOptions, prepare, rollback, ship

    target, opts = _target(sshd), DeployOptions(str(tmp_path / "device"), python=sys.executable)
    a, b = prepare(bundles["none"]), prepare(bundles["int8"])
    ship(a, target, opts)
    ship(b, target, opts)  # current: B; releases.log: A, B
    srv = serve(tmp_path / "device", tmp_path, "--poll", "0.05", "--workers", "2", "--timeout",
                "60")
    x = np.load(bundles["none"] / "golden" / "inputs.npy")
    bodies = [_npy(x[i]) for i in range(len(x))]
    switches, results, failures, order = [0], [], [], []
    done = threading.Event()

    def client(c: int) -> None:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        for j in range(250):
            while switches[0] < j * 20 // 250 and not done.is_set():  # spread over every switch
                time.sleep(0.005)
            t0 = time.monotonic()
            try:
                status, _, body = call(srv.port, "POST", "/predict", bodies[(c + j) % len(bodies)],
                                       conn=conn)
                t1 = time.monotonic()
                release = json.loads(body)["release"] if status == 200 else None
                results.append((t0, t1, status, release))
            except Exception as exc:  # a dropped connection is a failed request
                failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
        conn.close()

    clients = [threading.Thread(target=client, args=(c,)) for c in range(4)]
    try:
        for t in clients:
            t.start()
        for k in range(20):
            if k % 2 == 0:
                want = rollback(target, opts).release
                assert want == a.release
            else:
                want = Path(ship(b, target, opts).release).name
            order.append(want)
            assert srv.wait_release(want, timeout=15)["release"] == want  # taken under load
            switches[0] += 1
        done.set()
        for t in clients:
            t.join(120)
        final = srv.health()
    finally:
        done.set()
        srv.stop()
    assert failures == [] and len(results) == 1000
    assert [s for *_, s, _ in results if s != 200] == []
    assert final["release"] == order[-1] == b.release and final["rejected"] is None
    intervals = live_intervals(srv.events())
    swaps = [e for e in srv.events() if e["event"] == "live"]
    assert [e["release"] for e in swaps] == order  # each switch taken, in order
    for t0, t1, _, release in results:
        assert any(r == release and start <= t1 and end >= t0 for r, start, end in intervals), \
            (release, t0, t1)
    served = {r for *_, r in results}
    assert served == {a.release, b.release}
    assert "Traceback" not in srv.stderr()


def wait_rejected(srv: Served, rid: str, timeout: float = 15) -> dict:
    """/health once it says ``rid`` was not taken (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while ((h := srv.health())["rejected"] or {}).get("release") != rid:
        if time.monotonic() > deadline:
            return h
        time.sleep(0.05)
    return h


def test_a_bad_release_is_never_served(dest, tmp_path, bundles):
    d = dest["path"]

    def wrong_golden(b: Path) -> None:
        y = np.load(b / "golden" / "outputs.npy")
        np.save(b / "golden" / "outputs.npy", np.roll(y, 1, axis=-1))

    bad = {"golden": install(d, variant(bundles["none"], tmp_path / "golden", wrong_golden)),
           "model": install(d, variant(bundles["none"], tmp_path / "model", lambda b: (
               b / "model.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 8)))}
    reasons = {"golden": "self-test failed: max |diff|",
               "model": "no usable TFLite runtime: ai_edge_litert: ValueError"}
    srv = serve(d, tmp_path, "--poll", "0.05")
    try:
        for kind, rid in bad.items():
            switch(d, rid)
            h = wait_rejected(srv, rid)
            assert h["release"] == dest["A"] and h["rejected"]["release"] == rid, h
            assert h["rejected"]["reason"].startswith(reasons[kind]), h["rejected"]
            status, _, body = srv.call("POST", "/predict", _npy(np.zeros((8, 8, 1), np.float32)))
            assert status == 200 and json.loads(body)["release"] == dest["A"]
            m = parse_metrics(srv.call("GET", "/metrics")[2].decode())
            rejected = [k for k in m if k.startswith("edgebn_release_rejected")]
            assert len(rejected) == 1 and f'release="{rid}"' in rejected[0]
        switch(d, dest["B"])  # a good release after bad ones is taken
        assert srv.wait_release(dest["B"])["rejected"] is None
    finally:
        srv.stop()
    assert [e["release"] for e in srv.events() if e["event"] == "live"] == [dest["B"]]
    assert [e["release"] for e in srv.events() if e["event"] == "rejected"] == list(bad.values())
    for kind, code in (("golden", 1), ("model", 2)):  # and neither starts a server
        switch(d, bad[kind])
        with pytest.raises(ServerExited) as exc:
            serve(d, tmp_path, name=f"start-{kind}")
        lines = exc.value.stderr.strip().splitlines()
        assert exc.value.code == code and len(lines) == 1 and reasons[kind] in lines[0], lines
        assert "serving" not in (tmp_path / f"start-{kind}" / "server.out").read_text()


def test_sighup_checks_now_and_a_long_poll_waits(dest, tmp_path):
    srv = serve(dest["path"], tmp_path, "--poll", "3600")
    try:
        switch(dest["path"], dest["B"])
        time.sleep(0.5)
        assert srv.health()["release"] == dest["A"]  # not read yet: the poll is an hour
        srv.proc.send_signal(1)  # SIGHUP
        assert srv.wait_release(dest["B"], timeout=15)["release"] == dest["B"]
    finally:
        srv.stop()


# --- hostile requests ------------------------------------------------------------------------

def _request(method: str, path: str, body: bytes = b"", headers: dict | None = None,
             length: bool = True) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if length and body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def hostile_requests(bundle: Path) -> list[tuple[str, bytes, dict]]:
    """200 hostile requests: (kind, bytes, how to send them)."""
    import random

    rng = random.Random(28)
    png = _png((64, 64), "RGB")
    x = np.load(bundle / "golden" / "inputs.npy")
    fixed = [
        ("huge Content-Length",
         _request("POST", "/predict", headers={"Content-Length": str(10**12)}), {}),
        ("huge body, expecting 100", _request("POST", "/predict", headers={
            "Content-Length": str(1 << 30), "Expect": "100-continue"}), {}),
        ("body over the limit", _request("POST", "/predict", b"\0" * (2 << 20)), {}),
        ("object .npy", _request("POST", "/predict", _npy(np.array([{"a": 1}] * 64, object), True)),
         {}),
        ("object .npy, shaped",
         _request("POST", "/predict", _npy(np.empty((8, 8, 1), object), True)), {}),
        ("strings .npy", _request("POST", "/predict", _npy(np.full((8, 8, 1), "x"))), {}),
        ("complex .npy", _request("POST", "/predict", _npy(np.zeros((8, 8, 1), np.complex64))), {}),
        ("record .npy", _request("POST", "/predict", _npy(np.zeros((8, 8, 1), "f4,f4"))), {}),
        ("NaN .npy", _request("POST", "/predict", _npy(np.full((8, 8, 1), np.nan, np.float32))),
         {}),
        ("empty batch .npy", _request("POST", "/predict", _npy(np.zeros((0, 8, 8, 1), np.float32))),
         {}),
        ("batch too large",
         _request("POST", "/predict", _npy(np.zeros((300, 8, 8, 1), np.float32))), {}),
        ("header claims 10^12 floats", _request("POST", "/predict", _npy_header((10**12,))), {}),
        ("header claims 10^6 inputs", _request("POST", "/predict", _npy_header((10**6, 8, 8, 1))),
         {}),
        ("npy version 9", _request("POST", "/predict", b"\x93NUMPY\x09\x00" + _npy(x[:1])[8:]), {}),
        ("empty body", _request("POST", "/predict", headers={"Content-Length": "0"}), {}),
        ("decompression bomb", _request("POST", "/predict", _bomb()), {}),
        ("text body", _request("POST", "/predict", b"hello, not an image"), {}),
        ("no Content-Length", _request("POST", "/predict", b"abc", length=False), {}),
        ("chunked", _request("POST", "/predict", b"3\r\nabc\r\n0\r\n\r\n",
                             {"Transfer-Encoding": "chunked"}, length=False), {}),
        ("Content-Length -1", _request("POST", "/predict", headers={"Content-Length": "-1"}), {}),
        ("Content-Length abc", _request("POST", "/predict", headers={"Content-Length": "abc"}), {}),
        ("Content-Length twice", _request("POST", "/predict", b"abcd", {"Content-Length": "3"}),
         {}),
        ("Content-Length of 5000 digits",
         _request("POST", "/predict", headers={"Content-Length": "9" * 5000}), {}),
        ("top_k 0", _request("POST", "/predict?top_k=0", _npy(x[0])), {}),
        ("top_k abc", _request("POST", "/predict?top_k=abc", _npy(x[0])), {}),
        ("top_k 10^30", _request("POST", "/predict?top_k=" + "9" * 30, _npy(x[0])), {}),
        ("garbage line", b"GARBAGE\r\n\r\n", {}),
        ("binary line", bytes(range(1, 256)) + b"\r\n\r\n", {}),
        ("HTTP/9.9", b"GET /health HTTP/9.9\r\n\r\n", {}),
        ("HTTP/0.9 POST", b"POST /predict\r\n\r\n", {}),
        ("URL of 70 kB", _request("GET", "/" + "a" * 70000), {}),
        ("header of 70 kB", _request("GET", "/health", headers={"X": "a" * 70000}), {}),
        ("200 headers", _request("GET", "/health", headers={f"X-{i}": "1" for i in range(200)}),
         {}),
        ("GET /predict", _request("GET", "/predict"), {}),
        ("POST /health", _request("POST", "/health", b"{}"), {}),
        ("POST /metrics", _request("POST", "/metrics", b"{}"), {}),
    ]
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "CONNECT", "FOO", "get"):
        for path in ("/predict", "/health"):
            fixed.append((f"{method} {path}",
                          _request(method, path, b"x" if method == "PUT" else b""), {}))
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/predict/../../../etc/passwd",
                 "//etc/passwd", "/health/../predict", "/..%2f..%2fetc%2fpasswd",
                 "http://127.0.0.1/../../etc/passwd", "/predict%00.png", "/./health/.",
                 "/" + "../" * 100 + "etc/shadow", "/metrics/../../root/.ssh/id_rsa", "\\..\\..\\"):
        for method in ("GET", "POST"):
            fixed.append((f"traversal {method} {path[:30]}", _request(method, path, b"x"), {}))
    slow = [
        ("silent after the request line", b"POST /predict HTTP/1.1\r\n", {"pause": 2 * TIMEOUT_S}),
        ("headers never ended", b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n",
         {"pause": 2 * TIMEOUT_S}),
        ("body cut short", _request("POST", "/predict", headers={"Content-Length": "1000"})
         + b"x" * 10,
         {"pause": 2 * TIMEOUT_S}),
        ("slowloris headers", _request("GET", "/health", headers={"X": "y" * 40}),
         {"pause": 0.1, "chunks": 60}),
        ("slowloris body", _request("POST", "/predict", _npy(x[0])), {"pause": 0.1, "chunks": 40}),
    ]
    cases = fixed + slow
    while len(cases) < 200:  # truncated and bit-flipped images and arrays, wrong shapes
        kind = rng.choice(["png", "jpg", "npy-shape", "npy-cut"])
        if kind == "png":
            body = png[: rng.randint(8, len(png) - 30)]
        elif kind == "jpg":
            jpg = _png((48, 48), "RGB", "JPEG", seed=rng.randrange(100))
            body = jpg[: rng.randint(2, len(jpg) // 2)]
        elif kind == "npy-shape":
            shape = rng.choice([(8, 8), (8, 8, 3), (1, 8, 8, 2), (2, 4, 4, 1), (64,),
                                (8, 8, 1, 1, 1)])
            body = _npy(np.zeros(shape, rng.choice(["float32", "int8", "float64"])))
        else:
            whole = _npy(x[: rng.randint(1, 4)])
            body = whole[: rng.randint(10, len(whole) - 1)]
        cases.append((f"{kind} #{len(cases)}", _request("POST", "/predict", body), {}))
    return cases[:200]


def _npy_header(shape: tuple) -> bytes:
    """A .npy header that claims ``shape`` of float32, and 64 bytes after it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + b"\0" * 64


def _bomb() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, "PNG")  # 20 megapixels in 20 kB
    return buf.getvalue()


def _tree(root: Path, skip: set[Path]) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p not in skip and not p.is_dir()}


def test_hostile_requests_get_a_4xx_or_are_cut_off(dest, tmp_path, bundles):
    srv = serve(dest["path"], tmp_path, "--timeout", str(TIMEOUT_S), "--max-body-bytes",
                str(1 << 20), "--workers", "2")
    logs = {srv.out_path, srv.err_path}
    before = _tree(tmp_path, logs)
    cases = hostile_requests(bundles["none"])
    assert len(cases) == 200
    outcomes = {}
    try:
        for kind, data, how in cases:
            got, seconds = raw(srv.port, data, **how)
            status = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None
            if status is None:  # no answer: only a request too slow to arrive may end so,
                assert "pause" in how, (kind, got[:200])  # and only at the server's timeout
                assert TIMEOUT_S - 0.2 <= seconds <= TIMEOUT_S + 2, (kind, seconds)
            else:
                assert 400 <= status < 500, (kind, got[:300])
                head, _, body = got.partition(b"\r\n\r\n")
                if not kind.startswith("HEAD"):
                    assert body.endswith(b"\n") and body.count(b"\n") == 1, (kind, body)
                    assert set(json.loads(body)) == {"error"}, (kind, body)
                if "pause" in how and status == 408:
                    assert seconds <= TIMEOUT_S + 2, (kind, seconds)
            outcomes[status] = outcomes.get(status, 0) + 1
            t0 = time.monotonic()
            assert srv.health()["release"] == dest["A"], kind
            assert time.monotonic() - t0 < 1.0, (kind, time.monotonic() - t0)
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    assert {400, 404, 405, 408, 411, 413, 414, 431} <= set(outcomes), outcomes
    err = srv.stderr()
    assert "Traceback" not in err and err == "", err[-2000:]
    assert not [e for e in srv.events() if e["event"] == "error"]
    assert _tree(tmp_path, logs) == before  # no file written, the release untouched


# --- a trusting device -----------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="no ssh-keygen")
def test_a_trusting_device_refuses_a_release_tampered_after_deploy(bundles, tmp_path):
    from edgebn.deploy.sign import allowed_signers_line, sign_manifest

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")],
                   check=True)
    config = tmp_path / "home" / ".config" / "edgebn"
    config.mkdir(parents=True)
    (config / "allowed_signers").write_text(allowed_signers_line(tmp_path / "k.pub") + "\n")
    shutil.copyfile(DEVICE_DIR / "verify.py", config / "verify.py")  # as deploy --trust does
    env = untrusting_env(tmp_path / "home") | {"EDGEBN_TRUST": str(config / "allowed_signers")}
    d = tmp_path / "device"
    (d / "releases").mkdir(parents=True)
    ids = {}
    for name, q in (("A", "none"), ("B", "int8"), ("C", "int8")):
        signed = shutil.copytree(bundles[q], tmp_path / f"signed-{name}")
        if name == "C":  # a release of its own: another README, signed
            (signed / "README.md").write_text("C\n")
            rehash(signed)
        sign_manifest(signed, tmp_path / "k")
        ids[name] = install(d, signed)
    switch(d, ids["A"])
    model = d / "releases" / ids["B"] / "model.tflite"  # B: one byte changed after deploy
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    rehashed = d / "releases" / ids["C"]  # C: changed and re-hashed (the signature is stale)
    (rehashed / "labels.txt").write_text("tampered\n" * 10)
    rehash(rehashed)

    verifier = [sys.executable, "-I", str(config / "verify.py"), "run", str(d / "current"),
                "--serve",
                "--listen", "127.0.0.1:0", "--poll", "0.05"]
    srv = Served(verifier, env, tmp_path / "logs")
    try:
        assert srv.health()["signature"].startswith("verified by ED25519")
        for name, needle in (("B", "model.tflite: sha256"),
                             ("C", "manifest.json.sig does not verify")):
            switch(d, ids[name])
            h = wait_rejected(srv, ids[name])
            assert h["release"] == ids["A"] and h["rejected"]["release"] == ids[name]
            assert needle in h["rejected"]["reason"], h
            status, _, body = srv.call("POST", "/predict", _npy(np.zeros((8, 8, 1), np.float32)))
            assert status == 200 and json.loads(body)["release"] == ids["A"]
        good = install(d, variant(bundles["int8"], tmp_path / "good", lambda b: None))
        sign_manifest(d / "releases" / good, tmp_path / "k")  # signed after the copy: the same
        switch(d, good)                                       # bytes as a deploy would leave
        assert srv.wait_release(good)["release"] == good  # a signed, intact release is taken
    finally:
        srv.stop()
    for name in ("B", "C"):  # and at start: no server at all, through the verifier or not
        switch(d, ids[name])
        for how, command in (("verifier", verifier),
                             ("direct", [sys.executable, "-I", str(d / "current" / "predict.py"),
                                         "--serve", "--listen", "127.0.0.1:0"])):
            with pytest.raises(ServerExited) as exc:
                Served(command, env, tmp_path / f"start-{name}-{how}")
            lines = exc.value.stderr.strip().splitlines()
            assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), lines


# --- listening -------------------------------------------------------------------------------

def test_serve_py_runs_only_from_bytes_the_manifest_lists(predict, bundles, tmp_path):
    manifest = json.loads((bundles["none"] / "manifest.json").read_text())
    served = predict.load_serve(str(bundles["none"]), manifest)
    assert served["parse_listen"](predict.SERVE_LISTEN) == ("127.0.0.1", 8750)  # loopback
    wrong = {"files": {**manifest["files"], "serve.py": "0" * 64}}
    with pytest.raises(predict.BundleError, match="serve.py: sha256 does not match the manifest"):
        predict.load_serve(str(bundles["none"]), wrong)
    old = shutil.copytree(bundles["none"], tmp_path / "old")
    (old / "serve.py").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["serve.py"]  # a bundle made before the server
    (old / "manifest.json").write_text(json.dumps(manifest))
    done = subprocess.run([sys.executable, "-I", str(old / "predict.py"), "--serve"],
                          capture_output=True, text=True, timeout=60,
                          env=untrusting_env(tmp_path / "home"))
    assert done.returncode == 2 and done.stderr.startswith("Error: this bundle has no serve.py")


def test_loopback_unless_told_otherwise(dest, tmp_path):
    env = untrusting_env(tmp_path / "home")
    for listen in (":8750", "8750", "127.0.0.1:http", "127.0.0.1:70000", "[::1]"):
        done = subprocess.run([sys.executable, "-I", str(dest["path"] / "current" / "predict.py"),
                               "--serve", "--listen", listen], capture_output=True, text=True,
                              timeout=60, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and "expected HOST:PORT" in lines[0], lines
    srv = Served.predict_py(dest["path"] / "current", "--listen", "0.0.0.0:0", env=env,
                            logs=tmp_path / "any")
    try:
        assert srv.serving["address"].startswith("http://0.0.0.0:")
        assert srv.health()["release"] == dest["A"]
    finally:
        srv.stop()


def test_a_unix_socket_serves_and_is_removed_at_sigterm(dest, tmp_path, bundles):
    sock = tmp_path / "s.sock"
    srv = Served.predict_py(dest["path"] / "current", "--socket", str(sock),
                            env=untrusting_env(tmp_path / "home"), logs=tmp_path / "logs")
    try:
        assert srv.serving["address"] == f"unix:{sock}" and sock.is_socket()
        conn = UnixHTTPConnection(str(sock))
        conn.request("POST", "/predict",
                     body=_npy(np.load(bundles["none"] / "golden" / "inputs.npy")[0]))
        resp = conn.getresponse()
        assert resp.status == 200 and json.loads(resp.read())["release"] == dest["A"]
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["release"] == dest["A"]
        conn.close()
    finally:
        start = time.monotonic()
        assert srv.stop() == 0
    assert time.monotonic() - start < 10 and not os.path.lexists(sock)


# --- the emulated Pi -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pi_trixie(bundles):
    from edgebn.deploy.emulate import EmulationUnavailable, runtime_venv, userland
    from edgebn.runtime.backends import Backend

    try:
        root = userland(os_name="trixie")
        return root, runtime_venv(bundles["none"], Backend.ai_edge_litert, root, "trixie")
    except EmulationUnavailable as exc:
        pytest.skip(f"arm64 emulation unavailable: {exc}")


@pytest.mark.emulation
def test_the_server_runs_on_an_emulated_pi(pi_trixie, dest, tmp_path, bundles):
    """trixie's arm64 Python under qemu-user (no systemd there): the server run directly,
    talked to over HTTP from this machine, following current to another release."""
    from edgebn.deploy.emulate import _env, _qemu

    root, python = pi_trixie
    command = _qemu(root, str(python), "-I", str(dest["path"] / "current" / "predict.py"),
                    "--serve",
                    "--listen", "127.0.0.1:0", "--poll", "0.2", "--workers", "2")
    env = _env(python.parents[2]) | {"EDGEBN_TRUST": str(tmp_path / "no-trust-file")}
    srv = Served(command, env, tmp_path / "logs")
    try:
        h = srv.health()
        assert h["release"] == dest["A"] and h["selftest_passed"]
        assert h["runtime"].startswith("ai_edge_litert") and h["machine"] == "aarch64"
        assert h["python"].startswith("3.13")
        x = np.load(bundles["none"] / "golden" / "inputs.npy")[:2]
        status, _, body = srv.call("POST", "/predict", _npy(x), timeout=120)
        assert status == 200 and len(json.loads(body)["predictions"]) == 2
        status, _, body = srv.call("POST", "/predict", _npy(np.zeros((3, 3), np.float32)))
        assert status == 400 and "inputs of shape [3, 3]" in json.loads(body)["error"]
        m = parse_metrics(srv.call("GET", "/metrics")[2].decode())
        assert m["edgebn_cpu_temperature_celsius"] == pytest.approx(48.312)  # the Pi 4's zone
        switch(dest["path"], dest["B"])
        assert srv.wait_release(dest["B"], timeout=120)["release"] == dest["B"]
        status, _, body = srv.call("POST", "/predict", _npy(x[0]), timeout=120)
        assert status == 200 and json.loads(body)["release"] == dest["B"]
    finally:
        srv.stop(timeout=60)
    assert "Traceback" not in srv.stderr()
