"""Platform adapters, one module per external system; this registry is where they are put together.

Local processes, Docker and VMs run replicas behind HAProxy (``RoutedPlatform`` joins a workload backend to a
traffic router); Kubernetes and Lambda route traffic themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.analysis import analysis_settings
from engine.artifacts import ContentDigests, path_digests
from engine.metrics import MetricProvider, PlatformCounters
from engine.models import (
    Artifact,
    DeploymentRequest,
    MetricProviderType,
    PlatformCapabilities,
    PlatformConfig,
    Target,
)
from engine.paths import orchestrator_home
from engine.platform import PlatformAdapter

_ROUTED = ("local", "docker", "vm")


def _platform_dir(config: PlatformConfig, state_dir: Path | None) -> Path:
    base = Path(config.settings.get("stateDir") or state_dir or orchestrator_home() / "platforms")
    return base / config.type


# Platforms whose adapters keep state on the node they run on: the HAProxy router (process, weights, ports)
# for all three, and the replica processes for ``local``. Their work stays on one node (actors/placement.py).
# Kubernetes and Lambda keep nothing there: the cluster or the API is the record.
NODE_BOUND_PLATFORMS = frozenset({"local", "docker", "vm"})


def keeps_node_state(config: PlatformConfig) -> bool:
    """Whether the platform's adapter needs the files (and processes) of the node where it ran before."""
    return config.type in NODE_BOUND_PLATFORMS


def create_platform(config: PlatformConfig, state_dir: Path | None = None) -> PlatformAdapter:
    """Build the adapter for a platform configuration. Imports lazily: each adapter has its own client."""
    base = _platform_dir(config, state_dir)
    base.mkdir(parents=True, exist_ok=True)
    settings = config.settings
    if config.type in _ROUTED:
        from adapters.haproxy import HAProxyRouter
        from adapters.routed import RoutedPlatform

        router = HAProxyRouter(base / "haproxy", settings)
        if config.type == "local":
            from adapters.local_process import LocalProcessBackend

            return RoutedPlatform(LocalProcessBackend(base / "processes", settings), router)
        if config.type == "docker":
            from adapters.docker_backend import DockerBackend

            return RoutedPlatform(DockerBackend(base / "containers", settings), router)
        from adapters.vm_backend import VmBackend

        return RoutedPlatform(VmBackend(base / "hosts", settings), router)
    if config.type == "kubernetes":
        from adapters.kubernetes_platform import KubernetesPlatform

        return KubernetesPlatform(base, settings)
    from adapters.lambda_platform import LambdaPlatform

    return LambdaPlatform(base, settings)


def content_digests(config: PlatformConfig) -> ContentDigests:
    """How an artifact's content is hashed where it is deployed: its ``path`` (a file or folder) where it
    has one, else its image on the Docker engine (the image's id and repository digests)."""

    def digests(artifact: Artifact) -> list[str] | None:
        if artifact.path:
            return path_digests(artifact)
        if config.type == "docker":
            from adapters.docker_backend import image_digests

            return image_digests(config.settings, artifact)
        return None

    return digests


def remove_targets(config: PlatformConfig, targets: Iterable[Target]) -> None:
    """Every revision and the router of each target, removed through a new adapter (a clean-up after a
    benchmark or a test), the router first. An orchestrator still running supervises the live revision and
    starts again replicas removed behind its back while the router's record exists; even with the router gone
    first, a supervision round already under way can, so a caller with an orchestrator shuts it down first."""
    platform: Any = create_platform(config)
    try:
        for target in targets:
            revisions = platform.list_revisions(target)
            router = getattr(platform, "router", None)
            if router is not None:
                router.remove_frontend(target)
            for revision in revisions:
                platform.remove_revision(target, revision.revision)
    finally:
        platform.close()


_CAPABILITIES: dict[str, PlatformCapabilities] = {}


def platform_capabilities(config: PlatformConfig) -> PlatformCapabilities:
    """What a configured platform declares it can do: its adapter's ``capabilities``, made without any call to
    the platform (adapters only read their settings when made). Kept per configuration in this process."""
    key = config.model_dump_json()
    if key not in _CAPABILITIES:
        adapter = create_platform(config)
        try:
            _CAPABILITIES[key] = adapter.capabilities
        finally:
            adapter.close()
    return _CAPABILITIES[key]


def create_metric_provider(
    request: DeploymentRequest, adapter: PlatformAdapter, state_dir: Path | None = None
) -> MetricProvider:
    """The strategy's ``metricProvider``, or the one the platform names as its default."""
    config = analysis_settings(request.strategy).metric_provider or adapter.default_metric_provider()
    platform = request.platform
    if config.type is MetricProviderType.HAPROXY:
        if platform.type not in _ROUTED:
            raise ValueError(
                f"metricProvider.type: haproxy reads the HAProxy in front of {', '.join(_ROUTED)}; "
                f"{platform.type} has none"
            )
        from adapters.haproxy_log import HAProxyMetrics

        return HAProxyMetrics(_platform_dir(platform, state_dir) / "haproxy", platform.settings)
    if config.type is MetricProviderType.PROMETHEUS:
        from adapters.prometheus import PrometheusMetrics

        return PrometheusMetrics(config, adapter.metric_labels)
    if config.type is MetricProviderType.CLOUDWATCH:
        from adapters.cloudwatch import CloudWatchMetrics

        return CloudWatchMetrics(config, adapter.metric_labels)
    return PlatformCounters(adapter)


def settings_problems(config: PlatformConfig) -> list[tuple[str, str, bool]]:
    """(key path inside ``settings``, problem, whether it is only missing) for settings the platform's adapter
    would refuse, found without connecting to anything (``lint``)."""
    from pydantic import BaseModel, ValidationError

    model: type[BaseModel] | None = None
    if config.type == "docker":
        from adapters.docker_backend import DockerSettings as model
    elif config.type == "kubernetes":
        from adapters.kubernetes_platform import KubernetesSettings as model
    elif config.type == "lambda":
        from adapters.lambda_platform import LambdaSettings as model
    elif config.type == "vm":
        from adapters.vm_backend import VmSettings as model
    if model is None:
        return []
    try:
        model.model_validate(config.settings)
    except ValidationError as error:
        return [
            (".".join(str(part) for part in e["loc"]), e["msg"], e["type"] in ("missing", "too_short"))
            for e in error.errors()
        ]
    return []
