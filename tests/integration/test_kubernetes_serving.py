"""HTTPS, NetworkPolicies, resources and quotas of the Kubernetes adapter, over real HTTP against kmock's
emulator (harness/k8s_emulator.py); every object's content is read back from the emulator and asserted.

- HTTPS: a listener (protocol HTTPS, a certificateRef to a kubernetes.io/tls Secret made from the
  environment's files) on the shared Gateway, the HTTPRoute attached to it only (``sectionName``); the other
  listeners of the Gateway are left alone; all of it goes with the service's last revision.
- A NetworkPolicy per service admitting only the gateway's pods and the environment's namespaces, on the
  container port; kept up to date, removed with the service.
- Requests and limits in the pod template; a deployment a ResourceQuota has no room for is refused before
  any object is made.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from adapters.kubernetes_platform import KubernetesPlatform
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    Environment,
    Features,
    Governance,
    Phase,
    PlatformConfig,
    ReplicaResources,
    Strategy,
    Target,
)
from engine.platform import NetworkPolicySpec, RevisionSpec, Serving, TlsMaterial
from engine.reconciler import DeploymentReconciler
from engine.state import EventKind
from tests.integration.k8s_emulator import FakeController, KubeEmulator
from tests.tls_certs import CertificateFiles, make_certificates

pytestmark = pytest.mark.integration

TARGET = Target(service="web", environment="prod")
GATEWAY_API = ("gateway.networking.k8s.io", "v1")
HTTP_LISTENER = {"name": "http", "protocol": "HTTP", "port": 80}


@pytest.fixture(scope="module")
def emulator() -> Iterator[KubeEmulator]:
    with KubeEmulator(gateway_api=True) as running:
        yield running


class Cluster:
    def __init__(self, emulator: KubeEmulator, tmp_path: Path) -> None:
        self.emulator = emulator
        self.namespace = emulator.new_namespace("app")
        self.gateway_namespace = emulator.new_namespace("gw")
        self.api = emulator.api_client()
        self.tmp_path = tmp_path
        self.controller = FakeController(emulator, self.namespace)
        self.adapters: list[KubernetesPlatform] = []

    def settings(self, gateway: bool = True) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "host": self.emulator.url,
            "namespace": self.namespace,
            "retryBackoff": 0.01,
        }
        if gateway:
            settings["gateway"] = {
                "name": "public",
                "namespace": self.gateway_namespace,
                "hostname": "shop.test",
            }
        return settings

    def adapter(self, gateway: bool = True) -> KubernetesPlatform:
        made = KubernetesPlatform(self.tmp_path / "state", self.settings(gateway))
        self.adapters.append(made)
        return made

    def make_gateway(self) -> None:
        body = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "public"},
            "spec": {"gatewayClassName": "test", "listeners": [HTTP_LISTENER]},
        }
        client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            *GATEWAY_API, self.gateway_namespace, "gateways", body
        )

    def custom(self, namespace: str, plural: str, name: str) -> dict[str, Any]:
        return dict(
            client.CustomObjectsApi(self.api).get_namespaced_custom_object(
                *GATEWAY_API, namespace, plural, name
            )
        )

    def read(self, read: Any, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(read(name, namespace, _preload_content=False).data))
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def policy(self, name: str) -> dict[str, Any] | None:
        return self.read(
            client.NetworkingV1Api(self.api).read_namespaced_network_policy, name, self.namespace
        )

    def secret(self, name: str) -> dict[str, Any] | None:
        return self.read(client.CoreV1Api(self.api).read_namespaced_secret, name, self.gateway_namespace)

    def deployment(self, name: str) -> dict[str, Any] | None:
        return self.read(client.AppsV1Api(self.api).read_namespaced_deployment, name, self.namespace)

    def close(self) -> None:
        for made in self.adapters:
            made.close()
        self.controller.stop()
        self.api.close()


@pytest.fixture
def cluster(emulator: KubeEmulator, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(emulator, tmp_path)
    yield made
    made.close()
    assert not made.controller.errors, made.controller.errors


@pytest.fixture
def certificates(tmp_path: Path) -> CertificateFiles:
    return make_certificates(tmp_path / "certs")


def artifact(version: str) -> Artifact:
    return Artifact(name="web", version=version, source=f"docker://registry.test/web:{version}")


def spec(
    version: str, serving: Serving | None = None, resources: ReplicaResources | None = None
) -> RevisionSpec:
    return RevisionSpec(
        target=TARGET, artifact=artifact(version), replicas=2, serving=serving, resources=resources
    )


def https_serving(certificates: CertificateFiles, namespaces: list[str] | None = None) -> Serving:
    tls = TlsMaterial(
        certificate=str(certificates.certificate), key=f"file:{certificates.key}", ca=str(certificates.ca)
    )
    return Serving(tls=tls, network_policy=NetworkPolicySpec(allowed_namespaces=namespaces or ["monitoring"]))


def test_https_listener_secret_and_route(cluster: Cluster, certificates: CertificateFiles) -> None:
    cluster.make_gateway()
    adapter = cluster.adapter()
    serving = https_serving(certificates)
    adapter.ensure_revision(spec("1.0.0", serving))
    adapter.ensure_revision(spec("1.0.0", serving))  # idempotent: one listener, one Secret
    cluster.controller.settle()
    state = adapter.set_traffic(TARGET, {"1-0-0": 100})
    assert state.address == "https://shop.test"

    secret = cluster.secret("web-prod-tls")
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    assert base64.b64decode(secret["data"]["tls.crt"]) == certificates.certificate.read_bytes()
    assert base64.b64decode(secret["data"]["tls.key"]) == certificates.key.read_bytes()

    listeners = cluster.custom(cluster.gateway_namespace, "gateways", "public")["spec"]["listeners"]
    assert listeners == [
        HTTP_LISTENER,
        {
            "name": "https-web-prod",
            "protocol": "HTTPS",
            "port": 443,
            "hostname": "shop.test",
            "tls": {
                "mode": "Terminate",
                "certificateRefs": [{"group": "", "kind": "Secret", "name": "web-prod-tls"}],
            },
            "allowedRoutes": {
                "namespaces": {
                    "from": "Selector",
                    "selector": {"matchLabels": {"kubernetes.io/metadata.name": cluster.namespace}},
                },
                "kinds": [{"kind": "HTTPRoute"}],
            },
        },
    ]
    route = cluster.custom(cluster.namespace, "httproutes", "web-prod")
    assert route["spec"]["parentRefs"] == [
        {"name": "public", "namespace": cluster.gateway_namespace, "sectionName": "https-web-prod"}
    ]

    # TLS turned off: the route leaves the listener, which goes with its Secret; the HTTP listener stays.
    adapter.ensure_revision(spec("1.0.0", Serving()))
    assert cluster.custom(cluster.gateway_namespace, "gateways", "public")["spec"]["listeners"] == [
        HTTP_LISTENER
    ]
    assert cluster.custom(cluster.namespace, "httproutes", "web-prod")["spec"]["parentRefs"] == [
        {"name": "public", "namespace": cluster.gateway_namespace}
    ]
    assert cluster.secret("web-prod-tls") is None
    assert adapter.traffic(TARGET).address == "http://shop.test"


def test_everything_goes_with_the_services_last_revision(
    cluster: Cluster, certificates: CertificateFiles
) -> None:
    cluster.make_gateway()
    adapter = cluster.adapter()
    serving = https_serving(certificates)
    adapter.ensure_revision(spec("1.0.0", serving))
    adapter.ensure_revision(spec("2.0.0", serving))
    adapter.remove_revision(TARGET, "1-0-0")  # another revision is left: the service stays as it is
    assert cluster.policy("web-prod-ingress") is not None and cluster.secret("web-prod-tls") is not None
    adapter.remove_revision(TARGET, "2-0-0")
    assert cluster.policy("web-prod-ingress") is None
    assert cluster.secret("web-prod-tls") is None
    assert cluster.custom(cluster.gateway_namespace, "gateways", "public")["spec"]["listeners"] == [
        HTTP_LISTENER
    ]


def test_network_policy_admits_only_the_gateway_and_the_environments_namespaces(
    cluster: Cluster, certificates: CertificateFiles
) -> None:
    cluster.make_gateway()
    adapter = cluster.adapter()
    adapter.ensure_revision(spec("1.0.0", https_serving(certificates, ["monitoring", "batch"])))
    policy = cluster.policy("web-prod-ingress")
    assert policy is not None
    assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "deploy-orchestrator"
    assert policy["spec"] == {
        "podSelector": {
            "matchLabels": {"app.kubernetes.io/name": "web", "deploy-orchestrator/environment": "prod"}
        },
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": cluster.gateway_namespace}
                        },
                        "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "public"}},
                    },
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/metadata.name",
                                    "operator": "In",
                                    "values": ["batch", "monitoring"],
                                }
                            ]
                        }
                    },
                ],
                "ports": [{"protocol": "TCP", "port": 8080}],
            }
        ],
    }
    # The environment's namespaces change: the same policy is brought up to date.
    adapter.ensure_revision(spec("1.0.0", https_serving(certificates, ["batch"])))
    updated = cluster.policy("web-prod-ingress")
    assert updated is not None
    assert updated["spec"]["ingress"][0]["from"][1]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "batch"
    ]
    # No policy asked for any more: none is left.
    adapter.ensure_revision(spec("1.0.0", Serving()))
    assert cluster.policy("web-prod-ingress") is None


def test_a_policy_without_a_gateway_names_the_environments_gateway(cluster: Cluster) -> None:
    adapter = cluster.adapter(gateway=False)
    policy = NetworkPolicySpec(gateway_name="edge", gateway_namespace="ingress", allowed_namespaces=[])
    adapter.ensure_revision(spec("1.0.0", Serving(network_policy=policy)))
    made = cluster.policy("web-prod-ingress")
    assert made is not None
    assert made["spec"]["ingress"][0]["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}},
            "podSelector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "edge"}},
        }
    ]
    assert not adapter.capabilities.serves_tls and adapter.capabilities.network_policy


def test_requests_and_limits_are_the_environments(cluster: Cluster) -> None:
    adapter = cluster.adapter(gateway=False)
    resources = ReplicaResources(cpu=0.5, memory=128 * 2**20, disk=2**30)
    adapter.ensure_revision(spec("1.0.0", resources=resources))
    deployment = cluster.deployment("web-prod-1-0-0")
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    expected = {"cpu": "500m", "memory": str(128 * 2**20), "ephemeral-storage": str(2**30)}
    assert container["resources"] == {"requests": expected, "limits": expected}


def test_a_deployment_the_quota_has_no_room_for_is_refused_before_any_object(cluster: Cluster) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "compute"},
        "spec": {"hard": {"requests.memory": "1Gi", "pods": "10"}},
        "status": {
            "hard": {"requests.memory": "1Gi", "pods": "10"},
            "used": {"requests.memory": "800Mi", "pods": "3"},
        },
    }
    client.CoreV1Api(cluster.api).create_namespaced_resource_quota(cluster.namespace, quota)
    settings = cluster.settings(gateway=False)
    environment = Environment.model_validate({"name": "prod", "resources": {"memory": "512Mi"}})
    request = DeploymentRequest(
        artifact=artifact("1.0.0"),
        strategy=Strategy(type="rolling", replicas=2),
        environment="prod",
        platform=PlatformConfig(type="kubernetes", settings=settings),
        governance=Governance(environment=environment, features=Features()),
    )
    journal = Journal(cluster.tmp_path / "journal.db")
    journal.submit("k1", request, actor="test")
    journal.append("k1", EventKind.ADMITTED, {})
    reconciler = DeploymentReconciler(journal, "k1", lambda config: cluster.adapter(gateway=False))
    state = reconciler.run(deadline_s=30, sleep=lambda _: None)
    assert state.phase() is Phase.FAILED
    assert state.message == (
        "refused before any change: prod: needs 2 x 512 MiB memory, "
        f"ResourceQuota compute in {cluster.namespace} has 224 MiB free"
    )
    assert cluster.emulator.objects_in(cluster.namespace) == [("resourcequotas", "compute")]
