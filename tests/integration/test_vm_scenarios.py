"""The platform scenarios on the vm platform: two real SSH daemons on loopback as hosts, a real HAProxy.

Each "host" runs examples/sample_service.py from its release folder (one replica of a revision per host, so
replica index = host index and ``replicas=2`` uses both); live HTTP traffic goes through HAProxy. Each test
gets its own host roots; its teardown removes every release, process and router it made and checks that
none is left.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import PlatformConfig, Target
from tests.integration.environments import (
    HOSTS,
    SshHosts,
    kill_pids,
    kill_surviving,
    processes_under,
    recorded_processes,
    remove_through_adapter,
    routed_scenario_env,
    sample_process,
)
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv
from tests.integration.test_vm_platform import ssh_hosts

pytestmark = pytest.mark.integration

__all__ = ["ssh_hosts"]  # a module-scoped fixture: starts the two SSH daemons

SERVICES = ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash")
ENVIRONMENT = "staging"
# Ports of their own (local scenarios: 19500-19999 / 45000-47999, orchestrator: 19000-19499 / 41000-44999).
FRONTEND_PORTS = [18300, 18499]
REPLICA_PORT = 9300  # host a takes 9300-9349, host b 9350-9399


class TestVmScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path, ssh_hosts: SshHosts) -> Iterator[ScenarioEnv]:
        roots = tmp_path / "hosts"
        config = ssh_hosts.scenario_config(roots, tmp_path / "state", REPLICA_PORT, FRONTEND_PORTS)
        yield routed_scenario_env(
            config, sample_process, tmp_path, replicas=len(HOSTS), environment=ENVIRONMENT
        )
        tear_down(config, roots, tmp_path / "state" / "vm" / "haproxy")

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        super().test_runner_crash_resumes_without_duplicates(scenario_env)
        # One release folder per host, of the new revision: the restarted runner made no second copy, and no
        # staging folder of an interrupted upload is left.
        roots = Path(scenario_env.platform.settings["hosts"][0]["root"]).parent
        for host in HOSTS:
            releases = roots / host / f"sc-crash.{ENVIRONMENT}" / "releases"
            assert sorted(path.name for path in releases.iterdir()) == ["2-0-0"], host


def tear_down(
    config: PlatformConfig,
    roots: Path,
    haproxy_dir: Path,
    services: tuple[str, ...] = SERVICES,
    environment: str = ENVIRONMENT,
) -> None:
    """Remove through the adapter, then insist that no replica process and no HAProxy of the test is left."""
    routers = recorded_processes(haproxy_dir)
    targets = [Target(service=service, environment=environment) for service in services]
    try:
        remove_through_adapter(config, targets, check_gone=True)
    finally:
        left_replicas = processes_under(roots)
        kill_pids(left_replicas)
        left_routers = kill_surviving(routers)
    assert not left_replicas, f"replica processes left behind: {left_replicas}"
    assert not left_routers, f"HAProxy processes left behind: {left_routers}"
