"""Prometheus as a metric provider, for any platform whose revisions export request metrics to it.

Queries are PromQL templates per metric (``metricProvider.queries``), with placeholders for the revision's
labels (``{service}``, ``{environment}``, ``{revision}``, ``{namespace}``...), ``{selector}`` (the label
matchers of one revision, itself a template), ``{window}`` (the window so far, e.g. ``30s``) and
``{quantile}`` (0.95 for p95). The defaults read a prometheus-client style counter and histogram:

- requests, errors: the cumulative ``http_requests_total`` (all, and ``code=~"5.."``), measured against the
  baseline journaled at the window's start;
- latency: ``histogram_quantile`` over the rate of ``http_request_duration_seconds_bucket`` in the window;
- latency_buckets: the cumulative buckets (by ``le``), whose growth in the window gives the comparison its
  samples: each request counts at its bucket's upper bound (the Mann-Whitney test corrects for the ties).

A query that returns no series is a figure not available, not a zero.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from engine.metrics import MAX_SAMPLES, Capability, RevisionFigures, Window, check_query_names, counter_delta
from engine.models import MetricProviderConfig, Target, render_query
from engine.platform import PlatformError, TransientPlatformError

DEFAULT_SELECTOR = 'service="{service}",environment="{environment}",revision="{revision}"'
DEFAULT_QUERIES = {
    "requests": "sum(http_requests_total{{selector}})",
    "errors": 'sum(http_requests_total{{selector},code=~"5.."})',
    "latency": "histogram_quantile({quantile}, "
    "sum by (le) (rate(http_request_duration_seconds_bucket{{selector}}[{window}])))",
    "latency_buckets": "sum by (le) (http_request_duration_seconds_bucket{{selector}})",
}
Labels = Callable[[Target, str], dict[str, str]]


class PrometheusMetrics:
    """``MetricProvider`` over Prometheus' HTTP query API."""

    name = "prometheus"
    capabilities = frozenset({Capability.COUNTS, Capability.LATENCY_PERCENTILE, Capability.LATENCY_SAMPLES})

    def __init__(self, config: MetricProviderConfig, labels: Labels) -> None:
        check_query_names(config.queries, list(DEFAULT_QUERIES))
        self.url = (config.url or "").rstrip("/")
        self.queries = {**DEFAULT_QUERIES, **config.queries}
        self.selector = config.selector or DEFAULT_SELECTOR
        self.scale = 1000.0 if config.latency_unit == "s" else 1.0  # to milliseconds
        self.timeout_s = float(config.settings.get("timeout", 5.0))
        self.labels = labels

    # ---- queries ----------------------------------------------------------------------------
    def _values(self, target: Target, revision: str, window: Window | None) -> dict[str, str]:
        values = {"service": target.service, "environment": target.environment, "revision": revision}
        values.update(self.labels(target, revision))
        values["selector"] = render_query(self.selector, values)
        seconds = max(1, math.ceil(window.seconds)) if window is not None else 60
        percent = window.percentile if window is not None else 95.0
        values.update(window=f"{seconds}s", window_seconds=str(seconds))
        values.update(quantile=f"{percent / 100:g}", percentile=f"{percent:g}")
        return values

    def _query(self, name: str, values: dict[str, str]) -> list[dict[str, Any]]:
        try:
            query = render_query(self.queries[name], values)
        except ValueError as error:
            raise PlatformError("prometheus", self.url, f"metricProvider.queries.{name}: {error}") from error
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as error:
            kind = TransientPlatformError if error.code >= 500 or error.code == 429 else PlatformError
            detail = error.read().decode(errors="replace")[:300]
            raise kind(
                "prometheus", self.url, f"query {name} ({query}): HTTP {error.code} {detail}"
            ) from error
        except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as error:
            raise TransientPlatformError("prometheus", self.url, f"query {name}: {error}") from error
        return list(payload.get("data", {}).get("result", []))

    def _scalar(self, name: str, values: dict[str, str]) -> float | None:
        results = self._query(name, values)
        if not results:
            return None
        value = float(results[0]["value"][1])
        return None if math.isnan(value) else value

    def _buckets(self, values: dict[str, str]) -> dict[str, float]:
        """Cumulative bucket counts by their ``le`` label, as baseline keys (``le:0.1``)."""
        return {
            f"le:{item['metric'].get('le', '+Inf')}": float(item["value"][1])
            for item in self._query("latency_buckets", values)
        }

    # ---- MetricProvider -----------------------------------------------------------------------
    def baseline(self, target: Target, revisions: list[str]) -> dict[str, dict[str, float]]:
        result: dict[str, dict[str, float]] = {}
        for revision in revisions:
            values = self._values(target, revision, None)
            counts = {"requests": self._scalar("requests", values), "errors": self._scalar("errors", values)}
            figures = {name: value for name, value in counts.items() if value is not None}
            result[revision] = {**figures, **self._buckets(values)}
        return result

    def read(self, target: Target, revisions: list[str], window: Window) -> dict[str, RevisionFigures]:
        figures: dict[str, RevisionFigures] = {}
        for revision in revisions:
            values = self._values(target, revision, window)
            base = window.baselines.get(revision, {})
            requests, errors = self._scalar("requests", values), self._scalar("errors", values)
            latency = self._scalar("latency", values)
            samples = binned_samples(self._buckets(values), base, self.scale) if window.samples else []
            figures[revision] = RevisionFigures(
                revision=revision,
                seconds=window.seconds,
                requests=None if requests is None else counter_delta(requests, base, "requests"),
                # No 5xx series yet is no error yet, once there are requests.
                errors=None if requests is None else counter_delta(errors or 0.0, base, "errors"),
                response_time_ms=None if latency is None else latency * self.scale,
                latency_samples=samples,
                latency_binned=True,
            )
        return figures

    def close(self) -> None:
        return None


def binned_samples(now: dict[str, float], baseline: dict[str, float], scale: float) -> list[float]:
    """The window's requests as samples at their bucket's upper bound (ms); the ``+Inf`` bucket's at the
    largest finite bound. Thinned proportionally to at most ``MAX_SAMPLES``."""
    bounds = sorted((float(key[3:]), key) for key in now if key.startswith("le:") and key != "le:+Inf")
    counts: list[tuple[float, int]] = []
    previous = 0.0
    for bound, key in [*bounds, (math.inf, "le:+Inf")]:
        if key not in now:
            continue
        cumulative = now[key] - baseline.get(key, 0.0)
        at = bound if bound != math.inf else (bounds[-1][0] if bounds else 0.0)
        counts.append((at * scale, max(0, round(cumulative - previous))))
        previous = max(previous, cumulative)
    total = sum(count for _, count in counts)
    factor = min(1.0, MAX_SAMPLES / total) if total else 1.0
    return [value for value, count in counts for _ in range(round(count * factor))]
