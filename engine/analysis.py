"""Judging a revision on live metrics: deltas of cumulative counters against success and failure thresholds.

No data is an outcome of its own (``NO_DATA``), never a silent pass.
"""

from __future__ import annotations

from enum import Enum

from engine.models import Model, Thresholds
from engine.platform import MetricSnapshot


class Verdict(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    INCONCLUSIVE = "inconclusive"
    NO_DATA = "no_data"


class Measurement(Model):
    verdict: Verdict
    requests: int
    errors: int
    error_rate: float | None
    response_time_ms: float | None
    reason: str


def baseline_of(snapshot: MetricSnapshot | None) -> dict[str, float]:
    if snapshot is None:
        return {"requests": 0, "errors": 0}
    return {"requests": snapshot.requests, "errors": snapshot.errors}


def judge(
    snapshot: MetricSnapshot | None,
    baseline: dict[str, float],
    success: Thresholds,
    failure: Thresholds,
    min_requests: int,
) -> Measurement:
    """The verdict on the window from ``baseline`` to ``snapshot``.

    Counters that went backwards (the router restarted) count from zero rather than going negative.
    """
    if snapshot is None:
        return Measurement(
            verdict=Verdict.NO_DATA,
            requests=0,
            errors=0,
            error_rate=None,
            response_time_ms=None,
            reason="no metrics for the revision",
        )
    requests = snapshot.requests - int(baseline.get("requests", 0))
    errors = snapshot.errors - int(baseline.get("errors", 0))
    if requests < 0 or errors < 0:
        requests, errors = snapshot.requests, snapshot.errors
    latency = snapshot.response_time_ms
    if requests < min_requests:
        return Measurement(
            verdict=Verdict.NO_DATA,
            requests=requests,
            errors=errors,
            error_rate=None,
            response_time_ms=latency,
            reason=f"{requests} requests, fewer than the {min_requests} needed",
        )
    rate = errors / requests
    return Measurement(
        verdict=_verdict(rate, latency, success, failure),
        requests=requests,
        errors=errors,
        error_rate=rate,
        response_time_ms=latency,
        reason=_describe(rate, latency, requests, success, failure),
    )


def _verdict(rate: float, latency: float | None, success: Thresholds, failure: Thresholds) -> Verdict:
    if rate > failure.error_rate or _above(latency, failure.response_time):
        return Verdict.FAILURE
    if rate <= success.error_rate and not _above(latency, success.response_time):
        return Verdict.SUCCESS
    return Verdict.INCONCLUSIVE


def _above(value: float | None, limit: float | None) -> bool:
    return value is not None and limit is not None and value > limit


def _describe(
    rate: float, latency: float | None, requests: int, success: Thresholds, failure: Thresholds
) -> str:
    text = f"error rate {rate:.2%} over {requests} requests (success <= {success.error_rate:.2%}, "
    text += f"failure > {failure.error_rate:.2%})"
    if latency is not None:
        text += f", response time {latency:.0f} ms"
        if failure.response_time is not None:
            text += f" (failure > {failure.response_time:.0f} ms)"
    return text
