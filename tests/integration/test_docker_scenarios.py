"""The platform scenarios on the docker platform: containers of a real Docker engine behind a real HAProxy.

Replicas are containers of ``local/sample-service:1`` (built by cluster/start_docker.sh) on the host network;
live HTTP traffic goes through HAProxy. Each test uses an environment name of its own, so its containers
(named ``{service}-{environment}-{revision}-{index}``) never meet another run's; its teardown removes every
container and router it made and checks that none is left.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.docker_backend import LABEL_REVISION
from engine.models import PlatformConfig, Target
from tests.integration.environments import (
    docker_scenario_config,
    kill_surviving,
    labelled_containers,
    recorded_processes,
    remove_containers,
    remove_through_adapter,
    routed_scenario_env,
    sample_container,
)
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv
from tests.integration.test_docker_platform import docker_engine

pytestmark = pytest.mark.integration

__all__ = ["docker_engine"]  # a module-scoped fixture: starts the engine and builds the images

SERVICES = ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash")
# Ports of their own (local scenarios: 19500-19999 / 45000-47999, orchestrator: 19000-19499 / 41000-44999).
FRONTEND_PORTS = [18100, 18299]
REPLICA_PORTS = [30000, 32999]


class TestDockerScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path, docker_engine: Any) -> Iterator[ScenarioEnv]:
        config = docker_scenario_config(tmp_path / "state", FRONTEND_PORTS, REPLICA_PORTS)
        env = routed_scenario_env(
            config, sample_container, tmp_path, environment=f"dk-{uuid.uuid4().hex[:8]}"
        )
        yield env
        tear_down(config, env.environment, tmp_path / "state" / "docker" / "haproxy")

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        super().test_runner_crash_resumes_without_duplicates(scenario_env)
        # Exactly the new revision's two containers: the restarted runner made no second copy.
        containers = labelled_containers("sc-crash", scenario_env.environment)
        revisions = sorted(container.labels[LABEL_REVISION] for container in containers)
        assert revisions == ["2-0-0", "2-0-0"], [container.name for container in containers]
        assert all(container.status == "running" for container in containers)


def tear_down(
    config: PlatformConfig, environment: str, haproxy_dir: Path, services: tuple[str, ...] = SERVICES
) -> None:
    """Remove through the adapter, then insist that no container and no HAProxy of the test is left."""
    routers = recorded_processes(haproxy_dir)
    try:
        remove_through_adapter(
            config, [Target(service=service, environment=environment) for service in services]
        )
    finally:
        left_containers = [c.name for s in services for c in labelled_containers(s, environment)]
        remove_containers(left_containers)
        left_routers = kill_surviving(routers)
    assert not left_containers, f"containers left behind: {left_containers}"
    assert not left_routers, f"HAProxy processes left behind: {left_routers}"
