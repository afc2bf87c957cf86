"""Health monitor actors: async, parallel probes; N consecutive failures (configurable) mean unhealthy."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from adapters.http_probe import ProbeResult, probe_all
from engine.models import Model

log = logging.getLogger(__name__)


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
    ) -> None:
        self.name = name
        self.interval_s = interval_s
        self.timeout_s = min(timeout_s, interval_s)
        self.threshold = unhealthy_threshold
        self.notify = notify  # an actor handle with ``on_unhealthy(key, reason)``
        self.notify_key = notify_key
        # The orchestrator's service secret: ``on_unhealthy`` accepts the orchestrator's own calls only.
        self.notify_token = notify_token
        self.endpoints = {url: EndpointHealth(url=url) for url in urls}
        self.checked_at: float | None = None
        self._notified = False
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            results = await probe_all(list(self.endpoints), self.timeout_s)
            for result in results:
                self.endpoints[result.url] = apply_probe(self.endpoints[result.url], result, self.threshold)
            self.checked_at = time.time()
            await self._maybe_notify()
            await asyncio.sleep(self.interval_s)

    async def _maybe_notify(self) -> None:
        sick = [e for e in self.endpoints.values() if not e.healthy]
        if not sick or self.notify is None or self._notified:
            return
        reason = "; ".join(f"{e.url}: {e.consecutive_failures} failed checks ({e.last_error})" for e in sick)
        self._notified = True
        self.notify.on_unhealthy.remote(self.notify_key, reason, token=self.notify_token)

    async def report(self) -> HealthReport:
        return HealthReport(
            monitor=self.name,
            healthy=all(e.healthy for e in self.endpoints.values()),
            checked_at=self.checked_at,
            endpoints=list(self.endpoints.values()),
            node_id=ray.get_runtime_context().get_node_id(),
        )


HealthMonitor: Any = ray.remote(num_cpus=0, max_restarts=-1)(HealthMonitorImpl)
