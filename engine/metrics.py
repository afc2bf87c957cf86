"""Metric providers: where an analysis window's figures come from, one small interface per system.

A provider measures revisions of a target over a window: request and 5xx counts, a response-time percentile,
per-request latency samples for the statistical comparison, and the servers up where it sees them. Each one
declares what it can report (``capabilities``); a figure it cannot give is ``None`` and the judgement says
so. Implementations live in ``adapters/`` (HAProxy, Prometheus, CloudWatch); ``PlatformCounters`` here wraps
a platform adapter's own cumulative counters, for platforms (and unit tests) that have nothing better.

A window is measured against a baseline taken at its start and journaled with it (cumulative counters: a new
runner after a crash measures the same window), or by time (providers that query a range).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol, runtime_checkable

from pydantic import Field

from engine.models import Model, Target
from engine.platform import MetricSnapshot, PlatformAdapter

# Latency samples kept per revision and window: enough for a stable p95 and a strong Mann-Whitney test, few
# enough that a judgement stays small in the journal and on the wire to the domain worker.
MAX_SAMPLES = 2_000


class Capability(str, Enum):
    COUNTS = "counts"  # requests and 5xx per revision
    LATENCY_PERCENTILE = "latency_percentile"  # a response-time percentile over the window
    LATENCY_SAMPLES = "latency_samples"  # per-request latencies (or histogram buckets) for the comparison
    SERVERS = "servers"  # servers up and in total, read with the counts


@dataclass(frozen=True)
class Window:
    """The span measured: from ``start`` (the window's journaled start) to ``end``, with its baselines.
    (A dataclass, not a model: one is made at every check and it never leaves the process.)"""

    start: float
    end: float
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    percentile: float = 95.0
    samples: bool = False  # the caller wants latency samples too (the comparison at a window's end)
    latency: bool = True  # the caller wants the latency percentile (a frequent check may not need it)

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


class RevisionFigures(Model):
    """One revision over one window; ``None`` where the provider has no such figure."""

    revision: str
    seconds: float = 0.0
    requests: int | None = None
    errors: int | None = None
    response_time_ms: float | None = None
    latency_samples: list[float] = Field(default_factory=list, description="Milliseconds, one per request")
    latency_binned: bool = Field(default=False, description="Samples are histogram bucket bounds")
    servers_up: int | None = None
    servers_total: int | None = None

    def snapshot(self, at: float) -> MetricSnapshot:
        """As the platform's health snapshot (servers up), for providers that read servers with counts."""
        return MetricSnapshot(
            at=at,
            requests=self.requests or 0,
            errors=self.errors or 0,
            servers_up=self.servers_up or 0,
            servers_total=self.servers_total or 0,
        )


@runtime_checkable
class MetricProvider(Protocol):
    name: str
    capabilities: frozenset[Capability]

    def baseline(self, target: Target, revisions: list[str]) -> dict[str, dict[str, float]]:
        """Cumulative figures at a window's start, per revision (journaled); empty for range queries."""

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        """The window's figures per revision; a revision the provider does not know is left out."""

    def close(self) -> None:
        """Release connections."""


def counter_delta(now: float, baseline: dict[str, float], name: str) -> int:
    """A cumulative counter's growth since the baseline; a counter that went backwards (its source restarted)
    counts from zero rather than going negative."""
    before = float(baseline.get(name, 0))
    return int(now - before) if now >= before else int(now)


def percentile(values: Sequence[float], percent: float) -> float | None:
    """The ``percent`` percentile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def thin(samples: list[float], limit: int = MAX_SAMPLES) -> list[float]:
    """At most ``limit`` samples, evenly spaced over the sorted list (keeps the distribution's shape)."""
    if len(samples) <= limit:
        return samples
    ordered = sorted(samples)
    step = len(ordered) / limit
    return [ordered[int(index * step)] for index in range(limit)]


class PlatformCounters:
    """``MetricProvider`` over a platform adapter's own cumulative counters (requests, 5xx, servers up).

    It has no latency percentile: a platform's mean response time is not one, so it is not reported."""

    name = "platform"
    capabilities = frozenset({Capability.COUNTS, Capability.SERVERS})

    def __init__(self, adapter: PlatformAdapter) -> None:
        self.adapter = adapter

    def _snapshots(self, target: Target, revisions: list[str]) -> dict[str, MetricSnapshot]:
        if len(revisions) == 1:
            return self.adapter.metrics(target, revisions[0])
        return self.adapter.metrics(target)

    def baseline(self, target: Target, revisions: list[str]) -> dict[str, dict[str, float]]:
        snapshots = self._snapshots(target, revisions)
        return {
            rev: {"requests": snap.requests, "errors": snap.errors}
            for rev, snap in snapshots.items()
            if rev in revisions
        }

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        figures: dict[str, RevisionFigures] = {}
        for revision, snap in self._snapshots(target, revisions).items():
            if revision not in revisions:
                continue
            base = window.baselines.get(revision, {})
            figures[revision] = RevisionFigures(
                revision=revision,
                seconds=window.seconds,
                requests=counter_delta(snap.requests, base, "requests"),
                errors=counter_delta(snap.errors, base, "errors"),
                servers_up=snap.servers_up,
                servers_total=snap.servers_total,
            )
        return figures

    def close(self) -> None:
        return None


def check_query_names(queries: dict[str, str], known: Sequence[str]) -> None:
    """A provider's ``queries`` name only metrics it reads: a typo is refused naming it."""
    unknown = sorted(set(queries) - set(known))
    if unknown:
        raise ValueError(f"metricProvider.queries.{unknown[0]}: unknown metric; known: {', '.join(known)}")
