"""Fakes at our own seams (the PlatformAdapter interface, the clock) for millisecond unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, Phase, PlatformConfig, Strategy, Target
from engine.platform import (
    MetricSnapshot,
    PlatformError,
    RevisionSpec,
    RevisionStatus,
    TrafficState,
)
from engine.state import EventKind


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


@dataclass
class FakePlatform:
    """In-memory platform whose revisions serve a share of ``rps`` requests per clock second."""

    clock: FakeClock
    rps: int = 100
    error_rates: dict[str, float] = field(default_factory=dict)
    never_ready: set[str] = field(default_factory=set)
    fail_validate: str | None = None
    revisions: dict[str, FakeRevision] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    metrics_asked: list[str | None] = field(default_factory=list)
    platform: str = "fake"
    _last: float = 0.0

    def _advance(self) -> None:
        elapsed = self.clock.now() - (self._last or self.clock.now())
        self._last = self.clock.now()
        for name, weight in self.weights.items():
            revision = self.revisions.get(name)
            if revision is None:
                continue
            served = int(self.rps * elapsed * weight / 100)
            revision.requests += served
            revision.errors += int(served * self.error_rates.get(name, 0.0))

    def validate(self) -> None:
        if self.fail_validate:
            raise PlatformError("fake", "fake://endpoint", self.fail_validate)

    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        self.calls.append(f"ensure {spec.revision} x{spec.replicas}")
        current = self.revisions.setdefault(spec.revision, FakeRevision(replicas=spec.replicas))
        current.replicas = spec.replicas
        current.ready = spec.revision not in self.never_ready
        status = self.revision_status(spec.target, spec.revision)
        assert status is not None
        return status

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        current = self.revisions.get(revision)
        if current is None:
            return None
        ready = current.replicas if current.ready else 0
        return RevisionStatus(
            revision=revision,
            desired_replicas=current.replicas,
            ready_replicas=ready,
            running_replicas=current.replicas,
            endpoints=[f"127.0.0.1:{9000 + i}" for i in range(ready)],
        )

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        return [s for name in self.revisions if (s := self.revision_status(target, name)) is not None]

    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        if sum(weights.values()) != 100:
            raise ValueError("weights must sum to 100")
        self._advance()
        self.calls.append(f"traffic {sorted(weights.items())}")
        self.weights = {k: v for k, v in weights.items()}
        return self.traffic(target)

    def traffic(self, target: Target) -> TrafficState:
        return TrafficState(weights=dict(self.weights), address="http://127.0.0.1:18000")

    def remove_revision(self, target: Target, revision: str) -> None:
        self.calls.append(f"remove {revision}")
        self.revisions.pop(revision, None)
        self.weights.pop(revision, None)

    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        self._advance()
        self.metrics_asked.append(revision)
        return {
            name: MetricSnapshot(
                at=self.clock.now(),
                requests=r.requests,
                errors=r.errors,
                servers_up=r.replicas,
                servers_total=r.replicas,
            )
            for name, r in self.revisions.items()
            if revision is None or name == revision
        }

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        return ""

    def close(self) -> None:
        return None


class FakeSmoke:
    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        self.calls += 1
        return count - min(count, self.failures), min(count, self.failures)


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
