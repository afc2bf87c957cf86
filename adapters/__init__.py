"""Platform adapters, one module per external system; this registry is where they are put together.

Local processes, Docker and VMs run replicas behind HAProxy (``RoutedPlatform`` joins a workload backend to a
traffic router); Kubernetes and Lambda route traffic themselves.
"""

from __future__ import annotations

from pathlib import Path

from engine.models import PlatformConfig
from engine.paths import orchestrator_home
from engine.platform import PlatformAdapter

# Platforms whose adapters keep state on the node they run on: the HAProxy router (process, weights, ports)
# for all three, and the replica processes for ``local``. Their work stays on one node (actors/placement.py).
# Kubernetes and Lambda keep nothing there: the cluster or the API is the record.
NODE_BOUND_PLATFORMS = frozenset({"local", "docker", "vm"})


def keeps_node_state(config: PlatformConfig) -> bool:
    """Whether the platform's adapter needs the files (and processes) of the node where it ran before."""
    return config.type in NODE_BOUND_PLATFORMS


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
