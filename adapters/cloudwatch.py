"""AWS CloudWatch as a metric provider (Lambda's default; any platform that publishes there).

A window is read by time: ``GetMetricStatistics`` over the window's span as one period (a multiple of 60 s,
from the minute the window started: CloudWatch keeps minutes), ``Sum`` of the request and error metrics and,
for latency, ``ExtendedStatistics=['p95']`` (the strategy's percentile). CloudWatch gives no per-request
samples, so the statistical comparison of latency is not available here (the judgement says so); the
response time is judged on its thresholds. Metric names and dimensions are templates per revision:
Lambda's defaults are its own scheme for invocations through a weighted alias (``FunctionName``,
``Resource=<function>:<alias>``, ``ExecutedVersion``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from engine.metrics import Capability, RevisionFigures, Window, check_query_names
from engine.models import MetricProviderConfig, Target, render_query
from engine.platform import PlatformError, TransientPlatformError

LAMBDA_NAMESPACE = "AWS/Lambda"
LAMBDA_METRICS = {"requests": "Invocations", "errors": "Errors", "latency": "Duration"}
LAMBDA_DIMENSIONS = {
    "FunctionName": "{function}",
    "Resource": "{function}:{alias}",
    "ExecutedVersion": "{version}",
}
Labels = Callable[[Target, str], dict[str, str]]


class CloudWatchMetrics:
    """``MetricProvider`` over CloudWatch's ``GetMetricStatistics``."""

    name = "cloudwatch"
    capabilities = frozenset({Capability.COUNTS, Capability.LATENCY_PERCENTILE})

    def __init__(self, config: MetricProviderConfig, labels: Labels) -> None:
        check_query_names(config.queries, list(LAMBDA_METRICS))
        settings = config.settings
        self.namespace = config.namespace or LAMBDA_NAMESPACE
        self.metrics = {**LAMBDA_METRICS, **config.queries}
        self.dimensions = dict(config.dimensions or LAMBDA_DIMENSIONS)
        self.labels = labels
        session = boto3.Session(profile_name=settings.get("profile"), region_name=settings.get("region"))
        client_config = Config(
            region_name=settings.get("region") or "us-east-1",
            retries={"total_max_attempts": int(settings.get("maxAttempts", 3)), "mode": "standard"},
            connect_timeout=float(settings.get("connectTimeout", 5.0)),
            read_timeout=float(settings.get("readTimeout", 10.0)),
        )
        self._client: BaseClient = session.client(
            "cloudwatch", endpoint_url=settings.get("endpointUrl"), config=client_config
        )
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return str(self._client.meta.endpoint_url)

    def _statistics(
        self, metric: str, dimensions: list[dict[str, str]], window: Window, **what: Any
    ) -> list[Any]:
        start = datetime.fromtimestamp(window.start, UTC).replace(second=0, microsecond=0)
        end = datetime.fromtimestamp(window.end, UTC) + timedelta(minutes=1)  # the current minute too
        period = 60 * max(1, math.ceil((end - start).total_seconds() / 60))  # the whole window in one period
        try:
            with self._lock:
                response = self._client.get_metric_statistics(
                    Namespace=self.namespace,
                    MetricName=metric,
                    Dimensions=dimensions,
                    StartTime=start,
                    EndTime=start + timedelta(seconds=period),
                    Period=period,
                    **what,
                )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            kind = TransientPlatformError if status >= 500 or "Throttl" in code else PlatformError
            raise kind("cloudwatch", self.endpoint, f"GetMetricStatistics {metric}: {error}") from error
        except BotoCoreError as error:
            raise TransientPlatformError("cloudwatch", self.endpoint, f"{metric}: {error}") from error
        return list(response.get("Datapoints", []))

    def _sum(self, metric: str, dimensions: list[dict[str, str]], window: Window) -> float | None:
        points = self._statistics(metric, dimensions, window, Statistics=["Sum"])
        return sum(float(p.get("Sum", 0.0)) for p in points) if points else None

    def _percentile(self, metric: str, dimensions: list[dict[str, str]], window: Window) -> float | None:
        """The percentile over the window (one period, so one datapoint); None when CloudWatch gives none."""
        statistic = f"p{window.percentile:g}"
        points = self._statistics(
            metric, dimensions, window, Statistics=["SampleCount"], ExtendedStatistics=[statistic]
        )
        values = [
            float(p["ExtendedStatistics"][statistic])
            for p in points
            if statistic in p.get("ExtendedStatistics", {})
        ]
        return max(values) if values else None

    def _dimensions(self, target: Target, revision: str) -> list[dict[str, str]] | None:
        values = {"service": target.service, "environment": target.environment, "revision": revision}
        values.update(self.labels(target, revision))
        try:
            return [{"Name": name, "Value": render_query(v, values)} for name, v in self.dimensions.items()]
        except ValueError:  # e.g. no published version for the revision: nothing to read
            return None

    def baseline(self, target: Target, revisions: list[str]) -> dict[str, dict[str, float]]:
        return {}  # read by time

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        figures: dict[str, RevisionFigures] = {}
        for revision in revisions:
            dimensions = self._dimensions(target, revision)
            if dimensions is None:
                continue
            requests = self._sum(self.metrics["requests"], dimensions, window)
            errors = self._sum(self.metrics["errors"], dimensions, window)
            figures[revision] = RevisionFigures(
                revision=revision,
                seconds=window.seconds,
                requests=None if requests is None else int(requests),
                errors=None if requests is None else int(errors or 0),
                response_time_ms=self._percentile(self.metrics["latency"], dimensions, window),
            )
        return figures

    def close(self) -> None:
        self._client.close()
