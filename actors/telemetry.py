"""Metrics for dashboards: Ray's metrics (in the Ray dashboard) and an optional Prometheus exporter."""

from __future__ import annotations

import logging

import prometheus_client
from ray.util import metrics as ray_metrics

from engine.models import DeploymentRequest
from engine.state import DeploymentState

log = logging.getLogger(__name__)


class Telemetry:
    """Counters and gauges kept by the queen; both exporters get the same figures."""

    def __init__(self, prometheus_port: int | None) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self._submitted = ray_metrics.Counter(
            "orchestrator_deployments_submitted", "Deployments submitted", tag_keys=("environment",)
        )
        self._finished = ray_metrics.Counter(
            "orchestrator_deployments_finished", "Deployments ended, by outcome", tag_keys=("outcome",)
        )
        self._rollbacks = ray_metrics.Counter(
            "orchestrator_rollbacks", "Rollbacks, by trigger", tag_keys=("trigger",)
        )
        self._running = ray_metrics.Gauge("orchestrator_deployments_running", "Deployments running")
        self._queued = ray_metrics.Gauge("orchestrator_deployments_queued", "Deployments waiting")
        self._duration = ray_metrics.Histogram(
            "orchestrator_deployment_seconds",
            "Deployment duration",
            boundaries=[10, 30, 60, 120, 300, 600, 1800],
        )
        self.p_finished = prometheus_client.Counter(
            "orchestrator_deployments_finished", "Deployments ended", ["outcome"], registry=self.registry
        )
        self.p_rollbacks = prometheus_client.Counter(
            "orchestrator_rollbacks", "Rollbacks", ["trigger"], registry=self.registry
        )
        self.p_running = prometheus_client.Gauge(
            "orchestrator_deployments_running", "Deployments running", registry=self.registry
        )
        self.p_queued = prometheus_client.Gauge(
            "orchestrator_deployments_queued", "Deployments waiting", registry=self.registry
        )
        if prometheus_port:
            try:
                prometheus_client.start_http_server(prometheus_port, addr="127.0.0.1", registry=self.registry)
            except OSError as error:  # a restarted queen may find its old port still held for a moment
                log.warning("Prometheus exporter not started on port %s: %s", prometheus_port, error)

    def submitted(self, request: DeploymentRequest) -> None:
        self._submitted.inc(tags={"environment": request.environment})

    def set_load(self, running: int, queued: int) -> None:
        self._running.set(running)
        self._queued.set(queued)
        self.p_running.set(running)
        self.p_queued.set(queued)

    def finished(self, state: DeploymentState) -> None:
        outcome = state.phase().value
        self._finished.inc(tags={"outcome": outcome})
        self.p_finished.labels(outcome=outcome).inc()
        if state.rollback is not None:
            self._rollbacks.inc(tags={"trigger": state.rollback.trigger.value})
            self.p_rollbacks.labels(trigger=state.rollback.trigger.value).inc()
        if state.finished_at is not None:
            self._duration.observe(state.finished_at - state.submitted_at)
