"""Platform adapters, one module per external system; this registry is where they are put together.

Local processes, Docker and VMs run replicas behind HAProxy (``RoutedPlatform`` joins a workload backend to a
traffic router); Kubernetes and Lambda route traffic themselves.
"""

from __future__ import annotations

from pathlib import Path

from engine.artifacts import ContentDigests, path_digests
from engine.models import Artifact, PlatformConfig
from engine.paths import orchestrator_home
from engine.platform import PlatformAdapter


def create_platform(config: PlatformConfig, state_dir: Path | None = None) -> PlatformAdapter:
    """Build the adapter for a platform configuration. Imports lazily: each adapter has its own client."""
    base = Path(config.settings.get("stateDir") or state_dir or orchestrator_home() / "platforms")
    base = base / config.type
    base.mkdir(parents=True, exist_ok=True)
    settings = config.settings
    if config.type in ("local", "docker", "vm"):
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
