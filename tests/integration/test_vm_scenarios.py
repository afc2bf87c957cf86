"""The platform scenarios on the vm platform: two real SSH daemons on loopback as hosts, a real HAProxy.

Each "host" runs examples/sample_service.py from its release folder (one replica of a revision per host, so
replica index = host index and ``replicas=2`` uses both); live HTTP traffic goes through HAProxy. Each test
gets its own host roots; its teardown removes every release, process and router it made and checks that
none is left.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from adapters.haproxy import is_same_process
from adapters.http_probe import HttpSmokeTester
from engine.models import Artifact, PlatformConfig, Target
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv
from tests.integration.test_local_scenarios import live_traffic
from tests.integration.test_vm_platform import HOSTS, SAMPLE_SERVICE, SshHosts, processes_under, ssh_hosts

pytestmark = pytest.mark.integration

__all__ = ["ssh_hosts"]  # a module-scoped fixture: starts the two SSH daemons

SERVICES = ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash")
ENVIRONMENT = "staging"
# Ports of their own (local scenarios: 19500-19999 / 45000-47999, orchestrator: 19000-19499 / 41000-44999).
FRONTEND_PORTS = [18300, 18499]
REPLICA_PORT = 9300  # host a takes 9300-9349, host b 9350-9399
PORTS_PER_HOST = 50


def sample(service: str, version: str, faulty: bool) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        command=[sys.executable, str(SAMPLE_SERVICE)],
        env={"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"},
    )


class TestVmScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path, ssh_hosts: SshHosts) -> Iterator[ScenarioEnv]:
        roots = tmp_path / "hosts"
        settings = ssh_hosts.settings(roots, REPLICA_PORT)
        settings.update(
            stateDir=str(tmp_path / "state"),
            portsPerHost=PORTS_PER_HOST,
            frontendPortRange=FRONTEND_PORTS,
            routerSlots=16,
            stopTimeout=3,
        )
        config = PlatformConfig(type="vm", settings=settings)
        env = ScenarioEnv(
            make_adapter=lambda: create_platform(config),
            platform=config,
            artifact=sample,
            traffic=live_traffic,
            journal_dir=tmp_path,
            smoke=HttpSmokeTester(),
            replicas=len(HOSTS),
            environment=ENVIRONMENT,
        )
        yield env
        tear_down(config, roots, tmp_path / "state" / "vm" / "haproxy")

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        super().test_runner_crash_resumes_without_duplicates(scenario_env)
        # One release folder per host, of the new revision: the restarted runner made no second copy, and no
        # staging folder of an interrupted upload is left.
        roots = Path(scenario_env.platform.settings["hosts"][0]["root"]).parent
        for host in HOSTS:
            releases = roots / host / f"sc-crash.{ENVIRONMENT}" / "releases"
            assert sorted(path.name for path in releases.iterdir()) == ["2-0-0"], host


def router_processes(haproxy_dir: Path) -> list[tuple[int, int]]:
    states = (json.loads(path.read_text()) for path in haproxy_dir.glob("*.json"))
    return [(state["pid"], state["start_time"]) for state in states]


def tear_down(config: PlatformConfig, roots: Path, haproxy_dir: Path) -> None:
    """Remove through the adapter, then insist that no replica process and no HAProxy of the test is left."""
    routers = router_processes(haproxy_dir)
    platform: Any = create_platform(config)
    try:
        for service in SERVICES:
            target = Target(service=service, environment=ENVIRONMENT)
            for revision in platform.list_revisions(target):
                platform.remove_revision(target, revision.revision)
            assert platform.list_revisions(target) == []
            platform.router.remove_frontend(target)
    finally:
        platform.close()
        left_replicas = processes_under(roots)
        for pid in left_replicas:
            os.kill(pid, signal.SIGKILL)
        left_routers = [pid for pid, start in routers if is_same_process(pid, start)]
        for pid in left_routers:
            os.kill(pid, signal.SIGKILL)
    assert not left_replicas, f"replica processes left behind: {left_replicas}"
    assert not left_routers, f"HAProxy processes left behind: {left_routers}"
