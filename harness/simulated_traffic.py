"""Live traffic, simulated where a platform would have it (Kubernetes on the emulator, Lambda on moto).

A ``SimulatedTraffic`` ticks in a background thread while its ``with`` block runs: each tick splits
``per_second * tick_s`` requests over the revisions by the route in force (the fractions left over carry to
the next tick) and fails exactly the share of a revision's requests so far that its ``ERROR_RATE`` says, so
that no verdict depends on chance. Requests that no revision could answer (no route at all, or a route to a
revision that is not serving: no ready replica, a deleted version) are counted as failed under
``UNROUTED``: that is downtime, which the scenarios require to be zero. Subclasses say where the route,
readiness and error rates come from and where the counts go.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import Counter
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import prometheus_client

from adapters.kubernetes_platform import LABEL_REVISION
from adapters.lambda_platform import LambdaPlatform
from engine.models import Target
from engine.platform import PlatformAdapter

if TYPE_CHECKING:  # environments.py builds these simulations: a run-time import would be circular
    from harness.environments import Cluster, Moto

log = logging.getLogger(__name__)
UNROUTED = "?"  # the label of requests no revision answered, as TrafficGenerator labels them


class SimulatedTraffic(ABC):
    tick_s: float
    per_second: float
    weight_unit: float  # what a weight of "all the traffic" is: 100 for percentages, 1 for fractions
    nothing_served: str  # says so when the block ends without one request served

    def __init__(self, adapter: PlatformAdapter, label: str, thread_name: str) -> None:
        self.adapter = adapter
        self.label = label
        self.served: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.unrouted = 0  # requests that no revision answered
        self.problems: list[str] = []
        self._known: dict[str, tuple[float, str]] = {}  # the last (ERROR_RATE, VERSION) seen of each revision
        self._carry: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=thread_name, daemon=True)

    def __enter__(self) -> Self:
        self._safe_tick()  # traffic flows from the start of the block, however short the block
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        self.adapter.close()
        if kind is None:  # a failing scenario's own error says more than this
            assert sum(self.served.values()) > 0, f"{self.nothing_served}: {self.problems[-3:]}"

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._safe_tick()

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as error:  # no route yet, a revision deleted meanwhile: the next tick sees anew
            self.problems.append(repr(error))
            log.warning("%s: %r", self.label, error)

    def _tick(self) -> None:
        """Send one tick's worth of simulated requests over the route in force."""
        routed = self._route()
        rates = self._serving(routed)
        # A revision routed to but not serving is downtime only if the route still has it once its state is
        # known: one that left the route meanwhile (a switch, then its removal) answered its requests.
        again = self._route() if not routed or set(routed) - set(rates) else routed
        sent: dict[str, tuple[int, int]] = {}
        for revision, count in self._counts(routed or {UNROUTED: self.weight_unit}).items():
            if revision == UNROUTED or (revision not in rates and revision in again):
                if revision != UNROUTED or not again:
                    self.unrouted += count
                continue
            self._known[revision] = rates.get(revision, self._known.get(revision, (0.0, revision)))
            if count:
                sent[revision] = (count, self._failures(revision, count, self._known[revision][0]))
        if sent:
            self._publish(sent)

    @abstractmethod
    def _route(self) -> dict[str, float]:
        """revision -> weight (above zero) of the route in force; empty when there is no route."""

    @abstractmethod
    def _serving(self, revisions: dict[str, float]) -> dict[str, tuple[float, str]]:
        """revision -> (ERROR_RATE, VERSION), of those of ``revisions`` (and maybe others) that can answer a
        request now."""

    @abstractmethod
    def _publish(self, sent: dict[str, tuple[int, int]]) -> None:
        """Count the requests answered this tick: revision -> (requests, of which failed)."""

    def snapshot(self) -> Counter[tuple[str, int]]:
        """The requests so far by (version, status), as ``TrafficGenerator`` counts HTTP answers by their
        ``X-Version``: 200 answered, 500 a revision's own errors, 0 no revision answered (``UNROUTED``)."""
        counts: Counter[tuple[str, int]] = Counter()
        for revision, served in list(self.served.items()):
            failed, version = self.failed.get(revision, 0), self._known[revision][1]
            counts[(version, 200)] += served - failed
            counts[(version, 500)] += failed
        counts[(UNROUTED, 0)] += self.unrouted
        return +counts

    def _counts(self, weights: dict[str, float]) -> dict[str, int]:
        """Requests of this tick per revision; the fractions carry over to the next tick."""
        counts: dict[str, int] = {}
        for revision, weight in weights.items():
            share = self._carry.get(revision, 0.0) + self.per_second * self.tick_s * weight / self.weight_unit
            counts[revision] = int(share)
            self._carry[revision] = share - counts[revision]
        return counts

    def _failures(self, revision: str, count: int, error_rate: float) -> int:
        """How many of ``count`` new requests fail: exactly ``error_rate`` of the revision's so far."""
        served = self.served.get(revision, 0) + count
        errors = math.floor(served * error_rate) - self.failed.get(revision, 0)
        self.served[revision], self.failed[revision] = served, self.failed.get(revision, 0) + errors
        return errors


class LiveTraffic(SimulatedTraffic):
    """Users and pods, simulated: requests split by the weights in force, counted for Prometheus."""

    tick_s = 0.2
    per_second = 50
    weight_unit = 100
    nothing_served = "no request was served"

    def __init__(
        self, adapter: PlatformAdapter, target: Target, cluster: Cluster, counter: prometheus_client.Counter
    ) -> None:
        super().__init__(adapter, f"simulated traffic of {target.key}", f"traffic-{target.service}")
        self.target, self.cluster, self.counter = target, cluster, counter

    def _route(self) -> dict[str, float]:
        return {rev: w for rev, w in self.adapter.traffic(self.target).weights.items() if w > 0}

    def _serving(self, revisions: dict[str, float]) -> dict[str, tuple[float, str]]:
        """Revisions whose Deployment has a ready replica, from its pods' environment."""
        serving: dict[str, tuple[float, str]] = {}
        for deployment in self.cluster.deployments():
            template = deployment["spec"]["template"]
            labels = template["metadata"].get("labels", {})
            ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
            if labels.get("app.kubernetes.io/name") != self.target.service or ready == 0:
                continue
            env = {e["name"]: e.get("value", "") for e in template["spec"]["containers"][0].get("env", [])}
            serving[labels.get(LABEL_REVISION, "")] = (
                float(env.get("ERROR_RATE") or 0),
                env.get("VERSION", ""),
            )
        return serving

    def _publish(self, sent: dict[str, tuple[int, int]]) -> None:
        for revision, (count, errors) in sent.items():
            labels = {
                "namespace": self.cluster.namespace,
                "service": self.target.service,
                "revision": revision,
            }
            if count - errors:
                self.counter.labels(code="200", **labels).inc(count - errors)
            if errors:
                self.counter.labels(code="503", **labels).inc(errors)


class LiveInvocations(SimulatedTraffic):
    """Callers and Lambda's router, simulated: invocations split by alias weights, published to CloudWatch.

    They are published in the scheme Lambda uses for invocations through a weighted alias (``FunctionName``,
    ``Resource=<function>:<alias>``, ``ExecutedVersion``).
    """

    tick_s = 0.25
    per_second = 40
    weight_unit = 1
    nothing_served = "nothing was invoked"
    duration_ms = 12.0

    def __init__(self, adapter: LambdaPlatform, target: Target, aws: Moto) -> None:
        self.function = adapter.function_name(target)
        super().__init__(adapter, f"simulated invocations of {self.function}", f"invocations-{self.function}")
        self.alias = adapter.settings.alias_name
        self.lambda_client, self.cloudwatch = aws.client("lambda"), aws.client("cloudwatch")

    def _route(self) -> dict[str, float]:
        """version -> fraction of invocations as Lambda routes them by the weighted alias (none without)."""
        try:
            alias = self.lambda_client.get_alias(FunctionName=self.function, Name=self.alias)
        except self.lambda_client.exceptions.ResourceNotFoundException:
            return {}
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights = {str(version): float(weight) for version, weight in extra.items()}
        weights[str(alias["FunctionVersion"])] = 1.0 - sum(weights.values())
        return {version: weight for version, weight in weights.items() if weight > 0}

    def _serving(self, revisions: dict[str, float]) -> dict[str, tuple[float, str]]:
        """The routed versions that exist, from their environment (read every tick: moto, unlike Lambda,
        gives a deleted newest version's number to the next one)."""
        serving: dict[str, tuple[float, str]] = {}
        for version in revisions:
            try:
                config = self.lambda_client.get_function_configuration(
                    FunctionName=self.function, Qualifier=version
                )
            except self.lambda_client.exceptions.ResourceNotFoundException:
                continue
            variables = (config.get("Environment") or {}).get("Variables") or {}
            serving[version] = (float(variables.get("ERROR_RATE") or 0), variables.get("VERSION", ""))
        return serving

    def _publish(self, sent: dict[str, tuple[int, int]]) -> None:
        now = datetime.now(UTC)
        data = [
            point
            for version, (count, errors) in sent.items()
            for point in self._points(version, count, errors, now)
        ]
        self.cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=data)

    def _points(self, version: str, count: int, errors: int, now: datetime) -> list[dict[str, Any]]:
        dimensions = [
            {"Name": "FunctionName", "Value": self.function},
            {"Name": "Resource", "Value": f"{self.function}:{self.alias}"},
            {"Name": "ExecutedVersion", "Value": version},
        ]
        values = {
            "Invocations": [float(count)],
            "Errors": [float(errors)],
            "Duration": [self.duration_ms] * count,
        }
        return [
            {"MetricName": name, "Dimensions": dimensions, "Values": points, "Timestamp": now}
            for name, points in values.items()
        ]
