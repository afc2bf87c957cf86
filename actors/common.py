"""Names and small helpers shared by the actors. Every Ray call lives in actors/ or the facade."""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import uuid
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "deploy-orchestrator"
QUEEN_NAME = "queen"
DOMAIN_WORKERS = {
    "DO-001": "environments",
    "DO-002": "blue-green",
    "DO-003": "canary",
    "DO-004": "rollback",
    "DO-005": "platforms",
    "DO-006": "pipelines",
}


RUNNER_PREFIX = "runner-"
QUEEN_LEASE = "queen"  # the journal lease held by the queen that drives the journal's deployments
LEASE_TTL_S = 30.0


def new_runner_name() -> str:
    return f"{RUNNER_PREFIX}{uuid.uuid4().hex[:12]}"


def worker_name(code: str) -> str:
    return f"{code}:{DOMAIN_WORKERS[code]}"


def freeze_startup_heap() -> None:
    """A long-lived actor's objects from its start (Ray's, pydantic's and our modules, its clients) are left
    out of every later garbage collection. Without it, an old-generation collection walks them all: 70 to 170
    ms on a busy machine, once per runner in the middle of a pipeline benchmark, while the runner drives a
    deployment. What the actor allocates later is collected as before."""
    gc.freeze()


def find_actor(name: str, namespace: str) -> Any | None:
    """The handle of a live named actor, or None."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


class NamedActor:
    """A named actor's handle, looked up when made and kept: Ray makes a handle by loading the actor's class
    (importing its module and all it imports: hundreds of milliseconds of CPU for the queen's), which would
    otherwise fall on the first call that needs it. ``forget`` after a call finds the actor gone (one created
    anew is another actor); ``get`` then looks it up again (None while it is not running)."""

    def __init__(self, name: str, namespace: str) -> None:
        self.name = name
        self.namespace = namespace
        self._handle = find_actor(name, namespace)

    def get(self) -> Any | None:
        self._handle = self._handle or find_actor(self.name, self.namespace)
        return self._handle

    def forget(self) -> None:
        self._handle = None


def named_actors(namespace: str) -> set[str]:
    """The names of the live named actors of ``namespace``, in one call to the GCS (not the job's
    namespace, which is another orchestrator's when one driver runs two)."""
    found = ray.util.list_named_actors(all_namespaces=True)
    return {str(a["name"]) for a in found if isinstance(a, dict) and a.get("namespace") == namespace}


async def call(ref: Any, timeout_s: float) -> Any:
    """Await an ObjectRef with a deadline; raises TimeoutError naming the wait."""
    try:
        return await asyncio.wait_for(ref, timeout=timeout_s)
    except (TimeoutError, GetTimeoutError) as error:
        raise TimeoutError(f"no answer within {timeout_s:g}s") from error


def kill_quietly(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except (RayActorError, ValueError) as error:
        log.debug("actor already gone: %s", error)


def cluster_answers(owner: str) -> bool:
    """Whether the Ray cluster holding a lease still runs: its GCS accepts a connection (an embedded
    cluster ends with its driver, and its lease must not block the next one for the whole TTL)."""
    host, _, port = owner.split(" ")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False
