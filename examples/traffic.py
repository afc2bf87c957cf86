"""A bounded load generator for the quickstart, tests and benchmarks: real HTTP requests at a steady rate."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections import Counter
from datetime import datetime
from urllib.parse import urlsplit

MAX_FAILURES_KEPT = 20


class TrafficGenerator:
    """Sends GET requests to ``url`` at about ``rps`` per second until stopped or ``max_seconds`` pass.

    Counts answers by (version, status); connection failures count as status 0. ``failures`` keeps the first
    ones of those and of the router's own 5xx answers (no ``X-Version``): when, what (the exception's class
    and message, or the status) and how long the request took. An ``https://`` URL is
    verified against ``ca_file`` (the system's CAs when None): a certificate it does not trust is a failure.
    """

    def __init__(
        self,
        url: str,
        rps: float = 50.0,
        threads: int = 2,
        max_seconds: float = 3600.0,
        ca_file: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.path = parts.path or "/"
        self.context = ssl.create_default_context(cafile=ca_file) if self.https else None
        self.interval = threads / rps
        self.threads = threads
        self.max_seconds = max_seconds
        self.counts: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []  # the first MAX_FAILURES_KEPT
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []

    def start(self) -> TrafficGenerator:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> Counter[tuple[str, int]]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)
        return self.snapshot()

    def snapshot(self) -> Counter[tuple[str, int]]:
        with self._lock:
            return Counter(self.counts)

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            self._record(*self._request())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _request(self) -> tuple[str, int]:
        connection = (
            http.client.HTTPSConnection(self.host, self.port, timeout=5, context=self.context)
            if self.https
            else http.client.HTTPConnection(self.host, self.port, timeout=5)
        )
        started = time.monotonic()
        try:
            connection.request("GET", self.path)
            response = connection.getresponse()
            response.read()
            version = response.getheader("X-Version", "?")
            if response.status >= 500 and version == "?":  # answered by the router, not by a revision
                self._failure(f"HTTP {response.status} without X-Version", started)
            return version, response.status
        except (OSError, http.client.HTTPException) as error:
            self._failure(f"{type(error).__name__}: {error}", started)
            return "?", 0
        finally:
            connection.close()

    def _failure(self, what: str, started: float) -> None:
        took = time.monotonic() - started
        at = datetime.now().strftime("%H:%M:%S.%f")[:-3]  # local time, to the millisecond
        with self._lock:
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append(f"{at} {what} (after {took:.3f}s)")

    def _record(self, version: str, status: int) -> None:
        with self._lock:
            self.counts[(version, status)] += 1

    @staticmethod
    def failed(counts: Counter[tuple[str, int]], version: str | None = None) -> int:
        return sum(
            n for (v, s), n in counts.items() if (s == 0 or s >= 500) and (version is None or v == version)
        )

    @staticmethod
    def total(counts: Counter[tuple[str, int]], version: str | None = None) -> int:
        return sum(n for (v, _), n in counts.items() if version is None or v == version)


def main(argv: list[str]) -> int:
    """``python -m examples.traffic URL [URL ...] --rps N --seconds S``: one generator per URL, counts as JSON
    on stdout at the end (SIGTERM or the time limit ends it)."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser()
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--rps", type=float, default=10.0, help="per URL")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--ca-file", default=None, help="CA to verify https:// URLs against")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    generators = [
        TrafficGenerator(url, rps=args.rps, threads=2, max_seconds=args.seconds, ca_file=args.ca_file).start()
        for url in args.urls
    ]
    stop.wait(args.seconds)
    result = {
        url: {f"{v}:{s}": n for (v, s), n in g.stop().items()}
        for url, g in zip(args.urls, generators, strict=True)
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
