"""Kubernetes: one Deployment per revision, traffic by Service selector, replica ratio or Gateway API weights.

Objects (all in ``settings.namespace``, labelled ``app.kubernetes.io/managed-by=deploy-orchestrator``):

- Deployment ``{service}-{environment}-{revision}`` per revision (names longer than 63 characters get a hash
  suffix); its annotations record the deployment id, the artifact version, source and sha256.
- Service ``{service}-{environment}``: where users reach the target.
- With ``gateway`` configured: a Service per revision and an HTTPRoute (``gateway.networking.k8s.io/v1``)
  whose backendRef weights are the percentages; ``traffic()`` reads the weights back from the HTTPRoute.

Without a gateway a Service selector can only pick pods, not weigh them, so:

- one revision at 100%: the Service selects that revision's pods (blue-green switch and switch-back);
- a split: the Service selects every revision's pods and the weights are realised by the replica ratio.
  ``set_traffic`` scales the revisions to the smallest replica counts that give the ratio (at most
  ``maxSplitReplicas`` in all; revisions outside the split are scaled to 0), waits up to
  ``splitReadyTimeout`` seconds for them to be ready, then switches the selector. The requested weights
  are recorded in an annotation on the Service, but ``traffic()`` reports the weights actually in force:
  the shares of *ready* replicas of the selected revisions. Going back to one revision restores every
  revision's own replica count (kept in the ``base-replicas`` annotation). ``ensure_revision`` sets the
  count it is given, so a step that re-ensures a revision during a split must call ``set_traffic`` again.

Kubernetes has no request metrics of its own: ``metrics()`` reports ready/desired replicas, and request and
5xx counts only when ``metricsUrl`` names a Prometheus whose ``http_requests_total`` counters carry the
labels of ``metricsSelector`` (no response time: a cumulative mean cannot be turned into deltas).

Nothing is kept in ``state_dir``: the cluster is the record, and a new instance reads everything back from it.
Transient API failures (5xx, 429, timeouts) are retried ``retries`` times with backoff, then raise
TransientPlatformError; other 4xx and refused connections raise PlatformError at once.

Native rolling updates (``rolling_update``, ``rollout_status``, ``rollout_undo``) drive one Deployment
``{service}-{environment}`` per target with the RollingUpdate strategy; the previous pod template is kept in
an annotation so that an undo re-applies exactly what ran before.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from pydantic import Field

from adapters.tls_files import TlsFileError, load_server_pair
from engine.models import MetricProviderConfig, MetricProviderType, Model, ReplicaResources, Target
from engine.platform import (
    CapacityPool,
    LiveState,
    MetricSnapshot,
    NetworkPolicySpec,
    PlatformCapabilities,
    PlatformError,
    Resource,
    RevisionSpec,
    RevisionStatus,
    Serving,
    SupervisionMode,
    TlsMaterial,
    TrafficState,
    TransientPlatformError,
)
from engine.quantities import kubernetes_bytes, kubernetes_cpu, kubernetes_cpu_cores
from engine.secrets import runtime_env

PLATFORM = "kubernetes"
MANAGER = "deploy-orchestrator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ENVIRONMENT = "deploy-orchestrator/environment"
LABEL_REVISION = "deploy-orchestrator/revision"
# Keeps the selectors of per-revision and rolling Deployments of one target from overlapping.
LABEL_WORKLOAD = "deploy-orchestrator/workload"
ANN_DEPLOYMENT_ID = "deploy-orchestrator/deployment-id"
ANN_VERSION = "deploy-orchestrator/artifact-version"
ANN_SOURCE = "deploy-orchestrator/artifact-source"
ANN_SHA256 = "deploy-orchestrator/artifact-sha256"
ANN_BASE_REPLICAS = "deploy-orchestrator/base-replicas"
ANN_TEMPLATE_HASH = "deploy-orchestrator/template-hash"
ANN_TEMPLATE = "deploy-orchestrator/template"
ANN_PREVIOUS_TEMPLATE = "deploy-orchestrator/previous-template"
ANN_REQUESTED_WEIGHTS = "deploy-orchestrator/requested-weights"
GATEWAY_GROUP, GATEWAY_VERSION = "gateway.networking.k8s.io", "v1"
LABEL_NAMESPACE_NAME = "kubernetes.io/metadata.name"  # set by the API server on every namespace
LABEL_GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"  # on the pods of a Gateway (Istio, others)
# JSON merge patch (RFC 7386): lists are replaced whole and null deletes a key. The client would otherwise
# label a dict body as a JSON patch.
MERGE_PATCH = "application/merge-patch+json"
CONTAINER_PORT = 8080
SERVICE_PORT = 80

log = logging.getLogger(__name__)
T = TypeVar("T")


class GatewaySettings(Model):
    name: str
    namespace: str | None = Field(default=None, description="Default: the adapter's namespace")
    route_name: str = Field(default="{service}-{environment}", description="May use {service}, {environment}")
    hostname: str | None = None
    https_port: int = Field(default=443, ge=1, le=65535, description="Of the HTTPS listener (tlsRequired)")
    pod_labels: dict[str, str] | None = Field(
        default=None, description="Labels of the gateway's pods, for NetworkPolicies (default: gateway-name)"
    )


class KubernetesSettings(Model):
    """The platform's ``settings`` (camelCase keys); unknown keys are refused, so typos surface."""

    host: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False
    namespace: str = "default"
    gateway: GatewaySettings | None = None
    verify_ssl: bool | None = None
    request_timeout: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=1, le=10, description="Attempts for transient failures")
    retry_backoff: float = Field(default=0.2, ge=0)
    max_split_replicas: int = Field(default=20, ge=2, le=200)
    split_ready_timeout: float = Field(default=120.0, ge=0)
    metrics_url: str | None = None
    metrics_selector: str = 'service="{service}",revision="{revision}"'
    state_dir: str | None = None


class RolloutCondition(Model):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None


class RolloutStatus(Model):
    revision: str | None
    desired_replicas: int
    generation: int | None = None
    observed_generation: int | None = None
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    conditions: list[RolloutCondition] = Field(default_factory=list)
    complete: bool = False
    failed: bool = False
    message: str = ""


class _ApiStatusError(PlatformError):
    def __init__(self, endpoint: str, cause: str, status: int) -> None:
        super().__init__(PLATFORM, endpoint, cause)
        self.status = status


def dns_name(*parts: str) -> str:
    """Join parts into a name of at most 63 characters; a hash suffix keeps long names distinct."""
    name = "-".join(parts)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def percentages(counts: dict[str, int]) -> dict[str, int]:
    """Integer shares summing to 100 (largest remainder); all 0 when nothing counts."""
    total = sum(counts.values())
    if total <= 0:
        return dict.fromkeys(counts, 0)
    exact = {key: 100 * value / total for key, value in counts.items()}
    result = {key: int(share) for key, share in exact.items()}
    by_remainder = sorted(exact, key=lambda key: exact[key] - result[key], reverse=True)
    for key in by_remainder[: 100 - sum(result.values())]:
        result[key] += 1
    return result


def replica_counts(weights: dict[str, int], min_total: int, max_total: int) -> dict[str, int]:
    """The smallest replica counts (each >= 1, at most ``max_total`` in all) closest to the weights' ratio."""
    best: tuple[float, dict[str, int]] | None = None
    for total in range(max(len(weights), min(min_total, max_total)), max(max_total, len(weights)) + 1):
        counts = {rev: max(1, int(weight * total / 100)) for rev, weight in weights.items()}
        by_remainder = sorted(weights, key=lambda rev: weights[rev] * total / 100 - counts[rev], reverse=True)
        for rev in by_remainder[: max(0, total - sum(counts.values()))]:
            counts[rev] += 1
        real = sum(counts.values())
        error = max(abs(100 * count / real - weights[rev]) for rev, count in counts.items())
        if real <= max(max_total, len(weights)) and (best is None or error < best[0] - 1e-9):
            best = (error, counts)
        if error < 1e-9:
            break
    assert best is not None
    return best[1]


def _selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _matches(labels: dict[str, str] | None, selector: dict[str, str]) -> bool:
    # Filtered here too: not every API server (nor every emulator) applies label selectors.
    return all((labels or {}).get(key) == value for key, value in selector.items())


def _map_patch(old: dict[str, str] | None, new: dict[str, str]) -> dict[str, str | None]:
    """A merge patch that turns map ``old`` into exactly ``new``."""
    return {**dict.fromkeys(set(old or {}) - set(new)), **new}


def _describe(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """'patch namespaced deployment web-test-1-0-0/default': what a failed call was about."""
    path = [arg for arg in args if isinstance(arg, str)]
    path += [
        arg["metadata"]["name"] for arg in args if isinstance(arg, dict) and "name" in arg.get("metadata", {})
    ]
    return f"{fn.__name__.replace('_', ' ')} {'/'.join(path)}".strip()


def _api_message(exc: client.ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason or exc.status)


class KubernetesPlatform:
    """The PlatformAdapter for Kubernetes; see the module docstring for the design."""

    platform = PLATFORM
    supervision = SupervisionMode.REPORT  # Deployments heal themselves; drift is only reported

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self._state_dir = state_dir
        self._settings = KubernetesSettings.model_validate(settings)
        self._namespace = self._settings.namespace
        self._gateway = self._settings.gateway
        self._api_client: client.ApiClient | None = None
        self._host = self._settings.host or ""
        notes = [
            "kubernetes: room is checked against the namespace's ResourceQuotas (nodes are the scheduler's)"
        ]
        if self._gateway is None:
            notes.append(
                "kubernetes: HTTPS needs a gateway (settings.gateway): a Service alone serves no TLS"
            )
        self.capabilities = PlatformCapabilities(
            serves_tls=self._gateway is not None,
            network_policy=True,
            limits=frozenset(Resource),
            capacity=frozenset(Resource),
            notes=notes,
        )

    # ----------------------------------------------------------------------------------------
    # Client and error handling
    # ----------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        if self._host:
            return self._host
        return self._settings.kubeconfig or ("in-cluster" if self._settings.in_cluster else "kubeconfig")

    def _client(self) -> client.ApiClient:
        if self._api_client is None:
            self._api_client = client.ApiClient(self._configuration())
        return self._api_client

    def _configuration(self) -> client.Configuration:
        settings, cfg = self._settings, client.Configuration()
        try:
            if settings.host:
                cfg.host = settings.host.rstrip("/")
            elif settings.in_cluster:
                config.load_incluster_config(client_configuration=cfg)
            else:
                config.load_kube_config(
                    config_file=settings.kubeconfig, context=settings.context, client_configuration=cfg
                )
        except (config.ConfigException, OSError, ValueError, TypeError) as exc:
            raise PlatformError(
                PLATFORM, self.endpoint, f"cannot load the client configuration: {exc}"
            ) from exc
        if settings.verify_ssl is not None:
            cfg.verify_ssl = settings.verify_ssl
        cfg.retries = False  # our own retry loop decides what is worth retrying
        self._host = cfg.host
        return cfg

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call the API; retry transient failures with bounded backoff; map errors to PlatformError."""
        what = _describe(fn, args)
        kwargs.setdefault("_request_timeout", self._settings.request_timeout)
        attempts = self._settings.retries
        for attempt in range(1, attempts + 1):
            try:
                return fn(*args, **kwargs)
            except (client.ApiException, urllib3.exceptions.HTTPError) as exc:
                error = self._classify(what, exc)
                if not isinstance(error, TransientPlatformError) or attempt == attempts:
                    raise error from exc
                log.warning("%s failed (attempt %d of %d): %s", what, attempt, attempts, error.cause)
                time.sleep(self._backoff(attempt, exc))
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int, exc: Exception) -> float:
        retry_after = getattr(exc, "headers", None) and exc.headers.get("Retry-After")  # type: ignore[attr-defined]
        if retry_after and str(retry_after).isdigit():
            return min(float(retry_after), 5.0)
        return min(self._settings.retry_backoff * 2 ** (attempt - 1), 5.0)

    def _classify(self, what: str, exc: Exception) -> PlatformError:
        endpoint = self.endpoint
        if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
            exc = exc.reason
        if isinstance(exc, urllib3.exceptions.NewConnectionError):
            refused = "refused" in str(exc).lower()
            cause = "connection refused" if refused else f"cannot connect: {exc}"
            return PlatformError(PLATFORM, endpoint, f"{what}: {cause}")
        if isinstance(exc, urllib3.exceptions.SSLError):
            return PlatformError(PLATFORM, endpoint, f"{what}: TLS failure: {exc}")
        if not isinstance(exc, client.ApiException):
            return TransientPlatformError(PLATFORM, endpoint, f"{what}: {type(exc).__name__}: {exc}")
        status, message = exc.status or 0, _api_message(exc)
        if status in (401, 403):
            return _ApiStatusError(endpoint, f"{what}: credentials refused ({status}): {message}", status)
        if status == 429 or status >= 500:
            return TransientPlatformError(PLATFORM, endpoint, f"{what}: HTTP {status}: {message}")
        return _ApiStatusError(endpoint, f"{what}: HTTP {status}: {message}", status)

    def _call_or_none(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Like _call, but None when the object does not exist (404)."""
        try:
            return self._call(fn, *args, **kwargs)
        except _ApiStatusError as exc:
            if exc.status == 404:
                return None
            raise

    def _get_json(self, path: str) -> dict[str, Any]:
        response = self._call(
            self._client().call_api,
            path,
            "GET",
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
        )
        return dict(json.loads(response.data or b"{}"))

    @property
    def _apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._client())

    @property
    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    @property
    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self._client())

    def close(self) -> None:
        if self._api_client is not None:
            self._api_client.close()
            self._api_client = None

    # ----------------------------------------------------------------------------------------
    # Validation
    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Connectivity, credentials, the namespace and (with a gateway) the Gateway API; changes nothing."""
        self._get_json("/version")
        self._call(self._apps.list_namespaced_deployment, self._namespace, limit=1)
        try:
            namespace = self._call_or_none(self._core.read_namespace, self._namespace)
        except _ApiStatusError as exc:
            # Credentials limited to one namespace may not read Namespace objects; the listing above
            # already proved they work there.
            namespace = True if exc.status == 403 else None
            if namespace is None:
                raise
        if namespace is None:
            raise PlatformError(PLATFORM, self.endpoint, f"namespace '{self._namespace}' does not exist")
        if self._gateway is not None:
            self._check_gateway_api()

    def _check_gateway_api(self) -> None:
        group = f"{GATEWAY_GROUP}/{GATEWAY_VERSION}"
        try:
            resources = self._get_json(f"/apis/{group}").get("resources", [])
        except _ApiStatusError as exc:
            if exc.status != 404:
                raise
            resources = []
        if not any(resource.get("name") == "httproutes" for resource in resources):
            raise PlatformError(
                PLATFORM,
                self.endpoint,
                f"Gateway API not available: {group} HTTPRoute is not served (install the Gateway API "
                "CRDs or remove 'gateway' from the settings)",
            )

    # ----------------------------------------------------------------------------------------
    # Names, labels and object bodies
    # ----------------------------------------------------------------------------------------
    def _target_name(self, target: Target) -> str:
        name = dns_name(target.service, target.environment)
        return name if name[0].isalpha() else dns_name("svc", name)  # Service names must start with a letter

    def _revision_name(self, target: Target, revision: str) -> str:
        name = dns_name(target.service, target.environment, revision)
        return name if name[0].isalpha() else dns_name("svc", name)

    @staticmethod
    def _target_labels(target: Target, workload: str) -> dict[str, str]:
        return {LABEL_NAME: target.service, LABEL_ENVIRONMENT: target.environment, LABEL_WORKLOAD: workload}

    def _revision_labels(self, target: Target, revision: str) -> dict[str, str]:
        return {**self._target_labels(target, "revision"), LABEL_REVISION: revision}

    @staticmethod
    def _artifact_annotations(spec: RevisionSpec) -> dict[str, str]:
        artifact = spec.artifact
        return {
            ANN_DEPLOYMENT_ID: spec.deployment_id,
            ANN_VERSION: artifact.version,
            ANN_SOURCE: artifact.source,
            ANN_SHA256: artifact.sha256 or "",
        }

    @staticmethod
    def _image(spec: RevisionSpec) -> str:
        source = spec.artifact.source.strip()
        image = source.removeprefix("docker://")
        if not image or image == "local" or "://" in image:
            raise ValueError(
                f"artifact source '{source}' is not a container image: Kubernetes needs an image reference "
                "such as 'registry.example/app:1.0' or 'docker://registry.example/app:1.0'"
            )
        return image

    def _pod_template(self, spec: RevisionSpec, labels: dict[str, str]) -> dict[str, Any]:
        artifact = spec.artifact
        env = {**runtime_env(artifact), "PORT": str(CONTAINER_PORT)}
        container: dict[str, Any] = {
            "name": "app",
            "image": self._image(spec),
            "ports": [{"name": "http", "containerPort": CONTAINER_PORT}],
            "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
            "readinessProbe": {
                "httpGet": {"path": artifact.health_path, "port": CONTAINER_PORT},
                "periodSeconds": 2,
                "failureThreshold": 3,
            },
        }
        if artifact.command:
            container["command"], container["args"] = artifact.command[:1], artifact.command[1:]
        if artifact.working_dir:
            container["workingDir"] = artifact.working_dir
        if spec.resources is not None and (quantities := _resource_quantities(spec.resources)):
            # Requests equal to limits: what the capacity check counted is what the replica may use.
            container["resources"] = {"requests": quantities, "limits": dict(quantities)}
        pod_labels = {**labels, LABEL_MANAGED_BY: MANAGER, LABEL_REVISION: spec.revision}
        return {"metadata": {"labels": pod_labels}, "spec": {"containers": [container]}}

    @staticmethod
    def _template_hash(template: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]

    def _deployment_body(self, spec: RevisionSpec) -> dict[str, Any]:
        labels = self._revision_labels(spec.target, spec.revision)
        template = self._pod_template(spec, labels)
        annotations = {
            **self._artifact_annotations(spec),
            ANN_BASE_REPLICAS: str(spec.replicas),
            ANN_TEMPLATE_HASH: self._template_hash(template),
        }
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": self._revision_name(spec.target, spec.revision),
                "labels": {**labels, LABEL_MANAGED_BY: MANAGER},
                "annotations": annotations,
            },
            "spec": {"replicas": spec.replicas, "selector": {"matchLabels": labels}, "template": template},
        }

    def _service_body(self, name: str, labels: dict[str, str], selector: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": {**labels, LABEL_MANAGED_BY: MANAGER}, "annotations": {}},
            "spec": {
                "selector": selector,
                "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": CONTAINER_PORT}],
            },
        }

    # ----------------------------------------------------------------------------------------
    # Reading Deployments
    # ----------------------------------------------------------------------------------------
    def _read_deployment(self, target: Target, name: str) -> Any | None:
        deployment = self._call_or_none(self._apps.read_namespaced_deployment, name, self._namespace)
        owner = {LABEL_NAME: target.service, LABEL_ENVIRONMENT: target.environment}
        if deployment is not None and not _matches(deployment.metadata.labels, owner):
            # Names are joined with '-', so service 'a-b' in 'c' and 'a' in 'b-c' could meet.
            raise PlatformError(
                PLATFORM, self.endpoint, f"Deployment {name} exists but belongs to another target"
            )
        return deployment

    def _revision_deployments(self, target: Target) -> list[Any]:
        selector = self._target_labels(target, "revision")
        listing = self._call(
            self._apps.list_namespaced_deployment, self._namespace, label_selector=_selector_string(selector)
        )
        found = [d for d in listing.items if _matches(d.metadata.labels, selector)]
        return sorted(found, key=lambda d: d.metadata.name)

    def _pod_endpoints(self, target: Target) -> dict[str, list[str]]:
        selector = self._target_labels(target, "revision")
        pods = self._call(
            self._core.list_namespaced_pod, self._namespace, label_selector=_selector_string(selector)
        )
        endpoints: dict[str, list[str]] = {}
        for pod in pods.items:
            labels = pod.metadata.labels or {}
            if _matches(labels, selector) and pod.status is not None and pod.status.pod_ip:
                endpoints.setdefault(labels.get(LABEL_REVISION, ""), []).append(
                    f"{pod.status.pod_ip}:{CONTAINER_PORT}"
                )
        return endpoints

    @staticmethod
    def _status_of(deployment: Any, endpoints: list[str] | None = None) -> RevisionStatus:
        spec, status, meta = deployment.spec, deployment.status, deployment.metadata
        ready = (status.ready_replicas if status else None) or 0
        running = (status.replicas if status else None) or 0
        observed = status.observed_generation if status else None
        message = ""
        if meta.generation and (observed or 0) < meta.generation:
            # The status describes an older spec: readiness is unknown until the controller catches up.
            message = f"status not yet observed for generation {meta.generation} (observed {observed})"
            ready = 0
        return RevisionStatus(
            revision=(meta.labels or {}).get(LABEL_REVISION, ""),
            desired_replicas=spec.replicas or 0,
            ready_replicas=ready,
            running_replicas=running,
            endpoints=endpoints or [],
            message=message,
        )

    # ----------------------------------------------------------------------------------------
    # Revisions
    # ----------------------------------------------------------------------------------------
    def ensure_revision(self, spec: RevisionSpec) -> RevisionStatus:
        body = self._deployment_body(spec)
        name = body["metadata"]["name"]
        current = self._read_deployment(spec.target, name)
        if current is None:
            try:
                current = self._call(self._apps.create_namespaced_deployment, self._namespace, body)
            except _ApiStatusError as exc:
                if exc.status != 409:  # created meanwhile by a concurrent attempt: converge below
                    raise
                current = self._read_deployment(spec.target, name)
        drift = self._deployment_drift(current, body)
        if drift:
            current = self._patch_deployment(name, drift)
        if self._gateway is not None:
            labels = self._revision_labels(spec.target, spec.revision)
            self._ensure_service(self._service_body(name, labels, labels))
        if spec.serving is not None:
            self._ensure_serving(spec.target, spec.serving)
        return self._status_of(current)

    @staticmethod
    def _deployment_drift(current: Any, body: dict[str, Any]) -> dict[str, Any]:
        wanted_annotations = body["metadata"]["annotations"]
        annotations = current.metadata.annotations or {}
        patch: dict[str, Any] = {}
        if any(annotations.get(key) != value for key, value in wanted_annotations.items()):
            patch["metadata"] = {"annotations": wanted_annotations}
        spec: dict[str, Any] = {}
        if current.spec.replicas != body["spec"]["replicas"]:
            spec["replicas"] = body["spec"]["replicas"]
        if annotations.get(ANN_TEMPLATE_HASH) != wanted_annotations[ANN_TEMPLATE_HASH]:
            spec["template"] = body["spec"]["template"]
        if spec:
            patch["spec"] = spec
        return patch

    def _patch_deployment(self, name: str, patch: dict[str, Any]) -> Any:
        return self._call(
            self._apps.patch_namespaced_deployment, name, self._namespace, patch, _content_type=MERGE_PATCH
        )

    def _scale(self, deployment: Any, replicas: int) -> None:
        if deployment.spec.replicas != replicas:
            self._patch_deployment(deployment.metadata.name, {"spec": {"replicas": replicas}})

    def revision_status(self, target: Target, revision: str) -> RevisionStatus | None:
        deployment = self._read_deployment(target, self._revision_name(target, revision))
        if deployment is None:
            return None
        return self._status_of(deployment, self._pod_endpoints(target).get(revision))

    def live_state(self, target: Target, revision: str, deep: bool = False) -> LiveState:
        """Ready against desired replicas of the revision's Deployment (one read): the cluster's own
        controllers heal it, the orchestrator only reports."""
        deployment = self._read_deployment(target, self._revision_name(target, revision))
        if deployment is None:
            return LiveState(revision=revision, desired_replicas=0, ready_replicas=0)
        status = self._status_of(deployment)
        return LiveState(
            revision=revision, desired_replicas=status.desired_replicas, ready_replicas=status.ready_replicas
        )

    def list_revisions(self, target: Target) -> list[RevisionStatus]:
        endpoints = self._pod_endpoints(target)
        statuses = [self._status_of(d) for d in self._revision_deployments(target)]
        return [
            status.model_copy(update={"endpoints": endpoints.get(status.revision, [])}) for status in statuses
        ]

    def remove_revision(self, target: Target, revision: str) -> None:
        name = self._revision_name(target, revision)
        self._call_or_none(
            self._apps.delete_namespaced_deployment,
            name,
            self._namespace,
            propagation_policy="Background",
            _preload_content=False,
        )
        if self._gateway is not None:
            self._call_or_none(
                self._core.delete_namespaced_service, name, self._namespace, _preload_content=False
            )
        if (
            not self._revision_deployments(target)
            and self._read_deployment(target, self._target_name(target)) is None
        ):
            self._remove_serving(target)  # the service's last revision is gone: its policy and TLS go too

    # ----------------------------------------------------------------------------------------
    # Traffic
    # ----------------------------------------------------------------------------------------
    def _check_weights(self, target: Target, weights: dict[str, int]) -> list[Any]:
        deployments = self._revision_deployments(target)
        existing = {d.metadata.labels[LABEL_REVISION] for d in deployments}
        for revision, weight in weights.items():
            if revision not in existing:
                known = ", ".join(sorted(existing)) or "none"
                raise ValueError(f"unknown revision '{revision}' of {target.key} (existing: {known})")
            if weight < 0 or weight > 100:
                raise ValueError(f"weight of '{revision}' is {weight}: use 0-100")
        if sum(weights.values()) != 100:
            raise ValueError(f"weights must sum to 100, got {sum(weights.values())}: {weights}")
        return deployments

    def set_traffic(self, target: Target, weights: dict[str, int]) -> TrafficState:
        deployments = self._check_weights(target, weights)
        if self._gateway is not None:
            return self._route_by_gateway(target, weights)
        active = {revision: weight for revision, weight in weights.items() if weight > 0}
        if len(active) == 1:
            return self._select_one(target, deployments, next(iter(active)), weights)
        return self._split_by_replicas(target, deployments, active, weights)

    def _ensure_service(self, body: dict[str, Any]) -> Any:
        name = body["metadata"]["name"]
        current = self._call_or_none(self._core.read_namespaced_service, name, self._namespace)
        if current is None:
            return self._call(self._core.create_namespaced_service, self._namespace, body)
        selector, annotations = body["spec"]["selector"], body["metadata"]["annotations"]
        stale_annotations = any(
            (current.metadata.annotations or {}).get(k) != v for k, v in annotations.items()
        )
        if (current.spec.selector or {}) == selector and not stale_annotations:
            return current
        patch = {
            "metadata": {"annotations": annotations},
            "spec": {"selector": _map_patch(current.spec.selector, selector)},
        }
        return self._call(
            self._core.patch_namespaced_service, name, self._namespace, patch, _content_type=MERGE_PATCH
        )

    def _target_service(self, target: Target, selector: dict[str, str], weights: dict[str, int]) -> None:
        body = self._service_body(self._target_name(target), self._target_labels(target, "service"), selector)
        body["metadata"]["annotations"][ANN_REQUESTED_WEIGHTS] = json.dumps(weights, sort_keys=True)
        self._ensure_service(body)

    def _select_one(
        self, target: Target, deployments: list[Any], revision: str, weights: dict[str, int]
    ) -> TrafficState:
        for deployment in deployments:  # undo a split's scaling: every revision gets its own count back
            base = (deployment.metadata.annotations or {}).get(ANN_BASE_REPLICAS)
            if base is not None and base.isdigit():
                self._scale(deployment, int(base))
        self._target_service(target, self._revision_labels(target, revision), weights)
        return self.traffic(target)

    def _split_by_replicas(
        self, target: Target, deployments: list[Any], active: dict[str, int], weights: dict[str, int]
    ) -> TrafficState:
        bases = {
            d.metadata.labels[LABEL_REVISION]: int((d.metadata.annotations or {}).get(ANN_BASE_REPLICAS) or 1)
            for d in deployments
        }
        min_total = max(bases[revision] for revision in active)
        counts = replica_counts(active, min_total, self._settings.max_split_replicas)
        for deployment in deployments:
            self._scale(deployment, counts.get(deployment.metadata.labels[LABEL_REVISION], 0))
        # The selector switches only when the ratio is in place (or the wait is over), so that the old
        # selection keeps serving meanwhile.
        if not self._wait_for_counts(target, counts):
            log.warning(
                "%s: replicas for %s not ready in time; the weights in force differ", target.key, counts
            )
        self._target_service(target, self._target_labels(target, "revision"), weights)
        return self.traffic(target)

    def _wait_for_counts(self, target: Target, counts: dict[str, int]) -> bool:
        deadline = time.monotonic() + self._settings.split_ready_timeout
        while True:
            statuses = [self._status_of(deployment) for deployment in self._revision_deployments(target)]
            ready = {status.revision: status.ready_replicas for status in statuses}
            if all(ready.get(revision, 0) == counts.get(revision, 0) for revision in {*ready, *counts}):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)

    def traffic(self, target: Target) -> TrafficState:
        if self._gateway is not None:
            return self._gateway_traffic(target)
        name = self._target_name(target)
        service = self._call_or_none(self._core.read_namespaced_service, name, self._namespace)
        if service is None:
            return TrafficState()
        address = f"http://{name}.{self._namespace}.svc.cluster.local:{SERVICE_PORT}"
        selector = service.spec.selector or {}
        if LABEL_REVISION in selector:
            return TrafficState(weights={selector[LABEL_REVISION]: 100}, address=address)
        if selector.get(LABEL_WORKLOAD) == "rolling":  # all pods of the rolling Deployment, of its revision
            rolling = self._read_deployment(target, name)
            labels = (rolling.spec.template.metadata.labels or {}) if rolling is not None else {}
            weights = {labels[LABEL_REVISION]: 100} if LABEL_REVISION in labels else {}
            return TrafficState(weights=weights, address=address)
        return TrafficState(weights=self._weights_from_ready(target, service, selector), address=address)

    def _weights_from_ready(self, target: Target, service: Any, selector: dict[str, str]) -> dict[str, int]:
        """Kube-proxy spreads connections evenly over ready endpoints: ready-replica shares are weights."""
        ready = {
            status.revision: status.ready_replicas
            for status, deployment in ((self._status_of(d), d) for d in self._revision_deployments(target))
            if _matches(deployment.spec.template.metadata.labels, selector)
        }
        requested = json.loads((service.metadata.annotations or {}).get(ANN_REQUESTED_WEIGHTS) or "{}")
        shown = {revision: count for revision, count in ready.items() if count > 0 or revision in requested}
        return percentages(shown)

    # ----------------------------------------------------------------------------------------
    # Gateway API
    # ----------------------------------------------------------------------------------------
    def _route_name(self, target: Target) -> tuple[str, str]:
        assert self._gateway is not None
        name = self._gateway.route_name.format(service=target.service, environment=target.environment)
        return dns_name(name), self._namespace

    def _route_body(self, target: Target, weights: dict[str, int], section: str | None) -> dict[str, Any]:
        assert self._gateway is not None
        name, _ = self._route_name(target)
        parent = self._parent_ref(section)
        backends = [
            {"name": self._revision_name(target, revision), "port": SERVICE_PORT, "weight": weight}
            for revision, weight in sorted(weights.items())
        ]
        spec: dict[str, Any] = {"parentRefs": [parent], "rules": [{"backendRefs": backends}]}
        if self._gateway.hostname:
            spec["hostnames"] = [self._gateway.hostname]
        labels = {**self._target_labels(target, "route"), LABEL_MANAGED_BY: MANAGER}
        return {
            "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }

    def _read_route(self, target: Target) -> dict[str, Any] | None:
        name, namespace = self._route_name(target)
        return self._call_or_none(
            self._custom.get_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            namespace,
            "httproutes",
            name,
        )

    def _route_by_gateway(self, target: Target, weights: dict[str, int]) -> TrafficState:
        for revision in weights:  # the backends must exist before the route points at them
            labels = self._revision_labels(target, revision)
            self._ensure_service(self._service_body(self._revision_name(target, revision), labels, labels))
        body = self._route_body(target, weights, self._https_listener(target))
        name, namespace = self._route_name(target)
        args = (GATEWAY_GROUP, GATEWAY_VERSION, namespace, "httproutes")
        if self._read_route(target) is None:
            self._call(self._custom.create_namespaced_custom_object, *args, body)
        else:
            self._call(
                self._custom.patch_namespaced_custom_object,
                *args,
                name,
                {"spec": body["spec"]},
                _content_type=MERGE_PATCH,
            )
        return self._gateway_traffic(target)

    def _gateway_traffic(self, target: Target) -> TrafficState:
        assert self._gateway is not None
        route = self._read_route(target)
        if route is None:
            return TrafficState()
        by_service = {
            self._revision_name(target, d.metadata.labels[LABEL_REVISION]): d.metadata.labels[LABEL_REVISION]
            for d in self._revision_deployments(target)
        }
        weights: dict[str, int] = {}
        for rule in route.get("spec", {}).get("rules", []):
            for ref in rule.get("backendRefs", []):
                key = by_service.get(ref.get("name", ""), ref.get("name", ""))
                weights[key] = weights.get(key, 0) + int(ref.get("weight", 1))
        hostnames = route.get("spec", {}).get("hostnames") or []
        gateway_ns = self._gateway.namespace or self._namespace
        address = f"http://{hostnames[0]}" if hostnames else f"gateway://{gateway_ns}/{self._gateway.name}"
        parents = route.get("spec", {}).get("parentRefs") or [{}]
        if parents[0].get("sectionName"):  # attached to our HTTPS listener only
            port = "" if self._gateway.https_port == 443 else f":{self._gateway.https_port}"
            address = (
                f"https://{hostnames[0]}{port}" if hostnames else f"{address}#{parents[0]['sectionName']}"
            )
        # Gateway API weights are relative; report them as percentages.
        return TrafficState(weights=percentages(weights), address=address)

    # ----------------------------------------------------------------------------------------
    # Serving: who may reach the pods (NetworkPolicy) and HTTPS (a Gateway listener with a Secret)
    # ----------------------------------------------------------------------------------------
    @property
    def _networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self._client())

    def _gateway_namespace(self) -> str:
        assert self._gateway is not None
        return self._gateway.namespace or self._namespace

    def _ensure_serving(self, target: Target, serving: Serving) -> None:
        """The target's NetworkPolicy and HTTPS listener as ``serving`` says; idempotent, absent when not
        asked for."""
        if serving.network_policy is not None:
            self._ensure_network_policy(target, serving.network_policy)
        else:
            self._delete_network_policy(target)
        if serving.tls is not None:
            if self._gateway is None:
                raise PlatformError(
                    PLATFORM, self.endpoint, f"{target.key}: HTTPS needs a gateway (settings.gateway)"
                )
            self._ensure_https_listener(target, serving.tls)
        elif self._gateway is not None:
            self._remove_https_listener(target)

    def _remove_serving(self, target: Target) -> None:
        self._delete_network_policy(target)
        if self._gateway is not None:
            self._remove_https_listener(target)

    # ---- NetworkPolicy ----------------------------------------------------------------------
    def _policy_name(self, target: Target) -> str:
        return dns_name(self._target_name(target), "ingress")

    def _network_policy_body(self, target: Target, policy: NetworkPolicySpec) -> dict[str, Any]:
        peers: list[dict[str, Any]] = []
        gateway = self._policy_gateway(policy)
        if gateway is not None:
            pods = {LABEL_GATEWAY_NAME: gateway[0]}
            if self._gateway is not None and self._gateway.pod_labels and gateway[0] == self._gateway.name:
                pods = dict(self._gateway.pod_labels)
            namespace = {"matchLabels": {LABEL_NAMESPACE_NAME: gateway[1]}}
            peers.append({"namespaceSelector": namespace, "podSelector": {"matchLabels": pods}})
        if policy.allowed_namespaces:
            names = sorted(set(policy.allowed_namespaces))
            match = {"key": LABEL_NAMESPACE_NAME, "operator": "In", "values": names}
            peers.append({"namespaceSelector": {"matchExpressions": [match]}})
        # No peer at all admits nothing: the policy then isolates the pods, as configured.
        ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": CONTAINER_PORT}]}] if peers else []
        selector = {LABEL_NAME: target.service, LABEL_ENVIRONMENT: target.environment}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": self._policy_name(target),
                "labels": {**self._target_labels(target, "policy"), LABEL_MANAGED_BY: MANAGER},
            },
            "spec": {
                "podSelector": {"matchLabels": selector},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        }

    def _policy_gateway(self, policy: NetworkPolicySpec) -> tuple[str, str] | None:
        """(name, namespace) of the gateway whose pods are admitted: the environment's, else ours."""
        if policy.gateway_name:
            return policy.gateway_name, policy.gateway_namespace or self._namespace
        if self._gateway is not None:
            return self._gateway.name, self._gateway_namespace()
        return None

    def _ensure_network_policy(self, target: Target, policy: NetworkPolicySpec) -> None:
        body = self._network_policy_body(target, policy)
        name = body["metadata"]["name"]
        current = self._call_or_none(
            self._networking.read_namespaced_network_policy, name, self._namespace, _preload_content=False
        )
        if current is None:
            self._call(self._networking.create_namespaced_network_policy, self._namespace, body)
            return
        spec = json.loads(current.data or b"{}").get("spec") or {}
        if (
            spec.get("podSelector") != body["spec"]["podSelector"]
            or (spec.get("ingress") or []) != (body["spec"]["ingress"])
        ):
            self._call(
                self._networking.patch_namespaced_network_policy,
                name,
                self._namespace,
                {"spec": body["spec"]},
                _content_type=MERGE_PATCH,
            )

    def _delete_network_policy(self, target: Target) -> None:
        self._call_or_none(
            self._networking.delete_namespaced_network_policy,
            self._policy_name(target),
            self._namespace,
            _preload_content=False,
        )

    # ---- HTTPS listener ---------------------------------------------------------------------
    def _listener_name(self, target: Target) -> str:
        return dns_name("https", self._target_name(target))

    def _secret_name(self, target: Target) -> str:
        return dns_name(self._target_name(target), "tls")

    def _read_gateway(self) -> dict[str, Any] | None:
        assert self._gateway is not None
        gateway = self._call_or_none(
            self._custom.get_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            self._gateway_namespace(),
            "gateways",
            self._gateway.name,
        )
        return dict(gateway) if gateway is not None else None

    def _listeners(self, required: bool) -> list[dict[str, Any]]:
        """The Gateway's listeners; a missing Gateway has none, or is an error when ``required``."""
        assert self._gateway is not None
        gateway = self._read_gateway()
        if gateway is None and required:
            raise PlatformError(
                PLATFORM,
                self.endpoint,
                f"Gateway {self._gateway_namespace()}/{self._gateway.name} does not exist (HTTPS is served "
                "by a listener on it)",
            )
        return list(((gateway or {}).get("spec") or {}).get("listeners") or [])

    def _https_listener(self, target: Target) -> str | None:
        """Our HTTPS listener's name when the Gateway has it (the route then attaches to it only)."""
        wanted = self._listener_name(target)
        return wanted if any(item.get("name") == wanted for item in self._listeners(required=False)) else None

    def _parent_ref(self, section: str | None) -> dict[str, Any]:
        assert self._gateway is not None
        parent: dict[str, Any] = {"name": self._gateway.name, "namespace": self._gateway_namespace()}
        if section:
            parent["sectionName"] = section
        return parent

    def _listener_body(self, target: Target, secret: str) -> dict[str, Any]:
        assert self._gateway is not None
        if self._gateway_namespace() == self._namespace:
            routes: dict[str, Any] = {"from": "Same"}
        else:
            routes = {
                "from": "Selector",
                "selector": {"matchLabels": {LABEL_NAMESPACE_NAME: self._namespace}},
            }
        listener: dict[str, Any] = {
            "name": self._listener_name(target),
            "protocol": "HTTPS",
            "port": self._gateway.https_port,
            "tls": {
                "mode": "Terminate",
                "certificateRefs": [{"group": "", "kind": "Secret", "name": secret}],
            },
            "allowedRoutes": {"namespaces": routes, "kinds": [{"kind": "HTTPRoute"}]},
        }
        if self._gateway.hostname:
            listener["hostname"] = self._gateway.hostname
        return listener

    def _ensure_https_listener(self, target: Target, tls: TlsMaterial) -> None:
        secret = self._ensure_tls_secret(target, tls)
        self._set_listener(target, self._listener_body(target, secret))
        self._attach_route(target, self._listener_name(target))

    def _remove_https_listener(self, target: Target) -> None:
        if self._https_listener(target) is None:
            return
        self._attach_route(target, None)
        self._set_listener(target, None)
        self._call_or_none(
            self._core.delete_namespaced_secret,
            self._secret_name(target),
            self._gateway_namespace(),
            _preload_content=False,
        )

    def _set_listener(self, target: Target, listener: dict[str, Any] | None) -> None:
        """Put (or take away) our listener on the shared Gateway. Listeners are one list: read, change ours
        only, write the list back, and read it back, since another target may have written meanwhile."""
        assert self._gateway is not None
        name = self._listener_name(target)
        wanted_ours = [listener] if listener is not None else []
        for _ in range(self._settings.retries + 2):
            listeners = self._listeners(required=listener is not None)
            if [item for item in listeners if item.get("name") == name] == wanted_ours:
                return
            others = [item for item in listeners if item.get("name") != name]
            self._call(
                self._custom.patch_namespaced_custom_object,
                GATEWAY_GROUP,
                GATEWAY_VERSION,
                self._gateway_namespace(),
                "gateways",
                self._gateway.name,
                {"spec": {"listeners": others + wanted_ours}},
                _content_type=MERGE_PATCH,
            )
        raise TransientPlatformError(
            PLATFORM, self.endpoint, f"Gateway {self._gateway.name}: listener {name} kept changing under us"
        )

    def _attach_route(self, target: Target, section: str | None) -> None:
        """An existing route follows the listener (a new one is made with it by set_traffic)."""
        route = self._read_route(target)
        if route is None:
            return
        parents = route.get("spec", {}).get("parentRefs") or []
        if parents == [self._parent_ref(section)]:
            return
        name, namespace = self._route_name(target)
        self._call(
            self._custom.patch_namespaced_custom_object,
            GATEWAY_GROUP,
            GATEWAY_VERSION,
            namespace,
            "httproutes",
            name,
            {"spec": {"parentRefs": [self._parent_ref(section)]}},
            _content_type=MERGE_PATCH,
        )

    def _ensure_tls_secret(self, target: Target, tls: TlsMaterial) -> str:
        """A kubernetes.io/tls Secret from the certificate and key files, in the Gateway's namespace (where
        its listeners look); replaced when the files change. The key's bytes go to the API server only."""
        try:
            pair = load_server_pair(tls)
        except TlsFileError as exc:
            raise PlatformError(PLATFORM, self.endpoint, str(exc)) from None
        name = self._secret_name(target)
        data = {
            "tls.crt": base64.b64encode(pair.chain).decode(),
            "tls.key": base64.b64encode(pair.key).decode(),
        }
        labels = {**self._target_labels(target, "tls"), LABEL_MANAGED_BY: MANAGER}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "labels": labels},
            "type": "kubernetes.io/tls",
            "data": data,
        }
        namespace = self._gateway_namespace()
        current = self._call_or_none(
            self._core.read_namespaced_secret, name, namespace, _preload_content=False
        )
        if current is None:
            self._call(self._core.create_namespaced_secret, namespace, body, _preload_content=False)
        elif (json.loads(current.data or b"{}").get("data") or {}) != data:
            self._call(
                self._core.patch_namespaced_secret,
                name,
                namespace,
                {"data": data},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        return name

    # ---- capacity ---------------------------------------------------------------------------
    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """Room left in each ResourceQuota of the namespace (hard minus used); none when there is none."""
        response = self._call(
            self._core.list_namespaced_resource_quota, self._namespace, _preload_content=False
        )
        pools = []
        for quota in json.loads(response.data or b"{}").get("items", []):
            name = f"ResourceQuota {quota['metadata']['name']} in {self._namespace}"
            hard = (quota.get("status") or {}).get("hard") or quota.get("spec", {}).get("hard") or {}
            # No "used" yet: the quota controller has not counted (a new quota); nothing is used then.
            used = (quota.get("status") or {}).get("used") or {}
            pools.append(_quota_pool(name, replicas, hard, used))
        return pools

    # ----------------------------------------------------------------------------------------
    # Metrics and logs
    # ----------------------------------------------------------------------------------------
    def metrics(self, target: Target, revision: str | None = None) -> dict[str, MetricSnapshot]:
        now, result = time.time(), {}
        for deployment in self._revision_deployments(target):
            status = self._status_of(deployment)
            if revision is not None and status.revision != revision:
                continue
            requests = errors = 0
            if self._settings.metrics_url:
                requests, errors = self._prometheus_counts(target, status.revision)
            result[status.revision] = MetricSnapshot(
                at=now,
                requests=requests,
                errors=errors,
                servers_up=(deployment.status.ready_replicas if deployment.status else 0) or 0,
                servers_total=status.desired_replicas,
            )
        return result

    def _prometheus_counts(self, target: Target, revision: str) -> tuple[int, int]:
        selector = self._settings.metrics_selector.format(
            service=target.service,
            environment=target.environment,
            revision=revision,
            namespace=self._namespace,
        )
        requests = self._prometheus_value(f"sum(http_requests_total{{{selector}}})")
        errors = self._prometheus_value(f'sum(http_requests_total{{{selector},code=~"5.."}})')
        return requests, errors

    def _prometheus_value(self, query: str) -> int:
        base = (self._settings.metrics_url or "").rstrip("/")
        url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=self._settings.request_timeout) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            error_type = TransientPlatformError if exc.code >= 500 or exc.code == 429 else PlatformError
            raise error_type(PLATFORM, base, f"Prometheus query {query}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise TransientPlatformError(PLATFORM, base, f"Prometheus query {query}: {exc}") from exc
        results = payload.get("data", {}).get("result", [])
        return int(float(results[0]["value"][1])) if results else 0  # no series yet: nothing counted

    def default_metric_provider(self) -> MetricProviderConfig:
        """Prometheus at ``metricsUrl`` with ``metricsSelector``; without it, only the replicas' readiness."""
        if not self._settings.metrics_url:
            return MetricProviderConfig(type=MetricProviderType.PLATFORM)
        return MetricProviderConfig(
            type=MetricProviderType.PROMETHEUS,
            url=self._settings.metrics_url,
            selector=self._settings.metrics_selector,
        )

    def metric_labels(self, target: Target, revision: str) -> dict[str, str]:
        return {
            "service": target.service,
            "environment": target.environment,
            "revision": revision,
            "namespace": self._namespace,
        }

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        selector = self._revision_labels(target, revision)
        pods = self._call(
            self._core.list_namespaced_pod, self._namespace, label_selector=_selector_string(selector)
        )
        chunks = []
        for pod in sorted(pods.items, key=lambda p: p.metadata.name):
            if not _matches(pod.metadata.labels, selector):
                continue
            try:
                text = self._call(
                    self._core.read_namespaced_pod_log, pod.metadata.name, self._namespace, tail_lines=lines
                )
            except _ApiStatusError as exc:  # a pod not started yet has no log: say so, go on
                text = f"(no log: {exc.cause})"
            chunks.append(f"--- pod {pod.metadata.name} ---\n{text}")
        return "\n".join(chunks)

    # ----------------------------------------------------------------------------------------
    # Native rolling updates
    # ----------------------------------------------------------------------------------------
    def _rolling_template(self, spec: RevisionSpec) -> dict[str, Any]:
        return {
            "template": self._pod_template(spec, self._target_labels(spec.target, "rolling")),
            "annotations": self._artifact_annotations(spec),
        }

    def rolling_update(
        self, spec: RevisionSpec, max_surge: int, max_unavailable: int, progress_deadline_s: int
    ) -> None:
        """Roll the target's 'rolling' Deployment to ``spec``; the previous template is kept for an undo."""
        target, name = spec.target, self._target_name(spec.target)
        selector = self._target_labels(target, "rolling")
        wanted = self._rolling_template(spec)
        settings = {
            "replicas": spec.replicas,
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": max_surge, "maxUnavailable": max_unavailable},
            },
            "progressDeadlineSeconds": progress_deadline_s,
        }
        current = self._read_deployment(target, name)
        if current is None:
            body = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "labels": {**selector, LABEL_MANAGED_BY: MANAGER}},
                "spec": {"selector": {"matchLabels": selector}, **settings},
            }
            body = self._with_template(body, wanted, None)
            self._call(self._apps.create_namespaced_deployment, self._namespace, body)
        else:
            self._apply_template(current, wanted, settings)
        self._ensure_service(self._service_body(name, self._target_labels(target, "service"), selector))

    @staticmethod
    def _with_template(
        body: dict[str, Any], wanted: dict[str, Any], previous: dict[str, Any] | None
    ) -> dict[str, Any]:
        annotations = {**wanted["annotations"], ANN_TEMPLATE: json.dumps(wanted, sort_keys=True)}
        if previous is not None:
            annotations[ANN_PREVIOUS_TEMPLATE] = json.dumps(previous, sort_keys=True)
        body.setdefault("metadata", {})["annotations"] = annotations
        body.setdefault("spec", {})["template"] = wanted["template"]
        return body

    def _apply_template(self, current: Any, wanted: dict[str, Any], settings: dict[str, Any]) -> None:
        name, annotations = current.metadata.name, current.metadata.annotations or {}
        running = json.loads(annotations.get(ANN_TEMPLATE) or "null")
        patch: dict[str, Any] = {"spec": dict(settings)}
        if running != wanted:
            # Same template again keeps the recorded previous one: a repeated step must not lose the undo.
            self._with_template(patch, wanted, running)
        self._patch_deployment(name, patch)

    def rollout_status(self, target: Target) -> dict[str, Any]:
        """Progress of the rolling Deployment, as kubectl rollout status judges it (camelCase keys)."""
        name = self._target_name(target)
        deployment = self._read_deployment(target, name)
        if deployment is None:
            raise PlatformError(PLATFORM, self.endpoint, f"no rolling Deployment {name} for {target.key}")
        spec, status, meta = deployment.spec, deployment.status, deployment.metadata
        conditions = [
            RolloutCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
            for c in ((status.conditions if status else None) or [])
        ]
        rollout = RolloutStatus(
            revision=(spec.template.metadata.labels or {}).get(LABEL_REVISION),
            desired_replicas=spec.replicas or 0,
            generation=meta.generation,
            observed_generation=status.observed_generation if status else None,
            replicas=(status.replicas if status else 0) or 0,
            updated_replicas=(status.updated_replicas if status else 0) or 0,
            ready_replicas=(status.ready_replicas if status else 0) or 0,
            available_replicas=(status.available_replicas if status else 0) or 0,
            conditions=conditions,
        )
        return self._judge_rollout(rollout).model_dump(by_alias=True)

    @staticmethod
    def _judge_rollout(rollout: RolloutStatus) -> RolloutStatus:
        desired, conditions = rollout.desired_replicas, rollout.conditions
        stuck = [c for c in conditions if c.type == "Progressing" and c.reason == "ProgressDeadlineExceeded"]
        if rollout.generation is not None and (rollout.observed_generation or 0) < rollout.generation:
            # Conditions still describe the previous spec (after an undo, the old deadline failure).
            message = "waiting for the controller to observe the new spec"
        elif stuck:
            return rollout.model_copy(
                update={"failed": True, "message": stuck[0].message or "deadline exceeded"}
            )
        elif rollout.updated_replicas < desired:
            message = f"{rollout.updated_replicas} of {desired} replicas updated"
        elif rollout.replicas > rollout.updated_replicas:
            message = f"{rollout.replicas - rollout.updated_replicas} old replicas pending termination"
        elif rollout.available_replicas < desired:
            message = f"{rollout.available_replicas} of {desired} updated replicas available"
        else:
            return rollout.model_copy(update={"complete": True, "message": "rolled out"})
        return rollout.model_copy(update={"message": message})

    def rollout_undo(self, target: Target, revision_spec: RevisionSpec | None = None) -> None:
        """Re-apply the template that ran before the last rolling update (or ``revision_spec``'s if none)."""
        name = self._target_name(target)
        current = self._read_deployment(target, name)
        if current is None:
            raise PlatformError(
                PLATFORM, self.endpoint, f"no rolling Deployment {name} to undo for {target.key}"
            )
        previous = json.loads((current.metadata.annotations or {}).get(ANN_PREVIOUS_TEMPLATE) or "null")
        if previous is None and revision_spec is not None:
            previous = self._rolling_template(revision_spec)
        if previous is None:
            raise PlatformError(PLATFORM, self.endpoint, f"{name}: no previous template recorded to undo to")
        self._apply_template(current, previous, {})


def _resource_quantities(resources: ReplicaResources) -> dict[str, str]:
    quantities: dict[str, str] = {}
    if resources.cpu:
        quantities["cpu"] = kubernetes_cpu(resources.cpu)
    if resources.memory:
        quantities["memory"] = str(resources.memory)
    if resources.disk:
        quantities["ephemeral-storage"] = str(resources.disk)
    return quantities


_QUOTA_KEYS = {
    "memory": ("requests.memory", "memory", "limits.memory"),
    "cpu": ("requests.cpu", "cpu", "limits.cpu"),
    "disk": ("requests.ephemeral-storage", "ephemeral-storage", "limits.ephemeral-storage"),
}


def _quota_pool(name: str, replicas: int, hard: dict[str, str], used: dict[str, str]) -> CapacityPool:
    """The tightest room of each kind a quota leaves (pods get requests equal to limits)."""

    def room(keys: tuple[str, ...], parse: Callable[[str], float]) -> float | None:
        left = [parse(hard[key]) - parse(used.get(key, "0")) for key in keys if key in hard]
        return min(left) if left else None

    memory = room(_QUOTA_KEYS["memory"], kubernetes_bytes)
    disk = room(_QUOTA_KEYS["disk"], kubernetes_bytes)
    pods = room(("pods", "count/pods"), lambda text: float(int(text)))
    return CapacityPool(
        name=name,
        replicas=replicas,
        memory_free=int(memory) if memory is not None else None,
        disk_free=int(disk) if disk is not None else None,
        cpu_free=room(_QUOTA_KEYS["cpu"], kubernetes_cpu_cores),
        pods_free=int(pods) if pods is not None else None,
    )
