#!/usr/bin/env python3
"""The figures of the device's server (predict.py --serve), for the documentation.

    python tools/serve_figures.py [--runs 200] [--rounds 3] [--write docs/measurements.md]

Two bundles, made by edgebn's own code:

* the default CNN: ``edgebn build --no-bench --no-twin --bundle`` (digits, 8x8x1);
* MobileNetV2 at 224 px: ``keras.applications.MobileNetV2(weights=None)``, converted with
  edgebn.convert.to_tflite and bundled with edgebn.deploy.bundle (1000 classes, 16 random
  golden inputs).

For each, in a device's layout (DEST/releases/<id>, DEST/current):

* **invoke p50**: ``predict.py --bench --threads 1`` on the bundle (a process of its own);
* **POST /predict p50** of a preloaded body to ``predict.py --serve --workers 1 --threads 1``
  (the same interpreter settings), one client on a kept-alive connection. Two bodies: a
  JPEG (quality 90) of the model's input size, which is what a camera or a browser sends,
  and the same picture already preprocessed, as the .npy of the model's float input. Two
  clients: Python's http.client, and a lean one that sends the request's bytes built once
  and reads the answer by its Content-Length (what the server costs, without
  http.client's own parsing). Each round starts a fresh server and a fresh bench, one
  after the other, so both see the same load and neither keeps one process's luck (the
  same invoke loop differs by up to 6 % between two processes here); the ratio and the
  difference in µs are the medians of the rounds' own;
* **the server's split**: the medians of the Server-Timing header of the lean client's
  answers: reading the body, decoding it, running the model (set_tensor, invoke, the
  output);
* **requests/s** with 1, 2 and 4 concurrent clients (each its own kept-alive connection,
  http.client, the JPEG) against the server's defaults (workers min(4, cores), threads
  cores // workers);
* **reload**: from the ``mv -T`` that switches current to a release the server has not
  loaded to the first /health naming it (``--poll 0.05``: the poll wait is at most 50 ms of
  it), and back to the release before (kept: verified again, not loaded again);
* **dropped during reloads**: 4 clients posting without pause while current switches 10
  times; every answer that is not a 200 or a connection that fails counts.

Prints a Markdown table and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from figure_block import add_write_option, captured, write_block

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "EDGEBN_TRUST": str(home / "no-trust"),
            "LANG": "C.UTF-8"}


# --- the two bundles -------------------------------------------------------------------------

def cnn_bundle(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "edgebn.cli.app", "build", "--out", str(tmp / "cnn"),
                    "--no-bench", "--no-twin", "--bundle", "--epochs", "2"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    return tmp / "cnn" / "bundle"


def mobilenet_bundle(tmp: Path) -> Path:
    from edgebn.cli.ui import quiet

    with quiet(False):
        import keras

        from edgebn.convert import to_tflite
        from edgebn.data.images import Color, Preprocessing
        from edgebn.deploy.bundle import BundleSource, bundle
        from edgebn.tflite.residue import inspect_model

        model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)
        converted = to_tflite(model, tmp / "mobilenet_v2_224.tflite")
        golden = np.random.default_rng(0).uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32)
        source = BundleSource(converted.model, Preprocessing((224, 224, 3), 255.0, 1 / 127.5, -1.0,
                                                             Color.rgb),
                              tuple(f"class_{i}" for i in range(1000)), golden, "mobilenet-v2",
                              "none", 0.0, inspect_model(converted.model).bn.verdict)
        return bundle(source, tmp / "mobilenet-bundle").out


def image(shape: tuple[int, int, int]) -> bytes:
    """A camera-like frame at the model's input size: a smooth picture with sensor noise, as
    a JPEG (quality 90), which is what a camera or a browser sends."""
    from PIL import Image

    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = (128 + 100 * np.sin(xx / 7.0) * np.cos(yy / 11.0))[..., None]
    noise = np.random.default_rng(1).normal(0, 8, (h, w, c))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if c == 1 else pixels, "L" if c == 1 else "RGB").save(
        buf, "JPEG", quality=90)
    return buf.getvalue()


def device(bundle: Path, dest: Path) -> tuple[str, str]:
    """DEST with ``bundle`` live (A) and a second release of it (B: another README)."""
    (dest / "releases").mkdir(parents=True)
    ids = []
    for name in ("A", "B"):
        copy = dest / f"tmp-{name}"
        shutil.copytree(bundle, copy)
        if name == "B":
            (copy / "README.md").write_text("B\n")
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["files"]["README.md"] = hashlib.sha256(b"B\n").hexdigest()
            (copy / "manifest.json").write_text(json.dumps(manifest))
        rid = hashlib.sha256((copy / "manifest.json").read_bytes()).hexdigest()[:16]
        copy.rename(dest / "releases" / rid)
        ids.append(rid)
    switch(dest, ids[0])
    return ids[0], ids[1]


def switch(dest: Path, rid: str) -> None:
    tmp = dest / ".current.tmp"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(f"releases/{rid}")
    os.replace(tmp, dest / "current")  # rename(2), as mv -T


# --- the server ------------------------------------------------------------------------------

class Server:
    def __init__(self, dest: Path, logs: Path, *args: str):
        logs.mkdir(parents=True, exist_ok=True)
        self.out = logs / "server.out"
        with open(self.out, "wb") as out, open(logs / "server.err", "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-I",
                                          str(dest / "current" / "predict.py"),
                                          "--serve", "--listen", "127.0.0.1:0", *args],
                                         stdout=out, stderr=err, env=env(logs / "home"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lines = self.out.read_text().splitlines()
            if lines:
                self.port = int(json.loads(lines[0])["address"].rsplit(":", 1)[1])
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {(logs / 'server.err').read_text()}")
            time.sleep(0.05)
        raise SystemExit("the server did not start")

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def health(self) -> dict:
        conn = self.connection()
        conn.request("GET", "/health")
        doc = json.loads(conn.getresponse().read())
        conn.close()
        return doc

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.request("POST", "/predict", body=body)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def server_times(server: Server, body: bytes, runs: int) -> list[float]:
    """µs per POST through http.client, on one kept-alive connection."""
    conn = server.connection()
    for _ in range(10):
        post(conn, body)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        assert post(conn, body) == 200
        times.append((time.perf_counter_ns() - t0) / 1e3)
    conn.close()
    return times


def lean_times(server: Server, body: bytes, runs: int) -> tuple[list[float], list[dict]]:
    """µs per POST from a lean HTTP/1.1 client: the request's bytes built once, the answer
    read by its Content-Length; and each answer's Server-Timing, in µs by part."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    answers = sock.makefile("rb")
    times, splits = [], []
    for i in range(runs + 10):
        t0 = time.perf_counter_ns()
        sock.sendall(request)
        status = answers.readline()
        headers = {}
        while (line := answers.readline()) not in (b"\r\n", b""):
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        answers.read(int(headers[b"content-length"]))
        if i >= 10:  # the first ten warm up
            times.append((time.perf_counter_ns() - t0) / 1e3)
            assert status.split()[1] == b"200", status
            splits.append({k: float(v) * 1e3 for k, v in (
                part.split(";dur=") for part in headers[b"server-timing"].decode().split(", "))})
    sock.close()
    return times, splits


def bench_p50(bundle: Path, runs: int, home: Path) -> float:
    done = subprocess.run([sys.executable, "-I", str(bundle / "predict.py"), "--bench", "--runs",
                           str(runs), "--threads", "1", "--json"], capture_output=True, text=True,
                          env=env(home), check=True)
    return json.loads(done.stdout)["bench"]["latency_us"]["p50"]


def bundle_decoder(bundle: Path):
    """The bundle's own decode of a request body (its serve.py, loaded as the device loads
    it): body bytes -> [(name, model input)]."""
    from edgebn.deploy.bundle import load_predict_module

    predict = load_predict_module()
    served = predict.load_serve(str(bundle), json.loads((bundle / "manifest.json").read_text()))
    spec = json.loads((bundle / "bundle.json").read_text())
    return lambda body: served["decode_body"](body, spec)


def preprocessed(decode, body: bytes) -> bytes:
    """``body`` (an image) as the server decodes it, saved as a .npy: the model's float input."""
    buf = io.BytesIO()
    np.save(buf, np.stack([x for _, x in decode(body)]))
    return buf.getvalue()


def throughput(server: Server, body: bytes, clients: int, seconds: float) -> float:
    counts = [0] * clients
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        conn = server.connection()
        post(conn, body)
        while time.monotonic() < stop:
            assert post(conn, body) == 200
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - start)


def reload_ms(server: Server, dest: Path, rid: str) -> float:
    start = time.monotonic()
    switch(dest, rid)
    while server.health()["release"] != rid:
        time.sleep(0.002)
    return (time.monotonic() - start) * 1e3


def dropped_during_reloads(server: Server, dest: Path, ids: tuple[str, str], body: bytes,
                           switches: int = 10) -> tuple[int, int]:
    """(failed, answered) while current switches ``switches`` times under 4 clients."""
    done, failed, answered = threading.Event(), [0], [0]
    lock = threading.Lock()

    def client() -> None:
        conn = server.connection()
        while not done.is_set():
            try:
                ok = post(conn, body) == 200
            except Exception:
                ok = False
                conn.close()
                conn = server.connection()
            with lock:
                answered[0] += 1
                failed[0] += not ok
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for k in range(switches):
        reload_ms(server, dest, ids[(k + 1) % 2])
        time.sleep(0.1)
    done.set()
    for t in threads:
        t.join()
    return failed[0], answered[0]


def _echo(port_out) -> None:
    """A bare echo server for one connection (run in a process of its own)."""
    srv = socket.create_server(("127.0.0.1", 0))
    port_out.put(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while data := conn.recv(1 << 16):
        conn.sendall(data)


def round_trip_us(trips: int = 2000) -> float:
    """p50 of a bare loopback round trip (100 bytes each way) between two Python processes:
    the floor under any request to a server in another process."""
    import multiprocessing

    ports = multiprocessing.Queue()
    echo = multiprocessing.Process(target=_echo, args=(ports,), daemon=True)
    echo.start()
    sock = socket.create_connection(("127.0.0.1", ports.get(timeout=30)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(trips + 100):
        t0 = time.perf_counter_ns()
        sock.sendall(b"x" * 100)
        got = 0
        while got < 100:
            got += len(sock.recv(1 << 16))
        times.append((time.perf_counter_ns() - t0) / 1e3)
    sock.close()
    echo.join(30)
    return statistics.median(times[100:])


def decode_p50(decode, body: bytes, runs: int) -> float:
    """p50 of the server's own decode of ``body`` in a tight loop in this process: the same
    call as in the server, with warm caches."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        decode(body)
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(times)


BODIES = ("JPEG", ".npy")
CLIENTS = ("http.client", "lean")


def measure(name: str, bundle: Path, work: Path, runs: int, rounds: int) -> dict:
    spec = json.loads((bundle / "bundle.json").read_text())
    jpeg = image(tuple(spec["preprocessing"]["input_shape"]))
    decode = bundle_decoder(bundle)
    bodies = {"JPEG": jpeg, ".npy": preprocessed(decode, jpeg)}
    dest = work / f"{name}-device"
    a, b = device(bundle, dest)
    invoke = []
    served = {(k, c): [] for k in BODIES for c in CLIENTS}
    splits = {k: [] for k in BODIES}
    for r in range(rounds):  # a fresh server and a fresh bench each round, one after the other
        one = Server(dest, work / f"{name}-one-{r}", "--workers", "1", "--threads", "1")
        try:
            for kind, body in bodies.items():
                served[kind, "http.client"].append(statistics.median(server_times(one, body, runs)))
                times, split = lean_times(one, body, runs)
                served[kind, "lean"].append(statistics.median(times))
                splits[kind] += split
        finally:
            one.stop()
        invoke.append(bench_p50(dest / "current", runs, work / "bench-home"))
    server = Server(dest, work / f"{name}-default", "--poll", "0.05")
    try:
        workers = server.health()["workers"]
        rps = {c: throughput(server, jpeg, c, 5.0) for c in (1, 2, 4)}
        new = reload_ms(server, dest, b)  # not loaded before
        back = reload_ms(server, dest, a)  # the release before: kept
        failed, answered = dropped_during_reloads(server, dest, (a, b), jpeg)
    finally:
        server.stop()
    rows = {}
    for (kind, client), times in served.items():
        # per round, so that a load that comes and goes between rounds cancels out
        rows[kind, client] = {
            "p50_us": statistics.median(times),
            "ratio": statistics.median(s / i for i, s in zip(invoke, times, strict=True)),
            "overhead_us": statistics.median(s - i for i, s in zip(invoke, times, strict=True)),
            "rounds": [round(t) for t in times]}
    split = {kind: {part: statistics.median(d[part] for d in splits[kind])
                    for part in ("read", "decode", "model")} for kind in BODIES}
    return {"model": name, "sizes": {k: len(v) for k, v in bodies.items()},
            "jpeg_decode_loop_us": decode_p50(decode, jpeg, max(runs, 100)),
            "invoke_p50_us": statistics.median(invoke), "invoke_rounds": [round(i) for i in invoke],
            "rows": rows, "split": split, "rps": rps, "workers": workers,
            "reload_new_ms": new, "reload_back_ms": back, "failed": failed, "answered": answered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50, help="requests and invokes per round")
    ap.add_argument("--rounds", type=int, default=15)
    add_write_option(ap, "serve")
    ap.add_argument("--summary", action="append", metavar="PAGE",
                    help="also write the short form into block 'serve-summary' of PAGE "
                         "(the README)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(ROOT))
    rows, load_before = [], f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory(prefix="edgebn-serve-") as tmp:
        work = Path(tmp)
        bundles = {"default CNN (digits 8x8x1)": cnn_bundle(work),
                   "MobileNetV2 224x224x3": mobilenet_bundle(work)}
        for i, (name, bundle) in enumerate(bundles.items()):
            rows.append(measure(f"m{i}", bundle, work, args.runs, args.rounds) | {"model": name})
    trip = round_trip_us()
    runtime = subprocess.run([sys.executable, "-c", "import importlib.metadata as m;"
                              "print(m.version('ai-edge-litert'))"], capture_output=True,
                             text=True).stdout.strip()
    with captured(args.write, "serve"):
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores "
              "(shared with other work: read the ratios); "
              f"Python {platform.python_version()}, ai-edge-litert {runtime}; "
              f"{args.rounds} rounds of {args.runs}; "
              "p50s, ratio and overhead: the medians over the "
              f"rounds; load average before: {load_before}, after: {os.getloadavg()[0]:.1f}\n")
        print("| model | body | invoke p50 | client | POST /predict p50 | server / invoke | "
              "overhead | server's own: read / decode / model |")
        print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |")
        for r in rows:
            for kind in BODIES:
                sp = r["split"][kind]
                for client in CLIENTS:
                    row = r["rows"][kind, client]
                    print(f"| {r['model']} | {kind} ({r['sizes'][kind]:,} bytes) | "
                          f"{r['invoke_p50_us']:,.0f} µs | {client} | {row['p50_us']:,.0f} µs | "
                          f"{row['ratio']:.3f} | {row['overhead_us']:,.0f} µs | "
                          f"{sp['read']:,.0f} / {sp['decode']:,.0f} / {sp['model']:,.0f} µs |")
        print("\n| model | req/s, 1 / 2 / 4 clients | reload: new / back | "
              "dropped during 10 reloads |")
        print("| --- | ---: | ---: | ---: |")
        for r in rows:
            rps = " / ".join(f"{r['rps'][c]:,.0f}" for c in (1, 2, 4))
            print(f"| {r['model']} | {rps} ({r['workers']} workers) | "
                  f"{r['reload_new_ms']:,.0f} / {r['reload_back_ms']:,.0f} ms | "
                  f"{r['failed']} of {r['answered']:,} |")
        print(f"\nWhere the time goes: a bare loopback round trip between two Python processes, "
              f"p50 {trip:,.0f} µs; the JPEG's decode by the same call in a tight loop in one "
              "process (warm caches), against the server's own: " + "; ".join(
                  f"{r['model']} {r['jpeg_decode_loop_us']:,.0f} µs against "
                  f"{r['split']['JPEG']['decode']:,.0f} µs" for r in rows) + ".")
        print("\nper round, invoke p50 and the lean client's p50s (JPEG, .npy) in µs: " + "; ".join(
            f"{r['model']}: " + ", ".join(
                f"({i:,}, {j:,}, {n:,})" for i, j, n in zip(
                    r["invoke_rounds"], r["rows"]["JPEG", "lean"]["rounds"],
                    r["rows"][".npy", "lean"]["rounds"], strict=True))
            for r in rows))
    for page in args.summary or ():
        write_block(page, "serve-summary", summary(rows))


def summary(rows: list[dict]) -> str:
    """Two lines for the README: the default CNN's overhead in µs, MobileNetV2's ratio."""
    cnn, mobilenet = rows
    lean, client = cnn["rows"][".npy", "lean"], cnn["rows"]["JPEG", "http.client"]
    ratios = [mobilenet["rows"][kind, c]["ratio"] for kind in BODIES for c in CLIENTS]
    return (f"The device's server (`predict.py --serve`) on {cpu_model()}, {os.cpu_count()} cores: "
            f"the default CNN's `POST /predict` costs **{lean['overhead_us']:,.0f} µs** over its "
            f"{cnn['invoke_p50_us']:,.0f} µs `invoke()` (a .npy body, a lean client; "
            f"{client['overhead_us']:,.0f} µs with a JPEG and Python's http.client). "
            f"MobileNetV2 at 224 px: server / invoke **{min(ratios):.3f}-{max(ratios):.3f}** "
            f"on a {mobilenet['invoke_p50_us']:,.0f} µs invoke (the target, at most 1.05, is not "
            "met here; why: [Measurements](docs/measurements.md#the-devices-server)).")


if __name__ == "__main__":
    main()
