"""The Kubernetes adapter over real HTTP against kmock's Kubernetes emulator (see harness/k8s_emulator.py).

The emulator runs no controllers: a ``FakeController`` plays the Deployment controller, in the background for
the contract (so that a replica-ratio split can become ready while ``set_traffic`` waits) and by explicit
``settle()`` calls where a test wants to see the state before the controller acts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from kubernetes import client

from adapters.kubernetes_platform import (
    ANN_DEPLOYMENT_ID,
    ANN_REQUESTED_WEIGHTS,
    ANN_SHA256,
    ANN_SOURCE,
    ANN_VERSION,
    KubernetesPlatform,
    dns_name,
    replica_counts,
)
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy, Target
from engine.platform import PlatformError, RevisionSpec, SupervisionMode, TransientPlatformError
from engine.state import EventKind
from engine.supervision import SupervisorStateManager
from tests.integration.contract import ContractEnv, PlatformContract, deploy, wait_ready
from tests.integration.environments import closed_port, prometheus_server
from tests.integration.k8s_emulator import FakeController, KubeEmulator

pytestmark = pytest.mark.integration

IMAGE = "registry.test/web"
SHA = "ab" * 32
GATEWAY = {"name": "public", "namespace": "gateways"}
TARGET = Target(service="web", environment="test")


def make_artifact(version: str) -> Artifact:
    return Artifact(
        name="web",
        version=version,
        source=f"docker://{IMAGE}:{version}",
        sha256=SHA,
        command=["/app/serve", "--verbose"],
        env={"GREETING": "hello"},
        health_path="/ready",
    )


def spec(version: str, replicas: int = 1, deployment_id: str = "dep-1") -> RevisionSpec:
    return RevisionSpec(
        target=TARGET, artifact=make_artifact(version), replicas=replicas, deployment_id=deployment_id
    )


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator(gateway_api=True) as running:
        yield running


@pytest.fixture(scope="module")
def emulator_without_gateway_api() -> Iterator[KubeEmulator]:
    with KubeEmulator(gateway_api=False) as running:
        yield running


@dataclass
class K8s:
    """One test's namespace on the emulator, its controller and an adapter over it."""

    emulator: KubeEmulator
    namespace: str
    controller: FakeController
    state_dir: Path
    settings: dict[str, Any]
    adapters: list[KubernetesPlatform] = field(default_factory=list)

    def adapter(self, **overrides: Any) -> KubernetesPlatform:
        made = KubernetesPlatform(self.state_dir, {**self.settings, **overrides})
        self.adapters.append(made)
        return made

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.emulator.api_client())

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.emulator.api_client())

    def deployment(self, name: str) -> dict[str, Any]:
        response = self.apps.read_namespaced_deployment(name, self.namespace, _preload_content=False)
        return dict(json.loads(response.data))

    def service(self, name: str) -> dict[str, Any]:
        response = self.core.read_namespaced_service(name, self.namespace, _preload_content=False)
        return dict(json.loads(response.data))

    def route(self, name: str) -> dict[str, Any]:
        api = client.CustomObjectsApi(self.emulator.api_client())
        route = api.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", self.namespace, "httproutes", name
        )
        return dict(route)


def _k8s(emulator: KubeEmulator, tmp_path: Path, **settings: Any) -> Iterator[K8s]:
    namespace = emulator.new_namespace()
    controller = FakeController(emulator, namespace)
    base = {"host": emulator.url, "namespace": namespace, "splitReadyTimeout": 20, "retryBackoff": 0.01}
    setup = K8s(emulator, namespace, controller, tmp_path, {**base, **settings})
    try:
        yield setup
    finally:
        for made in setup.adapters:
            made.close()
        controller.stop()
    assert not controller.errors, controller.errors


@pytest.fixture
def k8s(emulator: KubeEmulator, tmp_path: Path) -> Iterator[K8s]:
    yield from _k8s(emulator, tmp_path)


@pytest.fixture
def k8s_gateway(emulator: KubeEmulator, tmp_path: Path) -> Iterator[K8s]:
    yield from _k8s(emulator, tmp_path, gateway=GATEWAY)


def _contract_env(setup: K8s) -> ContractEnv:
    setup.controller.start()
    return ContractEnv(
        adapter=setup.adapter(),
        target=TARGET,
        make_artifact=make_artifact,
        settle=setup.controller.settle,
        reopen=setup.adapter,
        ready_timeout_s=20.0,
    )


class TestKubernetesContract(PlatformContract):
    """Service selector for one revision, replica ratio for a split."""

    @pytest.fixture
    def contract_env(self, k8s: K8s) -> ContractEnv:
        return _contract_env(k8s)


class TestKubernetesGatewayContract(PlatformContract):
    """Gateway API HTTPRoute weights."""

    @pytest.fixture
    def contract_env(self, k8s_gateway: K8s) -> ContractEnv:
        return _contract_env(k8s_gateway)


# --------------------------------------------------------------------------------------------
# Objects and what they record
# --------------------------------------------------------------------------------------------
def test_labels_and_annotations_record_the_deployment_id(k8s: K8s) -> None:
    k8s.adapter().ensure_revision(spec("1.0.0", replicas=2, deployment_id="dep-42"))
    deployment = k8s.deployment("web-test-1-0-0")
    labels, annotations = deployment["metadata"]["labels"], deployment["metadata"]["annotations"]
    assert labels["app.kubernetes.io/name"] == "web"
    assert labels["app.kubernetes.io/managed-by"] == "deploy-orchestrator"
    assert labels["deploy-orchestrator/environment"] == "test"
    assert labels["deploy-orchestrator/revision"] == "1-0-0"
    assert annotations[ANN_DEPLOYMENT_ID] == "dep-42"
    assert annotations[ANN_VERSION] == "1.0.0"
    assert annotations[ANN_SOURCE] == f"docker://{IMAGE}:1.0.0"
    assert annotations[ANN_SHA256] == SHA
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{IMAGE}:1.0.0"
    assert container["command"] == ["/app/serve"] and container["args"] == ["--verbose"]
    assert {"name": "PORT", "value": "8080"} in container["env"]
    assert {"name": "GREETING", "value": "hello"} in container["env"]
    assert container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}


def test_a_new_deployment_of_the_same_revision_updates_its_annotation(k8s: K8s) -> None:
    adapter = k8s.adapter()
    adapter.ensure_revision(spec("1.0.0", deployment_id="dep-1"))
    adapter.ensure_revision(spec("1.0.0", deployment_id="dep-2"))
    assert k8s.deployment("web-test-1-0-0")["metadata"]["annotations"][ANN_DEPLOYMENT_ID] == "dep-2"


def test_long_names_are_dns_safe_and_distinct(k8s: K8s) -> None:
    service, environment = "s" * 40, "e" * 20
    first, second = dns_name(service, environment, "1-0-0"), dns_name(service, environment, "1-0-1")
    assert len(first) <= 63 and len(second) <= 63 and first != second
    target = Target(service=service, environment=environment)
    artifact = make_artifact("1.0.0").model_copy(update={"name": service})
    k8s.adapter().ensure_revision(RevisionSpec(target=target, artifact=artifact, replicas=1))
    assert k8s.deployment(first)["metadata"]["labels"]["app.kubernetes.io/name"] == service


def test_a_source_that_is_no_image_is_refused(k8s: K8s) -> None:
    artifact = make_artifact("1.0.0").model_copy(update={"source": "local"})
    with pytest.raises(ValueError, match="not a container image"):
        k8s.adapter().ensure_revision(RevisionSpec(target=TARGET, artifact=artifact, replicas=1))
    assert k8s.emulator.objects_in(k8s.namespace) == []


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="namespac"):
        KubernetesPlatform(tmp_path, {"host": "http://127.0.0.1:1", "namespacee": "typo"})


# --------------------------------------------------------------------------------------------
# Traffic without a gateway
# --------------------------------------------------------------------------------------------
def _deploy_ready(k8s: K8s, adapter: KubernetesPlatform, version: str, replicas: int = 1) -> None:
    adapter.ensure_revision(spec(version, replicas))
    env = ContractEnv(
        adapter=adapter, target=TARGET, make_artifact=make_artifact, settle=k8s.controller.settle
    )
    wait_ready(env, make_artifact(version).revision, replicas)


def test_blue_green_switches_the_service_selector_and_back(k8s: K8s) -> None:
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0", replicas=2)
    _deploy_ready(k8s, adapter, "2.0.0", replicas=2)
    for revision in ("1-0-0", "2-0-0", "1-0-0"):
        state = adapter.set_traffic(TARGET, {revision: 100})
        assert state.weights == {revision: 100}
        assert k8s.service("web-test")["spec"]["selector"]["deploy-orchestrator/revision"] == revision
    # Blue stays scaled up beside green, which is what makes the switch back instant.
    assert {r.revision: r.desired_replicas for r in adapter.list_revisions(TARGET)} == {
        "1-0-0": 2,
        "2-0-0": 2,
    }
    assert adapter.traffic(TARGET).address == f"http://web-test.{k8s.namespace}.svc.cluster.local:80"


def test_a_split_is_realised_by_the_replica_ratio(k8s: K8s) -> None:
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0", replicas=2)
    _deploy_ready(k8s, adapter, "2.0.0", replicas=1)
    k8s.controller.start()
    state = adapter.set_traffic(TARGET, {"1-0-0": 75, "2-0-0": 25})
    assert state.weights == {"1-0-0": 75, "2-0-0": 25}
    assert k8s.deployment("web-test-1-0-0")["spec"]["replicas"] == 3
    assert k8s.deployment("web-test-2-0-0")["spec"]["replicas"] == 1
    service = k8s.service("web-test")
    assert "deploy-orchestrator/revision" not in service["spec"]["selector"]
    assert json.loads(service["metadata"]["annotations"][ANN_REQUESTED_WEIGHTS]) == {"1-0-0": 75, "2-0-0": 25}
    # Back to one revision: each gets its own replica count again.
    adapter.set_traffic(TARGET, {"2-0-0": 100})
    assert {r.revision: r.desired_replicas for r in adapter.list_revisions(TARGET)} == {
        "1-0-0": 2,
        "2-0-0": 1,
    }


def test_traffic_reports_the_ready_share_not_the_request(k8s: K8s) -> None:
    adapter = k8s.adapter(splitReadyTimeout=1)
    _deploy_ready(k8s, adapter, "1.0.0")
    adapter.ensure_revision(spec("2.0.0"))
    k8s.controller.never_ready.add("2-0-0")
    k8s.controller.start()
    state = adapter.set_traffic(TARGET, {"1-0-0": 80, "2-0-0": 20})
    assert state.weights == {"1-0-0": 100, "2-0-0": 0}
    requested = k8s.service("web-test")["metadata"]["annotations"][ANN_REQUESTED_WEIGHTS]
    assert json.loads(requested) == {"1-0-0": 80, "2-0-0": 20}


def test_replica_counts_approximate_within_the_bound() -> None:
    assert replica_counts({"a": 80, "b": 20}, 1, 20) == {"a": 4, "b": 1}
    assert replica_counts({"a": 50, "b": 50}, 3, 20) == {"a": 2, "b": 2}
    inexact = replica_counts({"a": 99, "b": 1}, 1, 10)
    assert inexact["b"] == 1 and sum(inexact.values()) <= 10


def test_status_older_than_the_spec_is_not_ready(k8s: K8s) -> None:
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0")
    adapter.ensure_revision(spec("1.0.0", replicas=3))  # the API server bumps the generation
    status = adapter.revision_status(TARGET, "1-0-0")
    assert status is not None and not status.ready and "not yet observed" in status.message
    k8s.controller.settle()
    status = adapter.revision_status(TARGET, "1-0-0")
    assert status is not None and status.ready and status.ready_replicas == 3


# --------------------------------------------------------------------------------------------
# Gateway API
# --------------------------------------------------------------------------------------------
def test_gateway_split_writes_httproute_weights(k8s_gateway: K8s) -> None:
    k8s = k8s_gateway
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0")
    _deploy_ready(k8s, adapter, "2.0.0")
    state = adapter.set_traffic(TARGET, {"1-0-0": 70, "2-0-0": 30})
    assert state.weights == {"1-0-0": 70, "2-0-0": 30}
    assert state.address == "gateway://gateways/public"
    route = k8s.route("web-test")
    assert route["spec"]["parentRefs"] == [GATEWAY]
    backends = {ref["name"]: ref["weight"] for ref in route["spec"]["rules"][0]["backendRefs"]}
    assert backends == {"web-test-1-0-0": 70, "web-test-2-0-0": 30}
    assert k8s.service("web-test-2-0-0")["spec"]["selector"]["deploy-orchestrator/revision"] == "2-0-0"
    # No replica is touched: the weights are the route's.
    assert {r.revision: r.desired_replicas for r in adapter.list_revisions(TARGET)} == {
        "1-0-0": 1,
        "2-0-0": 1,
    }
    adapter.set_traffic(TARGET, {"1-0-0": 100, "2-0-0": 0})
    adapter.remove_revision(TARGET, "2-0-0")
    assert ("services", "web-test-2-0-0") not in k8s.emulator.objects_in(k8s.namespace)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def test_validate_names_an_unreachable_endpoint(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    adapter = KubernetesPlatform(tmp_path, {"host": endpoint, "namespace": "default"})
    with pytest.raises(PlatformError) as raised:
        adapter.validate()
    assert raised.value.platform == "kubernetes"
    assert raised.value.endpoint == endpoint
    assert "connection refused" in raised.value.cause
    assert endpoint in str(raised.value)


def test_kubeconfig_and_context_are_honoured(emulator: KubeEmulator, tmp_path: Path) -> None:
    namespace, closed = emulator.new_namespace(), f"http://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "emulator", "cluster": {"server": emulator.url}},
                    {"name": "elsewhere", "cluster": {"server": closed}},
                ],
                "users": [{"name": "tester", "user": {"token": "dummy-token-for-tests"}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}},
                    {"name": "elsewhere", "context": {"cluster": "elsewhere", "user": "tester"}},
                ],
                "current-context": "elsewhere",
            }
        )
    )
    chosen = KubernetesPlatform(
        tmp_path, {"kubeconfig": str(kubeconfig), "context": "emulator", "namespace": namespace}
    )
    chosen.validate()
    chosen.ensure_revision(spec("1.0.0"))
    assert [r.revision for r in chosen.list_revisions(TARGET)] == ["1-0-0"]
    current = KubernetesPlatform(tmp_path, {"kubeconfig": str(kubeconfig), "namespace": namespace})
    with pytest.raises(PlatformError, match="connection refused") as raised:
        current.validate()
    assert raised.value.endpoint == closed
    missing = KubernetesPlatform(tmp_path, {"kubeconfig": str(tmp_path / "absent"), "namespace": namespace})
    with pytest.raises(PlatformError, match="cannot load the client configuration"):
        missing.validate()


def test_validate_refuses_a_missing_namespace_before_any_change(
    emulator: KubeEmulator, tmp_path: Path
) -> None:
    adapter = KubernetesPlatform(tmp_path, {"host": emulator.url, "namespace": "nowhere"})
    with pytest.raises(PlatformError, match="namespace 'nowhere' does not exist"):
        adapter.validate()
    assert emulator.objects_in("nowhere") == []


def test_validate_reports_refused_credentials(emulator: KubeEmulator, tmp_path: Path) -> None:
    namespace = emulator.new_namespace("locked")
    fault = emulator.inject_fault(
        "GET", rf"/namespaces/{namespace}/", 403, times=None, message="forbidden: nope"
    )
    adapter = KubernetesPlatform(tmp_path, {"host": emulator.url, "namespace": namespace})
    try:
        with pytest.raises(PlatformError, match="credentials refused") as raised:
            adapter.validate()
        assert "forbidden: nope" in raised.value.cause
    finally:
        fault.remaining = 0


def test_validate_requires_the_gateway_api_when_a_gateway_is_configured(
    emulator_without_gateway_api: KubeEmulator, tmp_path: Path
) -> None:
    emulator = emulator_without_gateway_api
    namespace = emulator.new_namespace()
    plain = KubernetesPlatform(tmp_path, {"host": emulator.url, "namespace": namespace})
    plain.validate()
    adapter = KubernetesPlatform(tmp_path, {"host": emulator.url, "namespace": namespace, "gateway": GATEWAY})
    with pytest.raises(PlatformError, match="Gateway API not available"):
        adapter.validate()
    assert emulator.objects_in(namespace) == []


# --------------------------------------------------------------------------------------------
# Errors and retries
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [503, 429])
def test_transient_errors_are_retried(k8s: K8s, status: int) -> None:
    adapter = k8s.adapter()
    adapter.ensure_revision(spec("1.0.0"))
    path = rf"/namespaces/{k8s.namespace}/deployments$"
    fault = k8s.emulator.inject_fault("GET", path, status, times=2)
    assert [r.revision for r in adapter.list_revisions(TARGET)] == ["1-0-0"]
    assert fault.remaining == 0


def test_persistent_5xx_becomes_a_transient_platform_error(k8s: K8s) -> None:
    adapter = k8s.adapter()
    fault = k8s.emulator.inject_fault("GET", rf"/namespaces/{k8s.namespace}/deployments$", 500, times=5)
    with pytest.raises(TransientPlatformError, match="HTTP 500") as raised:
        adapter.list_revisions(TARGET)
    assert fault.remaining == 2  # three attempts, then the error
    assert raised.value.endpoint == k8s.emulator.url


def test_a_4xx_is_permanent_and_carries_the_api_message(k8s: K8s) -> None:
    adapter = k8s.adapter()
    message = 'Deployment.apps "web-test-1-0-0" is invalid: spec.template: Invalid value'
    fault = k8s.emulator.inject_fault("POST", rf"/namespaces/{k8s.namespace}/deployments$", 422, 3, message)
    with pytest.raises(PlatformError) as raised:
        adapter.ensure_revision(spec("1.0.0"))
    assert not isinstance(raised.value, TransientPlatformError)
    assert message in raised.value.cause
    assert fault.remaining == 2  # not retried


def test_remove_of_something_never_there_is_a_no_op(k8s: K8s) -> None:
    k8s.adapter().remove_revision(TARGET, "9-9-9")
    k8s.adapter(gateway=GATEWAY).remove_revision(TARGET, "9-9-9")


# --------------------------------------------------------------------------------------------
# Native rolling updates
# --------------------------------------------------------------------------------------------
def _wait_rollout(adapter: KubernetesPlatform, settle: Callable[[], None], key: str) -> dict[str, Any]:
    deadline, status = time.monotonic() + 15.0, {}
    while time.monotonic() < deadline:
        settle()
        status = adapter.rollout_status(TARGET)
        if status[key]:
            return status
        time.sleep(0.1)
    raise AssertionError(f"rollout not {key} in time: {status}")


def test_rolling_update_progress_deadline_and_undo(k8s: K8s) -> None:
    adapter, settle = k8s.adapter(), k8s.controller.settle
    adapter.rolling_update(spec("1.0.0", replicas=3), max_surge=1, max_unavailable=0, progress_deadline_s=1)
    done = _wait_rollout(adapter, settle, "complete")
    assert done["revision"] == "1-0-0" and done["readyReplicas"] == 3 and done["updatedReplicas"] == 3
    assert adapter.traffic(TARGET).weights == {"1-0-0": 100}

    adapter.rolling_update(spec("2.0.0", replicas=3), max_surge=1, max_unavailable=0, progress_deadline_s=1)
    pending = adapter.rollout_status(TARGET)
    assert not pending["complete"] and pending["observedGeneration"] < pending["generation"]
    deployment = k8s.deployment("web-test")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert deployment["spec"]["progressDeadlineSeconds"] == 1
    assert _wait_rollout(adapter, settle, "complete")["revision"] == "2-0-0"

    k8s.controller.never_ready.add(f"{IMAGE}:3.0.0")
    adapter.rolling_update(spec("3.0.0", replicas=3), max_surge=1, max_unavailable=0, progress_deadline_s=1)
    settle()
    progressing = adapter.rollout_status(TARGET)
    assert not progressing["complete"] and not progressing["failed"]
    assert progressing["readyReplicas"] == 3  # the old pods keep serving
    failed = _wait_rollout(adapter, settle, "failed")
    assert any(c["reason"] == "ProgressDeadlineExceeded" for c in failed["conditions"])

    adapter.rollout_undo(TARGET, None)
    undoing = adapter.rollout_status(TARGET)
    assert not undoing["failed"] and not undoing["complete"]  # the old failure is about the old spec
    restored = _wait_rollout(adapter, settle, "complete")
    assert restored["revision"] == "2-0-0"
    container = k8s.deployment("web-test")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{IMAGE}:2.0.0"
    assert k8s.deployment("web-test")["metadata"]["annotations"][ANN_VERSION] == "2.0.0"


def test_a_repeated_rolling_update_keeps_the_undo_target(k8s: K8s) -> None:
    adapter = k8s.adapter()
    adapter.rolling_update(spec("1.0.0"), max_surge=1, max_unavailable=0, progress_deadline_s=60)
    adapter.rolling_update(spec("2.0.0"), max_surge=1, max_unavailable=0, progress_deadline_s=60)
    adapter.rolling_update(spec("2.0.0"), max_surge=1, max_unavailable=0, progress_deadline_s=60)
    adapter.rollout_undo(TARGET, None)
    assert adapter.rollout_status(TARGET)["revision"] == "1-0-0"


# --------------------------------------------------------------------------------------------
# Metrics and logs
# --------------------------------------------------------------------------------------------
def test_metrics_without_prometheus_count_servers(k8s: K8s) -> None:
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0", replicas=2)
    k8s.controller.never_ready.add("2-0-0")
    adapter.ensure_revision(spec("2.0.0", replicas=1))
    k8s.controller.settle()
    snapshots = adapter.metrics(TARGET)
    assert (snapshots["1-0-0"].servers_up, snapshots["1-0-0"].servers_total) == (2, 2)
    assert (snapshots["2-0-0"].servers_up, snapshots["2-0-0"].servers_total) == (0, 1)
    assert snapshots["1-0-0"].requests == 0 and snapshots["1-0-0"].errors == 0


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, prometheus_client.Counter]]:
    """A real Prometheus scraping a prometheus-client exporter on loopback every 0.5 s."""
    # Not waited for: the test waits for the counts itself.
    with prometheus_server(tmp_path, ["service", "revision", "code"], wait_scraped=False) as running:
        yield running.url, running.requests


def test_metrics_from_prometheus_counters(
    k8s: K8s, prometheus: tuple[str, prometheus_client.Counter]
) -> None:
    url, requests = prometheus
    requests.labels(service="web", revision="1-0-0", code="200").inc(40)
    requests.labels(service="web", revision="1-0-0", code="503").inc(2)
    requests.labels(service="other", revision="1-0-0", code="500").inc(7)
    adapter = k8s.adapter(metricsUrl=url)
    _deploy_ready(k8s, adapter, "1.0.0")
    deadline, snapshot = time.monotonic() + 30.0, None
    while time.monotonic() < deadline:
        try:
            snapshot = adapter.metrics(TARGET)["1-0-0"]
        except TransientPlatformError:  # Prometheus still starting
            snapshot = None
        if snapshot is not None and snapshot.requests == 42:
            break
        time.sleep(0.3)
    assert snapshot is not None and (snapshot.requests, snapshot.errors) == (42, 2), snapshot


def test_logs_of_a_revision_come_from_its_pods(k8s: K8s) -> None:
    adapter = k8s.adapter()
    adapter.ensure_revision(spec("1.0.0"))
    assert adapter.logs(TARGET, "1-0-0") == ""
    labels = {
        "app.kubernetes.io/name": "web",
        "deploy-orchestrator/environment": "test",
        "deploy-orchestrator/workload": "revision",
        "deploy-orchestrator/revision": "1-0-0",
    }
    pod = {
        "metadata": {"name": "web-test-1-0-0-abc", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": f"{IMAGE}:1.0.0"}]},
        "status": {"podIP": "10.1.2.3"},
    }
    k8s.core.create_namespaced_pod(k8s.namespace, pod)
    k8s.emulator.serve_pod_log(k8s.namespace, "web-test-1-0-0-abc", "listening on 8080\nGET /ready 200\n")
    text = adapter.logs(TARGET, "1-0-0", lines=10)
    assert "--- pod web-test-1-0-0-abc ---" in text and "GET /ready 200" in text
    status = adapter.revision_status(TARGET, "1-0-0")
    assert status is not None and status.endpoints == ["10.1.2.3:8080"]
    assert adapter.logs(TARGET, "2-0-0") == ""


def test_the_registry_builds_the_adapter(emulator: KubeEmulator, tmp_path: Path) -> None:
    from adapters import create_platform
    from engine.models import PlatformConfig

    namespace = emulator.new_namespace()
    settings = {"host": emulator.url, "namespace": namespace}
    adapter = create_platform(PlatformConfig(type="kubernetes", settings=settings), tmp_path)
    try:
        assert isinstance(adapter, KubernetesPlatform) and adapter.platform == "kubernetes"
        adapter.validate()
    finally:
        adapter.close()


def test_deploy_helper_works_with_a_fresh_controller(k8s: K8s) -> None:
    # The contract's deploy() with settle only (no background controller).
    env = ContractEnv(
        adapter=k8s.adapter(), target=TARGET, make_artifact=make_artifact, settle=k8s.controller.settle
    )
    assert deploy(env, "1.0.0", replicas=2).ready_replicas == 2


# --------------------------------------------------------------------------------------------
# Supervision: the cluster heals itself, the orchestrator reports
# --------------------------------------------------------------------------------------------
def test_live_state_is_reported_as_drift_and_never_repaired(k8s: K8s, tmp_path: Path) -> None:
    adapter = k8s.adapter()
    _deploy_ready(k8s, adapter, "1.0.0", replicas=2)
    assert adapter.supervision is SupervisionMode.REPORT
    live = adapter.live_state(TARGET, "1-0-0")
    assert (live.desired_replicas, live.ready_replicas, live.router) == (2, 2, None)
    journal = Journal(tmp_path / "journal.db")
    request = DeploymentRequest(
        artifact=make_artifact("1.0.0"),
        strategy=Strategy.model_validate({"type": "rolling", "replicas": 2}),
        environment=TARGET.environment,
        platform=PlatformConfig(type="kubernetes", settings=k8s.settings),
    )
    journal.submit("live", request, actor="test")
    journal.append("live", EventKind.ADMITTED, {})
    journal.append("live", EventKind.FINISHED, {"outcome": "succeeded", "weights": {"1-0-0": 100}})
    manager = SupervisorStateManager(journal, lambda config: k8s.adapter(**config.settings))
    name = adapter._revision_name(TARGET, "1-0-0")
    k8s.apps.patch_namespaced_deployment_status(name, k8s.namespace, {"status": {"readyReplicas": 1}})
    manager.update()
    manager.update()  # unchanged: not journaled twice
    k8s.controller.settle()  # the cluster's own controller heals it
    manager.update()
    drifts = [e.data for e in journal.events("live") if e.kind is EventKind.DRIFT]
    assert [(d["found"], d["done"]) for d in drifts] == [
        ("1/2 replicas ready", "nothing: the platform heals itself"),
        ("2/2 ready again", "nothing: the platform heals itself"),
    ]
    assert k8s.deployment(name)["spec"]["replicas"] == 2  # nothing was changed by the orchestrator
