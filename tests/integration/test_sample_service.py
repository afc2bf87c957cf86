"""examples/sample_service.py as the platforms run it: a real process answering real HTTP clients.

It reads requests itself (on socketserver) instead of using http.server, so what http.server did for it is
checked here: the answers and headers each setting gives, methods, a request body, malformed requests, and a
graceful stop that finishes a request in flight.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.ports import free_port

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_service.py"
START_TIMEOUT_S = 20.0


@contextmanager
def service(**env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    settings = {**os.environ, "PORT": str(port), **env}
    process = subprocess.Popen(
        [sys.executable, "-S", str(SAMPLE)], env=settings, stdout=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, f"the sample service exited with {process.returncode}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the sample service did not listen in time"
                time.sleep(0.01)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


def ask(
    port: int, method: str = "GET", path: str = "/", body: bytes | None = None
) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(data)
        chunks = []
        while chunk := connection.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


def test_it_answers_its_version_on_get_post_and_head() -> None:
    with service(VERSION='2.1.0-"rc"') as (_, port):
        status, headers, body = ask(port, "GET", "/anything?x=1")
        assert status == 200 and headers["X-Version"] == '2.1.0-"rc"'
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"version": '2.1.0-"rc"'}
        status, _, body = ask(port, "POST", "/", body=b"x" * 70_000)  # a body is read, then ignored
        assert status == 200 and json.loads(body)["version"] == '2.1.0-"rc"'
        status, headers, body = ask(port, "HEAD", "/")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        status, _, body = ask(port, "GET", "/health")
        assert (status, body) == (200, b"ok")


def test_error_rate_fails_exactly_that_share_and_health_stays_up() -> None:
    with service(VERSION="1", ERROR_RATE="0.2") as (_, port):
        statuses = [ask(port)[0] for _ in range(10)]
        assert statuses == [200, 200, 200, 200, 500] * 2
        assert ask(port, path="/health")[0] == 200
        assert json.loads(ask(port)[2]) == {"version": "1"}


def test_the_files_turn_a_running_revision_bad_and_good_again(tmp_path: Path) -> None:
    unhealthy, failing = tmp_path / "unhealthy", tmp_path / "failing"
    with service(HEALTH_FAIL_FILE=str(unhealthy), ERROR_FILE=str(failing)) as (_, port):
        assert ask(port, path="/health")[0] == 200 and ask(port)[0] == 200
        unhealthy.touch()
        failing.touch()
        assert ask(port, path="/health")[:3:2] == (503, b"unhealthy")
        status, _, body = ask(port)
        assert status == 500 and json.loads(body)["error"] == "injected failure"
        unhealthy.unlink()
        failing.unlink()
        assert ask(port, path="/health")[0] == 200 and ask(port)[0] == 200


def test_other_methods_and_malformed_requests_get_an_error_not_a_hang() -> None:
    with service() as (process, port):
        assert ask(port, "PUT", "/")[0] == 501
        assert raw(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        assert raw(port, b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        assert raw(port, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 400 ")
        many = b"GET / HTTP/1.1\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n"
        assert raw(port, many).startswith(b"HTTP/1.0 431 ")
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # a TCP check: nothing sent
        assert ask(port)[0] == 200 and process.poll() is None


def test_sigterm_finishes_the_request_in_flight_then_exits_cleanly() -> None:
    with service(LATENCY_MS="600") as (process, port):
        answers: list[int] = []
        slow = threading.Thread(target=lambda: answers.append(ask(port)[0]))
        slow.start()
        time.sleep(0.2)  # the request is being served
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        slow.join(timeout=10)
        assert answers == [200]
        assert process.stdout is not None and "stopped" in process.stdout.read()


def test_a_crash_file_makes_every_start_fail(tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    crash.touch()
    env = {**os.environ, "PORT": str(free_port()), "CRASH_FILE": str(crash)}
    completed = subprocess.run(
        [sys.executable, "-S", str(SAMPLE)], env=env, capture_output=True, text=True, timeout=30
    )
    assert completed.returncode == 3 and "crashing" in completed.stdout


def test_a_startup_delay_postpones_listening() -> None:
    port = free_port()
    env = {**os.environ, "PORT": str(port), "STARTUP_DELAY_MS": "300"}
    process = subprocess.Popen([sys.executable, "-S", str(SAMPLE)], env=env, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.1)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        process.kill()
        process.wait(timeout=10)
