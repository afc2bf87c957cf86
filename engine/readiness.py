"""Environment readiness (DO-001): can this deployment go to its environment on this platform, said before any
change; how the environment's endpoints are served; and the environment's status over time.

Plain logic. What is asked of a platform is what its adapter declared (``PlatformCapabilities``), never
probed: TLS where ``security.tlsRequired``, a NetworkPolicy where ``security.networkPolicy.enabled``, replicas
within ``resources.minReplicas``/``maxReplicas``. Room for the replicas is the adapter's report
(``CapacityPool``) compared in engine/resources.py.

An environment's status (ready, not ready, capacity short) is a record; each change of it is appended to the
journal's chain as an ``environment_status`` event of subject ``environment:<name>``, then handed to
``notify_environment_status``, the one place alerting hooks into (``subscribe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from pydantic import Field

from engine.journal import Journal
from engine.models import (
    DeploymentRequest,
    Environment,
    Model,
    PlatformCapabilities,
    ReplicaResources,
    Target,
)
from engine.platform import CapacityPool, NetworkPolicySpec, PlatformAdapter, Serving, TlsMaterial
from engine.resources import replica_limit_problem, shortages, unchecked, unenforced
from engine.state import EventKind

log = logging.getLogger(__name__)
STATUS_RECORD = "environment_status"


# --------------------------------------------------------------------------------------------
# What the environment asks of the platform
# --------------------------------------------------------------------------------------------
def serving_for(environment: Environment) -> Serving:
    """How the environment's endpoints are served: HTTPS with its certificate when ``tlsRequired``, a
    NetworkPolicy when ``networkPolicy.enabled``; plain and open otherwise."""
    security = environment.security
    tls = None
    if security.tls_required and security.tls.certificate and security.tls.key:
        tls = TlsMaterial(certificate=security.tls.certificate, key=security.tls.key, ca=security.tls.ca)
    policy = None
    if security.network_policy.enabled:
        gateway = security.network_policy.gateway
        policy = NetworkPolicySpec(
            gateway_name=gateway.name if gateway else None,
            gateway_namespace=gateway.namespace if gateway else None,
            allowed_namespaces=list(security.network_policy.allowed_namespaces),
        )
    return Serving(tls=tls, network_policy=policy)


def with_capabilities(request: DeploymentRequest, capabilities: PlatformCapabilities) -> DeploymentRequest:
    """The governed request with its platform's declared capabilities recorded in its governance."""
    if request.governance is None:
        return request
    governance = request.governance.model_copy(update={"capabilities": capabilities})
    return request.model_copy(update={"governance": governance})


def declared_problems(
    environment: Environment, platform: str, capabilities: PlatformCapabilities, replicas: int
) -> list[str]:
    """What makes the deployment impossible, from the settings and the platform's declared capabilities
    alone (before any change, before even asking the platform anything): each names the platform and the
    setting."""
    where = f"environments.{environment.name}"
    security = environment.security
    problems = []
    if security.tls_required and not capabilities.serves_tls:
        why = "; ".join(note for note in capabilities.notes if "TLS" in note or "HTTPS" in note)
        problems.append(
            f"platform '{platform}' cannot serve TLS, and {where}.security.tlsRequired is true"
            + (f" ({why})" if why else "")
        )
    elif security.tls_required and not capabilities.tls_by_provider and security.tls.certificate is None:
        problems.append(
            f"{where}.security.tlsRequired is true but {where}.security.tls has no certificate and key"
        )
    if security.network_policy.enabled and not capabilities.network_policy:
        problems.append(
            f"platform '{platform}' cannot enforce {where}.security.networkPolicy (enabled): "
            "only kubernetes writes NetworkPolicies"
        )
    limit = replica_limit_problem(environment, replicas)
    if limit and not capabilities.scales_itself:
        problems.append(limit)
    return problems


def readiness_notes(environment: Environment, platform: str, capabilities: PlatformCapabilities) -> list[str]:
    """What the platform will not do of what the environment asks, said plainly (journaled with the
    deployment): limits it does not enforce, room it cannot check, a certificate that is the provider's."""
    need = environment.resources.per_replica
    notes = unenforced(need, capabilities, platform) + unchecked(need, capabilities, platform)
    if environment.security.tls_required and capabilities.tls_by_provider:
        notes.append(
            f"{platform} serves HTTPS with the provider's certificate; "
            f"environments.{environment.name}.security.tls is not used there"
        )
    return notes


def needs_room(need: ReplicaResources) -> bool:
    return any(value is not None for value in (need.cpu, need.memory, need.disk))


# --------------------------------------------------------------------------------------------
# The environment's status over time
# --------------------------------------------------------------------------------------------
class EnvironmentStatus(str, Enum):
    READY = "ready"
    NOT_READY = "not_ready"
    CAPACITY_SHORT = "capacity_short"


class EnvironmentStatusChange(Model):
    environment: str
    status: EnvironmentStatus
    previous: EnvironmentStatus | None = None
    reason: str = ""
    by: str = "system"
    at: float = Field(default_factory=time.time)


StatusListener = Callable[[EnvironmentStatusChange], None]
_LISTENERS: list[StatusListener] = []


def subscribe(listener: StatusListener) -> None:
    """Be told of every status change recorded in this process (alerting hooks in here)."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)


def notify_environment_status(change: EnvironmentStatusChange) -> None:
    """The one function alerting hooks into: logged, then handed to every subscriber. A subscriber that
    fails does not stop the others, nor the deployment that saw the change."""
    level = logging.INFO if change.status is EnvironmentStatus.READY else logging.WARNING
    log.log(level, "environment %s is %s: %s", change.environment, change.status.value, change.reason)
    for listener in list(_LISTENERS):
        try:
            listener(change)
        except Exception:  # an alert channel's failure is its own; the status is journaled already
            log.exception("environment status listener %r failed", listener)


def record_environment_status(
    journal: Journal, environment: str, status: EnvironmentStatus, reason: str, by: str
) -> EnvironmentStatusChange | None:
    """Record the environment's status; when it changed, journal the change (an event in the chain) and
    notify. Returns the change, or None when the status was already that. Safe from several processes:
    the record is read and written in one transaction, so one transition is journaled once."""
    seen: dict[str, Any] = {}

    def change(before: dict[str, Any] | None) -> dict[str, Any]:
        seen["before"] = before
        return {"environment": environment, "status": status.value, "reason": reason, "by": by}

    previous_status: EnvironmentStatus | None = None
    current = journal.record(STATUS_RECORD, environment)
    if current is not None and current.get("status") == status.value:
        return None  # unchanged: no write at all (a runner checks at every deployment)
    journal.update_record(STATUS_RECORD, environment, change)
    before = seen.get("before")
    if before is not None and before.get("status") == status.value:
        return None  # another process recorded the same change meanwhile
    if before is not None:
        previous_status = EnvironmentStatus(before["status"])
    made = EnvironmentStatusChange(
        environment=environment, status=status, previous=previous_status, reason=reason, by=by
    )
    journal.append_event(
        f"environment:{environment}", EventKind.ENVIRONMENT_STATUS, made.model_dump(mode="json"), actor=by
    )
    notify_environment_status(made)
    return made


def environment_status(journal: Journal, environment: str) -> EnvironmentStatusChange | None:
    """The status last recorded, or None when none was."""
    record = journal.record(STATUS_RECORD, environment)
    if record is None:
        return None
    return EnvironmentStatusChange(
        environment=environment,
        status=EnvironmentStatus(record["status"]),
        reason=record.get("reason", ""),
        by=record.get("by", ""),
    )


# --------------------------------------------------------------------------------------------
# On demand (DO-001): is the environment ready for N replicas on this platform, right now?
# --------------------------------------------------------------------------------------------
class ReadinessReport(Model):
    environment: str
    platform: str
    replicas: int
    ready: bool
    room_checked: bool = Field(default=False, description="The platform was asked for room (resources set)")
    problems: list[str] = Field(default_factory=list, description="Why a deployment would be refused")
    notes: list[str] = Field(default_factory=list, description="What the platform will not do, said plainly")
    room: list[CapacityPool] = Field(default_factory=list, description="What the platform reported")


def assess(environment: Environment, adapter: PlatformAdapter, replicas: int) -> ReadinessReport:
    """Declared capabilities, then connectivity, then room for ``replicas`` new replicas: what a deployment
    of that size would meet before its first change. Changes nothing on the platform."""
    capabilities = adapter.capabilities
    problems = declared_problems(environment, adapter.platform, capabilities, replicas)
    room: list[CapacityPool] = []
    checked = False
    if not problems:
        adapter.validate()
        need = environment.resources.per_replica
        if needs_room(need):
            room = adapter.capacity(Target(service="readiness", environment=environment.name), replicas)
            problems, checked = shortages(environment.name, need, room), True
    return ReadinessReport(
        environment=environment.name,
        platform=adapter.platform,
        replicas=replicas,
        ready=not problems,
        room_checked=checked,
        problems=problems,
        notes=readiness_notes(environment, adapter.platform, capabilities),
        room=room,
    )
