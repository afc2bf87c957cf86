"""The docker platform against a real Docker engine on this machine (started by cluster/start_docker.sh).

Replicas are containers of ``local/sample-service:1`` on the host network, behind a real HAProxy for the
platform-level tests; each test uses its own service name, and its teardown removes every container and
router it made and checks that none is left.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from adapters import create_platform
from adapters.docker_backend import LABEL_SERVICE, DockerBackend
from adapters.haproxy import HAProxyRouter
from adapters.routed import RoutedPlatform
from engine.models import Artifact, PlatformConfig, Target
from engine.platform import (
    PlatformAdapter,
    PlatformError,
    Replica,
    RevisionSpec,
    TransientPlatformError,
    WorkloadBackend,
)
from tests.integration.contract import ContractEnv, PlatformContract, deploy, wait_ready
from tests.integration.environments import (
    DEADLINE_S,
    SAMPLE_IMAGE,
    closed_port,
    docker_engine_started,
    http_get,
    wait_for,
)

pytestmark = pytest.mark.integration

# Frontend ports of their own: the local platform's tests use 18000-18899, the orchestrator's 19000-19499.
ROUTER_SETTINGS: dict[str, Any] = {
    "frontendPortRange": [18900, 18999],
    "routerSlots": 16,
    "stopGraceSeconds": 3,
}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def wait_answering(replica: Replica) -> None:
    wait_for(
        f"replica {replica.revision}/{replica.index} on {replica.address}",
        lambda: http_get(f"http://{replica.address}/health")[0] in (200, 503),
    )


def sample_artifact(service: str, version: str, **env: str) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        source=f"docker://{SAMPLE_IMAGE}",
        env={"VERSION": version, **env},
    )


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def docker_engine() -> Iterator[Any]:
    """Start the engine and build the images, from a fresh machine if need be; fail loudly if impossible."""
    with docker_engine_started() as engine:
        yield engine


def remove_and_check(client: Any, service: str) -> None:
    """Remove what a test left behind, then insist that nothing with its labels remains."""
    selector = {"label": f"{LABEL_SERVICE}={service}"}
    for container in client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    left = client.containers.list(all=True, filters=selector)
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture
def target(docker_engine: Any) -> Iterator[Target]:
    service = f"dk-{uuid.uuid4().hex[:8]}"
    yield Target(service=service, environment="test")
    remove_and_check(docker_engine, service)


@pytest.fixture
def backend(tmp_path: Path, target: Target) -> Iterator[DockerBackend]:
    workload = DockerBackend(tmp_path / "containers", {})
    try:
        yield workload
    finally:
        workload.close()


def ensure(backend: DockerBackend, target: Target, artifact: Artifact, replicas: int) -> list[Replica]:
    return backend.ensure_replicas(
        RevisionSpec(target=target, artifact=artifact, replicas=replicas, deployment_id="test-docker")
    )


# --------------------------------------------------------------------------------------------
# DockerBackend on its own
# --------------------------------------------------------------------------------------------
class TestDockerBackend:
    def test_is_a_workload_backend_and_validates(self, backend: DockerBackend) -> None:
        assert isinstance(backend, WorkloadBackend)
        assert backend.platform == "docker"
        backend.validate()

    def test_replicas_answer_http_on_their_ports(self, backend: DockerBackend, target: Target) -> None:
        replicas = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        assert [r.index for r in replicas] == [0, 1]
        assert len({r.port for r in replicas}) == 2
        for replica in replicas:
            wait_answering(replica)
            assert http_get(f"http://{replica.address}/health") == (200, "healthy 1.0.0\n")
            assert http_get(f"http://{replica.address}/anything?x=1") == (200, "version 1.0.0\n")

    def test_labels_name_the_replica(
        self, backend: DockerBackend, target: Target, docker_engine: Any
    ) -> None:
        artifact = sample_artifact(target.service, "1.0.0")
        [replica] = ensure(backend, target, artifact, 1)
        container = docker_engine.containers.get(f"{target.service}-test-1-0-0-0")
        labels = container.labels
        assert labels["deploy-orchestrator/service"] == target.service
        assert labels["deploy-orchestrator/environment"] == "test"
        assert labels["deploy-orchestrator/revision"] == "1-0-0"
        assert labels["deploy-orchestrator/index"] == "0"
        assert labels["deploy-orchestrator/port"] == str(replica.port)
        assert labels["deploy-orchestrator/health-path"] == "/health"
        assert labels["deploy-orchestrator/deployment-id"] == "test-docker"
        assert container.attrs["HostConfig"]["NetworkMode"] == "host"
        assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")

    def test_ensure_is_idempotent_and_scales(self, backend: DockerBackend, target: Target) -> None:
        artifact = sample_artifact(target.service, "1.0.0")
        first = ensure(backend, target, artifact, 2)
        again = ensure(backend, target, artifact, 2)
        assert [r.ident for r in again] == [r.ident for r in first]
        assert [r.port for r in again] == [r.port for r in first]
        ensure(backend, target, artifact, 1)
        assert [(r.index, r.ident) for r in backend.list_replicas(target)] == [(0, first[0].ident)]
        grown = ensure(backend, target, artifact, 3)
        assert [r.index for r in backend.list_replicas(target, "1-0-0")] == [0, 1, 2]
        assert all(r.alive for r in grown)

    def test_a_new_instance_finds_replicas_from_the_engine(
        self, backend: DockerBackend, target: Target, tmp_path: Path
    ) -> None:
        replicas = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        ensure(backend, target, sample_artifact(target.service, "2.0.0"), 1)
        # An empty state dir on purpose: the container labels are the source of truth.
        fresh = DockerBackend(tmp_path / "elsewhere", {})
        try:
            found = fresh.list_replicas(target, "1-0-0")
            assert [(r.index, r.port, r.ident) for r in found] == [
                (r.index, r.port, r.ident) for r in replicas
            ]
            assert {r.revision for r in fresh.list_replicas(target)} == {"1-0-0", "2-0-0"}
            assert [r.ident for r in ensure(fresh, target, sample_artifact(target.service, "1.0.0"), 2)] == [
                r.ident for r in replicas
            ]
        finally:
            fresh.close()

    def test_killed_container_is_not_alive_and_is_recreated(
        self, backend: DockerBackend, target: Target, docker_engine: Any
    ) -> None:
        artifact = sample_artifact(target.service, "1.0.0")
        [replica] = ensure(backend, target, artifact, 1)
        subprocess.run(["docker", "kill", replica.ident], check=True, capture_output=True, timeout=30)
        wait_for("the killed replica to show as dead", lambda: not backend.list_replicas(target)[0].alive)
        [again] = ensure(backend, target, artifact, 1)
        assert again.alive
        assert again.ident != replica.ident
        wait_answering(again)
        assert http_get(f"http://{again.address}/")[0] == 200
        assert len(backend.list_replicas(target)) == 1

    def test_bad_revision_fails_its_requests_and_health(self, backend: DockerBackend, target: Target) -> None:
        [failing] = ensure(backend, target, sample_artifact(target.service, "6.6.6", ERROR_RATE="1"), 1)
        [sick] = ensure(backend, target, sample_artifact(target.service, "7.7.7", HEALTH_FAIL="1"), 1)
        wait_answering(failing)
        wait_answering(sick)
        assert http_get(f"http://{failing.address}/")[0] == 500
        assert http_get(f"http://{failing.address}/health")[0] == 200
        assert http_get(f"http://{sick.address}/health")[0] == 503

    def test_logs_of_a_revision(self, backend: DockerBackend, target: Target) -> None:
        [replica] = ensure(backend, target, sample_artifact(target.service, "1.0.0"), 1)
        wait_answering(replica)
        http_get(f"http://{replica.address}/logged-path")
        wait_for("the request in the logs", lambda: "GET /logged-path" in backend.logs(target, "1-0-0"))
        text = backend.logs(target, "1-0-0", lines=50)
        assert f"{target.service}-test-1-0-0-0" in text
        assert "version=1.0.0" in text
        assert backend.logs(target, "9-9-9") == ""

    def test_remove_revision_is_idempotent(self, backend: DockerBackend, target: Target) -> None:
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        ensure(backend, target, sample_artifact(target.service, "2.0.0"), 1)
        backend.remove_revision(target, "1-0-0")
        backend.remove_revision(target, "1-0-0")
        assert backend.list_replicas(target, "1-0-0") == []
        assert [r.revision for r in backend.list_replicas(target)] == ["2-0-0"]
        backend.remove_revision(target, "2-0-0")
        assert backend.list_replicas(target) == []

    def test_removals_of_one_revision_side_by_side_all_succeed(
        self, backend: DockerBackend, target: Target, tmp_path: Path
    ) -> None:
        """The engine refuses a second removal of a container with 409 "already in progress": that removal
        waits for the first one to end instead of failing (the chaos matrix met this when its clean-up met
        DO-001's removal of the same replicas)."""
        ensure(backend, target, sample_artifact(target.service, "1.0.0"), 2)
        removers = [DockerBackend(tmp_path / f"remover-{n}", {}) for n in range(4)]
        start = threading.Barrier(len(removers))
        errors: list[BaseException] = []

        def remove(remover: DockerBackend) -> None:
            start.wait(timeout=30)
            try:
                remover.remove_revision(target, "1-0-0")
            except BaseException as error:  # every failure of a remover is the finding
                errors.append(error)

        threads = [threading.Thread(target=remove, args=(remover,)) for remover in removers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for remover in removers:
            remover.close()
        assert errors == [] and not any(thread.is_alive() for thread in threads)
        assert backend.list_replicas(target, "1-0-0") == []

    def test_missing_image_is_refused_before_any_container(
        self, backend: DockerBackend, target: Target
    ) -> None:
        artifact = Artifact(name=target.service, version="1.0.0", source="docker://local/not-built-here:0")
        with pytest.raises(PlatformError, match="local/not-built-here:0") as caught:
            ensure(backend, target, artifact, 1)
        assert caught.value.platform == "docker"
        assert backend.list_replicas(target) == []

    def test_image_digest_is_verified(
        self, backend: DockerBackend, target: Target, docker_engine: Any
    ) -> None:
        image_id = docker_engine.images.get(SAMPLE_IMAGE).id.removeprefix("sha256:")
        wrong = sample_artifact(target.service, "1.0.0").model_copy(update={"sha256": "0" * 64})
        with pytest.raises(PlatformError, match="does not match"):
            ensure(backend, target, wrong, 1)
        assert backend.list_replicas(target) == []
        right = sample_artifact(target.service, "1.0.0").model_copy(update={"sha256": image_id})
        assert len(ensure(backend, target, right, 1)) == 1

    def test_validate_names_an_unreachable_daemon(self, tmp_path: Path) -> None:
        endpoint = f"tcp://127.0.0.1:{closed_port()}"
        unreachable = DockerBackend(tmp_path / "nowhere", {"baseUrl": endpoint, "timeout": 2, "retries": 1})
        with pytest.raises(PlatformError) as caught:
            unreachable.validate()
        error = caught.value
        assert error.platform == "docker"
        assert error.endpoint == endpoint
        assert "refused" in error.cause.lower()
        assert endpoint in str(error)


class _FailingDaemon(BaseHTTPRequestHandler):
    """A loopback endpoint that answers every Docker API call with 503, as an overloaded engine would."""

    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        body = b'{"message": "engine overloaded"}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def failing_daemon() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FailingDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class TestDockerErrors:
    def test_5xx_is_retried_then_transient(self, failing_daemon: str, tmp_path: Path) -> None:
        backend = DockerBackend(tmp_path / "busy", {"baseUrl": failing_daemon, "retries": 2})
        target = Target(service="busy", environment="test")
        with pytest.raises(TransientPlatformError, match="engine overloaded") as caught:
            backend.list_replicas(target)
        assert caught.value.endpoint == failing_daemon
        with pytest.raises(PlatformError, match="unavailable"):
            backend.validate()


# --------------------------------------------------------------------------------------------
# The docker platform: DockerBackend behind a real HAProxy
# --------------------------------------------------------------------------------------------
def make_platform(state_dir: Path) -> RoutedPlatform:
    return RoutedPlatform(
        DockerBackend(state_dir / "containers", ROUTER_SETTINGS),
        HAProxyRouter(state_dir / "haproxy", ROUTER_SETTINGS),
    )


def port_accepts(address: str) -> bool:
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=1):
            return True
    except OSError:
        return False


def tear_down(platform: RoutedPlatform, target: Target, client: Any) -> None:
    """Remove through the adapter, then insist that no container and no router of the target is left."""
    address = platform.traffic(target).address
    try:
        for status in platform.list_revisions(target):
            platform.remove_revision(target, status.revision)
        platform.router.remove_frontend(target)  # type: ignore[attr-defined]
    finally:
        platform.close()
        remove_and_check(client, target.service)
    assert not (address and port_accepts(address)), f"the router of {target.key} still answers on {address}"


@pytest.fixture
def docker_platform(tmp_path: Path, target: Target, docker_engine: Any) -> Iterator[RoutedPlatform]:
    platform = make_platform(tmp_path / "state")
    yield platform
    tear_down(platform, target, docker_engine)


def test_the_registry_builds_the_docker_platform(tmp_path: Path, docker_engine: Any) -> None:
    platform = create_platform(PlatformConfig(type="docker", settings=ROUTER_SETTINGS), state_dir=tmp_path)
    try:
        assert isinstance(platform, RoutedPlatform)
        assert isinstance(platform.backend, DockerBackend)
        assert platform.platform == "docker"
        platform.validate()
    finally:
        platform.close()


class TestDockerContract(PlatformContract):
    @pytest.fixture
    def contract_env(self, tmp_path: Path, docker_engine: Any) -> Iterator[ContractEnv]:
        state_dir = tmp_path / "state"
        platform = make_platform(state_dir)
        target = Target(service=f"dc-{uuid.uuid4().hex[:8]}", environment="contract")

        def reopen() -> PlatformAdapter:
            return make_platform(state_dir)

        yield ContractEnv(
            adapter=platform,
            target=target,
            make_artifact=lambda version: sample_artifact(target.service, version),
            reopen=reopen,
            ready_timeout_s=DEADLINE_S,
        )
        tear_down(platform, target, docker_engine)


def answer(address: str, path: str = "/") -> tuple[int, str]:
    """Status and X-Version of one request through the router."""
    parts = urlsplit(address)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Version") or ""
    finally:
        connection.close()


def deploy_pair(platform: RoutedPlatform, target: Target, canary_env: dict[str, str]) -> tuple[str, str]:
    env = ContractEnv(
        adapter=platform,
        target=target,
        make_artifact=lambda version: sample_artifact(target.service, version),
        ready_timeout_s=DEADLINE_S,
    )
    for artifact in (
        sample_artifact(target.service, "1.0.0"),
        sample_artifact(target.service, "2.0.0", **canary_env),
    ):
        platform.ensure_revision(RevisionSpec(target=target, artifact=artifact, replicas=1))
        wait_ready(env, artifact.revision, 1)
    return "1-0-0", "2-0-0"


class TestDockerTraffic:
    def test_traffic_follows_the_weights(self, docker_platform: RoutedPlatform, target: Target) -> None:
        stable, canary = deploy_pair(docker_platform, target, {})
        state = docker_platform.set_traffic(target, {stable: 80, canary: 20})
        answers = [answer(state.address, f"/item/{i}") for i in range(200)]
        versions = Counter(version for _, version in answers)
        assert {status for status, _ in answers} == {200}
        # 20% of 200 is 40; HAProxy's weighted round robin is close to exact.
        assert 25 <= versions["2.0.0"] <= 55, versions
        assert versions["1.0.0"] + versions["2.0.0"] == 200

    def test_errors_of_a_bad_revision_show_in_its_metrics(
        self, docker_platform: RoutedPlatform, target: Target
    ) -> None:
        stable, canary = deploy_pair(docker_platform, target, {"ERROR_RATE": "1"})
        state = docker_platform.set_traffic(target, {stable: 50, canary: 50})
        answers = [answer(state.address, f"/item/{i}") for i in range(100)]
        failed = [version for status, version in answers if status == 500]
        assert failed and set(failed) == {"2.0.0"}
        snapshots = docker_platform.metrics(target)
        assert snapshots[canary].errors == snapshots[canary].requests == len(failed)
        assert snapshots[stable].errors == 0
        assert snapshots[stable].requests == 100 - len(failed)

    def test_killed_container_is_seen_and_recreated(
        self, docker_platform: RoutedPlatform, target: Target
    ) -> None:
        env = ContractEnv(
            adapter=docker_platform,
            target=target,
            make_artifact=lambda version: sample_artifact(target.service, version),
            ready_timeout_s=DEADLINE_S,
        )
        deploy(env, "1.0.0", replicas=2)
        address = docker_platform.set_traffic(target, {"1-0-0": 100}).address
        victim = docker_platform.backend.list_replicas(target, "1-0-0")[0]
        subprocess.run(["docker", "kill", victim.ident], check=True, capture_output=True, timeout=30)
        wait_for(
            "the killed container to show",
            lambda: not docker_platform.backend.list_replicas(target, "1-0-0")[0].alive,
        )
        status = docker_platform.revision_status(target, "1-0-0")
        assert status is not None and status.running_replicas == 1 and not status.ready
        docker_platform.ensure_revision(
            RevisionSpec(target=target, artifact=sample_artifact(target.service, "1.0.0"), replicas=2)
        )
        wait_ready(env, "1-0-0", 2)
        assert docker_platform.backend.list_replicas(target, "1-0-0")[0].ident != victim.ident
        assert docker_platform.traffic(target).weights == {"1-0-0": 100}
        assert {answer(address)[0] for _ in range(20)} == {200}

    def test_logs_of_a_revision_are_reachable(self, docker_platform: RoutedPlatform, target: Target) -> None:
        stable, _ = deploy_pair(docker_platform, target, {})
        address = docker_platform.set_traffic(target, {stable: 100}).address
        assert answer(address, "/through-the-router")[0] == 200
        wait_for(
            "the routed request in the logs",
            lambda: "GET /through-the-router" in docker_platform.logs(target, stable),
        )
        assert "version=2.0.0" in docker_platform.logs(target, "2-0-0")

    def test_validate_names_an_unreachable_daemon(self, tmp_path: Path) -> None:
        endpoint = f"tcp://127.0.0.1:{closed_port()}"
        settings = {**ROUTER_SETTINGS, "baseUrl": endpoint, "retries": 1}
        platform = RoutedPlatform(
            DockerBackend(tmp_path / "containers", settings), HAProxyRouter(tmp_path / "haproxy", settings)
        )
        try:
            with pytest.raises(PlatformError) as caught:
                platform.validate()
        finally:
            platform.close()
        assert caught.value.platform == "docker"
        assert caught.value.endpoint == endpoint
        assert "refused" in caught.value.cause.lower()
