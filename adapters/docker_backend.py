"""Docker workload backend: every replica of a revision is one container, reachable on the host network.

The Docker engine is the source of truth, not a local file: each container carries labels naming its target,
revision, index, port and health path, so a new instance (after a crash of the process that held the first)
finds every replica again from the engine alone. Traffic is someone else's job (``adapters/routed.py`` joins
this backend to a router).

Settings (camelCase or snake_case): ``baseUrl`` (default ``$DOCKER_HOST`` or the local unix socket),
``timeout`` (seconds per API call, default 30), ``replicaPortRange`` ([first, last], default [30000, 34999]),
``network`` (default ``host``; any other network publishes the port on ``replicaHost``), ``replicaHost``
(default 127.0.0.1), ``stopTimeout`` (seconds, default 5), ``pullMissingImages`` (default true),
``retries`` (attempts after the first for transient failures, default 3).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import Timeout as RequestsTimeout

from adapters.localhost import memory_available, reserve_port
from engine.models import Artifact, ReplicaResources, Target
from engine.platform import (
    CapacityPool,
    PlatformCapabilities,
    PlatformError,
    Replica,
    Resource,
    RevisionSpec,
    TransientPlatformError,
)
from engine.secrets import runtime_env

PLATFORM = "docker"
LABEL_PREFIX = "deploy-orchestrator"
LABEL_MANAGED = f"{LABEL_PREFIX}/managed"
LABEL_SERVICE = f"{LABEL_PREFIX}/service"
LABEL_ENVIRONMENT = f"{LABEL_PREFIX}/environment"
LABEL_REVISION = f"{LABEL_PREFIX}/revision"
LABEL_INDEX = f"{LABEL_PREFIX}/index"
LABEL_PORT = f"{LABEL_PREFIX}/port"
LABEL_HEALTH_PATH = f"{LABEL_PREFIX}/health-path"
LABEL_DEPLOYMENT_ID = f"{LABEL_PREFIX}/deployment-id"

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
# Failures of the engine that say "this will not work however often you try".
_PERMANENT_MARKERS = ("oci runtime", "executable file not found", "no such file or directory", "invalid")
# The engine's 409 when a second removal of a container meets the first (DELETE /containers/{id}).
REMOVAL_IN_PROGRESS = "is already in progress"
_ERRNO = re.compile(r"\[Errno -?\d+\][^'\")]*")

T = TypeVar("T")


class DockerSettings(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    base_url: str = ""
    timeout: float = Field(default=30.0, gt=0)
    replica_port_range: tuple[int, int] = (30000, 34999)
    network: str = "host"
    replica_host: str = "127.0.0.1"
    stop_timeout: int = Field(default=5, ge=0)
    pull_missing_images: bool = True
    retries: int = Field(default=3, ge=0, le=10)

    @model_validator(mode="after")
    def _check_port_range(self) -> DockerSettings:
        first, last = self.replica_port_range
        if not 1024 <= first <= last <= 65535:
            shown = list(self.replica_port_range)
            raise ValueError(f"replicaPortRange {shown} must satisfy 1024 <= first <= last <= 65535")
        return self

    def resolved_base_url(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def container_name(target: Target, revision: str, index: int) -> str:
    """``{service}-{environment}-{revision}-{index}``, limited to what Docker accepts in a name."""
    raw = f"{target.service}-{target.environment}-{revision}-{index}"
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", raw).strip("-.") or f"replica-{index}"


def image_name(artifact: Artifact) -> str:
    source = artifact.source.strip()
    name = source.removeprefix("docker://")
    if not name or name == "local":
        raise ValueError(
            f"artifact {artifact.name} {artifact.version}: source must name an image, got '{source}'"
        )
    return name


def image_digests(settings: dict[str, Any], artifact: Artifact) -> list[str]:
    """The sha256 digests that name an artifact's image on the engine: its id, then its repository digests.
    ValueError when the image is not there; TransientPlatformError when the engine does not answer."""
    config = DockerSettings.model_validate(settings or {})
    name = image_name(artifact)
    try:
        client = docker.DockerClient(base_url=config.resolved_base_url(), timeout=int(config.timeout))
    except DockerException as error:
        raise TransientPlatformError(PLATFORM, config.resolved_base_url(), describe(error)) from error
    try:
        image = client.images.get(name)
    except ImageNotFound:
        raise ValueError(f"image {name} is not on the Docker engine") from None
    except (DockerException, RequestsConnectionError, RequestsTimeout) as error:
        raise TransientPlatformError(PLATFORM, config.resolved_base_url(), describe(error)) from error
    finally:
        client.close()
    repo_digests = [
        d.rpartition("@sha256:")[2] for d in image.attrs.get("RepoDigests") or [] if "@sha256:" in d
    ]
    return [str(image.id).removeprefix("sha256:"), *repo_digests]


def describe(exc: BaseException) -> str:
    """A short cause: the OS error when there is one, instead of urllib3's nested reprs."""
    text = str(exc)
    match = _ERRNO.search(text)
    return match.group(0).strip() if match else text[:300]


def container_labels(container: Any) -> dict[str, str]:
    # A sparse listing has the labels at the top level; an inspected container under Config.
    attrs = container.attrs
    labels = attrs.get("Labels")
    if labels is None:
        labels = (attrs.get("Config") or {}).get("Labels")
    return dict(labels or {})


def container_state(container: Any) -> str:
    state = container.attrs.get("State")
    if isinstance(state, dict):
        return str(state.get("Status", ""))
    return str(state or "")


def _remove_or_join(client: Any, container_id: str) -> bool:
    """Remove a container; False when the engine says a removal of it is already in progress."""
    try:
        client.api.remove_container(container_id, force=True)
    except APIError as exc:
        if exc.status_code == 409 and REMOVAL_IN_PROGRESS in str(exc.explanation or exc):
            return False
        raise
    return True


def _is_transient(exc: APIError) -> bool:
    status = exc.status_code or 0
    if status == 429:
        return True
    explanation = str(exc.explanation or exc).lower()
    return status >= 500 and not any(marker in explanation for marker in _PERMANENT_MARKERS)


class DockerBackend:
    """Runs replicas as containers named ``{service}-{environment}-{revision}-{index}``."""

    platform = PLATFORM

    def __init__(self, state_dir: Path, settings: dict[str, Any]) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = DockerSettings.model_validate(settings or {})
        self.base_url = self.settings.resolved_base_url()
        self._docker: Any = None
        # Two ensure calls of one process must not hand out the same port before either container binds it.
        self._port_lock = threading.Lock()
        # Removals run in threads, and any of them may drop a broken client.
        self._client_lock = threading.Lock()
        # An engine on this machine (its unix socket) has this machine's free memory and disk; a remote one's
        # cannot be read through the API.
        self._local_engine = self.base_url.startswith("unix://")
        notes = ["docker: disk use is not limited (the storage driver has no per-container quota here)"]
        if not self._local_engine:
            notes.append(f"docker: the engine at {self.base_url} is remote: its free memory, disk unknown")
        self.capabilities = PlatformCapabilities(
            limits=frozenset({Resource.CPU, Resource.MEMORY}),
            capacity=frozenset(Resource) if self._local_engine else frozenset({Resource.CPU}),
            notes=notes,
        )

    # ----------------------------------------------------------------------------------------
    # Client and error handling
    # ----------------------------------------------------------------------------------------
    def _client(self) -> Any:
        """The SDK client, created on first use (it asks the daemon for its API version when created)."""
        with self._client_lock:
            if self._docker is None:
                try:
                    self._docker = docker.DockerClient(
                        base_url=self.base_url, version="auto", timeout=self.settings.timeout
                    )
                except DockerException as exc:
                    # Asking for the API version failed: let the caller judge the real cause.
                    cause = exc.__cause__
                    if isinstance(cause, APIError | RequestsConnectionError | RequestsTimeout):
                        raise cause from exc
                    raise self._error(f"cannot create a client: {exc}") from exc
            return self._docker

    def _call(self, action: str, operation: Callable[[Any], T]) -> T:
        """Run ``operation(client)``; retry timeouts, lost connections and 5xx with bounded backoff."""
        delay = 0.2
        last: BaseException | None = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            try:
                return operation(self._client())
            except NotFound:
                raise
            except APIError as exc:
                if not _is_transient(exc):
                    raise self._error(f"{action}: {exc.explanation or exc}") from exc
                last = exc
            except (RequestsConnectionError, RequestsTimeout) as exc:
                self._drop_client()
                last = exc
        cause = describe(last) if last else "unknown error"
        raise TransientPlatformError(PLATFORM, self.base_url, f"{action}: {cause}") from last

    def _error(self, cause: str) -> PlatformError:
        return PlatformError(PLATFORM, self.base_url, cause)

    def _drop_client(self) -> None:
        with self._client_lock:
            if self._docker is not None:
                self._docker.close()
                self._docker = None

    # ----------------------------------------------------------------------------------------
    # WorkloadBackend
    # ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Reach the daemon and check that it can run what we ask; PlatformError before any change."""
        try:
            version = self._call("ping the daemon", lambda client: (client.ping(), client.version())[1])
        except TransientPlatformError as exc:
            raise self._error(f"daemon unavailable: {exc.cause}") from exc
        if self.settings.network == "host" and str(version.get("Os", "linux")).lower() != "linux":
            raise self._error(f"host networking needs a Linux engine, this one is {version.get('Os')}")
        if self.settings.network != "host":
            self._call(f"find network {self.settings.network}", self._network_exists)

    def _network_exists(self, client: Any) -> None:
        try:
            client.networks.get(self.settings.network)
        except NotFound as exc:
            raise self._error(f"network '{self.settings.network}' not found") from exc

    def capacity(self, target: Target, replicas: int) -> list[CapacityPool]:
        """The engine's host: its cores (from the engine); free memory and disk when it is this machine."""
        info = self._call("read the engine's info", lambda client: client.info())
        pool = CapacityPool(name="host", replicas=replicas, cpus=float(info.get("NCPU") or 0) or None)
        if self._local_engine:
            root = Path(str(info.get("DockerRootDir") or self.state_dir))
            pool.memory_free = memory_available()
            pool.disk_free = shutil.disk_usage(root if root.is_dir() else self.state_dir).free
        return [pool]

    def ensure_replicas(self, spec: RevisionSpec) -> list[Replica]:
        # A missing or wrong image fails before anything is touched.
        image = self._resolve_image(spec.artifact) if spec.replicas > 0 else ""
        existing = self._containers(spec.target, spec.revision)
        by_index: dict[int, Any] = {}
        surplus: list[Any] = []
        for container in existing:
            index = int(container_labels(container).get(LABEL_INDEX, "-1"))
            if 0 <= index < spec.replicas and index not in by_index:
                by_index[index] = container
            else:
                surplus.append(container)
        self._remove_containers(surplus)
        replicas: list[Replica] = []
        for index in range(spec.replicas):
            container = by_index.get(index)
            if container is not None and container_state(container) == "running":
                self._apply_limits(container.id, spec.resources)
                replicas.append(self._replica(container))
                continue
            preferred_port = None
            if container is not None:
                preferred_port = int(container_labels(container).get(LABEL_PORT, "0")) or None
                self._remove_containers([container])
            replicas.append(self._start_replica(spec, index, image, preferred_port))
        return replicas

    def list_replicas(self, target: Target, revision: str | None = None) -> list[Replica]:
        replicas = [self._replica(container) for container in self._containers(target, revision)]
        return sorted(replicas, key=lambda replica: (replica.revision, replica.index))

    def remove_revision(self, target: Target, revision: str) -> None:
        self._remove_containers(self._containers(target, revision))

    def stop_replica(self, target: Target, revision: str, index: int) -> None:
        """Stop one replica's container and keep it (exited): the next ensure replaces it on its port."""
        for container in self._containers(target, revision):
            if container_labels(container).get(LABEL_INDEX) == str(index):
                self._stop_container(str(container.id))

    def _stop_container(self, container_id: str) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                f"stop container {container_id[:12]}",
                lambda client: client.api.stop(container_id, timeout=self.settings.stop_timeout),
            )

    def logs(self, target: Target, revision: str, lines: int = 100) -> str:
        containers = sorted(
            self._containers(target, revision),
            key=lambda container: int(container_labels(container).get(LABEL_INDEX, "0")),
        )
        parts = [self._container_logs(container, lines) for container in containers]
        return "\n".join(part for part in parts if part)

    def close(self) -> None:
        self._drop_client()

    # ----------------------------------------------------------------------------------------
    # Containers
    # ----------------------------------------------------------------------------------------
    def _containers(self, target: Target, revision: str | None) -> list[Any]:
        filters = [f"{LABEL_SERVICE}={target.service}", f"{LABEL_ENVIRONMENT}={target.environment}"]
        if revision is not None:
            filters.append(f"{LABEL_REVISION}={revision}")
        # Sparse: one request for the whole list, and no error when a container vanishes meanwhile.
        return self._call(
            f"list containers of {target.key}",
            lambda client: client.containers.list(all=True, sparse=True, filters={"label": filters}),
        )

    def _replica(self, container: Any) -> Replica:
        labels = container_labels(container)
        return Replica(
            revision=labels.get(LABEL_REVISION, ""),
            index=int(labels.get(LABEL_INDEX, "0")),
            host=self.settings.replica_host,
            port=int(labels.get(LABEL_PORT, "0")),
            alive=container_state(container) == "running",
            ident=str(container.id)[:12],
            health_path=labels.get(LABEL_HEALTH_PATH, "/health"),
        )

    def _container_logs(self, container: Any, lines: int) -> str:
        name = str(container.attrs.get("Names", [container.id[:12]])[0]).lstrip("/")
        try:
            raw = self._call(
                f"read logs of {name}",
                lambda client: client.api.logs(container.id, stdout=True, stderr=True, tail=max(lines, 0)),
            )
        except NotFound:
            return ""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return f"--- {name} ({container_state(container)}) ---\n{text}"

    def _remove_containers(self, containers: Iterable[Any]) -> None:
        targets = list(containers)
        if not targets:
            return
        # Stops wait up to stopTimeout each: do them side by side.
        with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
            for future in [pool.submit(self._remove_container, container.id) for container in targets]:
                future.result()

    def _remove_container(self, container_id: str) -> None:
        self._stop_container(container_id)
        try:
            removed = self._call(
                f"remove container {container_id[:12]}", lambda client: _remove_or_join(client, container_id)
            )
        except NotFound:
            return
        if not removed:
            self._await_removed(container_id)

    def _await_removed(self, container_id: str) -> None:
        """Another caller's removal of the container is under way (the engine refuses a second one with 409):
        the container is gone when that removal ends, and a removal that never ends is an error."""
        deadline = time.monotonic() + self.settings.timeout
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                self._call(
                    f"inspect container {container_id[:12]}",
                    lambda client: client.api.inspect_container(container_id),
                )
            except NotFound:
                return
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise self._error(
            f"remove container {container_id[:12]}: another removal of it did not end within "
            f"{self.settings.timeout:g} s"
        )

    # ----------------------------------------------------------------------------------------
    # Creating replicas
    # ----------------------------------------------------------------------------------------
    def _resolve_image(self, artifact: Artifact) -> str:
        """The image's name once it is known to be here (pulled if allowed) and its digest matches."""
        name = image_name(artifact)
        try:
            image = self._call(f"inspect image {name}", lambda client: client.images.get(name))
        except (ImageNotFound, NotFound):
            image = self._pull(name)
        if artifact.sha256:
            self._verify_digest(name, image, artifact.sha256)
        return name

    def _pull(self, name: str) -> Any:
        if not self.settings.pull_missing_images:
            raise self._error(f"image {name} is not present and pulling is off")
        try:
            # One attempt: a registry that refuses or is unreachable will not change its mind in seconds.
            return self._client().images.pull(name)
        except (DockerException, RequestsConnectionError, RequestsTimeout) as exc:
            cause = exc.explanation if isinstance(exc, APIError) else describe(exc)
            raise self._error(f"image {name} is not present and cannot be pulled: {cause}") from exc

    def _verify_digest(self, name: str, image: Any, sha256: str) -> None:
        digests = {str(image.id)} | set(image.attrs.get("RepoDigests") or [])
        if not any(digest.endswith(f"sha256:{sha256}") for digest in digests):
            raise self._error(
                f"image {name} has id {image.id}, which does not match the artifact's sha256:{sha256}",
            )

    def _start_replica(
        self, spec: RevisionSpec, index: int, image: str, preferred_port: int | None
    ) -> Replica:
        name = container_name(spec.target, spec.revision, index)
        with self._port_lock:
            port = self._allocate_port(preferred_port)
            options = self._container_options(spec, index, image, port)
            container = self._create(name, options)
        try:
            self._call(f"start container {name}", lambda client: client.api.start(container.id))
        except TransientPlatformError:
            raise
        except PlatformError as exc:
            # The container stays (state "created") so that its logs can explain; the next ensure replaces it.
            raise self._error(f"container {name} did not start: {exc.cause}") from exc
        started = self._call(f"inspect container {name}", lambda client: client.containers.get(container.id))
        return self._replica(started)

    def _container_options(self, spec: RevisionSpec, index: int, image: str, port: int) -> dict[str, Any]:
        artifact = spec.artifact
        labels = {
            LABEL_MANAGED: "true",
            LABEL_SERVICE: spec.target.service,
            LABEL_ENVIRONMENT: spec.target.environment,
            LABEL_REVISION: spec.revision,
            LABEL_INDEX: str(index),
            LABEL_PORT: str(port),
            LABEL_HEALTH_PATH: artifact.health_path,
            LABEL_DEPLOYMENT_ID: spec.deployment_id,
        }
        options: dict[str, Any] = {
            "image": image,
            "labels": labels,
            # PORT last: the replica must listen where the router will look for it.
            "environment": {**runtime_env(artifact), "PORT": str(port)},
            # The orchestrator decides what happens to a dead replica, not the engine.
            "restart_policy": {"Name": "no"},
            **{option: value for option, value in _limit_options(spec.resources).items() if value},
        }
        if artifact.command:
            options["command"] = list(artifact.command)
        if artifact.working_dir:
            options["working_dir"] = artifact.working_dir
        if self.settings.network == "host":
            options["network_mode"] = "host"
        else:
            options["network"] = self.settings.network
            options["ports"] = {f"{port}/tcp": (self.settings.replica_host, port)}
        return options

    def _apply_limits(self, container_id: str, resources: ReplicaResources | None) -> None:
        """A running replica gets new limits in place (``docker update``), without a restart. (A limit taken
        away is left in force until the replica is replaced.)"""
        wanted = {key: value for key, value in _limit_options(resources).items() if value}
        if not wanted:
            return
        full = self._call(f"inspect container {container_id[:12]}", lambda c: c.containers.get(container_id))
        host = full.attrs.get("HostConfig") or {}
        in_force = {"nano_cpus": host.get("NanoCpus"), "mem_limit": host.get("Memory")}
        in_force["memswap_limit"] = host.get("MemorySwap")
        if all(in_force[key] == value for key, value in wanted.items()):
            return
        # The SDK's update_container has no NanoCpus (what --cpus sets): the engine's own endpoint does.
        names = {"nano_cpus": "NanoCpus", "mem_limit": "Memory", "memswap_limit": "MemorySwap"}
        body = {names[key]: value for key, value in wanted.items()}
        what = f"update the limits of container {container_id[:12]}"

        def update(client: Any) -> None:
            api = client.api
            url = f"{api.base_url}/v{api.api_version}/containers/{container_id}/update"
            response = api.post(url, json=body, timeout=self.settings.timeout)
            if response.status_code >= 400:
                raise self._error(f"{what}: HTTP {response.status_code}: {response.text.strip()[:300]}")

        self._call(what, update)

    def _create(self, name: str, options: dict[str, Any]) -> Any:
        try:
            return self._call(f"create container {name}", lambda c: c.containers.create(name=name, **options))
        except PlatformError as exc:
            if "Conflict" not in exc.cause and "already in use" not in exc.cause:
                raise
        # The name is taken: by a leftover of ours (replace it) or by someone else's container (refuse).
        try:
            taken = self._call(f"inspect container {name}", lambda client: client.containers.get(name))
        except NotFound:
            taken = None
        if taken is not None and container_labels(taken).get(LABEL_MANAGED) != "true":
            raise self._error(f"container name {name} is used by another container")
        if taken is not None:
            self._remove_container(taken.id)
        return self._call(f"create container {name}", lambda c: c.containers.create(name=name, **options))

    def _allocate_port(self, preferred: int | None) -> int:
        """A port no container of ours holds, nothing on this host listens on, and no other process of
        ours has just been given."""
        return reserve_port(
            self.state_dir / "ports.reserved",
            self.settings.replica_port_range,
            self._ports_of_our_containers(),
            self._port_free,
            PLATFORM,
            preferred=preferred,
        )

    def _ports_of_our_containers(self) -> set[int]:
        containers = self._call(
            "list ports in use",
            lambda client: client.containers.list(all=True, sparse=True, filters={"label": LABEL_MANAGED}),
        )
        return {int(container_labels(c).get(LABEL_PORT, "0")) for c in containers}

    def _port_free(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                # On the host network a replica listens on every address, else only where published.
                address = "0.0.0.0" if self.settings.network == "host" else self.settings.replica_host
                probe.bind((address, port))
            except OSError:
                return False
        return True


def _limit_options(resources: ReplicaResources | None) -> dict[str, int]:
    """The container's CPU and memory limits (``--cpus``, ``--memory``; swap no further than memory)."""
    cpu = resources.cpu if resources else None
    memory = resources.memory if resources else None
    return {
        "nano_cpus": round(cpu * 1e9) if cpu else 0,
        "mem_limit": memory or 0,
        "memswap_limit": memory or 0,
    }
