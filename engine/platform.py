"""The one interface every platform adapter implements, and the errors they raise.

Adapters live in ``adapters/``, one module per external system. The engine only sees this interface. Every
operation is idempotent and safe to repeat after a crash: the engine re-applies its current step after a
restart, so ``ensure_revision`` twice must not make two copies, ``remove_revision`` of something already gone
is a no-op, and ``revision_status``/``traffic`` read the platform's actual state (never a cache of intent).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import Field

from engine.models import Artifact, MetricProviderConfig, Model, Target


class PlatformError(Exception):
    """A permanent platform failure: fails the step (and triggers rollback when something changed)."""

    def __init__(self, platform: str, endpoint: str, cause: str) -> None:
        super().__init__(f"{platform} at {endpoint}: {cause}")
        self.platform = platform
        self.endpoint = endpoint
        self.cause = cause


class TransientPlatformError(PlatformError):
    """A failure worth retrying with bounded backoff: timeouts, 5xx, throttling."""


class RevisionSpec(Model):
    target: Target
    artifact: Artifact
    replicas: int = Field(ge=0)
    deployment_id: str = ""

    @property
    def revision(self) -> str:
        return self.artifact.revision


class RevisionStatus(Model):
    """The platform's actual state of one revision of a target."""

    revision: str
    desired_replicas: int
    ready_replicas: int
    running_replicas: int
    endpoints: list[str] = Field(default_factory=list, description="Direct addresses, e.g. 127.0.0.1:8101")
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.ready_replicas >= self.desired_replicas and self.running_replicas >= self.desired_replicas


class TrafficState(Model):
    weights: dict[str, int] = Field(default_factory=dict, description="revision -> percent of traffic")
    address: str = Field(default="", description="Where users reach the service, e.g. http://127.0.0.1:18080")


class MetricSnapshot(Model):
    """Cumulative counters of one revision at one moment; the analysis works on deltas of these."""

    at: float
    requests: int = 0
    errors: int = 0
    response_time_ms: float | None = None
    servers_up: int = 0
    servers_total: int = 0


@runtime_checkable
class PlatformAdapter(Protocol):
    platform: str

    def validate(self) -> None:
        """Check connectivity, credentials and required features; raise PlatformError before any change."""

    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        """Create the revision or scale it to ``spec.replicas``; does not wait for readiness."""

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        """Actual state of one revision (readiness is checked for real), or None if it does not exist."""

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        """Every revision of the target that exists on the platform."""

    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        """Route traffic: revision -> percent, summing to 100. Returns the weights now in force."""

    def traffic(self, target: Target) -> TrafficState:
        """The weights actually in force and the address the service is served on."""

    def remove_revision(self, target: Target, revision: str) -> None:
        """Stop and delete a revision; a no-op when it is already gone."""

    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        """Cumulative live metrics per revision (request count, 5xx count, response time, servers up).

        With ``revision``, only that revision's are needed: a platform may leave the others out (a runner
        reads its candidate's at every analysis check)."""

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        """Recent logs of a revision, for a failed deployment's report."""

    def default_metric_provider(self) -> MetricProviderConfig:
        """The metric provider that reads this platform's revisions when a strategy names none."""

    def metric_labels(self, target: Target, revision: str) -> dict[str, str]:
        """What a metric query template may name for one revision (service, environment, revision, and the
        platform's own: namespace, function, alias, version...)."""

    def close(self) -> None:
        """Release client resources (not the platform's objects)."""


# --------------------------------------------------------------------------------------------
# Platforms that run replicas behind our own traffic router (local processes, Docker, VMs) are composed
# from two smaller parts; adapters/routed.py joins them into a PlatformAdapter.
# --------------------------------------------------------------------------------------------
class Replica(Model):
    """One running instance of a revision, reachable at ``host:port``."""

    revision: str
    index: int
    host: str
    port: int
    alive: bool = True
    ident: str = Field(default="", description="Platform id: pid, container id, host name")
    health_path: str = "/health"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@runtime_checkable
class WorkloadBackend(Protocol):
    """Runs replicas of revisions; knows nothing of traffic."""

    platform: str

    def validate(self) -> None:
        """Connectivity, credentials, features; PlatformError before any change."""

    def ensure_replicas(self, spec: RevisionSpec) -> list[Replica]:
        """Start missing replicas (indexes 0..replicas-1), stop surplus ones; idempotent; no waiting."""

    def list_replicas(self, target: Target, revision: str | None = None) -> list[Replica]:
        """Replicas that actually exist (alive or exited), of one revision or all."""

    def remove_revision(self, target: Target, revision: str) -> None:
        """Stop and delete every replica of the revision; no-op when none."""

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        """Recent output of the revision's replicas."""

    def close(self) -> None:
        """Release client resources."""


@runtime_checkable
class TrafficRouter(Protocol):
    """Splits one target's traffic over server addresses by weight and reports per-server metrics."""

    def ensure_frontend(self, target: Target) -> str:
        """Start (or find again) the router for the target; returns the address users reach."""

    def set_backends(
        self, target: Target, servers: dict[str, list[str]], weights: dict[str, int]
    ) -> TrafficState:
        """servers: revision -> addresses; weights: revision -> percent. Unlisted servers get no traffic."""

    def traffic(self, target: Target) -> TrafficState:
        """Weights in force per revision (from the router itself) and the address."""

    def metrics(self, target: Target) -> dict[str, MetricSnapshot]:
        """Cumulative counters per revision from the router's per-server statistics."""

    def default_metric_provider(self) -> MetricProviderConfig:
        """The provider that reads this router's statistics (and request log)."""

    def remove_frontend(self, target: Target) -> None:
        """Stop the router of a target; no-op when not running."""
