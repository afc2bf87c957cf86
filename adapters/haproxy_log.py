"""HAProxy as a metric provider: its per-server counters for requests and errors, and its request log for
latency percentiles and per-request samples (the HAProxy adapter's second module; see adapters/haproxy.py).

Each router logs every answered request into a ring buffer (``ring reqlog``, format ``%Ts.%ms %s %ST %Ta``:
accept time, server, status, total active time in ms). Reading it cheaply at every analysis check: one
runtime-API connection per target stays open in wait mode, ``show events reqlog -nw`` (``-n``: start at the
end, ``-w``: then stream each new line), and a check reads without blocking whatever arrived since the last
one (checked with HAProxy 2.8: an idle watcher is not closed by ``stats timeout``). No line is read twice and
the ring is never dumped whole. Lines are kept per revision with their time for the window, up to
``MAX_KEPT`` each (the oldest go first). A reader that falls behind by more than the ring's 1 MiB, or that
starts after a crash, misses lines: the judgement reports the sample sizes it had.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections import deque
from pathlib import Path
from typing import Any

from adapters.haproxy import REQUEST_LOG_RING, HAProxyRouter
from engine.metrics import Capability, RevisionFigures, Window, counter_delta, percentile, thin
from engine.models import Target

log = logging.getLogger(__name__)
MAX_KEPT = 50_000
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

    def drain(self) -> list[bytes]:
        """The complete lines logged since the last drain (none on the first: the stream starts now)."""
        if not self.supported:
            return []
        try:
            if self._sock is None:
                self._open()
            data, ended = self._read_available()
        except OSError as error:
            log.debug("request log of %s unreadable: %s", self.socket_path, error)
            self.close()
            return []
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if ended:  # HAProxy restarted or reloaded (or refused the ring): reopen at the next drain
            if any(line.startswith(b"No such event sink") for line in lines):
                self.supported = False
            self.close()
        return lines

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


def parse_line(line: bytes) -> tuple[float, str, int, float] | None:
    """(accept time, server, status, total active ms) of one ``REQUEST_LOG_FORMAT`` line; None for a request
    that got no answer (``-1``) or reached no server."""
    parts = line.split()
    if len(parts) != 4:
        return None
    try:
        at, status, active = float(parts[0]), int(parts[2]), float(parts[3])
    except ValueError:
        return None
    if status < 100 or active < 0:
        return None
    return at, parts[1].decode(errors="replace"), status, active


class HAProxyMetrics:
    """``MetricProvider`` for the platforms behind our HAProxy (local, docker, vm)."""

    name = "haproxy"
    capabilities = frozenset(
        {Capability.COUNTS, Capability.SERVERS, Capability.LATENCY_PERCENTILE, Capability.LATENCY_SAMPLES}
    )

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self.router = HAProxyRouter(state_dir, settings)
        self._streams: dict[str, RequestLogStream] = {}
        self._samples: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def _collect(self, target: Target) -> None:
        """Fold the new log lines into the target's samples, per revision."""
        source = self.router.request_log(target)
        if source is None:
            return
        socket_path, revisions = source
        stream = self._streams.get(target.key)
        if stream is None or stream.socket_path != socket_path:
            if stream is not None:
                stream.close()
            stream = self._streams[target.key] = RequestLogStream(socket_path)
        for line in stream.drain():
            parsed = parse_line(line)
            if parsed is None or parsed[1] not in revisions:
                continue
            key = (target.key, revisions[parsed[1]])
            kept = self._samples.get(key)
            if kept is None:
                kept = self._samples[key] = deque(maxlen=MAX_KEPT)
            kept.append((parsed[0], parsed[3]))

    def _latencies(self, target: Target, revision: str, since: float) -> list[float]:
        kept = self._samples.get((target.key, revision))
        if not kept:
            return []
        while kept and kept[0][0] < since:
            kept.popleft()
        return [active for _, active in kept]

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
                response_time_ms=percentile(latencies, window.percentile),
                latency_samples=thin(latencies) if window.samples else [],
                servers_up=snap.servers_up,
                servers_total=snap.servers_total,
            )
        return figures

    def close(self) -> None:
        for stream in self._streams.values():
            stream.close()
        self._streams.clear()
