"""The health check of a deploy on a device that runs the model as a service.

    python3 -I -c "$(cat health.py)" DEST RELEASE TIMEOUT_S

release.sh runs it after switching ``DEST/current`` to RELEASE when ``DEST/service.json``
exists (``edgebn deploy --service`` writes it: ``{"listen": "127.0.0.1:8750"}`` or
``{"socket": "/path"}``, plus ``"unit"``). It is sent with release.sh on every deploy and run
from those bytes: nothing of it is on the device, and nothing is imported from a release.

It polls the server's ``GET /health`` until the JSON there names RELEASE as ``"release"``
with ``"selftest_passed": true`` (exit 0). The server saying ``"rejected": {"release":
RELEASE, "reason": ...}``, or no such answer within TIMEOUT_S seconds, fails it (exit 1,
the reason on the last line). Standard library only: any Python 3.9+.
"""

import http.client
import json
import os
import socket
import sys
import time

SERVICE = "service.json"
MAX_SERVICE_BYTES = 64 << 10
MAX_BODY_BYTES = 1 << 20
POLL_S = 0.5
REQUEST_TIMEOUT_S = 2.0


class HealthError(Exception):
    """The health check failed: why, in one line."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the server's ``--socket PATH``)."""

    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def service(dest):
    """(how to connect, where, in words) from DEST/service.json."""
    path = os.path.join(dest, SERVICE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(MAX_SERVICE_BYTES + 1)[:MAX_SERVICE_BYTES].decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise HealthError(f"{path}: unreadable ({exc})") from exc
    if isinstance(doc, dict) and isinstance(doc.get("socket"), str) and doc["socket"]:
        where = doc["socket"]
        return (lambda timeout: UnixHTTPConnection(where, timeout)), f"unix socket {where}"
    listen = doc.get("listen") if isinstance(doc, dict) else None
    host, _, port = listen.rpartition(":") if isinstance(listen, str) else ("", "", "")
    if not (host and port.isdigit() and 0 < int(port) < 65536):
        raise HealthError(f"{path}: expected {{\"listen\": \"HOST:PORT\"}} or {{\"socket\": "
                          f"\"PATH\"}}. Received: {str(doc)[:80]}")
    host = host.strip("[]")
    return (lambda timeout: http.client.HTTPConnection(host, int(port), timeout=timeout),
            f"http://{listen}")


def ask(connect, timeout):
    """GET /health once: the JSON object it answered, or why there is none."""
    conn = connect(timeout)
    try:
        conn.request("GET", "/health", headers={"Accept": "application/json"})
        reply = conn.getresponse()
        body = reply.read(MAX_BODY_BYTES)
        if reply.status != 200:
            return None, f"HTTP {reply.status}"
        doc = json.loads(body.decode("utf-8"))
        return (doc, None) if isinstance(doc, dict) else (None, "not a JSON object")
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def check(dest, release, timeout_s):
    """Poll until /health reports ``release`` live with its self-test passed."""
    connect, where = service(dest)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        doc, why = ask(connect, max(0.1, min(REQUEST_TIMEOUT_S, left)))
        if doc is not None:
            rejected = doc.get("rejected")
            if isinstance(rejected, dict) and rejected.get("release") == release:
                raise HealthError(f"the service at {where} rejected {release}: "
                                  f"{str(rejected.get('reason'))[:200]}")
            if doc.get("release") == release and doc.get("selftest_passed") is True:
                return f"the service at {where} serves {release}, its self-test passed"
            why = f"it reports release {str(doc.get('release'))[:40]}, selftest_passed " \
                  f"{doc.get('selftest_passed')!r}"
        last = why
        if time.monotonic() + POLL_S >= deadline:
            raise HealthError(f"the service at {where} did not report {release} healthy within "
                              f"{timeout_s:g} s (last: {last})")
        time.sleep(POLL_S)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 3:
            raise HealthError("usage: health.py DEST RELEASE TIMEOUT_S")
        print(check(args[0], args[1], float(args[2])))
    except (HealthError, ValueError) as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
