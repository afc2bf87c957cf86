"""The load generator's record of failed requests (examples/traffic.py): what each status 0 was."""

from __future__ import annotations

import re
import socket
import time

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
