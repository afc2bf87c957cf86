"""Environment readiness and resources without any platform: quantities, the plan's peak, what is short and
how it is said, what a platform's declared capabilities refuse, the environment's status events, and the
reconciler refusing before any change (a fake platform records every call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from engine.config import EnterpriseConfig
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    Environment,
    Features,
    Governance,
    Phase,
    PlatformCapabilities,
    PlatformConfig,
    ReplicaResources,
    Resource,
    Strategy,
)
from engine.plans import build_plan
from engine.platform import CapacityPool
from engine.quantities import parse_bytes, parse_cpu, show_bytes
from engine.readiness import (
    EnvironmentStatus,
    EnvironmentStatusChange,
    assess,
    declared_problems,
    environment_status,
    record_environment_status,
    serving_for,
    subscribe,
)
from engine.reconciler import DeploymentReconciler
from engine.resources import peak_extra_replicas, shortages
from engine.state import EventKind
from tests.unit.fakes import FakeClock, FakePlatform

MiB = 2**20


# --------------------------------------------------------------------------------------------
# Quantities and settings
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cores"), [("500m", 0.5), ("0.25", 0.25), (2, 2), ("1500m", 1.5), (" 2 ", 2.0)]
)
def test_cpu_quantities(text: Any, cores: float) -> None:
    assert parse_cpu(text) == cores


@pytest.mark.parametrize(
    ("text", "size"),
    [("512Mi", 512 * MiB), ("512MiB", 512 * MiB), ("1Gi", 2**30), ("1G", 10**9), ("100k", 100_000), (42, 42)],
)
def test_byte_quantities(text: Any, size: int) -> None:
    assert parse_bytes(text) == size


def test_sizes_are_shown_for_people() -> None:
    assert (show_bytes(512 * MiB), show_bytes(300 * MiB), show_bytes(1536 * MiB)) == (
        "512 MiB",
        "300 MiB",
        "1.5 GiB",
    )


def test_resources_load_from_the_configuration_and_bad_ones_name_the_key() -> None:
    data = {
        "environments": {"production": {"resources": {"cpu": "500m", "memory": "512Mi", "maxReplicas": 4}}}
    }
    resources = EnterpriseConfig.from_mapping(data).environment("production").resources
    assert (resources.cpu, resources.memory, resources.max_replicas) == (0.5, 512 * MiB, 4)
    bad = {"environments": {"production": {"resources": {"memory": "lots"}}}}
    with pytest.raises(
        ValueError, match=r"environments\.production\.resources\.memory: 'lots' is not a size"
    ):
        EnterpriseConfig.from_mapping(bad)
    crossed = {"environments": {"production": {"resources": {"minReplicas": 5, "maxReplicas": 2}}}}
    with pytest.raises(ValueError, match=r"resources\.minReplicas: 5 is above maxReplicas \(2\)"):
        EnterpriseConfig.from_mapping(crossed)


# --------------------------------------------------------------------------------------------
# The plan's peak and what is short
# --------------------------------------------------------------------------------------------
def strategy(kind: str, replicas: int = 2, **config: Any) -> Strategy:
    key = {"canary": "canary", "blue_green": "blueGreen", "rolling": "rolling"}[kind]
    return Strategy.model_validate({"type": kind, "replicas": replicas, key: config})


def test_peak_extra_replicas_of_each_strategy() -> None:
    assert peak_extra_replicas(build_plan(strategy("canary", 3), has_stable=False), 0) == 3
    assert peak_extra_replicas(build_plan(strategy("canary", 3), has_stable=True), 3) == 3
    assert peak_extra_replicas(build_plan(strategy("blue_green", 2), has_stable=True), 2) == 2
    rolling = build_plan(strategy("rolling", 4, maxSurge=1, maxUnavailable=0), has_stable=True)
    assert peak_extra_replicas(rolling, 4) == 1  # a rolling update's surge only
    unavailable = build_plan(strategy("rolling", 4, maxSurge=0, maxUnavailable=1), has_stable=True)
    assert peak_extra_replicas(unavailable, 4) == 0


def test_a_shortage_is_said_as_what_is_needed_and_what_there_is() -> None:
    need = ReplicaResources(memory=512 * MiB, cpu=4, disk=2**30)
    pools = [CapacityPool(name="host", replicas=2, memory_free=300 * MiB, disk_free=10 * 2**30, cpus=2)]
    assert shortages("production", need, pools) == [
        "production: needs 2 x 512 MiB memory, host has 300 MiB free",
        "production: needs 4 CPU per replica, host has 2 CPU",
    ]
    quota = CapacityPool(name="ResourceQuota q in ns", replicas=3, cpu_free=1.0, pods_free=2)
    assert shortages("staging", ReplicaResources(cpu=0.5), [quota]) == [
        "staging: needs 3 x 0.5 CPU, ResourceQuota q in ns has 1 CPU free",
        "staging: needs 3 more pods, ResourceQuota q in ns allows 2",
    ]
    assert shortages("production", need, [pools[0].model_copy(update={"replicas": 0})]) == []


# --------------------------------------------------------------------------------------------
# What the environment asks of the platform
# --------------------------------------------------------------------------------------------
def environment(**settings: Any) -> Environment:
    return Environment.model_validate({"name": "production", **settings})


TLS = {"tlsRequired": True, "tls": {"certificate": "/etc/tls/server.crt", "key": "env:TLS_KEY", "ca": "/ca"}}


def test_tls_on_a_platform_that_cannot_is_refused_naming_both() -> None:
    plain = PlatformCapabilities(notes=["kubernetes: HTTPS needs a gateway (settings.gateway)"])
    problems = declared_problems(environment(security=TLS), "kubernetes", plain, 2)
    assert problems == [
        "platform 'kubernetes' cannot serve TLS, and environments.production.security.tlsRequired is true "
        "(kubernetes: HTTPS needs a gateway (settings.gateway))"
    ]
    assert (
        declared_problems(environment(security=TLS), "local", PlatformCapabilities(serves_tls=True), 2) == []
    )


def test_network_policy_and_replica_limits_are_refused_naming_the_fields() -> None:
    settings = environment(
        security={"networkPolicy": {"enabled": True, "allowedNamespaces": ["shop"]}},
        resources={"maxReplicas": 3, "minReplicas": 2},
    )
    problems = declared_problems(settings, "docker", PlatformCapabilities(serves_tls=True), 5)
    assert problems == [
        "platform 'docker' cannot enforce environments.production.security.networkPolicy (enabled): "
        "only kubernetes writes NetworkPolicies",
        "strategy.replicas: 5 is above environments.production.resources.maxReplicas (3)",
    ]
    below = declared_problems(settings, "kubernetes", PlatformCapabilities(network_policy=True), 1)
    assert below == ["strategy.replicas: 1 is below environments.production.resources.minReplicas (2)"]


def test_serving_follows_the_environment() -> None:
    settings = environment(
        security={
            **TLS,
            "networkPolicy": {
                "enabled": True,
                "allowedNamespaces": ["monitoring"],
                "gateway": {"name": "public", "namespace": "gateways"},
            },
        }
    )
    serving = serving_for(settings)
    assert serving.tls is not None and (serving.tls.certificate, serving.tls.key, serving.tls.ca) == (
        "/etc/tls/server.crt",
        "env:TLS_KEY",
        "/ca",
    )
    assert serving.network_policy is not None
    assert (serving.network_policy.gateway_name, serving.network_policy.allowed_namespaces) == (
        "public",
        ["monitoring"],
    )
    assert serving_for(environment()).tls is None and serving_for(environment()).network_policy is None


# --------------------------------------------------------------------------------------------
# The environment's status
# --------------------------------------------------------------------------------------------
def test_a_status_change_is_journaled_once_and_handed_to_alerting(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    seen: list[EnvironmentStatusChange] = []
    subscribe(seen.append)

    def failing(change: EnvironmentStatusChange) -> None:
        raise RuntimeError("the alert channel is down")

    subscribe(failing)  # a failing subscriber neither stops the others nor the caller
    short = EnvironmentStatus.CAPACITY_SHORT
    first = record_environment_status(journal, "production", short, "needs 2 x 1 GiB", "runner-1")
    again = record_environment_status(journal, "production", short, "needs 2 x 1 GiB", "runner-2")
    back = record_environment_status(journal, "production", EnvironmentStatus.READY, "room", "runner-3")
    assert first is not None and again is None and back is not None and back.previous is short
    events = [e for e in journal.events("environment:production") if e.kind is EventKind.ENVIRONMENT_STATUS]
    assert [e.data["status"] for e in events] == ["capacity_short", "ready"]
    assert [c.status for c in seen if c.environment == "production"] == [short, EnvironmentStatus.READY]
    recorded = environment_status(journal, "production")
    assert recorded is not None and recorded.status is EnvironmentStatus.READY
    assert journal.verify_chain() == (True, None)


# --------------------------------------------------------------------------------------------
# The reconciler: refused before any change, limits and serving passed down
# --------------------------------------------------------------------------------------------
class World:
    def __init__(self, tmp_path: Path, capabilities: PlatformCapabilities, pools: list[CapacityPool]) -> None:
        self.clock = FakeClock()
        self.platform = FakePlatform(clock=self.clock, capabilities=capabilities, pools=pools)
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)

    def run(self, settings: Environment, replicas: int = 2) -> str:
        governance = Governance(environment=settings, features=Features())
        request = DeploymentRequest(
            artifact=Artifact(name="web", version="1.0.0", command=["true"]),
            strategy=Strategy.model_validate({"type": "canary", "replicas": replicas}),
            environment=settings.name,
            platform=PlatformConfig(type="local"),
            governance=governance,
        )
        self.journal.submit("d1", request, actor="test")
        self.journal.append("d1", EventKind.ADMITTED, {})
        reconciler = DeploymentReconciler(self.journal, "d1", lambda _: self.platform, clock=self.clock)
        for _ in range(1000):
            if reconciler.reconcile() is None:
                break
            self.clock.sleep(1.0)
        return "d1"


LIMITS = PlatformCapabilities(serves_tls=True, limits=frozenset(Resource), capacity=frozenset(Resource))


def test_a_deployment_that_cannot_fit_is_refused_before_any_change(tmp_path: Path) -> None:
    pools = [CapacityPool(name="host", replicas=0, memory_free=300 * MiB, disk_free=2**40, cpus=2)]
    world = World(tmp_path, LIMITS, pools)
    deployment = world.run(environment(resources={"memory": "512Mi"}))
    state = world.journal.state(deployment)
    assert state.phase() is Phase.FAILED
    assert state.message == (
        "refused before any change: production: needs 2 x 512 MiB memory, host has 300 MiB free"
    )
    assert world.platform.calls == ["capacity x2"]  # asked for room, changed nothing
    assert not state.planned
    events = world.journal.events("environment:production")
    assert [e.data["status"] for e in events] == ["capacity_short"]


def test_tls_on_a_platform_that_does_not_serve_it_is_refused_before_anything(tmp_path: Path) -> None:
    world = World(tmp_path, PlatformCapabilities(), [])
    state = world.journal.state(world.run(environment(security=TLS)))
    assert state.phase() is Phase.FAILED
    assert "platform 'fake' cannot serve TLS, and environments.production.security.tlsRequired is true" in (
        state.message
    )
    assert world.platform.calls == []


def test_revisions_get_the_environments_limits_and_serving(tmp_path: Path) -> None:
    pools = [CapacityPool(name="host", replicas=0, memory_free=2**34, disk_free=2**40, cpus=8)]
    world = World(tmp_path, LIMITS, pools)
    specs: list[Any] = []
    ensure = world.platform.ensure_revision

    def record(spec: Any) -> Any:
        specs.append(spec)
        return ensure(spec)

    world.platform.ensure_revision = record  # type: ignore[method-assign]
    settings = environment(security=TLS, resources={"cpu": "250m", "memory": "128Mi"})
    state = world.journal.state(world.run(settings))
    assert state.phase() is Phase.SUCCEEDED, state.message
    assert specs and all(s.resources == ReplicaResources(cpu=0.25, memory=128 * MiB) for s in specs)
    assert all(s.serving is not None and s.serving.tls is not None for s in specs)
    assert world.platform.calls[0] == "capacity x2"


def test_what_a_platform_does_not_enforce_is_said_in_the_deployments_events(tmp_path: Path) -> None:
    unconfined = PlatformCapabilities(
        capacity=frozenset(Resource), notes=["local replicas: not confined: read-only file system"]
    )
    pools = [CapacityPool(name="host", replicas=0, memory_free=2**34, disk_free=2**40, cpus=8)]
    world = World(tmp_path, unconfined, pools)
    deployment = world.run(environment(resources={"cpu": 1, "memory": "64Mi"}))
    notes = [e.data["message"] for e in world.journal.events(deployment) if e.kind is EventKind.NOTE]
    assert notes == [
        "fake does not limit cpu and memory per replica (local replicas: not confined: read-only file system)"
    ]


def test_replicas_outside_the_limits_are_refused_in_the_request() -> None:
    with pytest.raises(ValidationError):
        Environment.model_validate({"name": "production", "resources": {"maxReplicas": 0}})


def test_readiness_on_demand_reports_room_and_what_is_not_done(tmp_path: Path) -> None:
    clock = FakeClock()
    room = [CapacityPool(name="host", replicas=0, memory_free=300 * MiB, disk_free=2**40, cpus=2)]
    unconfined = PlatformCapabilities(capacity=frozenset(Resource), notes=["not confined: no cgroups"])
    platform = FakePlatform(clock=clock, capabilities=unconfined, pools=room)
    report = assess(environment(resources={"memory": "128Mi"}), platform, replicas=2)
    assert report.ready and report.room_checked and report.problems == []
    assert report.notes == ["fake does not limit memory per replica (not confined: no cgroups)"]
    short = assess(environment(resources={"memory": "256Mi"}), platform, replicas=2)
    assert not short.ready
    assert short.problems == ["production: needs 2 x 256 MiB memory, host has 300 MiB free"]
    unchecked = assess(environment(), platform, replicas=2)
    assert unchecked.ready and not unchecked.room_checked
    assert [call for call in platform.calls if call.startswith("ensure")] == []  # nothing changed
