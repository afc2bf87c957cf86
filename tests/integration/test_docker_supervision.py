"""Supervision at rest on the docker platform: containers of a real Docker engine behind a real HAProxy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.docker_backend import LABEL_INDEX
from tests.integration.environments import (
    docker_scenario_config,
    labelled_containers,
    routed_scenario_env,
    sample_container,
)
from tests.integration.scenarios import Harness
from tests.integration.supervision_checks import LiveService, SupervisionAtRest, deploy_first
from tests.integration.test_docker_platform import docker_engine
from tests.integration.test_docker_scenarios import tear_down

pytestmark = pytest.mark.integration

__all__ = ["docker_engine"]  # a module-scoped fixture: starts the engine and builds the images

SERVICE = "heal-docker"
# Ports of their own (docker scenarios: 18100-18299 / 30000-32999; benchmarks/platforms.py: 17000-17299).
FRONTEND_PORTS = [17300, 17399]
REPLICA_PORTS = [33000, 34999]


class TestDockerSupervision(SupervisionAtRest):
    @pytest.fixture
    def live_service(self, tmp_path: Path, docker_engine: Any) -> Iterator[LiveService]:
        """A first revision (2 containers) deployed by the engine; everything removed and checked after."""
        config = docker_scenario_config(tmp_path / "state", FRONTEND_PORTS, REPLICA_PORTS)
        environment = f"dk-{uuid.uuid4().hex[:8]}"
        env = routed_scenario_env(config, sample_container, tmp_path, environment=environment)
        harness = Harness(env, SERVICE)

        def kill_container(index: int) -> str:
            containers = labelled_containers(SERVICE, environment)
            [victim] = [c for c in containers if c.labels[LABEL_INDEX] == str(index)]
            victim.kill()
            return str(victim.id)[:12]

        try:
            yield LiveService(harness, config, deploy_first(harness), kill_container)
        finally:
            tear_down(config, environment, tmp_path / "state" / "docker" / "haproxy", (SERVICE,))
