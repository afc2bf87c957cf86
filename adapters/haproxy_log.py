"""HAProxy as a metric provider: its per-server counters for requests and errors, and its request log for
latency percentiles and per-request samples (the HAProxy adapter's second module; see adapters/haproxy.py).

Each router logs every request into a ring buffer (``ring reqlog``, format ``%s %ST %Ta``: server, status,
total active time in ms). Reading it cheaply at every analysis check: one runtime-API connection per target
stays open in wait mode, ``show events reqlog -nw`` (``-n``: start at the end, ``-w``: then stream each new
line), and a check reads without blocking whatever arrived since the last one (checked with HAProxy 2.8: an
idle watcher is not closed by ``stats timeout``). No line is read twice and the ring is never dumped whole.

What one read brings is kept per revision as one chunk stamped with the time it was read: a window keeps
the chunks read after its start (its baseline reads the log too, so the chunks before it end there). At
most ``MAX_KEPT`` latencies per revision are kept (the oldest chunks go first). A reader that falls behind by
more than the ring's 1 MiB, or that starts after a crash, misses lines: the judgement reports the sample
sizes it had.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from adapters.haproxy import REQUEST_LOG_RING, HAProxyRouter
from engine.metrics import Capability, RevisionFigures, Window, counter_delta, percentile, thin
from engine.models import Target

log = logging.getLogger(__name__)
MAX_KEPT = 50_000
LOG_READ_INTERVAL_S = 10.0
_READ_CHUNK = 1 << 16


class RequestLogStream:
    """A wait-mode ``show events`` connection on one router's request-log ring."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._partial = b""
        self.supported = True  # False once HAProxy says the ring does not exist (a router started earlier)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(2.0)
            sock.connect(self.socket_path)
            sock.sendall(f"show events {REQUEST_LOG_RING} -nw\n".encode())
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock, self._partial = sock, b""

    def drain(self) -> bytes:
        """The complete lines logged since the last drain (none on the first: the stream starts now)."""
        if not self.supported:
            return b""
        try:
            if self._sock is None:
                self._open()
            data, ended = self._read_available()
        except OSError as error:
            log.debug("request log of %s unreadable: %s", self.socket_path, error)
            self.close()
            return b""
        complete, _, self._partial = (self._partial + data).rpartition(b"\n")
        if ended:  # HAProxy restarted or reloaded (or refused the ring): reopen at the next drain
            if complete.startswith(b"No such event sink"):
                self.supported = False
                complete = b""
            self.close()
        return complete

    def _read_available(self) -> tuple[bytes, bool]:
        assert self._sock is not None
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except BlockingIOError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


def parse_lines(data: bytes, servers: dict[bytes, str]) -> dict[str, list[float]]:
    """Total active ms per revision from ``REQUEST_LOG_FORMAT`` lines of the servers named; a request that got
    no answer (``-1``) or reached no server is left out. Every line has three fields, so one split of the
    whole text does (a check stays cheap); anything else is parsed line by line."""
    tokens = data.split()
    if len(tokens) != 3 * (data.count(b"\n") + 1):
        tokens = [field for line in data.split(b"\n") if len(fields := line.split()) == 3 for field in fields]
    found: dict[str, list[float]] = {}
    for server, status, active in zip(tokens[0::3], tokens[1::3], tokens[2::3], strict=True):
        revision = servers.get(server)
        if revision is None or status[0] == _DASH or active[0] == _DASH or not active.isdigit():
            continue
        samples = found.get(revision)
        if samples is None:
            samples = found[revision] = []
        samples.append(float(active))
    return found


_DASH = ord("-")


class HAProxyMetrics:
    """``MetricProvider`` for the platforms behind our HAProxy (local, docker, vm)."""

    name = "haproxy"
    capabilities = frozenset(
        {Capability.COUNTS, Capability.SERVERS, Capability.LATENCY_PERCENTILE, Capability.LATENCY_SAMPLES}
    )

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self.router = HAProxyRouter(state_dir, settings)
        self._streams: dict[str, RequestLogStream] = {}
        self._chunks: dict[tuple[str, str], deque[tuple[float, list[float]]]] = {}
        self._collected_at: dict[str, float] = {}

    def _collect(self, target: Target) -> None:
        """Fold the new log lines into the target's samples, per revision, as one chunk read now."""
        source = self.router.request_log(target)
        if source is None:
            return
        socket_path, servers = source
        key = target.key
        stream = self._streams.get(key)
        if stream is None or stream.socket_path != socket_path:
            if stream is not None:
                stream.close()
            stream = self._streams[key] = RequestLogStream(socket_path)
        self._collected_at[key] = time.monotonic()
        data = stream.drain()
        if not data:
            return
        read_at = time.time()
        for revision, latencies in parse_lines(data, servers).items():
            chunks = self._chunks.setdefault((key, revision), deque())
            chunks.append((read_at, latencies))
            kept = sum(len(chunk) for _, chunk in chunks)
            while kept > MAX_KEPT and len(chunks) > 1:
                kept -= len(chunks.popleft()[1])

    def _latencies(self, target: Target, revision: str, since: float) -> list[float]:
        """The latencies read after ``since`` (the window's start)."""
        chunks = self._chunks.get((target.key, revision))
        if not chunks:
            return []
        while chunks and chunks[0][0] <= since:
            chunks.popleft()
        return [latency for _, chunk in chunks for latency in chunk]

    def baseline(self, target: Target, revisions: list[str]) -> dict[str, dict[str, float]]:
        self._collect(target)  # the stream starts (or keeps) following the log from here
        snapshots = self.router.metrics(target)
        return {
            revision: {"requests": snap.requests, "errors": snap.errors}
            for revision, snap in snapshots.items()
            if revision in revisions
        }

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        snapshots = self.router.metrics(target)
        # A check that needs no latency reads the log only now and then (its socket buffer holds the lines
        # meanwhile): fewer, larger reads cost less than one at every check.
        last = self._collected_at.get(target.key, 0.0)
        if window.latency or window.samples or time.monotonic() - last >= LOG_READ_INTERVAL_S:
            self._collect(target)
        figures: dict[str, RevisionFigures] = {}
        for revision in revisions:
            snap = snapshots.get(revision)
            if snap is None:
                continue
            base = window.baselines.get(revision, {})
            latencies = self._latencies(target, revision, window.start)
            figures[revision] = RevisionFigures(
                revision=revision,
                seconds=window.seconds,
                requests=counter_delta(snap.requests, base, "requests"),
                errors=counter_delta(snap.errors, base, "errors"),
                response_time_ms=percentile(latencies, window.percentile) if window.latency else None,
                latency_samples=thin(latencies) if window.samples else [],
                servers_up=snap.servers_up,
                servers_total=snap.servers_total,
            )
        return figures

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
