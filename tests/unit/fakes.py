"""Fakes at our own seams (the PlatformAdapter interface, the clock) for millisecond unit tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.metrics import Capability, PlatformCounters, RevisionFigures, Window, percentile
from engine.models import MetricProviderConfig, MetricProviderType, Target
from engine.platform import (
    MetricSnapshot,
    PlatformError,
    RevisionSpec,
    RevisionStatus,
    TrafficState,
)


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
