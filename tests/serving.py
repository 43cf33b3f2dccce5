"""A real ``predict.py --serve`` process and a real HTTP client for it (tests' helpers).

    from serving import Served, call   # start a server, then talk HTTP to it on 127.0.0.1
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT_S = 120


class Served:
    """``python -I PREDICT --serve ARGS`` in the background; its stdout/stderr go to files."""

    def __init__(self, command: list[str], env: dict[str, str], logs: Path, cwd: Path
                 | None = None):
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / "server.out", logs / "server.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(command, stdout=out, stderr=err, env=env,
                                         cwd=cwd or logs, stdin=subprocess.DEVNULL)
        self.serving = self._wait_serving()
        address = self.serving["address"]
        self.port = int(address.rsplit(":", 1)[1]) if address.startswith("http") else None

    @classmethod
    def predict_py(cls, bundle: Path, *args: str, env: dict[str, str], logs: Path,
                   python: str = sys.executable) -> Served:
        return cls([python, "-I", str(bundle / "predict.py"), "--serve", *args], env, logs)

    def _wait_serving(self) -> dict:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.out_path.read_text().splitlines():
                doc = json.loads(line)
                if doc.get("event") == "serving":
                    return doc
            if self.proc.poll() is not None:
                raise ServerExited(self.proc.returncode, self.err_path.read_text())
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"no 'serving' line within {START_TIMEOUT_S} s: "
                           f"{self.err_path.read_text()}")

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.out_path.read_text().splitlines()]

    def stderr(self) -> str:
        return self.err_path.read_text()

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def call(self, method: str, path: str, body: bytes | None = None, **kw) -> tuple:
        return call(self.port, method, path, body, **kw)

    def health(self) -> dict:
        status, _, body = self.call("GET", "/health", timeout=5)
        assert status == 200, body
        return json.loads(body)

    def wait_release(self, release: str, timeout: float = 30) -> dict:
        """/health once it names ``release`` (the server follows DEST/current by itself)."""
        deadline = time.monotonic() + timeout
        while True:
            doc = self.health()
            if doc["release"] == release or time.monotonic() > deadline:
                return doc
            time.sleep(0.05)


class ServerExited(Exception):
    def __init__(self, code: int, stderr: str):
        super().__init__(f"the server exited {code}: {stderr[-500:]}")
        self.code, self.stderr = code, stderr


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict | None = None, timeout: float = 30,
         conn: http.client.HTTPConnection | None = None) -> tuple:
    """(status, headers, body) of one request to 127.0.0.1:port (on ``conn`` when given)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        if own:
            conn.close()


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket."""

    def __init__(self, path: str, timeout: float = 30):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def raw(port: int, data: bytes, timeout: float = 30, pause: float = 0.0,
        chunks: int = 1) -> tuple[bytes, float]:
    """Send ``data`` as it is (in ``chunks`` pieces, ``pause`` s apart) on a fresh connection;
    the first response that came back (b"" when the server closed the connection without
    one) and the seconds from the first byte sent until then."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        step = max(1, -(-len(data) // chunks))
        try:
            for i in range(0, len(data), step):
                s.sendall(data[i:i + step])
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got = b""
        try:
            while True:
                head, sep, body = got.partition(b"\r\n\r\n")
                if sep:
                    length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")]
                    if length and len(body) >= length[0]:
                        break
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except ConnectionResetError:
            pass
    return got, time.monotonic() - start


def untrusting_env(home: Path) -> dict[str, str]:
    """A device environment with no trust file: HOME, TMPDIR and the trust path in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(home),
            "EDGEBN_TRUST": str(home / "no-trust-file"), "LANG": "C.UTF-8"}
