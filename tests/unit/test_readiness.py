"""Readiness is a real HTTP GET of the replica's health path: 2xx is ready; 3xx, 5xx, no answer are not."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from adapters.routed import is_ready, ready_flags
from engine.platform import Replica

ANSWERS = {"/ok": 200, "/moved": 302, "/broken": 500}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(ANSWERS.get(self.path, 404))
        if self.path == "/moved":
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def replica(port: int, path: str, alive: bool = True) -> Replica:
    return Replica(revision="r", index=0, host="127.0.0.1", port=port, alive=alive, health_path=path)


def test_only_a_2xx_answer_is_ready(port: int) -> None:
    assert is_ready(replica(port, "/ok"))
    assert not is_ready(replica(port, "/moved"))  # not followed to /ok
    assert not is_ready(replica(port, "/broken"))
    assert not is_ready(replica(port, "/ok", alive=False))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = int(probe.getsockname()[1])
    assert not is_ready(replica(closed, "/ok"))


def test_flags_keep_the_replicas_order(port: int) -> None:
    with_closed = [replica(port, "/ok"), replica(port, "/broken"), replica(port, "/ok")]
    assert ready_flags(with_closed) == [True, False, True]
    assert ready_flags([]) == []
    assert ready_flags([replica(port, "/moved")]) == [False]
