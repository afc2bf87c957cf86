"""A routed platform waits for a starting revision's ports, not with health checks: it sees the revision
ready soon after it listens and asks its health once it does; it does not wait for a replica that is not
running, nor ask a listening one's health again and again (the deployment's own schedule does)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.routed import RoutedPlatform
from engine.models import Target
from engine.platform import PlatformCapabilities, Replica

TARGET = Target(service="web", environment="dev")


class Service:
    """A replica's server that starts listening after ``delay_s``; counts the health checks it answers."""

    def __init__(self, delay_s: float, status: int = 200) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.status = status
        self.checks = 0
        self.server: ThreadingHTTPServer | None = None
        self._timer = threading.Timer(delay_s, self._listen)
        self._timer.start()

    def _listen(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.checks += 1
                self.send_response(service.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._timer.cancel()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class Backend:
    """The seam RoutedPlatform reads replicas through (a fake: no process is started here)."""

    platform = "local"
    capabilities = PlatformCapabilities()

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas

    def list_replicas(self, target: Target, revision: str | None = None) -> list[Replica]:
        return [r for r in self.replicas if revision is None or r.revision == revision]


def replica(port: int, index: int = 0, alive: bool = True) -> Replica:
    return Replica(revision="2-0-0", index=index, host="127.0.0.1", port=port, alive=alive, health_path="/")


@pytest.fixture
def services() -> Iterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        service.close()


def platform(replicas: list[Replica]) -> RoutedPlatform:
    router: Any = SimpleNamespace(serves_tls=False)  # await_ready does not touch the router
    return RoutedPlatform(Backend(replicas), router)  # type: ignore[arg-type]


def test_a_starting_revision_is_seen_ready_once_its_replicas_listen(services: list[Service]) -> None:
    services += [Service(0.3), Service(0.5)]
    started = time.monotonic()
    status = platform([replica(s.port, i) for i, s in enumerate(services)]).await_ready(TARGET, "2-0-0", 10)
    waited = time.monotonic() - started
    assert status is not None and status.ready and status.ready_replicas == 2
    assert waited < 10  # it returned when ready, not at the end of its time
    # Health was asked only once the ports listened (twice at most: once when the first one listened).
    assert [s.checks for s in services] in ([1, 1], [2, 1])


def test_a_listening_replica_that_is_not_healthy_is_left_to_the_callers_schedule(
    services: list[Service],
) -> None:
    services.append(Service(0.0, status=503))
    time.sleep(0.05)
    status = platform([replica(services[0].port)]).await_ready(TARGET, "2-0-0", 30)
    assert status is not None and not status.ready and status.running_replicas == 1
    assert services[0].checks == 1  # asked once, not again and again until the 30 s are up


def test_a_replica_that_starts_listening_unhealthy_is_asked_once_it_listens(services: list[Service]) -> None:
    services.append(Service(0.3, status=503))
    status = platform([replica(services[0].port)]).await_ready(TARGET, "2-0-0", 30)
    assert status is not None and not status.ready
    assert services[0].checks == 1


def test_a_replica_that_is_not_running_is_not_waited_for(services: list[Service]) -> None:
    services.append(Service(0.0))
    time.sleep(0.05)
    backend_replicas = [replica(services[0].port, 0), replica(services[0].port, 1, alive=False)]
    status = platform(backend_replicas).await_ready(TARGET, "2-0-0", 30)
    assert status is not None and not status.ready and status.running_replicas == 1
    assert services[0].checks == 1  # one round of health checks, then back to the deployment


def test_a_revision_that_does_not_exist_is_none() -> None:
    assert platform([]).await_ready(TARGET, "2-0-0", 1) is None


class Router:
    """The router seam: records the servers it is given."""

    serves_tls = False

    def __init__(self) -> None:
        self.servers: dict[str, list[str]] = {}

    def ensure_frontend(self, target: Target, health_path: str | None = None, serving: Any = None) -> str:
        return "http://127.0.0.1:1"

    def set_backends(self, target: Target, servers: dict[str, list[str]], weights: dict[str, int]) -> Any:
        self.servers = servers
        return SimpleNamespace(weights=weights)


def test_a_weight_change_gives_the_router_only_the_ready_replicas_of_a_revision_that_has_several(
    services: list[Service],
) -> None:
    services += [Service(0.0), Service(0.0, status=503), Service(0.0, status=503)]
    time.sleep(0.05)
    stable = [replica(s.port, i) for i, s in enumerate(services[:2])]
    canary = Replica(revision="3-0-0", index=0, host="127.0.0.1", port=services[2].port, health_path="/")
    router = Router()
    routed = RoutedPlatform(Backend([*stable, canary]), router)  # type: ignore[arg-type]
    routed.set_traffic(TARGET, {"2-0-0": 90, "3-0-0": 10})
    assert router.servers == {"2-0-0": [stable[0].address], "3-0-0": [canary.address]}
    # The lone canary replica is the router's either way (its own health checks gate it): not asked.
    assert [s.checks for s in services] == [1, 1, 0]
