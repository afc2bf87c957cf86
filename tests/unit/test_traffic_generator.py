"""The load generator's record of failed requests (examples/traffic.py): refused connections and the router's
own 5xx answers, against real sockets and a real HTTP server in this process."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from examples.traffic import MAX_FAILURES_KEPT, TrafficGenerator


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again on return: nothing listens there


def test_a_refused_request_is_counted_as_status_0_and_its_cause_kept() -> None:
    traffic = TrafficGenerator(f"http://127.0.0.1:{closed_port()}/", rps=200, threads=2).start()
    deadline = time.monotonic() + 30
    while TrafficGenerator.total(traffic.snapshot()) < MAX_FAILURES_KEPT + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = traffic.stop()
    assert TrafficGenerator.failed(counts) == TrafficGenerator.total(counts) > MAX_FAILURES_KEPT
    assert set(counts) == {("?", 0)}
    assert len(traffic.failures) == MAX_FAILURES_KEPT  # the first ones only: bounded
    assert all(
        re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} ConnectionRefusedError: .* \(after \d+\.\d{3}s\)", f)
        for f in traffic.failures
    )


class _Answers(BaseHTTPRequestHandler):
    """503 without X-Version on /router (as HAProxy's own page), 500 with one elsewhere (a revision's)."""

    def do_GET(self) -> None:
        self.send_response(503 if self.path == "/router" else 500)
        if self.path != "/router":
            self.send_header("X-Version", "2.0.0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@contextmanager
def answering() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def run_until(url: str, requests: int) -> TrafficGenerator:
    traffic = TrafficGenerator(url, rps=100, threads=1).start()
    deadline = time.monotonic() + 30
    while TrafficGenerator.total(traffic.snapshot()) < requests and time.monotonic() < deadline:
        time.sleep(0.05)
    traffic.stop()
    return traffic


def test_the_routers_own_5xx_is_kept_and_a_revisions_is_not() -> None:
    with answering() as port:
        router = run_until(f"http://127.0.0.1:{port}/router", 3)
        revision = run_until(f"http://127.0.0.1:{port}/", 3)
    assert set(router.snapshot()) == {("?", 503)} and set(revision.snapshot()) == {("2.0.0", 500)}
    shape = r"\d\d:\d\d:\d\d\.\d{3} HTTP 503 without X-Version \(after \d+\.\d{3}s\)"
    assert router.failures and all(re.fullmatch(shape, failure) for failure in router.failures)
    assert revision.failures == []  # counted as failed, but the revision answered: nothing to diagnose
