"""Live traffic, simulated where a platform would have it (Kubernetes on the emulator, Lambda on moto).

A ``SimulatedTraffic`` ticks in a background thread while its ``with`` block runs: each tick splits
``per_second * tick_s`` requests over the revisions by the weights in force (the fractions left over carry to
the next tick) and fails exactly the share of a revision's requests so far that its ``ERROR_RATE`` says, so
that no verdict depends on chance. Subclasses say where the weights and error rates come from and where the
counts go.
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
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
        self.problems: list[str] = []
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

    @abstractmethod
    def _tick(self) -> None:
        """Send one tick's worth of simulated requests."""

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

    def _tick(self) -> None:
        in_force = self.adapter.traffic(self.target).weights.items()
        weights: dict[str, float] = {rev: w for rev, w in in_force if w > 0}
        if not weights:
            return
        error_rates = self._error_rates()
        for revision, count in self._counts(weights).items():
            errors = self._failures(revision, count, error_rates.get(revision, 0.0))
            labels = {
                "namespace": self.cluster.namespace,
                "service": self.target.service,
                "revision": revision,
            }
            if count - errors:
                self.counter.labels(code="200", **labels).inc(count - errors)
            if errors:
                self.counter.labels(code="503", **labels).inc(errors)

    def _error_rates(self) -> dict[str, float]:
        """revision -> ERROR_RATE from the environment of its Deployment's pods."""
        rates: dict[str, float] = {}
        for deployment in self.cluster.deployments():
            template = deployment["spec"]["template"]
            labels = template["metadata"].get("labels", {})
            if labels.get("app.kubernetes.io/name") != self.target.service:
                continue
            env = {e["name"]: e.get("value", "") for e in template["spec"]["containers"][0].get("env", [])}
            rates[labels.get(LABEL_REVISION, "")] = float(env.get("ERROR_RATE") or 0)
        return rates


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

    def _weights(self) -> dict[str, float]:
        """version -> fraction of invocations, as Lambda routes through the weighted alias."""
        alias = self.lambda_client.get_alias(FunctionName=self.function, Name=self.alias)
        extra = (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights") or {}
        weights = {str(version): float(weight) for version, weight in extra.items()}
        weights[str(alias["FunctionVersion"])] = 1.0 - sum(weights.values())
        return {version: weight for version, weight in weights.items() if weight > 0}

    def _tick(self) -> None:
        data: list[dict[str, Any]] = []
        now = datetime.now(UTC)
        for version, count in self._counts(self._weights()).items():
            if count:
                data += self._invoke(version, count, now)
        if data:
            self.cloudwatch.put_metric_data(Namespace="AWS/Lambda", MetricData=data)

    def _invoke(self, version: str, count: int, now: datetime) -> list[dict[str, Any]]:
        errors = self._failures(version, count, self._error_rate(version))
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

    def _error_rate(self, version: str) -> float:
        # Read every time: moto, unlike Lambda, gives a deleted newest version's number to the next one.
        config = self.lambda_client.get_function_configuration(FunctionName=self.function, Qualifier=version)
        variables = (config.get("Environment") or {}).get("Variables") or {}
        return float(variables.get("ERROR_RATE") or 0)
