"""Platform adapters, one module per external system; this registry is where they are put together.

Local processes, Docker and VMs run replicas behind HAProxy (``RoutedPlatform`` joins a workload backend to a
traffic router); Kubernetes and Lambda route traffic themselves.
"""

from __future__ import annotations

from pathlib import Path

from engine.models import PlatformConfig
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
