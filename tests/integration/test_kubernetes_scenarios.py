"""The platform scenarios on Kubernetes: the real engine over the real adapter, on kmock's API server.

A ``FakeController`` plays the Deployment controller (in the background, so that a replica-ratio split
becomes ready while ``set_traffic`` waits for it). Live traffic is simulated where Kubernetes would have
it: every tick ``LiveTraffic`` splits requests over the revisions by the weights the adapter reads back
from the cluster and counts them, per revision and status code, on a prometheus-client exporter that a
real Prometheus scrapes every 0.5 s; the adapter's ``metrics()`` gets the counts back through Prometheus'
query API. A revision fails the share of its requests that its pods' ``ERROR_RATE`` says (read from its
Deployment, as a pod would read its environment).
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import prometheus_client
import pytest
from kubernetes import client

from adapters.kubernetes_platform import ANN_DEPLOYMENT_ID, LABEL_REVISION, KubernetesPlatform
from engine.models import Artifact, Phase, PlatformConfig, Target
from engine.platform import PlatformAdapter, RevisionSpec
from tests.integration.k8s_emulator import FakeController, KubeEmulator
from tests.integration.scenarios import ROLLING, PlatformScenarios, ScenarioEnv
from tests.integration.test_kubernetes_platform import _closed_port

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

TICK_S = 0.2
REQUESTS_PER_SECOND = 50
PROMETHEUS_START_S = 30.0
METRICS_SELECTOR = 'namespace="{namespace}",service="{service}",revision="{revision}"'


@dataclass
class Prometheus:
    url: str
    requests: prometheus_client.Counter


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator(gateway_api=False) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping a prometheus-client exporter on loopback every 0.5 s."""
    folder = tmp_path_factory.mktemp("prometheus")
    registry = prometheus_client.CollectorRegistry()
    requests = prometheus_client.Counter(
        "http_requests", "requests served", ["namespace", "service", "revision", "code"], registry=registry
    )
    exporter_port, prometheus_port = _closed_port(), _closed_port()
    exporter, exporter_thread = prometheus_client.start_http_server(exporter_port, "127.0.0.1", registry)
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 500ms}\n"
        f"scrape_configs: [{{job_name: app, static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]}}]\n"
    )
    with (folder / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    url = f"http://127.0.0.1:{prometheus_port}"
    try:
        _wait_ready(url, process)
        yield Prometheus(url, requests)
    finally:
        process.terminate()
        process.wait(10)
        exporter.shutdown()
        exporter_thread.join(5)


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + PROMETHEUS_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}")
        if _scraped(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus at {url} did not scrape the exporter within {PROMETHEUS_START_S}s")


def _scraped(url: str) -> bool:
    """Ready is not enough: service discovery delays the first scrape by up to 5 s after the start."""
    query = urllib.parse.urlencode({"query": 'up{job="app"} == 1'})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=2) as response:
            return bool(json.loads(response.read()).get("data", {}).get("result"))
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


@dataclass
class Cluster:
    """One test's namespace on the emulator and the controller that plays the Deployment controller there."""

    emulator: KubeEmulator
    namespace: str
    controller: FakeController
    apps: client.AppsV1Api

    def deployments(self) -> list[dict[str, Any]]:
        response = self.apps.list_namespaced_deployment(self.namespace, _preload_content=False)
        return list(json.loads(response.data).get("items", []))


@pytest.fixture
def cluster(emulator: KubeEmulator) -> Iterator[Cluster]:
    namespace = emulator.new_namespace("sc")
    controller = FakeController(emulator, namespace).start(interval_s=0.1)
    api = emulator.api_client()
    try:
        yield Cluster(emulator, namespace, controller, client.AppsV1Api(api))
    finally:
        controller.stop()
        api.close()
    assert not controller.errors, controller.errors


def image_artifact(service: str, version: str, faulty: bool) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        source=f"docker://registry.test/{service}:{version}",
        env={"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"},
    )


class LiveTraffic:
    """Users and pods, simulated: requests split by the weights in force, counted for Prometheus."""

    def __init__(
        self, adapter: PlatformAdapter, target: Target, cluster: Cluster, counter: prometheus_client.Counter
    ) -> None:
        self.adapter, self.target, self.cluster, self.counter = adapter, target, cluster, counter
        self.served: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.problems: list[str] = []
        self._carry: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"traffic-{target.service}", daemon=True)

    def __enter__(self) -> LiveTraffic:
        self._safe_tick()  # traffic flows from the start of the block, however short the block
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.adapter.close()
        if kind is None:  # a failing scenario's own error says more than this
            assert sum(self.served.values()) > 0, f"no request was served: {self.problems[-3:]}"

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as error:  # an object deleted meanwhile, say: the next tick sees anew
            self.problems.append(repr(error))
            log.warning("simulated traffic of %s: %r", self.target.key, error)

    def _tick(self) -> None:
        weights = {rev: w for rev, w in self.adapter.traffic(self.target).weights.items() if w > 0}
        if not weights:
            return
        error_rates = self._error_rates()
        for revision, weight in weights.items():
            share = self._carry.get(revision, 0.0) + REQUESTS_PER_SECOND * TICK_S * weight / 100
            count = int(share)
            self._carry[revision] = share - count
            self._serve(revision, count, error_rates.get(revision, 0.0))

    def _serve(self, revision: str, count: int, error_rate: float) -> None:
        """Exactly ``error_rate`` of the revision's requests so far fail: no chance in the verdicts."""
        served = self.served.get(revision, 0) + count
        errors = math.floor(served * error_rate) - self.failed.get(revision, 0)
        self.served[revision], self.failed[revision] = served, self.failed.get(revision, 0) + errors
        labels = {"namespace": self.cluster.namespace, "service": self.target.service, "revision": revision}
        if count - errors:
            self.counter.labels(code="200", **labels).inc(count - errors)
        if errors:
            self.counter.labels(code="503", **labels).inc(errors)

    def _error_rates(self) -> dict[str, float]:
        """revision -> ERROR_RATE from the environment of its Deployment's pods."""
        rates: dict[str, float] = {}
        for deployment in self.cluster.deployments():
            template = deployment["spec"]["template"]
            labels = template["metadata"].get("labels", {})
            if labels.get("app.kubernetes.io/name") != self.target.service:
                continue
            env = {e["name"]: e.get("value", "") for e in template["spec"]["containers"][0].get("env", [])}
            rates[labels.get(LABEL_REVISION, "")] = float(env.get("ERROR_RATE") or 0)
        return rates


class TestKubernetesScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, cluster: Cluster, prometheus: Prometheus, tmp_path: Path) -> ScenarioEnv:
        settings = {
            "host": cluster.emulator.url,
            "namespace": cluster.namespace,
            "metricsUrl": prometheus.url,
            "metricsSelector": METRICS_SELECTOR,
            "splitReadyTimeout": 20,
            "retryBackoff": 0.05,
        }

        def live(adapter: PlatformAdapter, target: Target) -> LiveTraffic:
            return LiveTraffic(adapter, target, cluster, prometheus.requests)

        return ScenarioEnv(
            make_adapter=lambda: KubernetesPlatform(tmp_path / "state", settings),
            platform=PlatformConfig(type="kubernetes", settings=settings),
            artifact=image_artifact,
            traffic=live,
            journal_dir=tmp_path,
            settle=cluster.controller.settle,
            step_ms=4000,
            deadline_s=120.0,
        )

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        super().test_runner_crash_resumes_without_duplicates(scenario_env)
        deployments = _deployments(scenario_env)
        names = [d["metadata"]["name"] for d in deployments]
        of_candidate = [d for d in deployments if d["metadata"]["labels"].get(LABEL_REVISION) == "2-0-0"]
        assert len(of_candidate) == 1, names
        assert names == ["sc-crash-staging-2-0-0"]  # and the stable one is gone
        # The runner that resumed updated the one Deployment it found rather than creating another.
        assert of_candidate[0]["metadata"]["annotations"][ANN_DEPLOYMENT_ID] == "sc-crash-2"
        assert of_candidate[0]["spec"]["replicas"] == scenario_env.replicas

    def test_a_revision_left_by_a_dead_runner_is_adopted(self, scenario_env: ScenarioEnv) -> None:
        """A runner died after creating the candidate, before journaling it: the next one makes no second."""
        harness = self._stable(scenario_env, "sc-adopt")
        leave_candidate(scenario_env, harness.target, "2.0.0")
        with harness.live():
            state = harness.deploy("2.0.0", ROLLING)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert [d["metadata"]["name"] for d in _deployments(scenario_env)] == ["sc-adopt-staging-2-0-0"]


def leave_candidate(env: ScenarioEnv, target: Target, version: str) -> None:
    adapter = env.make_adapter()
    try:
        artifact = env.artifact(target.service, version, False)
        adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=1, deployment_id="dead")
        )
    finally:
        adapter.close()


def _deployments(env: ScenarioEnv) -> list[dict[str, Any]]:
    settings = env.platform.settings
    configuration = client.Configuration()
    configuration.host = settings["host"]
    with client.ApiClient(configuration) as api:
        apps = client.AppsV1Api(api)
        response = apps.list_namespaced_deployment(settings["namespace"], _preload_content=False)
    return list(json.loads(response.data)["items"])
