"""The platform scenarios through the actors: on Docker, VM, Kubernetes and Lambda, the session's embedded Ray
(queen, domain workers, a runner) drives the real adapter, and the runner is SIGKILLed mid-canary.

The other platform scenarios drive the engine in the test's own process (a "runner crash" there is a
reconciler thrown away); here a canary goes driver -> queen -> runner actor on each platform, under the
platform's live traffic, and the runner's process is killed while it analyses the first step: Ray restarts
it, it resumes from the journal and the platform, and the canary is promoted with one plan, one end, no
step done twice, nothing duplicated on the platform and no failed request.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from engine.models import Phase
from engine.state import EventKind
from tests.integration.conftest import orch_journal
from tests.integration.environments import (
    HOSTS,
    RUN,
    Cluster,
    Moto,
    Prometheus,
    SshHosts,
    docker_scenario_config,
    kubernetes_scenario_env,
    lambda_scenario_env,
    moto_server,
    routed_scenario_env,
    sample_container,
    sample_process,
)
from tests.integration.scenarios import Harness, ScenarioEnv, assert_no_downtime, canary_strategy
from tests.integration.test_docker_platform import docker_engine
from tests.integration.test_docker_scenarios import tear_down as docker_tear_down
from tests.integration.test_kubernetes_scenarios import cluster, emulator, prometheus
from tests.integration.test_vm_platform import ssh_hosts
from tests.integration.test_vm_scenarios import tear_down as vm_tear_down

pytestmark = pytest.mark.integration

__all__ = ["cluster", "docker_engine", "emulator", "prometheus", "ssh_hosts"]  # fixtures, used by name

ENV = "development"  # an environment of the session orchestrator's configuration (no approval needed)
# Ports of their own (docker scenarios 18100-18299 / 30000-32999, vm scenarios 18300-18499 / 9300-9399,
# docker supervision 33000-34999, the orchestrator 19000-19499 / 41000-44999).
DOCKER_FRONTEND_PORTS, DOCKER_REPLICA_PORTS = [16500, 16599], [35000, 35999]
VM_FRONTEND_PORTS, VM_REPLICA_PORT = [16600, 16699], 9600  # host a 9600-9649, host b 9650-9699


def pid_of(runner: Any) -> int:
    return int(ray.get(runner.pid.remote(), timeout=60))


def analysing_first_step(orch: Any, deployment_id: str, timeout_s: float) -> None:
    """Wait (bounded) until the runner analyses the canary's first weight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = orch.status(deployment_id)
        assert not status.phase.terminal, f"ended before its first analysis: {status}"
        if status.weights.get("2-0-0", 0) > 0 and status.step_index >= 1:
            return
        time.sleep(0.2)
    raise AssertionError(f"not analysing within {timeout_s}s: {orch.status(deployment_id)}")


def canary_with_runner_killed(orch: Any, env: ScenarioEnv, service: str) -> None:
    """A first revision, then a canary whose runner is SIGKILLed in its first analysis, all via the actors."""
    harness = Harness(env, service)  # reads the platform through adapters of the test's own
    replicas = {"replicas": env.replicas}
    first = orch.deploy(
        env.artifact(service, "1.0.0", False), {"type": "rolling", **replicas}, ENV, env.platform,
        timeout_s=env.deadline_s,
    )  # fmt: skip
    assert first.success, first.status
    assert harness.weights() == {"1-0-0": 100}
    with harness.live() as traffic:
        deployment_id = orch.submit(
            env.artifact(service, "2.0.0", False), {**canary_strategy(env.step_ms), **replicas}, ENV,
            env.platform,
        )  # fmt: skip
        analysing_first_step(orch, deployment_id, env.deadline_s)
        runner = ray.get_actor(orch.status(deployment_id).runner, namespace=orch.namespace)
        killed = pid_of(runner)
        os.kill(killed, signal.SIGKILL)
        result = orch.wait(deployment_id, env.deadline_s)
    assert result.status.phase is Phase.SUCCEEDED, result.status
    assert pid_of(runner) != killed, "the runner was not restarted"
    assert_no_downtime(traffic)
    events = orch_journal(orch).events(deployment_id)
    kinds = [e.kind for e in events]
    assert (kinds.count(EventKind.PLANNED), kinds.count(EventKind.FINISHED)) == (1, 1), kinds
    completed = [e.data["index"] for e in events if e.kind is EventKind.STEP_COMPLETED]
    assert completed == list(range(len(completed)))
    assert harness.weights() == {"2-0-0": 100}
    assert harness.revisions() == {"2-0-0"}


def test_docker_canary_through_the_actors(orchestrator: Any, docker_engine: Any, tmp_path: Path) -> None:
    config = docker_scenario_config(tmp_path / "state", DOCKER_FRONTEND_PORTS, DOCKER_REPLICA_PORTS)
    env = routed_scenario_env(config, sample_container, tmp_path, environment=ENV)
    service = f"act-dk-{uuid.uuid4().hex[:6]}"
    try:
        canary_with_runner_killed(orchestrator, env, service)
    finally:
        docker_tear_down(config, ENV, tmp_path / "state" / "docker" / "haproxy", (service,))


def test_vm_canary_through_the_actors(orchestrator: Any, ssh_hosts: SshHosts, tmp_path: Path) -> None:
    roots = tmp_path / "hosts"
    config = ssh_hosts.scenario_config(roots, tmp_path / "state", VM_REPLICA_PORT, VM_FRONTEND_PORTS)
    env = routed_scenario_env(config, sample_process, tmp_path, replicas=len(HOSTS), environment=ENV)
    service = f"act-vm-{uuid.uuid4().hex[:6]}"
    try:
        canary_with_runner_killed(orchestrator, env, service)
    finally:
        vm_tear_down(config, roots, tmp_path / "state" / "vm" / "haproxy", (service,), ENV)


def test_kubernetes_canary_through_the_actors(
    orchestrator: Any, cluster: Cluster, prometheus: Prometheus, tmp_path: Path
) -> None:
    env = kubernetes_scenario_env(cluster, prometheus, tmp_path, step_ms=4000, environment=ENV)
    canary_with_runner_killed(orchestrator, env, "act-k8s")  # the namespace is the test's own


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """The actors have the same dummy credentials (the session orchestrator's Ray started with them)."""
    with moto_server(tmp_path_factory.mktemp("aws-config"), f"actors-{RUN}") as running:
        yield running


def test_lambda_canary_through_the_actors(orchestrator: Any, aws: Moto, tmp_path: Path) -> None:
    env = lambda_scenario_env(aws, tmp_path, step_ms=4000, environment=ENV)
    canary_with_runner_killed(orchestrator, env, f"act-{uuid.uuid4().hex[:6]}")
