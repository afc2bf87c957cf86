"""Environment readiness through the actors (queen, runner, DO-001) of the session's orchestrator on a real
local Ray, on the local platform: an HTTPS environment deployed and monitored over HTTPS with its CA; a
deployment that cannot fit refused before any change, and the environment's status journaled; TLS on a
platform that declares it cannot serve it refused by the queen before anything is recorded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import ray

from adapters import create_platform
from adapters.localhost import memory_available
from engine.models import Environment, PlatformConfig
from engine.readiness import EnvironmentStatus
from engine.state import EventKind
from harness.environments import wait_for
from tests.integration.conftest import orch_journal, sample_artifact
from tests.receiver import http_receiver
from tests.tls_certs import https_get, make_certificates, plain_http_is_not_served

pytestmark = pytest.mark.integration

ROLLING = {"type": "rolling", "replicas": 2}


def register(orch: Any, name: str, **settings: Any) -> str:
    orch.register_environment(Environment.model_validate({"name": name, **settings}))
    return name


def wait_for_status(orch: Any, environment: str, wanted: EnvironmentStatus, within_s: float = 30) -> Any:
    """The environment's recorded status once it is ``wanted``, or the last one seen after ``within_s``."""
    deadline = time.monotonic() + within_s
    status = orch.environment_status(environment)
    while (status is None or status.status is not wanted) and time.monotonic() < deadline:
        time.sleep(0.25)
        status = orch.environment_status(environment)
    assert status is not None, f"no status recorded for {environment} within {within_s} s"
    return status


def test_an_https_environment_is_deployed_and_monitored_over_https(
    orchestrator: Any, admin_token: str, tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "certs")
    tls = {
        "certificate": str(certificates.certificate),
        "key": f"file:{certificates.key}",
        "ca": str(certificates.ca),
    }
    environment = register(
        orchestrator,
        "secure-actors",
        security={"tlsRequired": True, "tls": tls},
        healthCheckInterval="500ms",
        healthCheckTimeout="400ms",
    )
    result = orchestrator.deploy(sample_artifact("tls-actors", "1.0.0"), ROLLING, environment, "local")
    assert result.success, result.status
    address = result.status.address
    assert address is not None and address.startswith("https://127.0.0.1:"), address
    port = int(address.rsplit(":", 1)[1])
    assert https_get(port, certificates.ca)[0] == 200
    assert plain_http_is_not_served(port)

    # DO-001's monitors probe the service's HTTPS address, verified against the environment's CA.
    orchestrator.monitor_environment_health(environment)
    deadline = time.monotonic() + 30
    health = orchestrator.get_environment_health(environment)
    while not (health.healthy and all(r.checked_at for r in health.monitors)) and time.monotonic() < deadline:
        time.sleep(0.5)
        health = orchestrator.get_environment_health(environment)
    assert health.healthy, health
    assert [e.url for r in health.monitors for e in r.endpoints] == [f"{address}/health"]
    # A monitor tells DO-001 of the flip beside its probes: the status is journaled a moment later.
    assert (
        wait_for_status(orchestrator, environment, EnvironmentStatus.READY).status is EnvironmentStatus.READY
    )

    # The service goes away: the monitors see it, DO-001 journals the environment as not ready.
    platform = create_platform(orchestrator.config.platform("local"))
    try:
        platform.remove_revision(result.status.target, "1-0-0")
    finally:
        platform.close()
    status = wait_for_status(orchestrator, environment, EnvironmentStatus.NOT_READY)
    assert status.status is EnvironmentStatus.NOT_READY, status
    assert "failed checks" in status.reason
    events = orch_journal(orchestrator).events(f"environment:{environment}")
    assert [e.data["status"] for e in events] == ["ready", "not_ready"]
    ray.get(orchestrator.worker("DO-001").stop_monitoring.remote(environment, token=admin_token), timeout=30)


def test_a_deployment_that_cannot_fit_is_refused_and_the_environment_says_so(orchestrator: Any) -> None:
    too_much = memory_available() + 4 * 2**30
    environment = register(orchestrator, "small-actors", resources={"memory": too_much})
    report = orchestrator.environment_readiness(environment, "local", replicas=2)
    assert not report.ready
    assert report.problems[0].startswith("small-actors: needs 2 x ")
    assert report.problems[0].split(" memory, ")[1].startswith("host has ")

    result = orchestrator.deploy(sample_artifact("big-actors", "1.0.0"), ROLLING, environment, "local")
    assert not result.success
    assert result.status.message.startswith("refused before any change: small-actors: needs 2 x ")
    journal = orch_journal(orchestrator)
    kinds = {event.kind for event in journal.events(result.deployment_id)}
    assert EventKind.PLANNED not in kinds and EventKind.WEIGHTS_SET not in kinds
    statuses = [e.data["status"] for e in journal.events("environment:small-actors")]
    assert statuses == ["capacity_short"]  # one change, however often it was seen
    status = orchestrator.environment_status(environment)
    assert status is not None and status.status is EnvironmentStatus.CAPACITY_SHORT


def test_tls_on_a_platform_that_cannot_serve_it_is_refused_by_the_queen(
    orchestrator: Any, tmp_path: Path
) -> None:
    certificates = make_certificates(tmp_path / "certs")
    tls = {"certificate": str(certificates.certificate), "key": f"file:{certificates.key}"}
    environment = register(orchestrator, "tls-nowhere", security={"tlsRequired": True, "tls": tls})
    kubernetes = PlatformConfig(type="kubernetes", settings={"host": "http://127.0.0.1:9", "namespace": "x"})
    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        orchestrator.submit(sample_artifact("tls-nowhere", "1.0.0"), ROLLING, environment, kubernetes)
    assert (
        "platform 'kubernetes' cannot serve TLS, and environments.tls-nowhere.security.tlsRequired is true"
        in str(refused.value)
    )
    assert orch_journal(orchestrator).deployments(target_key="tls-nowhere.tls-nowhere") == []


class RefusingWatcherImpl:
    """A watcher (DO-001's seam) that fails its first ``refusals`` calls, then keeps what it is told."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.taken: list[tuple[str, bool]] = []

    def on_health_change(self, monitor: str, healthy: bool, reason: str, token: str | None = None) -> None:
        if self.refusals > 0:
            self.refusals -= 1
            raise RuntimeError("DO-001 restarting")
        self.taken.append((monitor, healthy))

    def changes(self) -> list[tuple[str, bool]]:
        return self.taken


RefusingWatcher: Any = ray.remote(num_cpus=0)(RefusingWatcherImpl)


def test_a_health_change_the_watcher_did_not_take_is_told_again(orchestrator: Any) -> None:
    """The call that tells DO-001 of a flip fails (its actor restarting): the monitor makes it again
    instead of keeping a status no one journaled."""
    from actors.health import HealthMonitor

    watcher = RefusingWatcher.remote(2)
    with http_receiver() as service:
        monitor = HealthMonitor.remote("refused:0", [f"{service.url}/health"], 0.2, 0.2, 2, watcher=watcher)
        try:
            told = lambda: ray.get(watcher.changes.remote(), timeout=30)  # noqa: E731
            wait_for("the watcher to take 'healthy'", lambda: told() == [("refused:0", True)], 30)
            service.answer("/health", 503)
            unhealthy = [("refused:0", True), ("refused:0", False)]
            wait_for("the watcher to take 'unhealthy'", lambda: told() == unhealthy, 30)
        finally:
            for actor in (monitor, watcher):
                ray.kill(actor)
