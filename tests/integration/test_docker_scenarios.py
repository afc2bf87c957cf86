"""The platform scenarios on the docker platform: containers of a real Docker engine behind a real HAProxy.

Replicas are containers of ``local/sample-service:1`` (built by cluster/start_docker.sh) on the host network;
live HTTP traffic goes through HAProxy. Each test uses an environment name of its own, so its containers
(named ``{service}-{environment}-{revision}-{index}``) never meet another run's; its teardown removes every
container and router it made and checks that none is left.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from adapters import create_platform
from adapters.docker_backend import LABEL_ENVIRONMENT, LABEL_REVISION, LABEL_SERVICE
from adapters.haproxy import is_same_process
from adapters.http_probe import HttpSmokeTester
from engine.models import Artifact, PlatformConfig, Target
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv
from tests.integration.test_docker_platform import SAMPLE_IMAGE, docker_engine
from tests.integration.test_local_scenarios import live_traffic

pytestmark = pytest.mark.integration

__all__ = ["docker_engine"]  # a module-scoped fixture: starts the engine and builds the images

SERVICES = ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash")
# Ports of their own (local scenarios: 19500-19999 / 45000-47999, orchestrator: 19000-19499 / 41000-44999).
FRONTEND_PORTS = [18100, 18299]
REPLICA_PORTS = [30000, 32999]


def sample(service: str, version: str, faulty: bool) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        source=f"docker://{SAMPLE_IMAGE}",
        env={"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"},
    )


class TestDockerScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path, docker_engine: Any) -> Iterator[ScenarioEnv]:
        config = PlatformConfig(
            type="docker",
            settings={
                "stateDir": str(tmp_path / "state"),
                "frontendPortRange": FRONTEND_PORTS,
                "replicaPortRange": REPLICA_PORTS,
                "routerSlots": 16,
                "stopTimeout": 2,
            },
        )
        env = ScenarioEnv(
            make_adapter=lambda: create_platform(config),
            platform=config,
            artifact=sample,
            traffic=live_traffic,
            journal_dir=tmp_path,
            smoke=HttpSmokeTester(),
            environment=f"dk-{uuid.uuid4().hex[:8]}",
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


def labelled_containers(service: str, environment: str) -> list[Any]:
    """The engine's own view (not the adapter's) of the containers of one target."""
    client = docker.from_env()
    try:
        selector = {"label": [f"{LABEL_SERVICE}={service}", f"{LABEL_ENVIRONMENT}={environment}"]}
        return list(client.containers.list(all=True, filters=selector))
    finally:
        client.close()


def remove_containers(names: list[str]) -> None:
    client = docker.from_env()
    try:
        for name in names:
            client.containers.get(name).remove(force=True)
    finally:
        client.close()


def router_processes(haproxy_dir: Path) -> list[tuple[int, int]]:
    states = (json.loads(path.read_text()) for path in haproxy_dir.glob("*.json"))
    return [(state["pid"], state["start_time"]) for state in states]


def tear_down(config: PlatformConfig, environment: str, haproxy_dir: Path) -> None:
    """Remove through the adapter, then insist that no container and no HAProxy of the test is left."""
    routers = router_processes(haproxy_dir)
    platform: Any = create_platform(config)
    try:
        for service in SERVICES:
            target = Target(service=service, environment=environment)
            for revision in platform.list_revisions(target):
                platform.remove_revision(target, revision.revision)
            platform.router.remove_frontend(target)
    finally:
        platform.close()
        left_containers = [c.name for s in SERVICES for c in labelled_containers(s, environment)]
        remove_containers(left_containers)
        left_routers = [pid for pid, start in routers if is_same_process(pid, start)]
        for pid in left_routers:
            os.kill(pid, signal.SIGKILL)
    assert not left_containers, f"containers left behind: {left_containers}"
    assert not left_routers, f"HAProxy processes left behind: {left_routers}"
