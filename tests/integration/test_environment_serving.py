"""A TLS-required environment and per-environment resources through the real engine (reconciler + journal)
over real platforms: processes and Docker containers behind a real HAProxy, on 127.0.0.1.

- HTTPS only: the revision is served at ``https://``; a client that trusts the environment's CA gets it, a
  plain-HTTP request to the same port gets no HTTP answer, a client trusting another CA is refused; a canary
  under HTTPS traffic (every request verified against the CA) is promoted without one failed request.
- Resources: Docker containers carry ``--cpus``/``--memory`` (read back with ``docker inspect``); a memory
  need larger than the host's free memory is refused before any change: no process, container or HAProxy.
"""

from __future__ import annotations

import functools
import json
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from adapters.docker_backend import LABEL_REVISION
from adapters.localhost import memory_available
from engine.models import Environment, Features, Governance, Phase, PlatformConfig, ReplicaResources, Target
from engine.platform import PlatformAdapter, RevisionSpec
from engine.quantities import show_bytes
from engine.state import EventKind
from examples.traffic import TrafficGenerator
from tests.integration.environments import (
    docker_scenario_config,
    kill_surviving,
    labelled_containers,
    recorded_processes,
    remove_containers,
    remove_through_adapter,
    routed_scenario_env,
    sample_container,
    sample_process,
)
from tests.integration.scenarios import FIRST, Harness, ScenarioEnv, canary_strategy
from tests.integration.test_docker_platform import docker_engine
from tests.tls_certs import CertificateFiles, https_get, make_certificates, plain_http_is_not_served

pytestmark = pytest.mark.integration

__all__ = ["docker_engine"]  # a module-scoped fixture: starts the engine and builds the images

# Ports of their own (see the other scenario modules for theirs).
LOCAL_PORTS = {"frontendPortRange": [17500, 17599], "replicaPortRange": [48000, 48999]}
DOCKER_FRONTEND_PORTS, DOCKER_REPLICA_PORTS = [17600, 17699], [33000, 33999]
SERVICES = ("tls-web", "big-web", "limited-web")


def https_environment(name: str, certificates: CertificateFiles, **settings: Any) -> Governance:
    tls = {
        "certificate": str(certificates.certificate),
        "key": f"file:{certificates.key}",
        "ca": str(certificates.ca),
    }
    environment = Environment.model_validate(
        {"name": name, "security": {"tlsRequired": True, "tls": tls}, **settings}
    )
    return Governance(environment=environment, features=Features())


def plain_environment(name: str, **settings: Any) -> Governance:
    return Governance(environment=Environment.model_validate({"name": name, **settings}), features=Features())


@contextmanager
def https_traffic(ca: Path, adapter: PlatformAdapter, target: Target) -> Iterator[TrafficGenerator]:
    """Live HTTPS traffic, every request verified against ``ca``; one not answered counts as failed."""
    address = adapter.traffic(target).address
    adapter.close()
    assert address.startswith("https://"), address
    traffic = TrafficGenerator(address + "/", rps=40, threads=4, max_seconds=300, ca_file=str(ca)).start()
    try:
        yield traffic
    finally:
        traffic.stop()


def serves_https_only_and_promotes_a_canary(env: ScenarioEnv, certificates: CertificateFiles) -> None:
    harness = Harness(env, "tls-web")
    first = harness.deploy("1.0.0", FIRST)
    assert first.phase() is Phase.SUCCEEDED, first.status()
    assert first.address is not None and first.address.startswith("https://127.0.0.1:"), first.address
    port = int(first.address.rsplit(":", 1)[1])
    assert https_get(port, certificates.ca) == (200, "1.0.0")
    assert plain_http_is_not_served(port)
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(port, certificates.other_ca)

    with harness.live() as traffic:
        state = harness.deploy("2.0.0", canary_strategy(env.step_ms))
        counts = traffic.snapshot()
    assert state.phase() is Phase.SUCCEEDED, state.status()
    assert harness.weights() == {"2-0-0": 100}
    assert TrafficGenerator.total(counts, "2.0.0") > 0, counts  # the canary got HTTPS traffic
    assert TrafficGenerator.failed(counts) == 0, counts
    assert https_get(port, certificates.ca) == (200, "2.0.0")


def refused_for_lack_of_memory(env: ScenarioEnv) -> str:
    harness = Harness(env, "big-web")
    state = harness.deploy("1.0.0", FIRST)
    assert state.phase() is Phase.FAILED, state.status()
    assert not state.planned
    events = harness.journal.events("environment:" + env.environment)
    assert [e.data["status"] for e in events if e.kind is EventKind.ENVIRONMENT_STATUS] == ["capacity_short"]
    return state.message


@pytest.fixture
def certificates(tmp_path: Path) -> CertificateFiles:
    return make_certificates(tmp_path / "certs")


# --------------------------------------------------------------------------------------------
# Local processes
# --------------------------------------------------------------------------------------------
def local_config(tmp_path: Path) -> PlatformConfig:
    return PlatformConfig(type="local", settings={"stateDir": str(tmp_path / "state"), **LOCAL_PORTS})


@pytest.fixture
def local_config_cleaned(tmp_path: Path) -> Iterator[PlatformConfig]:
    config = local_config(tmp_path)
    yield config
    remove_through_adapter(config, [Target(service=s, environment="secure") for s in SERVICES])


def test_local_https_environment(
    local_config_cleaned: PlatformConfig, certificates: CertificateFiles, tmp_path: Path
) -> None:
    env = routed_scenario_env(
        local_config_cleaned,
        sample_process,
        tmp_path,
        environment="secure",
        governance=https_environment("secure", certificates),
    )
    env.traffic = functools.partial(https_traffic, certificates.ca)
    serves_https_only_and_promotes_a_canary(env, certificates)


def test_local_deployment_that_cannot_fit_starts_nothing(
    local_config_cleaned: PlatformConfig, tmp_path: Path
) -> None:
    too_much = memory_available() + 4 * 2**30
    governance = plain_environment("secure", resources={"memory": too_much})
    env = routed_scenario_env(
        local_config_cleaned, sample_process, tmp_path, environment="secure", governance=governance
    )
    message = refused_for_lack_of_memory(env)
    assert message.startswith(
        f"refused before any change: secure: needs 2 x {show_bytes(too_much)} memory, host has "
    )
    state_dir = tmp_path / "state" / "local"
    assert list((state_dir / "processes").glob("*.json")) == []  # no replica was started
    assert list((state_dir / "haproxy").glob("*.json")) == []  # nor a router


# --------------------------------------------------------------------------------------------
# Docker containers
# --------------------------------------------------------------------------------------------
@pytest.fixture
def docker_config(tmp_path: Path, docker_engine: Any) -> Iterator[tuple[PlatformConfig, str]]:
    config = docker_scenario_config(tmp_path / "state", DOCKER_FRONTEND_PORTS, DOCKER_REPLICA_PORTS)
    environment = f"dk-{uuid.uuid4().hex[:8]}"
    routers = tmp_path / "state" / "docker" / "haproxy"
    yield config, environment
    seen = recorded_processes(routers)
    try:
        remove_through_adapter(config, [Target(service=s, environment=environment) for s in SERVICES])
    finally:
        left = [c.name for s in SERVICES for c in labelled_containers(s, environment)]
        remove_containers(left)
        left_routers = kill_surviving(seen)
    assert not left and not left_routers, (left, left_routers)


def test_docker_https_environment(
    docker_config: tuple[PlatformConfig, str], certificates: CertificateFiles, tmp_path: Path
) -> None:
    config, environment = docker_config
    env = routed_scenario_env(
        config,
        sample_container,
        tmp_path,
        environment=environment,
        governance=https_environment(environment, certificates),
    )
    env.traffic = functools.partial(https_traffic, certificates.ca)
    serves_https_only_and_promotes_a_canary(env, certificates)


def docker_inspect(name: str) -> dict[str, Any]:
    """The engine's own record of a container, by the docker CLI (not the adapter's SDK)."""
    out = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, timeout=30, check=True)
    return dict(json.loads(out.stdout)[0])


def test_docker_limits_are_the_environments(
    docker_config: tuple[PlatformConfig, str], tmp_path: Path
) -> None:
    config, environment = docker_config
    governance = plain_environment(environment, resources={"cpu": "500m", "memory": "128Mi"})
    env = routed_scenario_env(
        config, sample_container, tmp_path, environment=environment, governance=governance
    )
    harness = Harness(env, "limited-web")
    state = harness.deploy("1.0.0", FIRST)
    assert state.phase() is Phase.SUCCEEDED, state.status()
    containers = labelled_containers("limited-web", environment)
    assert sorted(c.labels[LABEL_REVISION] for c in containers) == ["1-0-0", "1-0-0"]
    for container in containers:
        host = docker_inspect(container.name)["HostConfig"]
        assert (host["NanoCpus"], host["Memory"]) == (500_000_000, 128 * 2**20), container.name

    # New limits reach the running containers in place (docker update): the same containers, new values.
    adapter = create_platform(config)
    try:
        artifact = sample_container("limited-web", "1.0.0", False)
        resources = ReplicaResources(cpu=0.25, memory=256 * 2**20)
        target = Target(service="limited-web", environment=environment)
        adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=2, resources=resources)
        )
    finally:
        adapter.close()
    after = labelled_containers("limited-web", environment)
    assert sorted(c.id for c in after) == sorted(c.id for c in containers)
    for container in after:
        host = docker_inspect(container.name)["HostConfig"]
        assert (host["NanoCpus"], host["Memory"]) == (250_000_000, 256 * 2**20), container.name


def test_docker_deployment_that_cannot_fit_starts_nothing(
    docker_config: tuple[PlatformConfig, str], tmp_path: Path
) -> None:
    config, environment = docker_config
    too_much = memory_available() + 4 * 2**30
    governance = plain_environment(environment, resources={"memory": too_much})
    env = routed_scenario_env(
        config, sample_container, tmp_path, environment=environment, governance=governance
    )
    message = refused_for_lack_of_memory(env)
    assert f"needs 2 x {show_bytes(too_much)} memory, host has " in message
    assert labelled_containers("big-web", environment) == []
    assert list((tmp_path / "state" / "docker" / "haproxy").glob("*.json")) == []
