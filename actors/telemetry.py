"""Metrics for dashboards, computed from the journal: a prometheus-client exporter (``prometheusPort``)
and Ray's metrics (``ray.util.metrics``, shown with the Ray dashboard's metrics). Both get the same figures,
from ``engine.deployment_metrics``; the queen refreshes them after each change it makes and at every round of
its observer, which also sends notifications and alerts (``engine.dispatch``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from ray.util import metrics as ray_metrics

from adapters.notifications import AppriseNotifier
from adapters.webhooks import HttpWebhookSender
from engine.alerting import AlertKind
from engine.config import EnterpriseConfig
from engine.deployment_metrics import DeploymentMetrics, Family
from engine.dispatch import ALERT_OUTCOMES, BATCH, Dispatcher
from engine.journal import Journal
from engine.models import DeploymentRequest
from engine.state import DeploymentState

log = logging.getLogger(__name__)
OBSERVE_INTERVAL_S = 1.0
STUCK_CHECK_S = 10.0  # deadlines are minutes long: looking every 10 s is soon enough
REFRESH_AT_REST_S = 60.0  # the DORA windows slide even when nothing happens
# Ray's gauges get new figures at most this often: Ray exports them every 10 s (its default
# metrics_report_interval_ms), and computing every family costs about 0.8 ms (benchmarks/observer.py); the
# Prometheus exporter computes its own at each scrape, always current.
RAY_PUSH_S = 10.0


class Telemetry(Collector):
    """The journal's figures, kept folded; exported on demand (scrape) and pushed to Ray's gauges."""

    def __init__(self, config: EnterpriseConfig, journal_path: str) -> None:
        self.journal = Journal(journal_path)
        levels = {name: env.compliance_level.value for name, env in config.environments.items()}
        self.metrics = DeploymentMetrics(levels, config.metrics.dora_window / 1000)
        self.dispatch_counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()
        self._ray: dict[str, Any] = {}
        self._ray_values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._changed = False  # figures changed since Ray's gauges were last set
        self.push_interval_s = RAY_PUSH_S
        self._pushed = float("-inf")  # when (monotonic) they were
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(self)
        prometheus_client.ProcessCollector(registry=self.registry)  # the queen's own CPU and memory
        port = config.metrics.prometheus_port
        if port:
            try:
                prometheus_client.start_http_server(port, addr="127.0.0.1", registry=self.registry)
            except OSError as error:  # a restarted queen may find its old port still held for a moment
                log.warning("Prometheus exporter not started on port %s: %s", port, error)
        self.refresh(force=True)

    # ------------------------------------------------------------------------------ the queen's calls
    def submitted(self, request: DeploymentRequest) -> None:
        self.refresh()

    def set_load(self, running: int, queued: int) -> None:
        self.refresh()

    def finished(self, state: DeploymentState) -> None:
        self.refresh()

    # ------------------------------------------------------------------------------ refreshing
    def refresh(self, force: bool = False) -> None:
        """Fold the events written since the last refresh; give Ray's gauges the new figures when there were
        new events (or when ``force``d: the DORA windows slide with time), at most every ``RAY_PUSH_S``. What
        waits for the next push is ``pending``: the observer's next round pushes it (``push_interval_s``)."""
        with self._lock:
            before = self.metrics.seq
            self.metrics.fold(self.journal.events(after_seq=before))
            self._changed = self._changed or force or self.metrics.seq != before
            now = time.monotonic()
            if not self._changed or now - self._pushed < self.push_interval_s:
                return
            self._changed, self._pushed = False, now
            families = [*self.metrics.families(time.time()), *self._dispatch_families()]
        for family in families:
            self._to_ray(family)

    @property
    def pending(self) -> bool:
        """Figures not yet given to Ray's gauges."""
        return self._changed

    def _dispatch_families(self) -> list[Family]:
        hooks: dict[Any, float] = {}
        # Every kind and outcome from 0: a restarted queen's dashboard shows "none since", not "no data".
        alerts: dict[Any, float] = {
            (("kind", kind.value), ("outcome", outcome)): 0.0
            for kind in AlertKind
            for outcome in ALERT_OUTCOMES
        }
        for (what, kind, outcome), count in self.dispatch_counts.items():
            if what == "hook":
                hooks[(("type", kind), ("outcome", outcome))] = float(count)
            else:
                alerts[(("kind", kind), ("outcome", outcome))] = float(count)
        return [
            Family(
                "orchestrator_hook_notifications_total",
                "counter",
                "Notification hooks called since the queen started",
                ("type", "outcome"),
                values=hooks,
            ),
            Family(
                "orchestrator_alerts_total",
                "counter",
                "Alerts raised since the queen started, by what came of them",
                ("kind", "outcome"),
                values=alerts,
            ),
        ]

    def _to_ray(self, family: Family) -> None:
        """Ray's metrics are gauges here (set to the journal's totals); a histogram gives its count and sum.
        A label set that went away (a revision out of traffic) is set to 0, as Ray cannot drop it."""
        samples = dict(family.values)
        if family.kind == "histogram":
            for labels, histogram in family.histograms.items():
                samples[(*labels, ("part", "count"))] = float(histogram.count)
                samples[(*labels, ("part", "sum"))] = histogram.total
        tag_keys = (*family.labels, "part") if family.kind == "histogram" else family.labels
        gauge = self._ray.get(family.name)
        if gauge is None:
            gauge = self._ray[family.name] = ray_metrics.Gauge(family.name, family.help, tag_keys=tag_keys)
        pushed = self._ray_values.setdefault(family.name, {})
        for labels in set(pushed) - set(samples):
            samples[labels] = 0.0
        for labels, value in samples.items():
            if pushed.get(labels) != value:  # only what changed: each set costs the queen CPU
                gauge.set(value, tags=dict(labels))
                pushed[labels] = value

    # ------------------------------------------------------------------------------ scraping
    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = [*self.metrics.families(time.time()), *self._dispatch_families()]
        for family in families:
            yield _prometheus_family(family)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families are made at each scrape: nothing to check at registration


def _prometheus_family(family: Family) -> Metric:
    labels = list(family.labels)
    if family.kind == "histogram":
        metric: Any = HistogramMetricFamily(family.name, family.help, labels=labels)
        for key, histogram in family.histograms.items():
            metric.add_metric([v for _, v in key], histogram.cumulative(), histogram.total)
        return metric  # type: ignore[no-any-return]
    name = family.name.removesuffix("_total") if family.kind == "counter" else family.name
    metric = (CounterMetricFamily if family.kind == "counter" else GaugeMetricFamily)(
        name, family.help, labels=labels
    )
    for key, value in family.values.items():
        metric.add_metric([v for _, v in key], value)
    return metric  # type: ignore[no-any-return]


class Observer:
    """The queen's watcher of the journal: each round sends what new events call for (notification hooks,
    alerts) and refreshes the metrics. It runs in a thread beside the queen's event loop."""

    def __init__(self, config: EnterpriseConfig, journal_path: str, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.journal = Journal(journal_path)
        self.dispatcher = Dispatcher(
            self.journal, config.hooks, config.alerting, HttpWebhookSender(), AppriseNotifier()
        )
        telemetry.dispatch_counts = self.dispatcher.counts
        self._seen = -1
        self._stuck_checked = self._refreshed = 0.0

    def round(self) -> int:
        """At rest (no new event) a round reads one row; the stuck check and the metrics' refresh wait for
        their own periods."""
        head = self.journal.head()
        seq = head[0] if head else 0
        now = time.monotonic()
        stuck = now - self._stuck_checked >= STUCK_CHECK_S
        pending = self.telemetry.pending
        if seq == self._seen and not stuck and not pending and now - self._refreshed < REFRESH_AT_REST_S:
            return 0
        handled = self.dispatcher.round(stuck) if seq != self._seen or stuck else 0
        self._stuck_checked = now if stuck else self._stuck_checked
        if seq != self._seen or pending or now - self._refreshed >= REFRESH_AT_REST_S:
            self.telemetry.refresh(force=True)  # the dispatcher's counts may have changed too
            self._refreshed = now
        self._seen = seq if handled < BATCH else self._seen
        return handled

    async def run(self, interval_s: float = OBSERVE_INTERVAL_S) -> None:
        while True:
            handled = 0
            try:
                handled = await asyncio.to_thread(self.round)
            except Exception:  # the watcher must go on whatever one round meets
                log.exception("observer round failed")
            await asyncio.sleep(0 if handled >= BATCH else interval_s)
