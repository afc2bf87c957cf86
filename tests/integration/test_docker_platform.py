"""The docker platform against a real Docker engine on this machine (started by cluster/start_docker.sh).

Replicas are containers of ``local/sample-service:1`` on the host network; each test uses its own service
name, and its teardown removes every container it made and checks that none is left.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import pytest

from adapters.docker_backend import LABEL_SERVICE, DockerBackend
from engine.models import Artifact, Target
from engine.platform import (
    PlatformError,
    Replica,
    RevisionSpec,
    TransientPlatformError,
    WorkloadBackend,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE_IMAGE = "local/sample-service:1"
DEADLINE_S = 30.0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(what: str, check: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_answering(replica: Replica) -> None:
    wait_for(
        f"replica {replica.revision}/{replica.index} on {replica.address}",
        lambda: http_get(f"http://{replica.address}/health")[0] in (200, 503),
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
    result = subprocess.run(
        ["bash", str(REPO / "cluster" / "start_docker.sh")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        pytest.fail(f"cluster/start_docker.sh failed ({result.returncode}):\n{output}")
    client = docker.from_env()
    try:
        yield client
    finally:
        client.close()


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
