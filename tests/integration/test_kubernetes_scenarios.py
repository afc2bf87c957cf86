"""The platform scenarios on Kubernetes: the real engine over the real adapter, on kmock's API server.

A ``FakeController`` plays the Deployment controller (in the background, so that a replica-ratio split becomes
ready while ``set_traffic`` waits for it). Live traffic is simulated where Kubernetes would have it: every
tick ``LiveTraffic`` (harness/) splits requests over the revisions by the weights the adapter
reads back from the cluster and counts them, per revision and status code, on a prometheus-client exporter
that a real Prometheus scrapes every 0.5 s; the adapter's ``metrics()`` gets the counts back through
Prometheus' query API. A revision fails the share of its requests that its pods' ``ERROR_RATE`` says (read
from its Deployment, as a pod would read its environment).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from adapters.kubernetes_platform import ANN_DEPLOYMENT_ID, LABEL_REVISION
from tests.integration.environments import (
    Cluster,
    Prometheus,
    kube_cluster,
    kubernetes_scenario_env,
    prometheus_server,
)
from tests.integration.k8s_emulator import KubeEmulator
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator(gateway_api=False) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A real Prometheus scraping a prometheus-client exporter on loopback every 0.5 s."""
    labels = ["namespace", "service", "revision", "code"]
    with prometheus_server(tmp_path_factory.mktemp("prometheus"), labels) as running:
        yield running


@pytest.fixture
def cluster(emulator: KubeEmulator) -> Iterator[Cluster]:
    with kube_cluster(emulator, "sc") as running:
        yield running
    assert not running.controller.errors, running.controller.errors


class TestKubernetesScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, cluster: Cluster, prometheus: Prometheus, tmp_path: Path) -> ScenarioEnv:
        return kubernetes_scenario_env(cluster, prometheus, tmp_path, step_ms=4000)

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
        self._adopts_left_candidate(scenario_env, "sc-adopt")
        assert [d["metadata"]["name"] for d in _deployments(scenario_env)] == ["sc-adopt-staging-2-0-0"]


def _deployments(env: ScenarioEnv) -> list[dict[str, Any]]:
    settings = env.platform.settings
    configuration = client.Configuration()
    configuration.host = settings["host"]
    with client.ApiClient(configuration) as api:
        apps = client.AppsV1Api(api)
        response = apps.list_namespaced_deployment(settings["namespace"], _preload_content=False)
    return list(json.loads(response.data)["items"])
