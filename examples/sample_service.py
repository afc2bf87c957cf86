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
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

# How often serve_forever looks for a shutdown request: a SIGTERM is acted on within this (a promotion or a
# rollback waits for the old replica to stop), at the cost of 20 wake-ups a second while idle.
SHUTDOWN_POLL_S = 0.05


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


class Handler(BaseHTTPRequestHandler):
    server_version = "sample-service/1"

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/health":
            healthy = BEHAVIOUR.healthy()
            self._answer(200 if healthy else 503, b"ok" if healthy else b"unhealthy", "text/plain")
            return
        if BEHAVIOUR.latency_s:
            time.sleep(BEHAVIOUR.latency_s)
        if BEHAVIOUR.next_is_error():
            body = {"version": BEHAVIOUR.version, "error": "injected failure"}
            self._answer(500, json.dumps(body).encode(), "application/json")
            return
        self._answer(200, json.dumps({"version": BEHAVIOUR.version}).encode(), "application/json")

    do_POST = do_GET
    do_HEAD = do_GET

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", BEHAVIOUR.version)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a request log on stderr would fill the replica's log file."""


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
    ThreadingHTTPServer.allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of more concurrent connections (a smoke test, a
    # router's retries) had SYNs dropped and waited a second for the kernel to send them again.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((host, port), Handler)
    # Non-daemon handler threads: server_close() then waits for requests in flight (graceful SIGTERM).
    server.daemon_threads = False

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
