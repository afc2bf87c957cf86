"""Health monitor actors: async, parallel probes; N consecutive failures (configurable) mean unhealthy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

from adapters.http_probe import ProbeResult, probe_all
from engine.models import Model

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 30.0  # the watcher (DO-001) or the runner answering one call, restarts included


class EndpointHealth(Model):
    url: str
    healthy: bool = True
    consecutive_failures: int = 0
    checks: int = 0
    last_status: int | None = None
    last_latency_ms: float | None = None
    last_error: str | None = None


class HealthReport(Model):
    monitor: str
    healthy: bool
    checked_at: float | None
    endpoints: list[EndpointHealth]
    node_id: str = ""


def apply_probe(state: EndpointHealth, result: ProbeResult, threshold: int) -> EndpointHealth:
    """A failed or timed-out probe counts; ``threshold`` in a row flip the endpoint to unhealthy."""
    failures = 0 if result.healthy else state.consecutive_failures + 1
    return EndpointHealth(
        url=state.url,
        healthy=failures < threshold,
        consecutive_failures=failures,
        checks=state.checks + 1,
        last_status=result.status,
        last_latency_ms=result.latency_ms,
        last_error=result.error,
    )


class HealthMonitorImpl:
    def __init__(
        self,
        name: str,
        urls: list[str],
        interval_s: float,
        timeout_s: float,
        unhealthy_threshold: int,
        notify: Any | None = None,
        notify_key: str = "",
        notify_token: str | None = None,
        ca_file: str | None = None,
        watcher: Any | None = None,
    ) -> None:
        self.name = name
        self.ca_file = ca_file  # HTTPS endpoints are verified against it
        self.watcher = watcher  # an actor handle with ``on_health_change(monitor, healthy, reason)``
        self._told: bool | None = None  # the health the watcher last took
        self.interval_s = interval_s
        self.timeout_s = min(timeout_s, interval_s)
        self.threshold = unhealthy_threshold
        self.notify = notify  # an actor handle with ``on_unhealthy(key, reason)``
        self.notify_key = notify_key
        # The orchestrator's service secret: ``on_unhealthy`` accepts the orchestrator's own calls only.
        self.notify_token = notify_token
        self.endpoints = {url: EndpointHealth(url=url) for url in urls}
        self.checked_at: float | None = None
        self._notified = False  # ``notify`` took the unhealthy call
        self._calling: dict[str, asyncio.Task[None]] = {}  # "notify"/"watcher": a call not answered yet
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            results = await probe_all(list(self.endpoints), self.timeout_s, self.ca_file)
            for result in results:
                self.endpoints[result.url] = apply_probe(self.endpoints[result.url], result, self.threshold)
            self.checked_at = time.time()
            self._maybe_notify()
            self._tell_watcher()
            await asyncio.sleep(self.interval_s)

    def _maybe_notify(self) -> None:
        sick = [e for e in self.endpoints.values() if not e.healthy]
        if not sick or self.notify is None or self._notified or "notify" in self._calling:
            return
        reason = "; ".join(f"{e.url}: {e.consecutive_failures} failed checks ({e.last_error})" for e in sick)

        def taken() -> None:
            self._notified = True

        call = self.notify.on_unhealthy.remote(self.notify_key, reason, token=self.notify_token)
        self._call("notify", call, taken)

    def _tell_watcher(self) -> None:
        """Every flip between healthy and unhealthy, not every probe: the watcher journals status changes."""
        healthy = all(e.healthy for e in self.endpoints.values())
        if self.watcher is None or healthy == self._told or "watcher" in self._calling:
            return
        sick = [
            f"{e.url}: {e.consecutive_failures} failed checks ({e.last_error})"
            for e in self.endpoints.values()
            if not e.healthy
        ]
        reason = "; ".join(sick) if sick else f"{len(self.endpoints)} endpoint(s) answer their health checks"

        def taken() -> None:
            self._told = healthy

        call = self.watcher.on_health_change.remote(self.name, healthy, reason, token=self.notify_token)
        self._call("watcher", call, taken)

    def _call(self, to: str, ref: Any, taken: Callable[[], None]) -> None:
        """Await another actor's answer beside the probes, one call per addressee at a time (so in order);
        ``taken`` runs once it answered. A call that failed or did not answer within CALL_TIMEOUT_S is
        logged and made again after the next probe."""

        async def answered() -> None:
            try:
                await asyncio.wait_for(ref, CALL_TIMEOUT_S)
            except (RayError, TimeoutError) as error:
                log.warning(
                    "health monitor %s: %s did not take a call (%r); made again", self.name, to, error
                )
                return
            finally:
                del self._calling[to]
            taken()

        self._calling[to] = asyncio.get_running_loop().create_task(answered())

    async def report(self) -> HealthReport:
        return HealthReport(
            monitor=self.name,
            healthy=all(e.healthy for e in self.endpoints.values()),
            checked_at=self.checked_at,
            endpoints=list(self.endpoints.values()),
            node_id=ray.get_runtime_context().get_node_id(),
        )


HealthMonitor: Any = ray.remote(num_cpus=0, max_restarts=-1)(HealthMonitorImpl)
