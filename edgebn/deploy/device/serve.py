"""The bundle's server, ``predict.py --serve``: its model behind HTTP, following DEST/current.

predict.py runs this file, never imports it: it reads serve.py's bytes from the bundle
once, checks their sha256 against the manifest it has just verified (signed, on a
trusting device), and executes exactly those bytes (see ``load_serve`` in predict.py), so
nothing is imported from the release folder by path. ``p`` is predict.py's own names
(the model, the checks, the self-test), set by that loader before anything here runs.

    POST /predict   an image file or a .npy as the body: predict.py IMAGE --json's document
                    and the release that answered ("release")
    GET /health     {"status": "ok", "release", "sha256", "selftest_passed", "uptime_s",
                     "rejected": null or {"release", "reason"}, ...}
    GET /metrics    Prometheus' text format 0.0.4

Each release is loaded as a :class:`Release`: verified (the device's verifier on a
trusting device), its model's bytes hashed against the manifest, one interpreter per
worker, and its self-test passed. :class:`Service` reads DEST/current every poll interval
(and at once on SIGHUP) and swaps a new release in only when all of that passed; requests
already running finish on the release they started with. Standard library only, with the
NumPy and runtime predict.py uses.
"""

import contextlib
import email.utils
import hashlib
import http.server
import io
import json
import math
import os
import platform
import queue
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
import urllib.parse
import warnings

p = None  # predict.py's names: set by predict.py's load_serve before anything here runs


SERVE_MAX_BATCH = 256  # inputs in one .npy body
SERVE_LINGER_S = 1.0  # at most this long reading what a client still sends after the answer
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                     2.5, 5.0, 10.0)
ROUTES = {"/predict": ("POST",), "/health": ("GET",), "/metrics": ("GET",)}
HTTP_PHRASES = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
                414: "URI Too Long", 431: "Request Header Fields Too Large",
                500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class Release:
    """One release, verified and self-tested, with an interpreter per worker ready.

    ``slots`` holds the interpreters: a request takes one, uses it alone, puts it back, so
    no interpreter is ever used by two threads at once, and at most ``workers`` requests
    of a release run the model at a time. A request keeps the Release it started with:
    when another one goes live, the requests in flight finish on this one.
    """

    def __init__(self, root: str, rid: str, spec: dict, signature: str, sha256: str,
                 models: list, test: dict, load_s: float):
        self.root, self.id, self.spec, self.signature = root, rid, spec, signature
        self.sha256, self.selftest, self.load_s = sha256, test, load_s
        self.runtime = models[0].runtime
        self.slots = queue.SimpleQueue()
        for m in models:
            self.slots.put(m)


def _release_id(root: str) -> str:
    """The first 16 hex of manifest.json's sha256: the release's directory name on a device."""
    data = p.read_bundle_file(root, p.verifier.MANIFEST, p.verifier.MAX_MANIFEST_BYTES)
    return hashlib.sha256(data).hexdigest()[:16]


def load_release(root: str, workers: int, threads: int, runtime: str, at_start: bool = False
                 ) -> Release:
    """Verify the bundle at ``root`` (the device's verifier on a trusting device), load one
    interpreter per worker from the verified model bytes, and run the self-test on them.

    BundleError when the bundle is refused or its model does not load; SelfTestFailed when
    its outputs are not the build's. ``at_start``: the verifier that started this process
    has just checked ``root`` (see predict.py's ``verify_bundle``).
    """
    start = time.perf_counter()
    root = os.path.realpath(root)
    manifest = p.verify_bundle(root) if at_start else p.verifier.check_bundle(root)[0]
    rid = _release_id(root)
    spec = p.load_spec(root, manifest["files"])
    model = p.read_bundle_file(root, spec["model"], p.verifier.MAX_FILE_BYTES)
    sha256 = hashlib.sha256(model).hexdigest()
    if sha256 != manifest["files"][spec["model"]]:
        raise p.BundleError(f"{spec['model']}: changed while it was being loaded")
    models = [p.Model(root, spec, threads, runtime, model=model) for _ in range(workers)]
    test = p.selftest(models[0], root, spec)
    if not test["passed"]:
        raise p.SelfTestFailed(
            f"self-test failed: max |diff| {test['max_abs_diff']:.3g} {test['units']} (allowed "
            f"{test['atol']:g}), top-1 agreement {test['top1_agreement']:.3f} on "
            f"{test['samples']} golden inputs")
    return Release(root, rid, spec, manifest["signature"], sha256, models, test,
                   time.perf_counter() - start)


def _label(value) -> str:
    """A Prometheus label value: backslash, double quote and line feed escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and the latency histogram, rendered in Prometheus' text format 0.0.4."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict = {}  # (path, code) -> count
        self.buckets = [0] * len(LATENCY_BUCKETS_S)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.reloads = {"swapped": 0, "rejected": 0}
        self.cpu = (0.0, {})  # (when read, predict.py's thermal() state): read at most every 10 s

    def observe(self, path: str, code: int, seconds: float | None) -> None:
        with self.lock:
            key = (path, code)
            self.requests[key] = self.requests.get(key, 0) + 1
            if path == "/predict" and code == 200 and seconds is not None:
                self.latency_sum += seconds
                self.latency_count += 1
                for i, le in enumerate(LATENCY_BUCKETS_S):
                    if seconds <= le:
                        self.buckets[i] += 1

    def _cpu_state(self) -> dict:
        with self.lock:
            when, state = self.cpu
            if time.monotonic() - when < 10.0 and when:
                return state
        state = p.thermal()
        with self.lock:
            self.cpu = (time.monotonic(), state)
        return state

    def render(self, service) -> str:
        live, rejected = service.live, service.rejected
        with self.lock:
            requests = sorted(self.requests.items())
            buckets, total, count = list(self.buckets), self.latency_sum, self.latency_count
            reloads = dict(self.reloads)
        lines = []

        def family(name, kind, text, samples):
            lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])
            lines.extend(samples)

        family("edgebn_requests_total", "counter", "HTTP requests answered, by path and status code.",
               [f'edgebn_requests_total{{path="{path}",code="{c}"}} {n}'
                for (path, c), n in requests])
        errors: dict = {}
        for (_, c), n in requests:
            if c >= 400:
                errors[c] = errors.get(c, 0) + n
        family("edgebn_request_errors_total", "counter",
               "Requests answered with a 4xx or 5xx status, by code.",
               [f'edgebn_request_errors_total{{code="{c}"}} {n}' for c, n in sorted(errors.items())])
        hist = [f'edgebn_predict_duration_seconds_bucket{{le="{le:g}"}} {n}'
                for le, n in zip(LATENCY_BUCKETS_S, buckets, strict=True)]
        hist += [f'edgebn_predict_duration_seconds_bucket{{le="+Inf"}} {count}',
                 f"edgebn_predict_duration_seconds_sum {total:.6f}",
                 f"edgebn_predict_duration_seconds_count {count}"]
        family("edgebn_predict_duration_seconds", "histogram",
               "Time from a POST /predict's headers to its answer, for answers 200.", hist)
        rel = f'release="{_label(live.id)}"'
        family("edgebn_release_info", "gauge", "The live release (value 1), its model's sha256 and runtime.",
               [f'edgebn_release_info{{{rel},sha256="{live.sha256}",runtime="{_label(live.runtime)}",'
                f'signature="{_label(live.signature)}"}} 1'])
        family("edgebn_model_load_seconds", "gauge",
               "Seconds the live release took to verify, load and self-test.",
               [f"edgebn_model_load_seconds{{{rel}}} {live.load_s:.6f}"])
        family("edgebn_selftest_passed", "gauge", "1 when the live release's self-test passed at load.",
               [f"edgebn_selftest_passed{{{rel}}} {int(bool(live.selftest['passed']))}"])
        family("edgebn_release_rejected", "gauge",
               "1 while the latest release current points to was not taken, with why.",
               [f'edgebn_release_rejected{{release="{_label(rejected["release"])}",'
                f'reason="{_label(rejected["reason"])}"}} 1'] if rejected else [])
        family("edgebn_reloads_total", "counter", "Releases checked for a reload, by result.",
               [f'edgebn_reloads_total{{result="{k}"}} {n}' for k, n in sorted(reloads.items())])
        family("edgebn_uptime_seconds", "gauge", "Seconds since the server started.",
               [f"edgebn_uptime_seconds {time.monotonic() - service.started:.3f}"])
        family("edgebn_workers", "gauge", "Interpreters per release: requests that run the model at once.",
               [f"edgebn_workers {service.settings['workers']}"])
        cpu = self._cpu_state()
        if cpu.get("temp_c") is not None:
            family("edgebn_cpu_temperature_celsius", "gauge", "CPU temperature (thermal zone 0).",
                   [f"edgebn_cpu_temperature_celsius {cpu['temp_c']:g}"])
        if cpu.get("throttled") is not None:
            family("edgebn_cpu_throttled", "gauge", "1 while the firmware throttles the CPU now "
                   "(vcgencmd get_throttled, bits 0-3).", [f"edgebn_cpu_throttled {int(cpu['throttled'])}"])
        return "\n".join(lines) + "\n"


MISSING = "\0missing"  # rejected_root while DEST/current does not exist


class Service:
    """The live release, the latest one refused, and the watch over DEST/current."""

    def __init__(self, root: str, follow: str | None, settings: dict, first: Release):
        self.root, self.follow, self.settings = os.path.realpath(root), follow, settings
        self.started = time.monotonic()
        self.metrics = Metrics()
        self.live, self.kept = first, None  # kept: the release before, for a quick way back
        self.rejected: dict | None = None
        self.rejected_root: str | None = None
        self.wake, self.force, self.stopping = threading.Event(), False, False
        self.lock = threading.Lock()
        self.out_lock = threading.Lock()

    def event(self, **doc) -> None:
        """One JSON line on stdout: the server's log of what it serves."""
        with self.out_lock:
            print(json.dumps(doc), flush=True)

    def health(self) -> dict:
        live = self.live
        return {"status": "ok", "release": live.id, "sha256": live.sha256,
                "selftest_passed": bool(live.selftest["passed"]), "signature": live.signature,
                "uptime_s": round(time.monotonic() - self.started, 3), "rejected": self.rejected,
                "load_s": round(live.load_s, 4), "runtime": live.runtime,
                "workers": self.settings["workers"], "current": self.follow,
                "machine": platform.machine(), "python": platform.python_version()}

    def _target(self) -> str | None:
        if self.follow is None:
            return self.root
        if not os.path.lexists(self.follow):
            return None
        return os.path.realpath(self.follow)

    def check(self, force: bool = False) -> None:
        """Take the release ``current`` points to, if it passes; else say why it was not."""
        with self.lock:
            target = self._target()
            if target is None:
                if self.rejected_root != MISSING:
                    self._reject(MISSING, os.path.basename(self.follow or ""),
                                 f"{self.follow} is missing")
            elif target == self.live.root and not (force and self.follow is None):
                self.rejected = self.rejected_root = None
            elif target != self.rejected_root or force:
                self._load(target)

    def _load(self, root: str) -> None:
        kept = self.kept
        try:
            if kept is not None and kept.root == root:  # back to the release before: verify it
                p.verifier.check_bundle(root)  # again, and reuse it if it is the same bundle
                new = kept if _release_id(root) == kept.id else None
            else:
                new = None
            s = self.settings
            new = new or load_release(root, s["workers"], s["threads"], s["runtime"])
        except p.BundleError as exc:
            return self._reject(root, os.path.basename(root), str(exc))
        except Exception as exc:  # never let a release stop the server: say what it was
            return self._reject(root, os.path.basename(root), f"{type(exc).__name__}: {exc}")
        before = time.monotonic()
        old, self.live = self.live, new
        after = time.monotonic()
        self.kept = old if old.id != new.id else kept
        self.rejected = self.rejected_root = None
        with self.metrics.lock:
            self.metrics.reloads["swapped"] += 1
        self.event(event="live", release=new.id, previous=old.id, load_s=round(new.load_s, 4),
                   kept=new is kept, swapped_monotonic=[before, after], selftest_passed=True)

    def _reject(self, root: str | None, name: str, reason: str) -> None:
        reason = " ".join(reason.split())[:500]
        self.rejected, self.rejected_root = {"release": name, "reason": reason}, root
        with self.metrics.lock:
            self.metrics.reloads["rejected"] += 1
        self.event(event="rejected", release=name, reason=reason, live=self.live.id)

    def watch(self) -> None:
        """Read DEST/current every poll interval (and at once on SIGHUP)."""
        while not self.stopping:
            self.wake.wait(self.settings["poll_s"] if self.follow else None)
            self.wake.clear()
            force, self.force = self.force, False
            if not self.stopping:
                self.check(force)

    def hangup(self, *_) -> None:
        self.force = True
        self.wake.set()


NPY_MAGIC = b"\x93NUMPY"
NPY_HEADERS_KEPT = 32  # parsed .npy headers kept, by their bytes (only ones that passed)
NPY_HEADERS: dict = {}


def npy_header(data: bytes, name: str) -> tuple:
    """(dims, fortran, dtype, data offset) of the .npy in ``data``. NumPy's header parser (a
    Python literal evaluator) costs more than the rest of a small request, and a client sends
    the same header with every frame: a header that parsed and passed is kept."""
    import numpy as np

    size = {1: 2, 2: 4}.get(data[6]) if len(data) > 8 and data[7] == 0 else None
    if size is not None and len(data) >= 8 + size:
        known = NPY_HEADERS.get(data[:8 + size + int.from_bytes(data[8:8 + size], "little")])
        if known is not None:
            return known
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}")
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        dims, fortran, dtype = read(f)
    except Exception as exc:  # hostile bytes make the header parser raise many types
        raise p.BundleError(f"{name}: not a readable .npy ({type(exc).__name__}: "
                            f"{str(exc)[:100]})") from exc
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise p.BundleError(f"{name}: dtype {dtype}, expected a float or integer array")
    if len(NPY_HEADERS) >= NPY_HEADERS_KEPT:
        NPY_HEADERS.clear()
    NPY_HEADERS[data[:f.tell()]] = parsed = (tuple(dims), fortran, dtype, f.tell())
    return parsed


def npy_from_bytes(data: bytes, shape: tuple, name: str):
    """A .npy held in memory (a request's body), checked before any array is made.

    The header is read first: only a float or integer dtype, and a shape whose bytes are
    exactly what follows the header, go on to be decoded (np.load would allocate whatever
    the header claims, and unpickle objects if asked to). A float32 array is not copied:
    the model reads it straight from the body's bytes.
    """
    import numpy as np

    dims, fortran, dtype, offset = npy_header(data, name)
    count = math.prod(dims)
    rest = len(data) - offset
    if count * dtype.itemsize != rest:
        raise p.BundleError(f"{name}: the header claims {list(dims)} of {dtype} "
                            f"({count * dtype.itemsize} bytes); {rest} bytes follow it")
    arr = np.frombuffer(data, dtype, count, offset).reshape(dims, order="F" if fortran else "C")
    return p.check_inputs(np, arr, shape, name, copy=False)


def decode_body(body: bytes, spec: dict) -> list:
    """A request's body -> [(name, input)]: a .npy (by its magic bytes) or an image."""
    shape = tuple(spec["preprocessing"]["input_shape"])
    if body.startswith(NPY_MAGIC):
        x = npy_from_bytes(body, shape, "body")
        if len(x) > SERVE_MAX_BATCH:
            raise p.BundleError(f"body: {len(x)} inputs, at most {SERVE_MAX_BATCH} a request")
        return [(f"body[{i}]", xi) for i, xi in enumerate(x)]
    return [("body", p.preprocess_image(io.BytesIO(body), spec, "body", guard=False))]


class _DeadlineReader(io.RawIOBase):
    """A socket read against one deadline per request, not per recv(): a client that sends
    a byte every few seconds (slowloris) is still cut off when the request's time is up."""

    def __init__(self, sock):
        self.sock, self.deadline, self.got, self.timed_out = sock, math.inf, 0, False

    def readable(self) -> bool:
        return True

    def start(self, seconds: float) -> None:
        self.deadline, self.got, self.timed_out = time.monotonic() + seconds, 0, False

    def readinto(self, buf) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.timed_out = True
            raise TimeoutError("the request's time is up")
        self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(buf)
        except TimeoutError:
            self.timed_out = True
            raise
        self.got += n
        return n


class _Writer:
    """Collects a response and sends it with one sendall() when flushed."""

    closed = False

    def __init__(self, sock, timeout_s: float):
        self.sock, self.timeout_s, self.parts = sock, timeout_s, []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self.parts:
            data, self.parts = b"".join(self.parts), []
            self.sock.settimeout(self.timeout_s)
            self.sock.sendall(data)

    def close(self) -> None:
        self.closed = True


class _Handler(http.server.BaseHTTPRequestHandler):
    """POST /predict, GET /health, GET /metrics; every other request a 4xx in one JSON line."""

    protocol_version = "HTTP/1.1"
    server_version = "edgebn-predict"
    sys_version = ""

    def setup(self) -> None:
        self.connection = self.request
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        settings = self.server.service.settings
        self.reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 1 << 16)
        self.wfile = _Writer(self.connection, settings["timeout_s"])
        self.t0 = None

    def finish(self) -> None:
        """Send what is left; before closing, read and drop what the client still sends for
        a moment (a lingering close), so that a refused body's bytes do not make the kernel
        reset the connection before the client has read the refusal."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            if self.reader.got or not self.reader.timed_out:
                self.connection.shutdown(socket.SHUT_WR)
                end = time.monotonic() + SERVE_LINGER_S
                while (left := end - time.monotonic()) > 0:
                    self.connection.settimeout(left)
                    if not self.connection.recv(1 << 16):
                        break

    def handle_one_request(self) -> None:
        self.reader.start(self.server.service.settings["timeout_s"])
        self.t0, self.route = None, "other"
        super().handle_one_request()
        if self.reader.timed_out:
            self.close_connection = True
            if self.reader.got:  # part of a request came, and then not the rest in time
                with contextlib.suppress(OSError):
                    self.wfile.timeout_s = 0.5
                    self._json(408, {"error": "the request did not arrive within "
                                              f"{self.server.service.settings['timeout_s']:g} s"})

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        self.t0 = time.perf_counter()
        path = urllib.parse.urlsplit(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            self.send_error(404, f"no such path: {self.path[:100]!r}; this server answers "
                                 "POST /predict, GET /health and GET /metrics")
            return False
        self.route = path
        if self.command not in allowed:
            self._json(405, {"error": f"{self.command[:20]!r} is not served on {path}; use "
                                      f"{' or '.join(allowed)}"},
                       {"Allow": ", ".join(allowed)}, close=True)
            return False
        return True

    def handle_expect_100(self) -> bool:
        if self._length() is None:
            return False
        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.wfile.flush()
        return True

    def send_error(self, code, message=None, explain=None) -> None:
        """http.server's own refusals (a bad request line, headers too long or too many, an
        HTTP version it does not speak): each one JSON line, with a 4xx."""
        code = int(code)
        self._json(code if 400 <= code < 500 else 400,
                   {"error": message or HTTP_PHRASES.get(code, "bad request")}, close=True)

    def log_message(self, format, *args) -> None:  # noqa: A002  (the base class's name)
        if p.VERBOSE:
            sys.stderr.write(f"{self.command or '-'} {self.path[:200]!r}: " + format % args + "\n")

    def _json(self, code: int, doc: dict, headers: dict | None = None, close: bool = False
              ) -> None:
        self._reply(code, (json.dumps(doc) + "\n").encode(), "application/json", headers, close)

    def _reply(self, code: int, body: bytes, kind: str, headers: dict | None = None,
               close: bool = False) -> None:
        head = [f"HTTP/1.1 {code} {HTTP_PHRASES.get(code, 'Status')}",
                f"Server: {self.server_version}", f"Date: {email.utils.formatdate(usegmt=True)}",
                f"Content-Type: {kind}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if close:
            self.close_connection = True
            head.append("Connection: close")
        # counted before it is sent: a client that reads /metrics next sees this request in it
        seconds = None if self.t0 is None else time.perf_counter() - self.t0
        self.server.service.metrics.observe(self.route, code, seconds)
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        self.wfile.flush()
        if p.VERBOSE:
            self.log_message("%d", code)

    def _length(self) -> int | None:
        """The body's length from Content-Length, or None with a 4xx sent."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._json(411, {"error": "send the body with a Content-Length (no Transfer-Encoding)"},
                       close=True)
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._json(411, {"error": "a body with a Content-Length is required"}, close=True)
            return None
        text = values[0].strip()
        if len(set(values)) != 1 or not (text.isascii() and text.isdigit() and len(text) <= 18):
            self._json(400, {"error": f"Content-Length {values[0][:30]!r}: expected one whole "
                                      "number of bytes"}, close=True)
            return None
        limit = self.server.service.settings["max_body"]
        if int(text) > limit:
            self._json(413, {"error": f"a body of {int(text)} bytes; at most {limit} are taken"},
                       close=True)
            return None
        return int(text)

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        service = self.server.service
        if self.route == "/health":
            self._json(200, service.health())
        else:
            text = service.metrics.render(service).encode()
            self._reply(200, text, "text/plain; version=0.0.4; charset=utf-8")

    def do_POST(self) -> None:  # noqa: N802
        length = self._length()
        if length is None:
            return
        body = self.rfile.read(length) if length else b""
        if len(body) != length:  # the client went away mid-body
            self.close_connection = True
            return
        service = self.server.service
        release = service.live  # this request is answered by this release, whatever follows
        try:
            top_k = self._top_k(release)
            if not body:
                raise p.BundleError("empty body: send an image file or a .npy")
            t_decode = time.perf_counter()
            inputs = decode_body(body, release.spec)
        except p.BundleError as exc:
            return self._json(400, {"error": str(exc)[:500]})
        model = release.slots.get()
        try:
            t_model = time.perf_counter()
            scores = [model.probabilities(x) for _, x in inputs]
            t_done = time.perf_counter()
        except Exception as exc:  # the runtime failed on an input it had accepted: one line
            service.event(event="error", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return self._json(500, {"error": f"the model failed: {type(exc).__name__}"})
        finally:
            release.slots.put(model)
        labels = release.spec["labels"]
        preds = []
        for (name, _), probs in zip(inputs, scores, strict=True):
            top = probs.argsort()[::-1][:top_k]
            preds.append({"input": name, "top": [{"label": labels[i], "index": int(i),
                                                  "score": float(probs[i])} for i in top]})
        timing = (f"read;dur={(t_decode - self.t0) * 1e3:.3f}, "
                  f"decode;dur={(t_model - t_decode) * 1e3:.3f}, "
                  f"model;dur={(t_done - t_model) * 1e3:.3f}")
        self._json(200, {"signature": release.signature, "predictions": preds,
                         "release": release.id}, {"Server-Timing": timing})

    def _top_k(self, release: Release) -> int:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        values = query.get("top_k") or [str(self.server.service.settings["top_k"])]
        text = values[-1]
        if not (text.isascii() and text.isdigit() and len(text) <= 6 and int(text) >= 1):
            raise p.BundleError(f"top_k {text[:20]!r}: expected a whole number >= 1")
        return min(int(text), len(release.spec["labels"]))


class _Serving(socketserver.ThreadingMixIn):
    """A thread per connection, at most ``max_connections`` at once; errors in one line."""

    daemon_threads = True
    request_queue_size = 128

    def process_request(self, request, client_address) -> None:
        if not self.connections.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.settimeout(0.2)
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                                b"application/json\r\nContent-Length: 40\r\nConnection: close\r\n"
                                b'\r\n{"error": "too many connections open"}\n')
            self.service.metrics.observe("other", 503, None)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.connections.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the client went away or stalled: nothing to say
        self.service.event(event="error", error=f"{type(exc).__name__}: {str(exc)[:200]}")


class _TCPServer(_Serving, socketserver.TCPServer):
    allow_reuse_address = True


class _TCP6Server(_TCPServer):
    address_family = socket.AF_INET6


class _UnixServer(_Serving, socketserver.UnixStreamServer):
    pass


def parse_listen(text: str) -> tuple:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port); the host must be given."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isascii() and port.isdigit() and int(port) <= 65535):
        raise p.BundleError(f"--listen {text!r}: expected HOST:PORT, e.g. {p.SERVE_LISTEN} "
                            "(loopback) or 0.0.0.0:8750 to listen on every interface")
    return host, int(port)


def make_server(service: Service, listen: str | None, sock_path: str | None):
    """The listening server: TCP on ``listen`` or a Unix socket at ``sock_path``."""
    try:
        if sock_path is not None:
            if os.path.lexists(sock_path):
                if not stat.S_ISSOCK(os.lstat(sock_path).st_mode):
                    raise p.BundleError(f"--socket {sock_path}: exists and is not a socket")
                os.unlink(sock_path)  # a socket left by a server that died
            server = _UnixServer(sock_path, _Handler, bind_and_activate=False)
            server.server_bind()
            os.chmod(sock_path, 0o660)
            server.server_activate()
        else:
            host, port = parse_listen(listen or p.SERVE_LISTEN)
            kind = _TCP6Server if ":" in host else _TCPServer
            server = kind((host, port), _Handler)
    except OSError as exc:
        raise p.BundleError(f"cannot listen on {sock_path or listen}: {exc.strerror or exc}") from exc
    server.service = service
    server.connections = threading.BoundedSemaphore(service.settings["max_connections"])
    return server


def default_follow(root: str) -> str | None:
    """The link a server started from a release follows: ``DEST/current`` when ``root`` is
    that link, or a directory under ``DEST/releases/`` beside it."""
    if os.path.islink(root):
        return os.path.abspath(root)
    releases = os.path.dirname(os.path.realpath(root))
    current = os.path.join(os.path.dirname(releases), "current")
    if os.path.basename(releases) == "releases" and os.path.islink(current):
        return current
    return None


def serve_settings(args) -> dict:
    workers = min(4, os.cpu_count() or 1) if args.workers is None else args.workers
    threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if args.threads is None else args.threads
    settings = {"workers": workers, "threads": threads, "runtime": args.runtime,
                "timeout_s": args.timeout, "max_body": args.max_body_bytes, "poll_s": args.poll,
                "max_connections": args.max_connections, "top_k": args.top_k}
    if not (1 <= workers <= 64 and 1 <= threads <= 64 and 1 <= args.max_connections <= 10000
            and args.top_k >= 1):
        raise p.BundleError("--workers and --threads must be 1..64, --max-connections 1..10000 "
                            "and --top-k >= 1")
    if not (0.05 <= args.timeout <= 3600 and 0.01 <= args.poll <= 3600):
        raise p.BundleError("--timeout must be 0.05..3600 s and --poll 0.01..3600 s")
    if not 1 <= args.max_body_bytes <= p.MAX_INPUT_BYTES:
        raise p.BundleError(f"--max-body-bytes must be 1..{p.MAX_INPUT_BYTES}")
    if args.inputs or args.selftest or args.bench or args.profile:
        raise p.BundleError("--serve takes no inputs, --selftest, --bench or --profile: the "
                            "server self-tests every release it loads")
    if args.listen is not None and args.socket is not None:
        raise p.BundleError("give --listen or --socket, not both")
    return settings


def serve(args, root: str) -> int:
    """Serve the bundle at ``root`` until SIGTERM or SIGINT; exit 2 when it is refused at
    start, 1 when its self-test fails (nothing listens then)."""
    settings = serve_settings(args)
    follow = os.path.abspath(args.follow) if args.follow else default_follow(root)
    first = load_release(root, settings["workers"], settings["threads"], settings["runtime"],
                         at_start=True)
    service = Service(first.root, follow, settings, first)
    server = make_server(service, args.listen, args.socket)
    try:
        from PIL import Image  # the decompression-bomb warning as an error, set once for all threads

        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    except ImportError:
        pass
    address = (f"unix:{args.socket}" if args.socket else
               "http://{}:{}".format(*server.server_address[:2]))
    service.event(event="serving", address=address, release=first.id, sha256=first.sha256,
                  workers=settings["workers"], threads=settings["threads"],
                  runtime=first.runtime, current=follow, load_s=round(first.load_s, 4),
                  signature=first.signature, monotonic=time.monotonic())
    watcher = threading.Thread(target=service.watch, name="edgebn-watch", daemon=True)
    watcher.start()

    def stop(*_):
        service.stopping = True
        service.wake.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, service.hangup)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        if args.socket:
            with contextlib.suppress(OSError):
                os.unlink(args.socket)
    service.event(event="stopped", release=service.live.id)
    return 0
