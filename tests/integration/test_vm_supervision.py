"""Supervision at rest on the vm platform: two real SSH daemons on loopback as hosts, a real HAProxy."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import create_platform
from tests.integration.environments import HOSTS, SshHosts, routed_scenario_env, sample_process
from tests.integration.scenarios import Harness
from tests.integration.supervision_checks import LiveService, SupervisionAtRest, deploy_first
from tests.integration.test_vm_platform import ssh_hosts
from tests.integration.test_vm_scenarios import ENVIRONMENT, tear_down

pytestmark = pytest.mark.integration

__all__ = ["ssh_hosts"]  # a module-scoped fixture: starts the two SSH daemons

SERVICE = "heal-vm"
# Ports of their own (vm scenarios: 18300-18499 / 9300-9399; benchmarks/platforms.py: 17000-17299).
FRONTEND_PORTS = [17400, 17499]
REPLICA_PORT = 9500  # host a takes 9500-9549, host b 9550-9599


class TestVmSupervision(SupervisionAtRest):
    @pytest.fixture
    def live_service(self, tmp_path: Path, ssh_hosts: SshHosts) -> Iterator[LiveService]:
        """A first revision (one replica per host) deployed by the engine; everything removed after."""
        roots = tmp_path / "hosts"
        config = ssh_hosts.scenario_config(roots, tmp_path / "state", REPLICA_PORT, FRONTEND_PORTS)
        env = routed_scenario_env(
            config, sample_process, tmp_path, replicas=len(HOSTS), environment=ENVIRONMENT
        )
        harness = Harness(env, SERVICE)

        def kill_process(index: int) -> str:
            platform = create_platform(config)
            try:
                [victim] = [
                    r for r in platform.backend.list_replicas(harness.target, "1-0-0") if r.index == index
                ]
            finally:
                platform.close()
            os.kill(int(victim.ident.rsplit("pid-", 1)[1]), signal.SIGKILL)  # the hosts are this machine
            return victim.ident

        try:
            yield LiveService(harness, config, deploy_first(harness), kill_process)
        finally:
            tear_down(config, roots, tmp_path / "state" / "vm" / "haproxy", (SERVICE,))
