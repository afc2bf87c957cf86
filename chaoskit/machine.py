"""What a chaos case runs on, seen from outside the orchestrator: its artifacts, the processes, containers and
HAProxy of one target as the machine shows them (``/proc``, the Docker engine), and their removal.

Nothing here asks the orchestrator: these are the facts the cases' properties compare with the journal.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters import create_platform
from adapters.docker_backend import LABEL_ENVIRONMENT, LABEL_INDEX, LABEL_REVISION, LABEL_SERVICE
from engine.models import Artifact, PlatformConfig, Target
from examples.quickstart import sample_artifact
from harness.environments import remove_through_adapter

CASE_MARKER = "CHAOS_CASE"  # in every local replica's environment: the case's service, found in /proc
DOCKER_IMAGE = "local/sample-service:1"  # built by cluster/start_docker.sh
DOCKER_FRONTENDS = [16600, 16699]  # ports of their own (see the other tests' ranges)
DOCKER_REPLICAS = [55000, 55999]


def case_artifact(service: str, version: str, bad: bool, platform: PlatformConfig) -> Artifact:
    """The sample service (a bad one answers half of its requests with 500) as a process or an image."""
    error_rate = 0.5 if bad else 0.0
    if platform.type == "docker":
        env = {"VERSION": version, "ERROR_RATE": str(error_rate)}
        return Artifact(name=service, version=version, source=f"docker://{DOCKER_IMAGE}", env=env)
    return sample_artifact(version, error_rate, service=service, **{CASE_MARKER: service})


def docker_platform(home: Path) -> PlatformConfig:
    settings = {
        "stateDir": str(home / "docker-state"),
        "frontendPortRange": DOCKER_FRONTENDS,
        "replicaPortRange": DOCKER_REPLICAS,
        "routerSlots": 16,
        "stopTimeout": 2,
    }
    return PlatformConfig(type="docker", settings=settings)


# --------------------------------------------------------------------------------------------
# What runs
# --------------------------------------------------------------------------------------------
@dataclass
class LiveObjects:
    """One target's objects as the machine shows them."""

    replicas: list[tuple[str, int, str]] = field(default_factory=list)  # (revision, index, pid|container)
    stopped_containers: list[str] = field(default_factory=list)
    routers: list[int] = field(default_factory=list)  # HAProxy processes serving the target's config
    recorded_router: int | None = None
    recorded_replicas: list[tuple[str, int, str]] = field(default_factory=list)


def _proc_entries() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _running(entry: Path) -> bool:
    try:
        state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def local_replica_processes(service: str) -> list[tuple[str, int, str]]:
    """(revision, index, pid) of every live process started for the case's service, from /proc."""
    marker = f"{CASE_MARKER}={service}".encode()
    found: list[tuple[str, int, str]] = []
    for entry in _proc_entries():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker not in environ or not _running(entry):
            continue
        values = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"REVISION" not in values:  # the launcher's shell, between its fork and its exit
            continue
        index = int(values.get(b"REPLICA_INDEX", b"-1"))
        found.append((values[b"REVISION"].decode(), index, entry.name))
    return sorted(found)


def router_config(platform: PlatformConfig, target: Target) -> Path:
    return Path(platform.settings["stateDir"]) / platform.type / "haproxy" / f"{target.key}.cfg"


def router_processes(platform: PlatformConfig, target: Target) -> list[int]:
    """Live HAProxy processes started with the target's configuration file."""
    config = str(router_config(platform, target)).encode()
    found: list[int] = []
    for entry in _proc_entries():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if config in argv and _running(entry):
            found.append(int(entry.name))
    return sorted(found)


def recorded_router(platform: PlatformConfig, target: Target) -> int | None:
    path = router_config(platform, target).with_suffix(".json")
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return None


def docker_containers(target: Target) -> list[Any]:
    import docker

    engine = docker.from_env()
    try:
        labels = [f"{LABEL_SERVICE}={target.service}", f"{LABEL_ENVIRONMENT}={target.environment}"]
        return list(engine.containers.list(all=True, filters={"label": labels}))
    finally:
        engine.close()


def live_objects(platform: PlatformConfig, target: Target) -> LiveObjects:
    adapter: Any = create_platform(platform)
    try:
        recorded = [(r.revision, r.index, r.ident) for r in adapter.backend.list_replicas(target) if r.alive]
    finally:
        adapter.close()
    found = LiveObjects(
        routers=router_processes(platform, target),
        recorded_router=recorded_router(platform, target),
        recorded_replicas=sorted(recorded),
    )
    if platform.type == "docker":
        for container in docker_containers(target):
            labels = container.labels
            row = (labels[LABEL_REVISION], int(labels[LABEL_INDEX]), str(container.id)[:12])
            if container.status == "running":
                found.replicas.append(row)
            else:
                found.stopped_containers.append(f"{container.name} ({container.status})")
        found.replicas.sort()
    else:
        found.replicas = local_replica_processes(target.service)
    return found


# --------------------------------------------------------------------------------------------
# Removal
# --------------------------------------------------------------------------------------------
def _kill_everything(platform: PlatformConfig, target: Target) -> None:
    """SIGKILL the router and every replica at once: a supervisor that looks meanwhile finds neither, which
    it takes for a removal on purpose (engine/supervision.py) and leaves alone."""
    pids = router_processes(platform, target)
    if platform.type == "docker":
        for container in docker_containers(target):
            with contextlib.suppress(Exception):
                container.kill()
    else:
        pids += [int(pid) for _, _, pid in local_replica_processes(target.service)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _remove_state(platform: PlatformConfig, target: Target) -> None:
    remove_through_adapter(platform, [target])
    if platform.type == "docker":
        for container in docker_containers(target):
            container.remove(force=True)


def remove_case(platform: PlatformConfig, target: Target, supervised: bool, interval_s: float = 1.0) -> None:
    """Remove the case's target; with a supervisor running, check twice that nothing came back."""
    for _ in range(3):
        _kill_everything(platform, target)
        _remove_state(platform, target)
        if supervised:
            time.sleep(2.5 * interval_s)  # two supervision rounds
        objects = live_objects(platform, target)
        if not (objects.replicas or objects.routers or objects.stopped_containers):
            return
    raise RuntimeError(f"{target.key} could not be removed: {live_objects(platform, target)}")
