"""Supervision at rest on the docker platform: containers of a real Docker engine behind a real HAProxy.

The supervisor (engine/supervision.py, as DO-001 runs it: rounds in a thread of their own, default settings)
watches a live revision deployed by the engine; a killed HAProxy and a killed container are brought back.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from adapters.docker_backend import LABEL_INDEX
from engine.models import Phase, PlatformConfig, Target
from engine.state import EventKind
from engine.supervision import SupervisionSettings
from examples.traffic import TrafficGenerator
from tests.integration.environments import (
    docker_scenario_config,
    labelled_containers,
    routed_scenario_env,
    router_process,
    sample_container,
    serves,
    supervising,
    wait_for,
)
from tests.integration.scenarios import FIRST, Harness
from tests.integration.test_docker_platform import docker_engine
from tests.integration.test_docker_scenarios import tear_down

pytestmark = pytest.mark.integration

__all__ = ["docker_engine"]  # a module-scoped fixture: starts the engine and builds the images

SERVICE = "heal-docker"
# Ports of their own (docker scenarios: 18100-18299 / 30000-32999; docker platform: 18900-18999).
FRONTEND_PORTS = [18300, 18399]
REPLICA_PORTS = [33000, 34999]
HEAL_DEADLINE_S = 90.0  # generous: only "never" fails; benchmarks/self_heal.py measures how fast


@pytest.fixture
def live(tmp_path: Path, docker_engine: Any) -> Iterator[tuple[Harness, PlatformConfig, str]]:
    """A first revision (2 containers) deployed by the engine; everything removed and checked afterwards."""
    config = docker_scenario_config(tmp_path / "state", FRONTEND_PORTS, REPLICA_PORTS)
    environment = f"dk-{uuid.uuid4().hex[:8]}"
    harness = Harness(
        routed_scenario_env(config, sample_container, tmp_path, environment=environment), SERVICE
    )
    try:
        first = harness.deploy("1.0.0", FIRST)
        assert first.phase() is Phase.SUCCEEDED, first.status()
        assert first.address is not None
        yield harness, config, first.address
    finally:
        tear_down(config, environment, tmp_path / "state" / "docker" / "haproxy", (SERVICE,))


def drifts(harness: Harness) -> list[dict[str, Any]]:
    live = harness.journal.deployments()[-1].deployment_id
    return [e.data for e in harness.journal.events(live) if e.kind is EventKind.DRIFT]


def replica_up(config: PlatformConfig, target: Target, index: int, old_id: str) -> bool:
    """A new container runs as replica ``index`` and the router's own health check finds it up."""
    platform: Any = create_platform(config)
    try:
        [replica] = [r for r in platform.backend.list_replicas(target, "1-0-0") if r.index == index]
        [live] = [r for r in platform.live_state(target, "1-0-0", deep=True).replicas if r.index == index]
    finally:
        platform.close()
    return replica.ident != old_id and live.alive and live.healthy is True


def test_a_killed_router_serves_again(live: tuple[Harness, PlatformConfig, str]) -> None:
    harness, config, address = live
    with supervising(harness.journal, SupervisionSettings()):
        pid, _ = router_process(Path(config.settings["stateDir"]), "docker", harness.target)
        os.kill(pid, signal.SIGKILL)
        wait_for("the service to serve again", lambda: serves(address), HEAL_DEADLINE_S)
        wait_for("the drift in the journal", lambda: bool(drifts(harness)), 10)
    [drift] = drifts(harness)
    assert drift["subject"] == "router" and drift["platform"] == "docker"
    assert "journaled weights {'1-0-0': 100}" in drift["done"]


def test_a_killed_container_is_replaced_without_a_failed_request(
    live: tuple[Harness, PlatformConfig, str],
) -> None:
    harness, config, address = live
    containers = labelled_containers(SERVICE, harness.target.environment)
    [victim] = [c for c in containers if c.labels[LABEL_INDEX] == "0"]
    with supervising(harness.journal, SupervisionSettings()):
        traffic = TrafficGenerator(address + "/", rps=40, threads=4, max_seconds=300).start()
        try:
            wait_for("traffic to flow", lambda: TrafficGenerator.total(traffic.snapshot()) >= 20)
            victim.kill()
            wait_for(
                "replica 0 replaced and up in the router",
                lambda: replica_up(config, harness.target, 0, victim.id[:12]),
                HEAL_DEADLINE_S,
            )
            after = TrafficGenerator.total(traffic.snapshot())
            wait_for(
                "traffic after the replacement",
                lambda: TrafficGenerator.total(traffic.snapshot()) >= after + 20,
            )
        finally:
            counts = traffic.stop()
    assert TrafficGenerator.failed(counts) == 0, counts
    [drift] = drifts(harness)
    assert drift["subject"] == "replicas" and "replica 0" in drift["found"]
    assert drift["done"] == "started again: 2/2 running"
