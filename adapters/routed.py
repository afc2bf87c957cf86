"""A ``PlatformAdapter`` made of a workload backend (runs replicas) and a traffic router (splits traffic).

Local processes, Docker containers and VM hosts all run their replicas behind the same kind of router; this
module is the glue, so each backend only has to start and stop replicas. Readiness is checked for real: an
HTTP GET of each replica's health path, 2xx meaning ready.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from engine.models import MetricProviderConfig, Target
from engine.platform import (
    CapacityPool,
    LiveState,
    MetricSnapshot,
    PlatformError,
    Replica,
    ReplicaLiveness,
    RevisionSpec,
    RevisionStatus,
    Serving,
    SupervisionMode,
    TrafficRouter,
    TrafficState,
    WorkloadBackend,
)

READINESS_TIMEOUT_S = 1.0
_MAX_PROBE_THREADS = 16


def is_ready(replica: Replica, timeout_s: float = READINESS_TIMEOUT_S) -> bool:
    """GET http://host:port<health_path>: ready when it answers 2xx within the timeout (a 3xx is not ready,
    and is not followed)."""
    if not replica.alive:
        return False
    connection = http.client.HTTPConnection(replica.host, replica.port, timeout=timeout_s)
    try:
        connection.request("GET", replica.health_path, headers={"Connection": "close"})
        return 200 <= connection.getresponse().status < 300
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()


_PROBES = ThreadPoolExecutor(max_workers=_MAX_PROBE_THREADS, thread_name_prefix="readiness")
# While a revision starts, its replicas' ports are tried every LISTEN_POLL_S: a refused connection costs tens
# of microseconds, a health check (or a deployment's check) far more.
LISTEN_POLL_S = 0.005


def _accepts(replica: Replica, timeout_s: float) -> bool:
    try:
        socket.create_connection((replica.host, replica.port), timeout=max(0.001, timeout_s)).close()
    except OSError:
        return False
    return True


def until_listening(replicas: list[Replica], deadline: float) -> None:
    """Returns once every replica's port accepts connections (at once if they all do), or at ``deadline``
    (monotonic)."""
    pending = [r for r in replicas if not _accepts(r, deadline - time.monotonic())]
    while pending and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(LISTEN_POLL_S, left))
        pending = [r for r in pending if not _accepts(r, deadline - time.monotonic())]


def ready_flags(replicas: list[Replica]) -> list[bool]:
    """Readiness of every replica, probed in parallel so that a call stays within about one timeout (by
    threads kept from one call to the next)."""
    if len(replicas) <= 1:
        return [is_ready(r) for r in replicas]
    return list(_PROBES.map(is_ready, replicas))


def _common_health_path(replicas: list[Replica]) -> str | None:
    """The router checks one health path for all servers: the revisions' common one. When they differ, None
    keeps the one in force (the first revision's) rather than flipping the others' checks back and forth."""
    paths = {r.health_path for r in replicas}
    return paths.pop() if len(paths) == 1 else None


def _group(replicas: Iterable[Replica]) -> dict[str, list[Replica]]:
    grouped: dict[str, list[Replica]] = {}
    for replica in sorted(replicas, key=lambda r: (r.revision, r.index)):
        grouped.setdefault(replica.revision, []).append(replica)
    return grouped


class RoutedPlatform:
    """``PlatformAdapter`` from a ``WorkloadBackend`` and a ``TrafficRouter``."""

    supervision = SupervisionMode.REPAIR  # the router and the replicas are ours: nobody else restarts them

    def __init__(self, backend: WorkloadBackend, router: TrafficRouter) -> None:
        self.backend = backend
        self.router = router
        self.platform = backend.platform
        # The replicas' limits and capacity are the backend's; HTTPS is the router's.
        self.capabilities = backend.capabilities.model_copy(update={"serves_tls": router.serves_tls})
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    # ---- PlatformAdapter ------------------------------------------------------------------
    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        return self.backend.capacity(target, replicas)

    def validate(self) -> None:
        self.backend.validate()
        router_validate = getattr(self.router, "validate", None)
        if callable(router_validate):
            router_validate()

    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        with self._lock(spec.target):
            self.backend.ensure_replicas(spec)
            replicas = self.backend.list_replicas(spec.target)
            # First the router (a crashed one comes back with its recorded weights), then re-register every
            # replica with the weights in force: a restarted replica may have a new port.
            self._ensure_frontend(spec.target, _common_health_path(replicas), spec.serving)
            weights = self.router.traffic(spec.target).weights
            self._register(spec.target, weights, replicas)
        status = self.revision_status(spec.target, spec.revision)
        if status is None:  # only when replicas were asked for 0
            return RevisionStatus(
                revision=spec.revision, desired_replicas=0, ready_replicas=0, running_replicas=0
            )
        return status

    def await_ready(self, target: Target, revision: str, within_s: float) -> RevisionStatus | None:
        """The revision's status once its replicas listen and answer their health checks, or after
        ``within_s``. It waits only for ports that do not listen yet (tried every few ms: a replica is seen
        ready milliseconds after it listens, for far less than a health check each time). It returns at once
        when a replica is not running (waiting would not bring it back) or when every port listens and a
        health check still fails (the caller decides when to ask again: a slow platform is not asked more)."""
        deadline = time.monotonic() + max(0.0, within_s)
        replicas = self.backend.list_replicas(target, revision)
        if not replicas:
            return None
        if all(r.alive for r in replicas):
            until_listening(replicas, deadline)
        return self._status(revision, replicas, ready_flags(replicas))

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        replicas = self.backend.list_replicas(target, revision)
        if not replicas:
            return None
        return self._status(revision, replicas, ready_flags(replicas))

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        replicas = self.backend.list_replicas(target)
        flags = dict(zip(((r.revision, r.index) for r in replicas), ready_flags(replicas), strict=True))
        return [
            self._status(revision, group, [flags[(r.revision, r.index)] for r in group])
            for revision, group in _group(replicas).items()
        ]

    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        total = sum(weights.values())
        if any(not isinstance(w, int) or w < 0 or w > 100 for w in weights.values()) or total != 100:
            raise ValueError(f"traffic weights must be integers from 0 to 100 summing to 100, got {weights}")
        with self._lock(target):
            grouped = _group(self.backend.list_replicas(target))
            for revision, percent in weights.items():
                if percent > 0 and revision not in grouped:
                    raise ValueError(f"revision '{revision}' does not exist on {self.platform}")
                if percent > 0 and not any(r.alive for r in grouped[revision]):
                    # The platform's state, not the caller's input: the engine restores it or gives up.
                    cause = f"revision '{revision}' has no running replica"
                    raise PlatformError(self.platform, target.key, cause)
            # A 0% entry for a revision that is gone changes nothing (a rollback may name a dead canary).
            in_force = {rev: pct for rev, pct in weights.items() if rev in grouped}
            return self._register(target, in_force, [r for g in grouped.values() for r in g], ready_only=True)

    def traffic(self, target: Target) -> TrafficState:
        return self.router.traffic(target)

    def remove_revision(self, target: Target, revision: str) -> None:
        """Traffic leaves the revision first (the others keep their weights), then its replicas stop."""
        with self._lock(target):
            replicas = [r for r in self.backend.list_replicas(target) if r.revision != revision]
            if self.router.traffic(target).address:  # the target has a router
                # A crashed router comes back with its recorded weights before they are read and kept.
                self._ensure_frontend(target, None)
                in_force = self.router.traffic(target).weights
                weights = {rev: pct for rev, pct in in_force.items() if rev != revision}
                self._register(target, weights, replicas)
            self.backend.remove_revision(target, revision)

    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        """The router's counters; a revision with replicas but no server in the router gets an empty snapshot
        (not looked for when the router already has the one revision asked for)."""
        snapshots = self.router.metrics(target)
        if revision is not None and revision in snapshots:
            return {revision: snapshots[revision]}
        for name, group in _group(self.backend.list_replicas(target, revision)).items():
            if name not in snapshots:
                snapshots[name] = MetricSnapshot(at=_now(snapshots), servers_total=len(group))
        return snapshots

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        return self.backend.logs(target, revision, lines)

    def live_state(self, target: Target, revision: str, deep: bool = False) -> LiveState:
        """The router's process (and with ``deep`` its socket and health checks) and each replica's process
        or container: no HTTP probe."""
        router = self.router.liveness(target, deep)
        health = router.servers if router is not None else {}
        replicas = [
            ReplicaLiveness(
                index=r.index,
                address=r.address,
                alive=r.alive,
                healthy=health.get(_resolved(r.address)) if health else None,
            )
            for r in self.backend.list_replicas(target, revision)
        ]
        return LiveState(revision=revision, router=router, replicas=replicas)

    def restore_router(self, target: Target, weights: dict[str, int], restart: bool = False) -> TrafficState:
        with self._lock(target):
            if restart:
                self.router.restart(target)
            # A revision with no running replica keeps its weight but has no server: the others serve.
            return self._register(target, weights, self.backend.list_replicas(target))

    def restart_replica(self, spec: RevisionSpec, index: int) -> RevisionStatus:
        self.backend.stop_replica(spec.target, spec.revision, index)
        return self.ensure_revision(spec)

    def repair_replicas(self, spec: RevisionSpec) -> RevisionStatus | None:
        """The supervisor observed, then repairs: a removal (another process: no lock shared) may have taken
        the router's record away in between, or while the replicas start (a container takes seconds). Then
        nothing is brought back: what this started is stopped again."""
        with self._lock(spec.target):
            if not self._routed(spec.target):
                return None
            self.backend.ensure_replicas(spec)
            if not self._routed(spec.target):
                self.backend.remove_revision(spec.target, spec.revision)
                return None
            return self.ensure_revision(spec)

    def repair_router(
        self, target: Target, weights: dict[str, int], restart: bool = False
    ) -> TrafficState | None:
        with self._lock(target):
            return self.restore_router(target, weights, restart) if self._routed(target) else None

    def _routed(self, target: Target) -> bool:
        """The target's router is recorded (running or not): only a removal takes the record away."""
        return self.router.liveness(target) is not None

    def default_metric_provider(self) -> MetricProviderConfig:
        return self.router.default_metric_provider()

    def metric_labels(self, target: Target, revision: str) -> dict[str, str]:
        return {"service": target.service, "environment": target.environment, "revision": revision}

    def close(self) -> None:
        self.backend.close()
        router_close = getattr(self.router, "close", None)
        if callable(router_close):
            router_close()

    # ---- internals ------------------------------------------------------------------------
    def _register(
        self, target: Target, weights: dict[str, int], replicas: list[Replica], ready_only: bool = False
    ) -> TrafficState:
        """Give the router every alive replica; with ``ready_only``, only the ready ones of a revision
        when it has any (HAProxy's own health checks keep gating the others). A revision with one alive
        replica gets it either way: its health is not asked."""
        self._ensure_frontend(target, _common_health_path(replicas))
        servers: dict[str, list[str]] = {}
        for revision, group in _group(r for r in replicas if r.alive).items():
            addresses = [r.address for r in group]
            if ready_only and len(group) > 1:
                ready = [r.address for r, ok in zip(group, ready_flags(group), strict=True) if ok]
                addresses = ready or addresses
            servers[revision] = addresses
        return self.router.set_backends(target, servers, weights)

    def _ensure_frontend(
        self, target: Target, health_path: str | None, serving: Serving | None = None
    ) -> str:
        """The router's frontend, checking the revisions' health path and serving as ``serving`` says (None:
        as it is)."""
        return self.router.ensure_frontend(target, health_path=health_path, serving=serving)

    def _status(self, revision: str, replicas: list[Replica], ready: list[bool]) -> RevisionStatus:
        alive = [r for r in replicas if r.alive]
        dead = len(replicas) - len(alive)
        return RevisionStatus(
            revision=revision,
            desired_replicas=len(replicas),
            running_replicas=len(alive),
            ready_replicas=sum(ready),
            endpoints=[r.address for r in alive],
            message=f"{dead} replica(s) exited" if dead else "",
        )

    def _lock(self, target: Target) -> threading.RLock:
        """One composite operation per target at a time in this process (the parts lock across processes)."""
        with self._locks_guard:
            return self._locks.setdefault(target.key, threading.RLock())


def _resolved(address: str) -> str:
    """The address as the router knows its servers: hosts are registered by their IPv4 address."""
    host, _, port = address.rpartition(":")
    try:
        ipaddress.ip_address(host)
        return address
    except ValueError:
        pass
    try:
        return f"{socket.getaddrinfo(host, int(port), socket.AF_INET)[0][4][0]}:{port}"
    except (OSError, ValueError):
        return address


def _now(snapshots: dict[str, MetricSnapshot]) -> float:
    return next(iter(snapshots.values())).at if snapshots else time.time()
