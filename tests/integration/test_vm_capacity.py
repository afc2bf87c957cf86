"""Room on VM hosts read over real SSH (two SSH daemons on 127.0.0.1, cluster/start_sshd.sh): free memory
(``free -b``) and free disk under each host's root (``df``), compared with what the host itself says; a
deployment whose memory need does not fit on a host is refused before any change, naming the host."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import create_platform
from adapters.localhost import memory_available
from engine.models import Environment, Features, Governance, Phase, PlatformConfig, Target
from engine.quantities import show_bytes
from tests.integration.environments import (
    HOSTS,
    SshHosts,
    remove_through_adapter,
    routed_scenario_env,
    sample_process,
)
from tests.integration.scenarios import FIRST, Harness
from tests.integration.test_vm_platform import ssh_hosts

pytestmark = pytest.mark.integration

__all__ = ["ssh_hosts"]  # a module-scoped fixture: starts the two SSH daemons

FRONTEND_PORTS = [17700, 17799]
REPLICA_PORT = 9500  # host a takes 9500-9549, host b 9550-9599
TARGET = Target(service="vm-room", environment="staging")


@pytest.fixture
def vm_config(tmp_path: Path, ssh_hosts: SshHosts) -> Iterator[PlatformConfig]:
    roots = tmp_path / "hosts"
    for host in HOSTS:
        (roots / host).mkdir(parents=True)
    config = ssh_hosts.scenario_config(roots, tmp_path / "state", REPLICA_PORT, FRONTEND_PORTS)
    yield config
    remove_through_adapter(config, [TARGET])


def test_room_on_each_host_is_read_over_ssh(vm_config: PlatformConfig) -> None:
    adapter = create_platform(vm_config)
    try:
        pools = adapter.capacity(TARGET, 1)
    finally:
        adapter.close()
    assert [pool.name for pool in pools] == [f"vm host {host}" for host in HOSTS]
    assert [pool.replicas for pool in pools] == [1, 0]  # one replica of a revision per host, the first first
    here = memory_available()
    root = Path(vm_config.settings["hosts"][0]["root"])
    for pool in pools:
        # Both "hosts" are this machine: what SSH reports is what this machine has (give or take churn).
        assert pool.memory_free is not None and abs(pool.memory_free - here) < 0.25 * here
        assert pool.disk_free is not None and abs(pool.disk_free - shutil.disk_usage(root).free) < 2**30
        assert pool.cpus is not None and pool.cpus >= 1


def test_a_host_without_room_refuses_the_deployment(vm_config: PlatformConfig, tmp_path: Path) -> None:
    too_much = memory_available() + 4 * 2**30
    environment = Environment.model_validate({"name": "staging", "resources": {"memory": too_much}})
    env = routed_scenario_env(
        vm_config,
        sample_process,
        tmp_path,
        replicas=len(HOSTS),
        governance=Governance(environment=environment, features=Features()),
    )
    state = Harness(env, TARGET.service).deploy("1.0.0", FIRST)
    assert state.phase() is Phase.FAILED, state.status()
    need = show_bytes(too_much)
    assert state.message.startswith(
        f"refused before any change: staging: needs 1 x {need} memory, vm host host-a has "
    )
    assert "vm host host-b has " in state.message
    roots = Path(vm_config.settings["hosts"][0]["root"]).parent
    assert not any((roots / host / TARGET.key).exists() for host in HOSTS)  # nothing reached the hosts
