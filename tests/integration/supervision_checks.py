"""Supervision at rest that every platform behind our HAProxy (docker, vm) must pass: the supervisor
(engine/supervision.py, rounds in a thread of their own as DO-001 runs them, default settings) watches a live
revision deployed by the engine; a killed HAProxy and a killed replica are brought back.

A platform's test module subclasses ``SupervisionAtRest`` and provides a ``live_service`` fixture. The local
platform is checked through the actors instead (tests/integration/test_self_healing.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import create_platform
from engine.models import Phase, PlatformConfig, Target
from engine.state import EventKind
from engine.supervision import SupervisionSettings
from examples.traffic import TrafficGenerator
from tests.integration.environments import router_process, serves, supervising, wait_for
from tests.integration.scenarios import FIRST, Harness

HEAL_DEADLINE_S = 90.0  # generous: only "never" fails; benchmarks/self_heal.py measures how fast


@dataclass
class LiveService:
    harness: Harness  # its journal holds the deployment that made revision 1-0-0 live (2 replicas)
    config: PlatformConfig
    address: str
    kill_replica: Callable[[int], str]  # kills replica ``index`` the platform's way; returns its old ident


def deploy_first(harness: Harness) -> str:
    """The first revision (1.0.0) through the engine; returns the address it is served on."""
    first = harness.deploy("1.0.0", FIRST)
    assert first.phase() is Phase.SUCCEEDED and first.address, first.status()
    return first.address


def drifts(harness: Harness) -> list[dict[str, Any]]:
    live = harness.journal.deployments()[-1].deployment_id
    return [e.data for e in harness.journal.events(live) if e.kind is EventKind.DRIFT]


def replaced_and_up(config: PlatformConfig, target: Target, index: int, old_ident: str) -> bool:
    """Something new runs as replica ``index`` of 1-0-0 and the router's own health check finds it up."""
    platform: Any = create_platform(config)
    try:
        replicas = [r for r in platform.backend.list_replicas(target, "1-0-0") if r.index == index]
        live = [r for r in platform.live_state(target, "1-0-0", deep=True).replicas if r.index == index]
    finally:
        platform.close()
    if not replicas or not live:  # between the old one's removal and the new one's creation
        return False
    return replicas[0].ident != old_ident and live[0].alive and live[0].healthy is True


class SupervisionAtRest:
    """Subclass and provide a ``live_service`` fixture."""

    def test_a_killed_router_serves_again(self, live_service: LiveService) -> None:
        service = live_service
        with supervising(service.harness.journal, SupervisionSettings()):
            state_dir = Path(service.config.settings["stateDir"])
            pid, _ = router_process(state_dir, service.config.type, service.harness.target)
            os.kill(pid, signal.SIGKILL)
            wait_for("the service to serve again", lambda: serves(service.address), HEAL_DEADLINE_S)
            wait_for("the drift in the journal", lambda: bool(drifts(service.harness)), 10)
        [drift] = drifts(service.harness)
        assert drift["subject"] == "router" and drift["platform"] == service.config.type
        assert "journaled weights {'1-0-0': 100}" in drift["done"]

    def test_a_killed_replica_is_replaced_without_a_failed_request(self, live_service: LiveService) -> None:
        service = live_service
        with supervising(service.harness.journal, SupervisionSettings()):
            traffic = TrafficGenerator(service.address + "/", rps=40, threads=4, max_seconds=300).start()
            try:
                wait_for("traffic to flow", lambda: TrafficGenerator.total(traffic.snapshot()) >= 20)
                old = service.kill_replica(0)
                wait_for(
                    "replica 0 replaced and up in the router",
                    lambda: replaced_and_up(service.config, service.harness.target, 0, old),
                    HEAL_DEADLINE_S,
                )
                after = TrafficGenerator.total(traffic.snapshot())
                more = lambda: TrafficGenerator.total(traffic.snapshot()) >= after + 20  # noqa: E731
                wait_for("traffic after the replacement", more)
            finally:
                counts = traffic.stop()
        assert TrafficGenerator.failed(counts) == 0, (counts, traffic.failures)
        [drift] = drifts(service.harness)
        assert drift["subject"] == "replicas" and "replica 0" in drift["found"]
        assert drift["done"] == "started again: 2/2 running"
