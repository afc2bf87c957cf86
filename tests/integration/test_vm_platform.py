"""The vm platform against two real SSH daemons on 127.0.0.1 (started by cluster/start_sshd.sh).

Both "hosts" are this machine reached over SSH on different ports; each gets its own root folder, so their
release folders, links and port claims are separate, and their replica port ranges differ. Every test uses its
own roots and its own service; its teardown removes what it made and checks that no replica process is left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from adapters.haproxy import HAProxyRouter
from adapters.routed import RoutedPlatform
from adapters.vm_backend import VmBackend
from engine.models import Artifact, PlatformConfig, Target
from engine.platform import (
    PlatformError,
    Replica,
    RevisionSpec,
    TransientPlatformError,
    WorkloadBackend,
)
from tests.integration.contract import ContractEnv, PlatformContract, wait_ready
from tests.integration.environments import (
    DEADLINE_S,
    HOSTS,
    SAMPLE_SERVICE,
    SshHosts,
    free_port_block,
    http_get,
    kill_surviving,
    processes_under,
    recorded_processes,
    ssh_daemons,
    wait_for,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def wait_serving(replica: Replica, version: str) -> None:
    wait_for(
        f"replica {replica.revision}/{replica.index} on {replica.address}",
        lambda: json.loads(http_get(f"http://{replica.address}/")[1]).get("version") == version,
    )


def sample_artifact(service: str, version: str, working_dir: Path | None = None, **env: str) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        command=[sys.executable, str(SAMPLE_SERVICE)],
        working_dir=str(working_dir) if working_dir else None,
        env=env,
        sha256="ab" * 32,
    )


def ensure(backend: VmBackend, target: Target, artifact: Artifact, replicas: int) -> list[Replica]:
    return backend.ensure_replicas(
        RevisionSpec(target=target, artifact=artifact, replicas=replicas, deployment_id="test-vm")
    )


# --------------------------------------------------------------------------------------------
# Fixtures: the SSH daemons (module), then per test: roots, settings, backend
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    with ssh_daemons(tmp_path_factory.mktemp("ssh")) as hosts:
        yield hosts


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    return tmp_path / "hosts"


@pytest.fixture
def target(roots: Path) -> Iterator[Target]:
    yield Target(service=f"vm-{uuid.uuid4().hex[:8]}", environment="test")
    # A last check after every other fixture's teardown: no replica process of this test may survive.
    left = processes_under(roots)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"replica processes left behind: {left}"


@pytest.fixture
def settings(ssh_hosts: SshHosts, roots: Path) -> dict[str, Any]:
    return ssh_hosts.settings(roots, free_port_block(2 * 10))


@pytest.fixture
def backend(tmp_path: Path, settings: dict[str, Any], target: Target) -> Iterator[VmBackend]:
    workload = VmBackend(tmp_path / "state", settings)
    try:
        yield workload
    finally:
        for revision in {r.revision for r in workload.list_replicas(target)}:
            workload.remove_revision(target, revision)
        assert workload.list_replicas(target) == []
        workload.close()


def target_dir(roots: Path, host: str, target: Target) -> Path:
    return roots / host / target.key


# --------------------------------------------------------------------------------------------
# VmBackend on its own
# --------------------------------------------------------------------------------------------
class TestVmBackend:
    def test_is_a_workload_backend_and_validates(self, backend: VmBackend) -> None:
        assert isinstance(backend, WorkloadBackend)
        assert backend.platform == "vm"
        backend.validate()

    def test_one_replica_per_host_on_its_own_port(self, backend: VmBackend, target: Target) -> None:
        replicas = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        assert [r.index for r in replicas] == [0, 1]
        assert [r.ident.split(":")[0] for r in replicas] == list(HOSTS)
        assert len({r.port for r in replicas}) == 2
        assert all(r.alive and r.health_path == "/health" for r in replicas)
        for replica in replicas:
            wait_serving(replica, "1.0.0")
            assert http_get(f"http://{replica.address}/health") == (200, "ok")
        with pytest.raises(ValueError, match="one replica of a revision per host"):
            ensure(backend, target, sample_artifact(target.service, "1.0.0"), 3)

    def test_release_folder_manifest_and_uploaded_working_dir(
        self, backend: VmBackend, target: Target, roots: Path, tmp_path: Path
    ) -> None:
        app = tmp_path / "app-src"
        (app / "conf").mkdir(parents=True)
        (app / "conf" / "settings.txt").write_text("greeting=hello\n")
        (app / "start.sh").write_text("#!/bin/sh\n")
        (app / "start.sh").chmod(0o750)
        [replica] = ensure(backend, target, sample_artifact(target.service, "1.0.0", app, MODE="x"), 1)
        release = target_dir(roots, "host-a", target) / "releases" / "1-0-0"
        manifest = json.loads((release / "release.json").read_text())
        assert manifest["command"] == [sys.executable, str(SAMPLE_SERVICE)]
        assert manifest["env"] == {"MODE": "x"}
        assert manifest["port"] == replica.port
        assert manifest["healthPath"] == "/health"
        assert manifest["deploymentId"] == "test-vm"
        assert manifest["sha256"] == "ab" * 32
        assert (release / "app" / "conf" / "settings.txt").read_text() == "greeting=hello\n"
        assert (release / "app" / "start.sh").stat().st_mode & 0o777 == 0o750
        # The process runs in the uploaded folder, with its pid and log in the release folder.
        wait_serving(replica, "1.0.0")
        pid = int((release / "replica.pid").read_text().split()[0])
        assert os.readlink(f"/proc/{pid}/cwd") == str(release / "app")
        assert "listening on" in (release / "replica.log").read_text()
        assert not (target_dir(roots, "host-b", target) / "releases" / "1-0-0").exists()

    def test_current_link_switches_atomically_and_back(
        self, backend: VmBackend, target: Target, roots: Path
    ) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        folder = target_dir(roots, "host-a", target)
        assert os.readlink(folder / "current") == "releases/1-0-0"
        ensure(backend, target, sample_artifact(target.service, "2.0.0"), 2)
        for host in HOSTS:
            assert backend.current_release(target, host) == "2-0-0"
            assert backend.previous_release(target, host) == "1-0-0"
        assert os.readlink(folder / "previous") == "releases/1-0-0"
        # Re-ensuring the older revision is not a new deployment: current stays.
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        assert backend.current_release(target, "host-b") == "2-0-0"
        # No temporary links or staging folders are left by the switches.
        assert sorted(p.name for p in folder.iterdir()) == ["current", "previous", "releases"]
        assert sorted(p.name for p in (folder / "releases").iterdir()) == ["1-0-0", "2-0-0"]

        assert backend.switch_back(target) == {"host-a": "1-0-0", "host-b": "1-0-0"}
        assert os.readlink(folder / "current") == "releases/1-0-0"
        assert backend.previous_release(target, "host-a") == "2-0-0"
        for replica in backend.list_replicas(target, "1-0-0"):
            wait_serving(replica, "1.0.0")

        # Removing the release that is not current leaves current alone; removing current falls back.
        backend.remove_revision(target, "2-0-0")
        assert backend.current_release(target, "host-a") == "1-0-0"
        assert backend.previous_release(target, "host-a") is None
        ensure(backend, target, sample_artifact(target.service, "3.0.0"), 1)
        backend.remove_revision(target, "3-0-0")
        assert os.readlink(folder / "current") == "releases/1-0-0"

    def test_rolling_update_one_host_at_a_time_keeps_serving(
        self, backend: VmBackend, target: Target
    ) -> None:
        old = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        for replica in old:
            wait_serving(replica, "1.0.0")
        failures: list[str] = []
        stop = threading.Event()
        poller = threading.Thread(target=poll_any, args=(backend, target, stop, failures), daemon=True)
        poller.start()
        try:
            # New revision on host a, beside the old one; host b keeps serving the old one.
            [new_a] = ensure(backend, target, sample_artifact(target.service, "2.0.0"), 1)
            assert new_a.ident.startswith("host-a")
            wait_serving(new_a, "2.0.0")
            wait_serving(old[1], "1.0.0")
            # Old revision down to one replica (host a), new revision onto host b.
            ensure(backend, target, sample_artifact(target.service, "1.0.0"), 1)
            new = ensure(backend, target, sample_artifact(target.service, "2.0.0"), 2)
            for replica in new:
                wait_serving(replica, "2.0.0")
            backend.remove_revision(target, "1-0-0")
        finally:
            stop.set()
            poller.join(timeout=10)
        assert not failures, failures[:5]
        assert {(r.revision, r.index) for r in backend.list_replicas(target)} == {("2-0-0", 0), ("2-0-0", 1)}
        for host in HOSTS:
            assert backend.current_release(target, host) == "2-0-0"

    def test_killed_replica_is_reported_dead_and_restarted(self, backend: VmBackend, target: Target) -> None:
        artifact = sample_artifact(target.service, "1.0.0")
        first = ensure(backend, target, artifact, 2)
        pid = int(first[1].ident.split("pid-")[1])
        os.kill(pid, signal.SIGKILL)
        wait_for(
            "the killed replica to be reported not alive",
            lambda: not backend.list_replicas(target, "1-0-0")[1].alive,
        )
        assert backend.list_replicas(target, "1-0-0")[0].alive
        again = ensure(backend, target, artifact, 2)
        assert all(r.alive for r in again)
        assert again[0].ident == first[0].ident
        assert again[1].ident != first[1].ident
        assert again[1].port == first[1].port
        wait_serving(again[1], "1.0.0")

    def test_replicas_outlive_the_ssh_session_and_a_new_instance_finds_them(
        self, backend: VmBackend, target: Target, settings: dict[str, Any], tmp_path: Path
    ) -> None:
        replicas = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        backend.close()
        fresh = VmBackend(tmp_path / "elsewhere", settings)
        try:
            found = fresh.list_replicas(target)
            assert [(r.index, r.port, r.ident, r.alive) for r in found] == [
                (r.index, r.port, r.ident, True) for r in replicas
            ]
            again = ensure(fresh, target, sample_artifact(target.service, "1.0.0"), 2)
            assert [r.ident for r in again] == [r.ident for r in replicas]
        finally:
            fresh.close()
        for replica in replicas:
            wait_serving(replica, "1.0.0")

    def test_a_dropped_connection_is_reopened(self, backend: VmBackend, target: Target) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 1)
        for session in backend._sessions:
            client = session._connection._client
            transport = client.get_transport() if client else None
            assert transport is not None
            transport.close()
        assert [r.alive for r in backend.list_replicas(target)] == [True]

    def test_logs_come_from_the_hosts(self, backend: VmBackend, target: Target) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        wait_for(
            "both replicas to log that they listen",
            lambda: backend.logs(target, "1-0-0").count("listening on") == 2,
        )
        text = backend.logs(target, "1-0-0", lines=5)
        assert "==> host-a" in text and "==> host-b" in text
        assert backend.logs(target, "9-9-9") == ""

    def test_a_command_that_fails_is_not_alive_and_says_why(self, backend: VmBackend, target: Target) -> None:
        artifact = sample_artifact(target.service, "1.0.0").model_copy(
            update={"command": ["/nonexistent/bin/service", "--port", "1"]}
        )
        ensure(backend, target, artifact, 1)
        wait_for("the failed replica to be not alive", lambda: not backend.list_replicas(target)[0].alive)
        assert "/nonexistent/bin/service" in backend.logs(target, "1-0-0")

    def test_revision_ids_that_are_not_folder_names_are_refused(
        self, backend: VmBackend, target: Target, roots: Path
    ) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 1)
        for bad in ("..", "../..", "a/b", "", "UPPER"):
            with pytest.raises(ValueError, match="not a revision id"):
                backend.remove_revision(target, bad)
        assert (target_dir(roots, "host-a", target) / "releases" / "1-0-0").is_dir()

    def test_remove_is_a_no_op_when_gone(self, backend: VmBackend, target: Target, roots: Path) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        backend.remove_revision(target, "1-0-0")
        backend.remove_revision(target, "1-0-0")
        backend.remove_revision(target, "never-was")
        assert backend.list_replicas(target) == []
        assert not (target_dir(roots, "host-a", target) / "current").exists()
        assert list((roots / "host-a" / "ports").iterdir()) == []


def poll_any(backend: VmBackend, target: Target, stop: threading.Event, failures: list[str]) -> None:
    """While a rolling update runs: at least one replica of some revision answers at every moment."""
    addresses = [r.address for r in backend.list_replicas(target)]
    while not stop.is_set():
        answered = False
        for address in addresses:
            try:
                answered = http_get(f"http://{address}/", timeout=2.0)[0] == 200
            except OSError:
                continue
            if answered:
                break
        if not answered:
            failures.append(f"no replica answered at {time.time():.1f}: tried {addresses}")
        try:
            addresses = [r.address for r in backend.list_replicas(target) if r.alive] or addresses
        except PlatformError as error:
            failures.append(str(error))
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# validate(): refused before any change, with the endpoint and the cause
# --------------------------------------------------------------------------------------------
class TestVmValidate:
    def check_refused(self, settings: dict[str, Any], tmp_path: Path, endpoint: str, cause: str) -> None:
        backend = VmBackend(tmp_path / "state", settings)
        try:
            with pytest.raises(PlatformError) as caught:
                backend.validate()
        finally:
            backend.close()
        assert caught.value.platform == "vm"
        assert caught.value.endpoint == endpoint
        assert cause in caught.value.cause
        assert endpoint in str(caught.value) and "vm" in str(caught.value)

    def test_closed_port(self, ssh_hosts: SshHosts, roots: Path, tmp_path: Path) -> None:
        settings = ssh_hosts.settings(roots, 21000)
        port = free_port_block(1)
        settings["hosts"][1]["port"] = port
        self.check_refused(settings, tmp_path, f"root@127.0.0.1:{port}", "connection refused")

    def test_wrong_key(self, ssh_hosts: SshHosts, roots: Path, tmp_path: Path) -> None:
        other_key = tmp_path / "other_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
        settings = ssh_hosts.settings(roots, 21000)
        settings["hosts"][0]["keyFile"] = str(other_key)
        endpoint = f"root@127.0.0.1:{ssh_hosts.ports[0]}"
        self.check_refused(settings, tmp_path, endpoint, "authentication failed")

    def test_unknown_host_key_is_refused_unless_strict_checking_is_off(
        self, ssh_hosts: SshHosts, roots: Path, tmp_path: Path
    ) -> None:
        empty = tmp_path / "known_hosts"
        empty.write_text("")
        settings = ssh_hosts.settings(roots, 21000, knownHostsFile=str(empty))
        endpoint = f"root@127.0.0.1:{ssh_hosts.ports[0]}"
        self.check_refused(settings, tmp_path, endpoint, "host key not trusted")
        relaxed = VmBackend(tmp_path / "state", {**settings, "strictHostKeys": False})
        try:
            relaxed.validate()
        finally:
            relaxed.close()
        assert empty.read_text() == ""  # accepted in memory, never written

    def test_a_host_that_never_answers_is_retried_then_transient(
        self, ssh_hosts: SshHosts, roots: Path, tmp_path: Path
    ) -> None:
        """A listener that accepts TCP but never sends the SSH banner: timeouts, retried, then given up."""
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            port = int(silent.getsockname()[1])
            settings = ssh_hosts.settings(roots, 21000, connectTimeout=0.3, retries=2)
            settings["hosts"][0]["port"] = port
            backend = VmBackend(tmp_path / "state", settings)
            try:
                with pytest.raises(TransientPlatformError) as caught:
                    backend.validate()
            finally:
                backend.close()
        assert caught.value.endpoint == f"root@127.0.0.1:{port}"
        assert "after 2 attempts" in caught.value.cause

    def test_missing_key_file_and_unwritable_root(
        self, ssh_hosts: SshHosts, roots: Path, tmp_path: Path
    ) -> None:
        settings = ssh_hosts.settings(roots, 21000)
        settings["hosts"][0]["keyFile"] = str(tmp_path / "no-such-key")
        endpoint = f"root@127.0.0.1:{ssh_hosts.ports[0]}"
        self.check_refused(settings, tmp_path, endpoint, "key file not found")
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        settings = ssh_hosts.settings(roots, 21000)
        settings["hosts"][1]["root"] = str(blocker / "root")
        self.check_refused(settings, tmp_path, f"root@127.0.0.1:{ssh_hosts.ports[1]}", "not writable")

    def test_bad_settings_are_refused_on_construction(self, ssh_hosts: SshHosts, roots: Path) -> None:
        settings = ssh_hosts.settings(roots, 21000)
        settings["hosts"][1]["name"] = "host-a"
        with pytest.raises(ValueError, match="duplicate host names"):
            VmBackend(roots, settings)
        with pytest.raises(ValueError, match="hosts"):
            VmBackend(roots, {"replicaPort": 9000})


# --------------------------------------------------------------------------------------------
# RoutedPlatform(VmBackend, HAProxyRouter): the contract, and traffic through the real HAProxy
# --------------------------------------------------------------------------------------------
def make_platform(state_dir: Path, settings: dict[str, Any]) -> RoutedPlatform:
    """As adapters.create_platform builds the vm platform: one settings dict for both parts."""
    return RoutedPlatform(
        VmBackend(state_dir / "hosts", settings), HAProxyRouter(state_dir / "haproxy", settings)
    )


def tear_down(platform: RoutedPlatform, target: Target, state_dir: Path) -> None:
    """Remove everything through the adapter; the router must be gone (replicas: see the target fixture)."""
    routers = recorded_processes(state_dir / "haproxy")
    try:
        for status in platform.list_revisions(target):
            platform.remove_revision(target, status.revision)
        assert platform.list_revisions(target) == []
        platform.router.remove_frontend(target)
    finally:
        platform.close()
        left = kill_surviving(routers)
    assert not left, f"HAProxy processes left behind: {left}"


@pytest.fixture
def platform_settings(settings: dict[str, Any]) -> dict[str, Any]:
    first = free_port_block(10)
    return {**settings, "frontendPortRange": [first, first + 9], "routerSlots": 16, "stopGraceSeconds": 3}


def test_the_registry_builds_the_vm_platform(platform_settings: dict[str, Any], tmp_path: Path) -> None:
    platform = create_platform(
        PlatformConfig(type="vm", settings={**platform_settings, "stateDir": str(tmp_path / "reg")})
    )
    try:
        assert isinstance(platform, RoutedPlatform)
        assert isinstance(platform.backend, VmBackend)
        assert platform.platform == "vm"
        platform.validate()
    finally:
        platform.close()


class TestVmContract(PlatformContract):
    @pytest.fixture
    def contract_env(
        self, tmp_path: Path, platform_settings: dict[str, Any], target: Target
    ) -> Iterator[ContractEnv]:
        state_dir = tmp_path / "state"
        platform = make_platform(state_dir, platform_settings)
        yield ContractEnv(
            adapter=platform,
            target=target,
            make_artifact=lambda version: sample_artifact(target.service, version),
            reopen=lambda: make_platform(state_dir, platform_settings),
            ready_timeout_s=DEADLINE_S,
        )
        tear_down(platform, target, state_dir)


@pytest.fixture
def routed(
    tmp_path: Path, platform_settings: dict[str, Any], target: Target
) -> Iterator[tuple[RoutedPlatform, ContractEnv]]:
    state_dir = tmp_path / "state"
    platform = make_platform(state_dir, platform_settings)
    env = ContractEnv(
        adapter=platform,
        target=target,
        make_artifact=lambda version: sample_artifact(target.service, version),
        ready_timeout_s=DEADLINE_S,
    )
    yield platform, env
    tear_down(platform, target, state_dir)


def scale(env: ContractEnv, version: str, replicas: int) -> str:
    spec = RevisionSpec(target=env.target, artifact=env.make_artifact(version), replicas=replicas)
    env.adapter.ensure_revision(spec)
    return wait_ready(env, spec.revision, replicas).revision


def test_rolling_update_through_haproxy_one_host_at_a_time(
    routed: tuple[RoutedPlatform, ContractEnv],
) -> None:
    """1.0.0 on both hosts -> 2.0.0 on host a -> 2.0.0 on both; users see no failed request."""
    platform, env = routed
    old = scale(env, "1.0.0", 2)
    address = platform.set_traffic(env.target, {old: 100}).address
    answers: list[tuple[int, str]] = []
    stop = threading.Event()
    load = threading.Thread(target=send_until, args=(address, stop, answers), daemon=True)
    load.start()
    try:
        new = scale(env, "2.0.0", 1)  # host a runs both; host b keeps serving 1.0.0
        platform.set_traffic(env.target, {old: 50, new: 50})
        wait_for("answers from both versions", lambda: {"1.0.0", "2.0.0"} <= {v for _, v in answers[-40:]})
        platform.set_traffic(env.target, {new: 100})
        scale(env, "1.0.0", 1)  # host b is free of 1.0.0 ...
        scale(env, "2.0.0", 2)  # ... and gets 2.0.0
        platform.remove_revision(env.target, old)
        seen = len(answers)
        wait_for("more answers after the update", lambda: len(answers) > seen + 20)
    finally:
        stop.set()
        load.join(timeout=10)
    failed = [a for a in answers if a[0] != 200]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    assert {v for _, v in answers[-10:]} == {"2.0.0"}
    assert platform.traffic(env.target).weights == {new: 100}
    assert platform.metrics(env.target)[new].servers_up == 2


def send_until(address: str, stop: threading.Event, answers: list[tuple[int, str]]) -> None:
    while not stop.is_set():
        try:
            status, body = http_get(f"{address}/")
            answers.append((status, json.loads(body).get("version", "") if status == 200 else body))
        except (OSError, ValueError) as error:
            answers.append((0, repr(error)))
        time.sleep(0.01)
