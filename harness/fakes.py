"""Fakes at our own seams (the PlatformAdapter interface, the clock) for millisecond unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.journal import Journal
from engine.metrics import Capability, PlatformCounters, RevisionFigures, Window, percentile
from engine.models import (
    Artifact,
    DeploymentRequest,
    MetricProviderConfig,
    MetricProviderType,
    Phase,
    PlatformConfig,
    Strategy,
    Target,
)
from engine.platform import (
    CapacityPool,
    LiveState,
    MetricSnapshot,
    PlatformCapabilities,
    PlatformError,
    ReplicaLiveness,
    RevisionSpec,
    RevisionStatus,
    RouterLiveness,
    SupervisionMode,
    TrafficState,
    TransientPlatformError,
)
from engine.state import EventKind

ROUTER_NOTICES_S = 2.0  # a dead server is marked down after this long (HAProxy: fall 2, inter 1s)
ROUTER_RISES_S = 1.0  # a server marked down is up again at its next good check (rise 1, inter 1s)


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.001)


@dataclass
class FakeRevision:
    replicas: int
    ready: bool = True
    requests: int = 0
    errors: int = 0
    dead: set[int] = field(default_factory=set)  # indexes whose process is gone
    unhealthy: set[int] = field(default_factory=set)  # alive, but failing the router's health checks
    killed_at: float | None = None  # when a test killed replicas, until they are started again
    ready_at: float = 0.0  # replicas answer their health checks from this clock time on
    rising_until: float | None = None  # replicas started again after the router saw them die: down till then

    @property
    def alive(self) -> int:
        return self.replicas - len(self.dead)


@dataclass
class FakePlatform:
    """In-memory platform whose revisions serve a share of ``rps`` requests per clock second."""

    clock: FakeClock
    rps: int = 100
    error_rates: dict[str, float] = field(default_factory=dict)
    never_ready: set[str] = field(default_factory=set)
    ready_after_s: float = 0.0  # how long a revision's replicas take to start once ensured
    fail_validate: str | None = None
    revisions: dict[str, FakeRevision] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    specs: list[RevisionSpec] = field(default_factory=list)  # every ensure_revision's, in order
    metrics_asked: list[str | None] = field(default_factory=list)
    status_asked: list[float] = field(default_factory=list)  # clock times of revision_status calls
    platform: str = "fake"
    supervision: SupervisionMode = SupervisionMode.REPAIR
    router_up: bool = True  # False: our router's process is gone (no traffic, no counters)
    # True: the target was removed after the supervisor observed it (its router's record gone by the repair)
    removed: bool = False
    # live_state reports killed replicas running for this many more reads (Docker reports a killed container
    # exited a moment after it stops answering)
    stale_live_reads: int = 0
    router_answers: bool = True  # False: it runs, but its runtime API does not answer
    unreachable: str | None = None  # every call raises a TransientPlatformError with this cause
    restart_fails: set[str] = field(default_factory=set)  # revisions whose replicas die again at once
    capabilities: PlatformCapabilities = field(default_factory=PlatformCapabilities)
    pools: list[CapacityPool] = field(default_factory=list)
    _last: float = 0.0

    def _check_reachable(self) -> None:
        if self.unreachable:
            raise TransientPlatformError("fake", "fake://endpoint", self.unreachable)

    def _check_router_answers(self) -> None:
        """Calls that go through the router's runtime API fail while it runs but does not answer."""
        self._check_reachable()
        if self.router_up and not self.router_answers:
            raise TransientPlatformError("haproxy", "fake.sock", "runtime API: timed out")

    def _advance(self) -> None:
        elapsed = self.clock.now() - (self._last or self.clock.now())
        self._last = self.clock.now()
        if not self.router_up:
            return
        for name, weight in self.weights.items():
            revision = self.revisions.get(name)
            if revision is None:
                continue
            served = int(self.rps * elapsed * weight / 100)
            revision.requests += served
            revision.errors += int(served * self.error_rates.get(name, 0.0))
            unnoticed_s = self._unnoticed_overlap(revision, self._last - elapsed, self._last)
            revision.errors += int(self.rps * unnoticed_s * weight / 100 * self._dead_share(revision))

    def _servers_up(self, revision: FakeRevision) -> int:
        """The router's view: a killed replica is still up until its health checks notice."""
        now = self.clock.now()
        unnoticed = len(revision.dead) if self._unnoticed_overlap(revision, now, now + 1e-9) else 0
        if revision.rising_until is not None and now < revision.rising_until:
            return 0  # the router has not checked the restarted servers yet
        return revision.alive + unnoticed - len(revision.unhealthy - revision.dead)

    @staticmethod
    def _dead_share(revision: FakeRevision) -> float:
        return len(revision.dead) / revision.replicas if revision.replicas else 0.0

    @staticmethod
    def _unnoticed_overlap(revision: FakeRevision, start: float, end: float) -> float:
        """How much of [start, end] fell between a kill and the router noticing it (HAProxy: ``fall 2``,
        ``inter 1s``): requests sent to a killed replica then fail, counted against its revision."""
        if revision.killed_at is None:
            return 0.0
        noticed = revision.killed_at + ROUTER_NOTICES_S
        return max(0.0, min(end, noticed) - max(start, revision.killed_at))

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        self.calls.append(f"capacity x{replicas}")
        return [pool.model_copy(update={"replicas": replicas}) for pool in self.pools]

    def validate(self) -> None:
        if self.fail_validate:
            raise PlatformError("fake", "fake://endpoint", self.fail_validate)

    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        self._check_reachable()
        self.calls.append(f"ensure {spec.revision} x{spec.replicas}")
        self.specs.append(spec)
        if spec.revision not in self.revisions:
            self.revisions[spec.revision] = FakeRevision(
                spec.replicas, ready_at=self.clock.now() + self.ready_after_s
            )
        current = self.revisions[spec.revision]
        current.replicas = spec.replicas
        current.ready = spec.revision not in self.never_ready
        # Dead replicas are started again (they die at once when their restarts fail).
        noticed = current.killed_at is not None and self.clock.now() - current.killed_at >= ROUTER_NOTICES_S
        current.rising_until = self.clock.now() + ROUTER_RISES_S if noticed else None
        current.dead = set(range(spec.replicas)) if spec.revision in self.restart_fails else set()
        current.killed_at = None
        self._start_router()  # like the real one: a dead router is started first
        status = self.revision_status(spec.target, spec.revision)
        assert status is not None
        return status

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        current = self.revisions.get(revision)
        if current is None:
            return None
        self._check_reachable()
        ready = current.alive if current.ready and self.clock.now() >= current.ready_at else 0
        self.status_asked.append(self.clock.now())
        return RevisionStatus(
            revision=revision,
            desired_replicas=current.replicas,
            ready_replicas=ready,
            running_replicas=current.alive,
            endpoints=[f"127.0.0.1:{9000 + i}" for i in range(ready)],
        )

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        return [s for name in self.revisions if (s := self.revision_status(target, name)) is not None]

    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        self._check_router_answers()
        if sum(weights.values()) != 100:
            raise ValueError("weights must sum to 100")
        for name, weight in weights.items():
            revision = self.revisions.get(name)
            if weight > 0 and (revision is None or revision.alive == 0):
                raise PlatformError("fake", target.key, f"revision '{name}' has no running replica")
        self._advance()
        self._start_router()
        self.calls.append(f"traffic {sorted(weights.items())}")
        self.weights = {k: v for k, v in weights.items()}
        return self.traffic(target)

    def traffic(self, target: Target) -> TrafficState:
        self._check_router_answers()
        weights = dict(self.weights) if self.router_up else {}
        return TrafficState(weights=weights, address="http://127.0.0.1:18000")

    def remove_revision(self, target: Target, revision: str) -> None:
        self.calls.append(f"remove {revision}")
        self.revisions.pop(revision, None)
        self.weights.pop(revision, None)

    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        self._check_router_answers()
        self._advance()
        self.metrics_asked.append(revision)
        return {
            name: MetricSnapshot(
                at=self.clock.now(),
                requests=r.requests if self.router_up else 0,
                errors=r.errors if self.router_up else 0,
                servers_up=self._servers_up(r) if self.router_up else 0,
                servers_total=r.replicas,
            )
            for name, r in self.revisions.items()
            if revision is None or name == revision
        }

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        return ""

    # ---- supervision (RepairablePlatform) -------------------------------------------------------
    def live_state(self, target: Target, revision: str, deep: bool = False) -> LiveState:
        self._check_reachable()
        current = self.revisions.get(revision)
        if self.supervision is SupervisionMode.REPORT:  # a platform that heals itself reports counts only
            desired = current.replicas if current else 0
            return LiveState(
                revision=revision, desired_replicas=desired, ready_replicas=current.alive if current else 0
            )
        indexes = range(current.replicas) if current else range(0)
        stale, self.stale_live_reads = self.stale_live_reads > 0, max(0, self.stale_live_reads - 1)
        answering = (self.router_up and self.router_answers) if deep else None
        router = RouterLiveness(running=self.router_up, answering=answering)
        replicas = [
            ReplicaLiveness(
                index=i,
                address=f"127.0.0.1:{9000 + i}",
                alive=current is not None and (stale or i not in current.dead),
                healthy=(current is not None and i not in current.unhealthy) if answering else None,
            )
            for i in indexes
        ]
        return LiveState(revision=revision, router=router, replicas=replicas)

    def restore_router(self, target: Target, weights: dict[str, int], restart: bool = False) -> TrafficState:
        self._check_reachable()
        self.calls.append(f"{'restart' if restart else 'restore'} router {sorted(weights.items())}")
        if restart:
            self.router_up = False
        self._start_router()
        self.weights = dict(weights)
        return self.traffic(target)

    def repair_replicas(self, spec: RevisionSpec) -> RevisionStatus | None:
        return None if self.removed else self.ensure_revision(spec)

    def repair_router(
        self, target: Target, weights: dict[str, int], restart: bool = False
    ) -> TrafficState | None:
        return None if self.removed else self.restore_router(target, weights, restart)

    def restart_replica(self, spec: RevisionSpec, index: int) -> RevisionStatus:
        self.calls.append(f"restart {spec.revision}#{index}")
        self.revisions[spec.revision].unhealthy.discard(index)
        return self.ensure_revision(spec)

    def _start_router(self) -> None:
        """A router started again counts from zero, as HAProxy's counters do."""
        if not self.router_up:
            for revision in self.revisions.values():
                revision.requests = revision.errors = 0
            self._last = self.clock.now()
        self.router_up = self.router_answers = True

    # ---- faults a test injects ------------------------------------------------------------------
    def kill_router(self) -> None:
        self.router_up = False

    def kill(self, revision: str, *indexes: int) -> None:
        current = self.revisions[revision]
        self._advance()  # what was served before the kill was served by live replicas
        current.dead |= set(indexes or range(current.replicas))
        current.killed_at = self.clock.now()

    def default_metric_provider(self) -> MetricProviderConfig:
        return MetricProviderConfig(type=MetricProviderType.PLATFORM)

    def metric_labels(self, target: Target, revision: str) -> dict[str, str]:
        return {"service": target.service, "environment": target.environment, "revision": revision}

    def close(self) -> None:
        return None


class FakeSmoke:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        self.calls += 1
        return count - min(count, self.failures), min(count, self.failures)


class FakeMetrics(PlatformCounters):
    """A ``MetricProvider`` over a FakePlatform's counters, with latency samples per revision: as many as
    the window's requests (at most 400), spread evenly from 0.8 to 1.2 times the revision's latency."""

    name = "fake-metrics"
    capabilities = frozenset(
        {Capability.COUNTS, Capability.SERVERS, Capability.LATENCY_PERCENTILE, Capability.LATENCY_SAMPLES}
    )

    def __init__(self, platform: FakePlatform, latency_ms: dict[str, float]) -> None:
        super().__init__(platform)
        self.latency_ms = latency_ms

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        figures = super().read(target, revisions, window)
        for revision, figure in figures.items():
            count = min(400, figure.requests or 0)
            base = self.latency_ms.get(revision, 10.0)
            samples = [base * (0.8 + 0.4 * i / max(1, count - 1)) for i in range(count)]
            figure.response_time_ms = percentile(samples, window.percentile)
            figure.latency_samples = samples if window.samples else []
        return figures


def submit_admitted(
    journal: Journal,
    deployment_id: str,
    version: str,
    strategy: dict[str, Any],
    environment: str = "staging",
    metadata: dict[str, str] | None = None,
) -> str:
    """A deployment of the ``web`` service, submitted and admitted (as the queen would) in ``journal``."""
    request = DeploymentRequest(
        artifact=Artifact(name="web", version=version, command=["true"], metadata=metadata or {}),
        strategy=Strategy.model_validate(strategy),
        environment=environment,
        platform=PlatformConfig(type="local"),
    )
    journal.submit(deployment_id, request, actor="test")
    journal.append(deployment_id, EventKind.ADMITTED, {})
    return deployment_id


def drive(
    reconciler: Any,
    clock: FakeClock,
    journal: Journal,
    deployment_id: str,
    until: Any = None,
    steps: int = 5_000,
) -> Phase:
    """Reconcile with the fake clock until the deployment ends, ``until(state)`` holds, or ``steps`` ran."""
    for _ in range(steps):
        if until is not None and until(journal.state(deployment_id)):
            break
        delay = reconciler.reconcile()
        if delay is None:
            break
        clock.sleep(delay)
    return journal.state(deployment_id).phase()
