"""HAProxy as the traffic router of the platforms that run replicas themselves (local, Docker, VMs).

One real HAProxy process per target, daemonized (``-D``) so that it outlives the process that started it, and
found again by a new instance from a JSON state file (port, pid, /proc start time, which revision each server
slot serves). The backend has a fixed number of server slots; replicas are put into slots, and weights and
states are changed through the runtime API on a unix socket: instant, no reload. The configuration file is
rewritten after every change so that a restarted HAProxy comes back with the same slots and weights.

Weights: a revision with ``w`` percent over ``n`` servers gets per-server weights proportional to ``w / n``,
scaled so that the largest is 256 (HAProxy's maximum) for the best precision; never 0 when ``w > 0``.

Metrics (choice): ``requests`` is the sum of the server's HTTP responses (``hrsp_1xx..hrsp_other``) plus its
response errors (``eresp``: the server closed or broke the response; HAProxy does not retry those, so the user
got a 502). ``errors`` is ``hrsp_5xx + eresp``. Connection errors (``econ``) are NOT counted: with
``retries 2`` and ``option redispatch`` most are retried on another server and the user never sees them, so
they would over-count; a revision whose servers refuse connections is caught by the health checks (its
``servers_up`` drops) instead. Counters are cumulative per revision across slot changes (a slot's counters
are folded into its revision when it is freed); they restart from zero when the HAProxy process restarts.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.models import Target
from engine.platform import MetricSnapshot, PlatformError, TrafficState, TransientPlatformError

MAX_WEIGHT = 256
DEFAULT_SLOTS = 128
DEFAULT_FRONTEND_PORTS = (18000, 18999)
BACKEND = "be"
CLI_TIMEOUT_S = 2.0
START_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 10.0
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/?=&%+:@!$,;*-]*$")
_MAINT_FLAGS = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, hostname maint


# --------------------------------------------------------------------------------------------
# Pure weight math (unit tested)
# --------------------------------------------------------------------------------------------
def server_weights(percents: dict[str, int], server_counts: dict[str, int]) -> dict[str, int]:
    """Per-server HAProxy weight of each revision so that its share of traffic is its percent.

    Each server of revision r gets a weight proportional to percent(r) / servers(r), scaled so that the
    largest weight is ``MAX_WEIGHT``. A revision with traffic never gets 0; one without traffic gets exactly 0.
    """
    for revision, percent in percents.items():
        if not 0 <= percent <= 100:
            raise ValueError(f"weight of {revision} is {percent}: it must be between 0 and 100")
    ratios = {
        revision: percents[revision] / count
        for revision, count in server_counts.items()
        if count > 0 and percents.get(revision, 0) > 0
    }
    weights = dict.fromkeys(server_counts, 0)
    if not ratios:
        return weights
    scale = MAX_WEIGHT / max(ratios.values())
    for revision, ratio in ratios.items():
        weights[revision] = max(1, min(MAX_WEIGHT, round(ratio * scale)))
    return weights


def shares_to_percent(totals: dict[str, float]) -> dict[str, int]:
    """Turn total weights per revision into integer percents summing to 100 (largest remainder first)."""
    grand_total = sum(totals.values())
    if grand_total <= 0:
        return dict.fromkeys(totals, 0)
    exact = {revision: total * 100.0 / grand_total for revision, total in totals.items()}
    percents = {revision: int(value) for revision, value in exact.items()}
    missing = 100 - sum(percents.values())
    by_remainder = sorted(exact, key=lambda r: (exact[r] - percents[r], totals[r]), reverse=True)
    for revision in by_remainder[:missing]:
        percents[revision] += 1
    return percents


def effective_percents(slot_weights: dict[str, list[int]]) -> dict[str, int]:
    """Percent of traffic per revision from the weights of its servers (revision -> list of weights)."""
    return shares_to_percent({revision: float(sum(weights)) for revision, weights in slot_weights.items()})


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------
class Counters(BaseModel):
    model_config = ConfigDict(extra="ignore")

    requests: int = 0
    errors: int = 0

    def plus(self, other: Counters) -> Counters:
        return Counters(requests=self.requests + other.requests, errors=self.errors + other.errors)

    def minus(self, baseline: Counters) -> Counters:
        """Counts since ``baseline``; the raw counters when they went backwards (HAProxy restarted)."""
        if self.requests < baseline.requests or self.errors < baseline.errors:
            return self
        return Counters(requests=self.requests - baseline.requests, errors=self.errors - baseline.errors)


class Slot(BaseModel):
    model_config = ConfigDict(extra="ignore")

    revision: str
    address: str
    weight: int = 0
    baseline: Counters = Field(default_factory=Counters)


class RouterState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    port: int
    bind_host: str = "127.0.0.1"
    pid: int = 0
    start_time: int = 0
    socket: str = ""
    health_path: str = "/health"
    slot_count: int = DEFAULT_SLOTS
    slots: dict[int, Slot] = Field(default_factory=dict)
    percents: dict[str, int] = Field(default_factory=dict, description="The weights last asked for")
    retired: dict[str, Counters] = Field(default_factory=dict, description="Counts of freed slots")


# --------------------------------------------------------------------------------------------
# Processes and files (kept here: adapters do not import each other)
# --------------------------------------------------------------------------------------------
def process_start_time(pid: int) -> int | None:
    """Start time of a live process from /proc (clock ticks after boot), None when gone or a zombie."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_same_process(pid: int, start_time: int) -> bool:
    return start_time > 0 and process_start_time(pid) == start_time


def write_json_atomic(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive lock across threads (a lock per path) and processes (flock), with a deadline."""
    with _THREAD_LOCKS_GUARD:
        thread_lock = _THREAD_LOCKS.setdefault(str(path), threading.Lock())
    if not thread_lock.acquire(timeout=timeout_s):
        raise TransientPlatformError("haproxy", str(path), f"lock busy for over {timeout_s:.0f}s")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        cause = f"locked by another process for over {timeout_s:.0f}s"
                        raise TransientPlatformError("haproxy", str(path), cause) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        thread_lock.release()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Runtime API
# --------------------------------------------------------------------------------------------
def run_cli(socket_path: str, command: str, timeout_s: float = CLI_TIMEOUT_S) -> str:
    """One command (or several separated by ';') on the runtime API; the whole answer."""
    chunks: list[bytes] = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(socket_path)
            sock.sendall(command.encode() + b"\n")
            while data := sock.recv(65536):
                chunks.append(data)
    except OSError as exc:
        raise TransientPlatformError("haproxy", socket_path, f"runtime API: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")


def parse_show_stat(text: str) -> list[dict[str, str]]:
    """``show stat`` CSV (header line starts with '# ') as a list of rows keyed by column name."""
    lines = text.lstrip("# ").splitlines()
    return [dict(row) for row in csv.DictReader(io.StringIO("\n".join(lines))) if row.get("pxname")]


def parse_servers_state(text: str) -> dict[str, dict[str, str]]:
    """``show servers state <backend>`` as server name -> field -> value."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line[1:].split() for line in lines if line.startswith("#")), [])
    servers: dict[str, dict[str, str]] = {}
    for line in lines:
        if line.startswith("#") or not header:
            continue
        values = line.split()
        if len(values) >= len(header) - 6:  # trailing optional columns may be missing
            row = dict(zip(header, values, strict=False))
            servers[row.get("srv_name", "")] = row
    return servers


def slot_counters(row: dict[str, str]) -> Counters:
    """Requests and failed requests of one server row of ``show stat`` (see the module docstring)."""

    def number(name: str) -> int:
        value = row.get(name) or "0"
        return int(value) if value.isdigit() else 0

    responses = sum(number(f"hrsp_{code}") for code in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
    return Counters(requests=responses + number("eresp"), errors=number("hrsp_5xx") + number("eresp"))
