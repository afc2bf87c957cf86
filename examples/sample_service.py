"""A small HTTP service whose behaviour a test controls through environment variables.

Standard library only, so that every platform (local processes, VMs) can run it with a bare Python.

Environment:
- ``PORT``: port to listen on, on 127.0.0.1 (``HOST`` overrides the address).
- ``VERSION``: returned in the JSON body and the ``X-Version`` header.
- ``ERROR_RATE``: fraction 0..1 of requests (other than /health) answered 500. Deterministic: an error
  accumulator adds the rate on each request and answers 500 whenever it crosses 1, so 0.2 fails exactly
  every fifth request.
- ``LATENCY_MS``: delay added to every answer but /health's (a slow revision is still a live one).
- ``HEALTH_FAIL``: "1" makes /health answer 503.
- ``HEALTH_FAIL_FILE`` / ``ERROR_FILE``: while the named file exists, /health answers 503 / every other
  request answers 500. A test turns a running revision bad (and good again) by creating (removing) the file.
- ``STARTUP_DELAY_MS``: sleep before listening (a slow start for readiness tests).
- ``CRASH_FILE``: while the named file exists, the service exits at start (status 3) instead of listening:
  every restart crashes again (a crash loop).

It serves HTTP/1.0 (one request per connection, as ``http.server`` does by default) on ``socketserver``, with
a request reader of its own instead of ``http.server``: that module's imports (``email``, ``http.client``,
``ssl``, ``html``, ``mimetypes``) cost 45 ms of CPU at every start here (70 ms in all against 25), and a
deployment starts replicas of it several at a time on 2 cores. Methods: GET, POST and HEAD (any other
answers 501); a request body is read (up to ``Content-Length``) and ignored.
"""

from __future__ import annotations

import os
import signal
import socketserver
import threading
import time
from types import FrameType

# How often serve_forever looks for a shutdown request: a SIGTERM is acted on within this (a promotion or a
# rollback waits for the old replica to stop), at the cost of 20 wake-ups a second while idle.
SHUTDOWN_POLL_S = 0.05
MAX_LINE_BYTES = 65536  # as http.server: a longer request line or header line is refused
MAX_HEADERS = 100  # as http.client
METHODS = ("GET", "POST", "HEAD")
REASONS = {
    200: "OK",
    400: "Bad Request",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}


def _float_env(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class _Behaviour:
    """Settings read once at start, and the shared error accumulator."""

    def __init__(self) -> None:
        self.version = os.environ.get("VERSION", os.environ.get("REVISION", "unknown"))
        self.error_rate = min(1.0, max(0.0, _float_env("ERROR_RATE", 0.0)))
        self.latency_s = max(0.0, _float_env("LATENCY_MS", 0.0)) / 1000.0
        self.health_fail = os.environ.get("HEALTH_FAIL", "") == "1"
        self.health_fail_file = os.environ.get("HEALTH_FAIL_FILE", "")
        self.error_file = os.environ.get("ERROR_FILE", "")
        self._error_budget = 0.0
        self._lock = threading.Lock()

    def healthy(self) -> bool:
        return not self.health_fail and not (self.health_fail_file and os.path.exists(self.health_fail_file))

    def next_is_error(self) -> bool:
        if self.error_file and os.path.exists(self.error_file):
            return True
        with self._lock:
            self._error_budget += self.error_rate
            if self._error_budget >= 1.0 - 1e-9:
                self._error_budget -= 1.0
                return True
            return False


BEHAVIOUR = _Behaviour()


def json_string(text: str) -> str:
    """``text`` as a JSON string (what json.dumps gives for a str, without importing json)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " else f"\\u{ord(c):04x}" for c in escaped) + '"'


class BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Handler(socketserver.StreamRequestHandler):
    """One request per connection: read the request line and headers (and a body, ignored), answer, close."""

    def handle(self) -> None:
        try:
            method, path = self._read_request()
        except BadRequest as error:
            self._answer(error.status, str(error).encode(), "text/plain")
            return
        except ConnectionError:
            return
        if not method:  # the client closed without sending anything (a TCP health check)
            return
        if method not in METHODS:
            self._answer(501, f"unsupported method {method}".encode(), "text/plain")
            return
        self._respond(path, head=method == "HEAD")

    def _read_request(self) -> tuple[str, str]:
        line = self._line()
        if not line:
            return "", ""
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise BadRequest(400, f"bad request line {line[:80]!r}")
        length = 0
        for _ in range(MAX_HEADERS):
            header = self._line()
            if not header:
                break
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                if not value.strip().isdigit():
                    raise BadRequest(400, "bad Content-Length")
                length = int(value.strip())
        else:
            raise BadRequest(431, "too many headers")
        if length:
            self.rfile.read(length)
        return parts[0], parts[1]

    def _line(self) -> str:
        raw = self.rfile.readline(MAX_LINE_BYTES + 1)
        if len(raw) > MAX_LINE_BYTES:
            raise BadRequest(431 if raw[:1].isspace() else 400, "line too long")
        return raw.decode("latin-1").rstrip("\r\n")

    def _respond(self, path: str, head: bool) -> None:
        if path.split("?", 1)[0] == "/health":
            healthy = BEHAVIOUR.healthy()
            self._answer(200 if healthy else 503, b"ok" if healthy else b"unhealthy", "text/plain", head)
            return
        if BEHAVIOUR.latency_s:
            time.sleep(BEHAVIOUR.latency_s)
        version = json_string(BEHAVIOUR.version)
        if BEHAVIOUR.next_is_error():
            body = f'{{"version": {version}, "error": "injected failure"}}'
            self._answer(500, body.encode(), "application/json", head)
            return
        self._answer(200, f'{{"version": {version}}}'.encode(), "application/json", head)

    def _answer(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
        date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        lines = [
            f"HTTP/1.0 {status} {REASONS.get(status, '')}",
            "Server: sample-service/1",
            f"Date: {date}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            f"X-Version: {BEHAVIOUR.version}",
        ]
        self.wfile.write(
            ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + (b"" if head else body)
        )


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of more concurrent connections (a smoke test, a
    # router's retries) had SYNs dropped and waited a second for the kernel to send them again.
    request_queue_size = 128
    # Non-daemon handler threads: server_close() then waits for requests in flight (graceful SIGTERM).
    daemon_threads = False


def main() -> None:
    crash_file = os.environ.get("CRASH_FILE", "")
    if crash_file and os.path.exists(crash_file):
        print(f"sample-service {BEHAVIOUR.version}: {crash_file} exists, crashing", flush=True)
        raise SystemExit(3)
    startup_delay_s = max(0.0, _float_env("STARTUP_DELAY_MS", 0.0)) / 1000.0
    if startup_delay_s:
        time.sleep(startup_delay_s)
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    server = Server((host, port), Handler)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must run outside the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"sample-service {BEHAVIOUR.version} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=SHUTDOWN_POLL_S)
    finally:
        server.server_close()
    print(f"sample-service {BEHAVIOUR.version} stopped", flush=True)


if __name__ == "__main__":
    main()
