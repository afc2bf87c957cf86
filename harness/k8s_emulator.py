"""A Kubernetes API on loopback for the integration tier: kmock's emulator plus a controller the test plays.

``KubeEmulator`` serves kmock's ``KubernetesEmulator`` over real HTTP from a background thread's event loop;
the official ``kubernetes`` client talks to ``emulator.url``. kmock stores objects and merges patches but has
no API-server logic beyond that, so ``ApiServerEmulator`` adds the little our tests rely on:

- ``metadata.generation`` is set on create and bumped when a Deployment's spec changes (API server duty);
- ``GET /api/v1/namespaces/<name>`` answers for namespaces made by ``add_namespace`` (kmock cannot parse it);
- faults: the next N requests matching a method and path regex fail with a given HTTP status;
- the request history is kept short: kmock matches every request against its whole history.

The Gateway API is "installed" by declaring ``gateway.networking.k8s.io/v1`` ``httproutes`` (and ``gateways``)
as served resources; without it, discovery of that group answers 404 as on a cluster without the CRDs.

``FakeController`` plays the Deployment controller for one namespace: ``settle()`` writes each Deployment's
status through ``patch_namespaced_deployment_status`` as if its pods became ready, except for images or
revisions listed in ``never_ready``, whose new pods never get ready and which report
``ProgressDeadlineExceeded`` once ``progressDeadlineSeconds`` has passed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp.web
import kmock
from kubernetes import client

REVISION_LABEL = "deploy-orchestrator/revision"
HISTORY_KEPT = 20
STARTUP_TIMEOUT_S = 15.0
MERGE_PATCH = "application/merge-patch+json"
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/([a-z0-9-]+)/?$")
_RESOURCES: dict[str, dict[str, Any]] = {
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True, "subresources": {"status", "scale"}},
    "v1/services": {"kind": "Service", "namespaced": True},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": {"log", "status"}},
    "v1/secrets": {"kind": "Secret", "namespaced": True},
    "v1/resourcequotas": {"kind": "ResourceQuota", "namespaced": True, "subresources": {"status"}},
    "networking.k8s.io/v1/networkpolicies": {"kind": "NetworkPolicy", "namespaced": True},
}
_GATEWAY_RESOURCES: dict[str, dict[str, Any]] = {
    "gateway.networking.k8s.io/v1/httproutes": {
        "kind": "HTTPRoute",
        "namespaced": True,
        "singular": "httproute",
    },
    "gateway.networking.k8s.io/v1/gateways": {"kind": "Gateway", "namespaced": True, "singular": "gateway"},
}
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    status: int
    remaining: int | None  # None: every matching request fails
    message: str = "injected fault"


def _merged(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386), as kmock applies it."""
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    result = dict(base)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merged(result.get(key), value)
    return result


class ApiServerEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with generations, namespace reads, injected faults and a short history."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.namespaces: set[str] = set()
        self.faults: list[Fault] = []
        self.faults_lock = threading.Lock()

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        del self._requests[:-HISTORY_KEPT]
        self._raise_fault(request)
        namespace_read = (
            _NAMESPACE_PATH.match(request.url.path) if request.method == kmock.method.GET else None
        )
        if namespace_read:
            return self._namespace(namespace_read.group(1))
        self._set_generation(request)
        return await super()._handle(request)

    def _raise_fault(self, request: kmock.Request) -> None:
        with self.faults_lock:
            for fault in self.faults:
                if fault.remaining == 0 or request.method.value != fault.method.upper():
                    continue
                if fault.path.search(request.url.path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    raise kmock.KubernetesError(status=fault.status, reason="Injected", message=fault.message)

    def _namespace(self, name: str) -> aiohttp.web.StreamResponse:
        if name not in self.namespaces:
            raise kmock.KubernetesObjectNotFoundError(message=f'namespaces "{name}" not found')
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name},
            "status": {"phase": "Active"},
        }
        return aiohttp.web.json_response(body)

    def _set_generation(self, request: kmock.Request) -> None:
        """The API server's duty: generation 1 on create, +1 on each change of a Deployment's spec."""
        resource, data = request.resource, request.data
        if (
            resource is None
            or resource.plural != "deployments"
            or request.subresource
            or not isinstance(data, dict)
        ):
            return
        if request.action == kmock.action.CREATE:
            data.setdefault("metadata", {})["generation"] = 1
            return
        if request.action != kmock.action.UPDATE or "spec" not in data:
            return
        try:
            current = self.objects[resource, request.namespace, request.name or ""]
        except KeyError:
            return
        if current.deleted:
            return
        raw = current.raw
        if _merged(raw.get("spec", {}), data["spec"]) != raw.get("spec", {}):
            generation = int(raw.get("metadata", {}).get("generation") or 1)
            data.setdefault("metadata", {})["generation"] = generation + 1


class KubeEmulator:
    """Runs ``ApiServerEmulator`` behind ``kmock.Server`` on 127.0.0.1 in a background thread."""

    def __init__(self, gateway_api: bool = True, resources: dict[str, dict[str, Any]] | None = None) -> None:
        """``resources``: more served resources ("group/version/plural" -> kmock.ResourceInfo's fields), as
        if their CRDs were installed."""
        self.gateway_api = gateway_api
        self.extra_resources = dict(resources or {})
        self.url = ""
        self._emulator: ApiServerEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)

    def __enter__(self) -> KubeEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S) -> str:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the Kubernetes emulator did not start within {timeout_s}s")
        if self._failure is not None:
            raise RuntimeError(f"the Kubernetes emulator failed to start: {self._failure!r}")
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); a thread must not die silently
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with ApiServerEmulator(strict=False) as emulator, kmock.Server(emulator) as server:
            resources = {**_RESOURCES, **(_GATEWAY_RESOURCES if self.gateway_api else {})}
            resources.update(self.extra_resources)
            for key, info in resources.items():
                emulator.resources[key] = kmock.ResourceInfo(**info)
            self._emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    @property
    def emulator(self) -> ApiServerEmulator:
        assert self._emulator is not None, "the emulator is not started"
        return self._emulator

    def in_loop(self, fn: Callable[[], T], timeout_s: float = 10.0) -> T:
        """Run ``fn`` on the emulator's event loop: its state is not safe to touch from other threads."""
        assert self._loop is not None

        async def call() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(call(), self._loop)
        return future.result(timeout_s)

    def add_namespace(self, name: str) -> str:
        self.in_loop(lambda: self.emulator.namespaces.add(name))
        return name

    def new_namespace(self, prefix: str = "test") -> str:
        return self.add_namespace(f"{prefix}-{uuid.uuid4().hex[:10]}")

    def inject_fault(
        self, method: str, path: str, status: int, times: int | None = 1, message: str = "injected fault"
    ) -> Fault:
        """The next ``times`` requests (all if None) with this method and a path matching ``path`` fail."""
        fault = Fault(method=method, path=re.compile(path), status=status, remaining=times, message=message)
        with self.emulator.faults_lock:
            self.emulator.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.emulator.faults_lock:
            self.emulator.faults.clear()

    def serve_pod_log(self, namespace: str, pod: str, text: str) -> None:
        """kmock answers a pod's log subresource with the pod itself; a reaction gives it a real log."""
        path = re.compile(rf"^/api/v1/namespaces/{namespace}/pods/{pod}/log$")

        def add() -> None:
            self.emulator["get", path] << text.encode()

        self.in_loop(add)

    def objects_in(self, namespace: str) -> list[tuple[str, str]]:
        """(plural, name) of every stored object of a namespace, for 'nothing was created' checks."""

        def collect() -> list[tuple[str, str]]:
            items = self.emulator.objects.items()
            return sorted(
                (str(res.plural), name)
                for (res, ns, name), obj in items
                if ns == namespace and not obj.deleted
            )

        return self.in_loop(collect)

    def api_client(self) -> client.ApiClient:
        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)


class FakeController:
    """Plays the Deployment controller of a namespace: ``settle()`` once, or ``start()`` in the background."""

    def __init__(self, emulator: KubeEmulator, namespace: str, never_ready: set[str] | None = None) -> None:
        self.namespace = namespace
        self.never_ready: set[str] = set(never_ready or ())
        self.errors: list[str] = []
        self._api = emulator.api_client()
        self._apps = client.AppsV1Api(self._api)
        self._lock = threading.Lock()
        self._template_seen: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def settle(self) -> None:
        with self._lock:
            response = self._apps.list_namespaced_deployment(self.namespace, _preload_content=False)
            for deployment in json.loads(response.data).get("items", []):
                try:
                    self._reconcile(deployment)
                except client.ApiException as exc:
                    if exc.status != 404:  # deleted since the listing: nothing to do
                        self.errors.append(f"{deployment['metadata']['name']}: {exc.status} {exc.reason}")

    def _reconcile(self, deployment: dict[str, Any]) -> None:
        wanted = self._status_for(deployment)
        current = deployment.get("status") or {}
        if any(current.get(key) != value for key, value in wanted.items()):
            self._apps.patch_namespaced_deployment_status(
                deployment["metadata"]["name"], self.namespace, {"status": wanted}, _content_type=MERGE_PATCH
            )

    def _stuck(self, template: dict[str, Any]) -> bool:
        labels = template.get("metadata", {}).get("labels", {})
        images = {c.get("image") for c in template.get("spec", {}).get("containers", [])}
        return labels.get(REVISION_LABEL) in self.never_ready or bool(images & self.never_ready)

    def _status_for(self, deployment: dict[str, Any]) -> dict[str, Any]:
        meta, spec = deployment["metadata"], deployment.get("spec", {})
        desired, generation = int(spec.get("replicas", 1)), int(meta.get("generation") or 1)
        template = spec.get("template", {})
        if not self._stuck(template):
            return {
                "observedGeneration": generation,
                "replicas": desired,
                "updatedReplicas": desired,
                "readyReplicas": desired,
                "availableReplicas": desired,
                "conditions": [
                    _condition(
                        "Available",
                        "True",
                        "MinimumReplicasAvailable",
                        "Deployment has minimum availability.",
                    ),
                    _condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetAvailable",
                        "ReplicaSet has successfully progressed.",
                    ),
                ],
            }
        # New pods never get ready; pods of the previous template (a rolling update's old ones) keep serving.
        old_ready = min(int((deployment.get("status") or {}).get("readyReplicas") or 0), desired)
        key = (meta["name"], hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest())
        since = self._template_seen.setdefault(key, time.monotonic())
        deadline = float(spec.get("progressDeadlineSeconds") or 600)
        updated = desired if old_ready == 0 else min(desired, 1)
        progressing = _condition("Progressing", "True", "ReplicaSetUpdated", "ReplicaSet is progressing.")
        if time.monotonic() - since > deadline:
            message = f'ReplicaSet "{meta["name"]}" has timed out progressing.'
            progressing = _condition("Progressing", "False", "ProgressDeadlineExceeded", message)
        return {
            "observedGeneration": generation,
            "replicas": old_ready + updated,
            "updatedReplicas": updated,
            "readyReplicas": old_ready,
            "availableReplicas": old_ready,
            "conditions": [progressing],
        }

    def start(self, interval_s: float = 0.1) -> FakeController:
        """Settle continuously, as a real controller would, until ``stop()``."""
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="fake-controller", daemon=True
        )
        self._thread.start()
        return self

    def _loop(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.settle()
            except Exception as exc:  # keep controlling; the test sees the errors
                self.errors.append(repr(exc))
            self._stop.wait(interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self._api.close()


def _condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": kind, "status": status, "reason": reason, "message": message}
