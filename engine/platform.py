"""The one interface every platform adapter implements, and the errors they raise.

Adapters live in ``adapters/``, one module per external system. The engine only sees this interface. Every
operation is idempotent and safe to repeat after a crash: the engine re-applies its current step after a
restart, so ``ensure_revision`` twice must not make two copies, ``remove_revision`` of something already gone
is a no-op, and ``revision_status``/``traffic`` read the platform's actual state (never a cache of intent).
"""

from __future__ import annotations

from enum import Enum
from typing import Protocol, runtime_checkable

from pydantic import Field

from engine.models import Artifact, MetricProviderConfig, Model, ReplicaResources, Target

# The capabilities an adapter declares live with the models (each request's governance records them) and are
# part of this protocol: re-exported here.
from engine.models import PlatformCapabilities as PlatformCapabilities
from engine.models import Resource as Resource


class PlatformError(Exception):
    """A permanent platform failure: fails the step (and triggers rollback when something changed)."""

    def __init__(self, platform: str, endpoint: str, cause: str) -> None:
        super().__init__(f"{platform} at {endpoint}: {cause}")
        self.platform = platform
        self.endpoint = endpoint
        self.cause = cause


class TransientPlatformError(PlatformError):
    """A failure worth retrying with bounded backoff: timeouts, 5xx, throttling."""


# --------------------------------------------------------------------------------------------
# How a target's endpoint is served, and the room a platform reports
# --------------------------------------------------------------------------------------------


class TlsMaterial(Model):
    """The environment's certificate by reference (a path, ``file:/path`` or ``env:NAME``), never the key
    itself, so that a spec can be journaled and logged; resolved only where the endpoint is served."""

    certificate: str = Field(description="PEM: the server certificate, then any intermediates")
    key: str = Field(description="PEM: its private key")
    ca: str | None = Field(default=None, description="PEM: the CA our own clients verify against")


class NetworkPolicySpec(Model):
    """Who may reach a target's replicas: a gateway's pods (None: the platform's own gateway, if it has one)
    and the pods of these namespaces."""

    gateway_name: str | None = None
    gateway_namespace: str | None = None
    allowed_namespaces: list[str] = Field(default_factory=list)


class Serving(Model):
    """How a target's endpoint is served, from its environment's settings. ``tls`` None: plain HTTP."""

    tls: TlsMaterial | None = None
    network_policy: NetworkPolicySpec | None = None


class CapacityPool(Model):
    """Room left where some of a new revision's replicas will run: a host, a VM host, a namespace quota.

    ``None`` means not limited there (or not known to be); the engine compares, the adapter only reports."""

    name: str = Field(description="Where, as said in a refusal: 'host', 'vm host web-1', 'ResourceQuota q'")
    replicas: int = Field(ge=0, description="How many of the new replicas land here")
    memory_free: int | None = None
    disk_free: int | None = None
    cpus: float | None = Field(default=None, description="The most CPU one replica can get here (cores)")
    cpu_free: float | None = Field(default=None, description="CPU left to hand out (a quota), in cores")
    pods_free: int | None = None


class RevisionSpec(Model):
    target: Target
    artifact: Artifact
    replicas: int = Field(ge=0)
    deployment_id: str = ""
    resources: ReplicaResources | None = Field(default=None, description="Per replica; None: no limits")
    serving: Serving | None = Field(default=None, description="None: the target's serving stays as it is")

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


class SupervisionMode(str, Enum):
    """What the orchestrator does about a live revision on a platform (declared by each adapter)."""

    REPAIR = "repair"  # we run the router and the replicas: a dead one is started again by us
    REPORT = "report"  # the platform heals itself (Kubernetes): its state is reported, never repaired
    NONE = "none"  # nothing of ours runs between deployments (Lambda)


class RouterLiveness(Model):
    """Our traffic router of a target, checked cheaply: its process, and on a deep check its socket."""

    running: bool
    answering: bool | None = Field(default=None, description="The runtime API answered; None: not asked")
    servers: dict[str, bool] = Field(
        default_factory=dict, description="Deep check: server address -> the router's own health check is up"
    )
    detail: str = ""


class ReplicaLiveness(Model):
    index: int
    address: str
    alive: bool = Field(description="Its process or container runs (pid + start time, container state)")
    healthy: bool | None = Field(default=None, description="The router's health check; None: not known")


class LiveState(Model):
    """The platform's actual state of one live revision, read without probing it over HTTP."""

    revision: str
    router: RouterLiveness | None = Field(default=None, description="None: no router of ours (any more)")
    replicas: list[ReplicaLiveness] = Field(default_factory=list, description="Replicas we run (REPAIR)")
    desired_replicas: int | None = Field(default=None, description="What a self-healing platform wants")
    ready_replicas: int | None = None

    @property
    def dead(self) -> list[int]:
        return [r.index for r in self.replicas if not r.alive]


@runtime_checkable
class PlatformAdapter(Protocol):
    platform: str
    supervision: SupervisionMode
    capabilities: PlatformCapabilities

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """Room for ``replicas`` more replicas of the target, where they would run (changes nothing)."""

    def validate(self) -> None:
        """Check connectivity, credentials and required features; raise PlatformError before any change."""

    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        """Create the revision or scale it to ``spec.replicas``; does not wait for readiness."""

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        """Actual state of one revision (readiness is checked for real), or None if it does not exist."""

    # Optional: ``await_ready(target, revision, within_s) -> RevisionStatus | None``, the status once the
    # revision is ready or after at most ``within_s`` (RoutedPlatform: its replicas' ports are tried every few
    # ms). A deploy step uses it when the adapter has it, and polls ``revision_status`` otherwise.

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

    def live_state(self, target: Target, revision: str, deep: bool = False) -> LiveState:
        """Cheap liveness of a live revision for supervision (pid + start time, container state; with
        ``deep`` also the router's socket and its own health checks): no HTTP probe of the replicas."""

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
    capabilities: PlatformCapabilities

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """Room for ``replicas`` more replicas, where they would run (changes nothing)."""

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

    def stop_replica(self, target: Target, revision: str, index: int) -> None:
        """Stop one replica but keep it known (as exited), so that ``ensure_replicas`` starts it again."""

    def close(self) -> None:
        """Release client resources."""


@runtime_checkable
class TrafficRouter(Protocol):
    """Splits one target's traffic over server addresses by weight and reports per-server metrics."""

    serves_tls: bool

    def ensure_frontend(
        self, target: Target, health_path: str | None = None, serving: Serving | None = None
    ) -> str:
        """Start (or find again) the router for the target; returns the address users reach. A health path
        or serving given changes the running router's (``serving`` None keeps the one in force)."""

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

    def liveness(self, target: Target, deep: bool = False) -> RouterLiveness | None:
        """Whether the target's router runs (and with ``deep``, answers, and which servers its own health
        checks find up); None when the target has no router."""

    def restart(self, target: Target) -> str:
        """Stop the router (one that runs but does not answer) and start it again from its recorded state."""


@runtime_checkable
class RepairablePlatform(PlatformAdapter, Protocol):
    """What an adapter whose ``supervision`` is REPAIR offers the supervisor beyond ``PlatformAdapter``."""

    def restore_router(self, target: Target, weights: dict[str, int], restart: bool = False) -> TrafficState:
        """Start the target's router again (``restart``: stop a hung one first) and give it ``weights``
        over the replicas that run; a revision with weight but no running replica gets no server."""

    def restart_replica(self, spec: RevisionSpec, index: int) -> RevisionStatus:
        """Replace one replica that runs but is unhealthy: stop it, start it again, register it."""

    def repair_replicas(self, spec: RevisionSpec) -> RevisionStatus | None:
        """``ensure_revision`` for the supervisor: None, and nothing left started, when the target's router
        record is gone (a removal takes it away, also one that runs while the replicas start)."""

    def repair_router(
        self, target: Target, weights: dict[str, int], restart: bool = False
    ) -> TrafficState | None:
        """``restore_router`` for the supervisor: None, and nothing started, when the router's record is
        gone."""
