"""Judging a candidate over an analysis window: thresholds in the seed's units and a statistical comparison
with the stable revision over the same window. Plain Python (the tests themselves in engine/stats.py).

- Thresholds: error rate and availability in percent, response time in ms at a percentile, throughput in
  requests per second. A failure threshold breached fails the window at once; every success threshold met
  (and no significant regression against the stable revision) makes it a success; anything between is
  ``marginal`` and counts towards ``consecutiveFailures``.
- Comparison (at a window's end): a one-sided two-proportion z-test on the error rates and a one-sided
  Mann-Whitney U test on latency samples, each against a tolerance, so that "worse" means both significant
  and larger than what is tolerated. Where a provider gives no latency samples the comparison says so and
  the response time is judged on its thresholds only.
- Too few requests is ``no_data``, never a pass: the reconciler lengthens the window (bounded) and then ends
  it ``inconclusive`` (pause for a person, or fail, as configured).

Every judgement carries its figures, sample sizes, statistics, thresholds and reason: it is journaled as is.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Literal, Protocol

from pydantic import Field

from engine.metrics import RevisionFigures, percentile
from engine.models import (
    AnalysisSettings,
    Model,
    StrategyType,
    SwitchTrigger,
    Thresholds,
    TriggerOperator,
)
from engine.stats import mann_whitney_greater, normal_sf

Outcome = Literal["pass", "marginal", "fail", "not_available"]


class Verdict(str, Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # a failure threshold breached: roll back now
    MARGINAL = "marginal"  # neither success nor failure, or worse than stable: a window without success
    NO_DATA = "no_data"  # fewer requests than minRequestCount
    INCONCLUSIVE = "inconclusive"  # still no data once the window's extensions are used up


class Figures(Model):
    """A revision's figures over the window, in the thresholds' units."""

    revision: str
    seconds: float
    requests: int | None = None
    errors: int | None = None
    error_rate: float | None = Field(default=None, description="Percent")
    response_time_ms: float | None = None
    percentile: float = 95.0
    availability: float | None = Field(default=None, description="Percent")
    throughput: float | None = Field(default=None, description="Requests per second")
    latency_samples: int = 0


class ThresholdCheck(Model):
    metric: str
    value: float | None
    success: float | None
    failure: float | None
    outcome: Outcome


class ComparisonCheck(Model):
    metric: str
    test: Literal["two_proportion_z", "mann_whitney_u"]
    candidate_n: int
    stable_n: int
    candidate_value: float | None = None
    stable_value: float | None = None
    statistic: float | None = Field(default=None, description="z, or U")
    p_value: float | None = None
    tolerance: str = ""
    outcome: Literal["pass", "worse", "not_available"]
    note: str = ""


class WindowInput(Model):
    """Everything a judge needs about one window (crosses to the domain worker that judges it)."""

    candidate: RevisionFigures
    stable: RevisionFigures | None = None
    availability: float | None = Field(default=None, description="Percent, from the window's health checks")
    settings: AnalysisSettings
    final: bool = True
    extensions: int = 0
    provider: str = ""


class Judgement(Model):
    verdict: Verdict
    reason: str
    final: bool
    candidate: Figures
    stable: Figures | None = None
    thresholds: list[ThresholdCheck] = Field(default_factory=list)
    comparison: list[ComparisonCheck] = Field(default_factory=list)
    unavailable: list[str] = Field(default_factory=list)
    min_requests: int
    extensions: int = 0
    provider: str = ""
    judged_by: str = "local"


class WindowJudge(Protocol):
    """The seam the reconciler judges a window's end (and a blue-green validation's end) through: the
    strategy's domain worker, or these functions in the reconciler's own process."""

    def judge(self, window: WindowInput, strategy: StrategyType) -> Judgement: ...

    def switch(
        self, triggers: list[SwitchTrigger], figures: dict[str, float | str | None]
    ) -> list[TriggerResult]: ...


class LocalJudge:
    def judge(self, window: WindowInput, strategy: StrategyType) -> Judgement:
        return judge_window(window)

    def switch(
        self, triggers: list[SwitchTrigger], figures: dict[str, float | str | None]
    ) -> list[TriggerResult]:
        return evaluate_triggers(triggers, figures)


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
def figures_of(raw: RevisionFigures, percent: float, availability: float | None = None) -> Figures:
    requests, errors = raw.requests, raw.errors
    response_time = raw.response_time_ms
    if response_time is None and raw.latency_samples and not raw.latency_binned:
        response_time = percentile(raw.latency_samples, percent)
    return Figures(
        revision=raw.revision,
        seconds=round(raw.seconds, 3),
        requests=requests,
        errors=errors,
        error_rate=100.0 * errors / requests if requests and errors is not None else None,
        response_time_ms=None if response_time is None else round(response_time, 3),
        percentile=percent,
        availability=availability,
        throughput=round(requests / raw.seconds, 3) if requests is not None and raw.seconds > 0 else None,
        latency_samples=len(raw.latency_samples),
    )


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------
_HIGHER_IS_WORSE = {"errorRate": True, "responseTime": True, "availability": False, "throughput": False}
_VALUE_OF = {
    "errorRate": "error_rate",
    "responseTime": "response_time_ms",
    "availability": "availability",
    "throughput": "throughput",
}


def check_thresholds(
    figures: Figures, success: Thresholds, failure: Thresholds, final: bool
) -> list[ThresholdCheck]:
    """Each threshold given, against the figure; throughput only at a window's end (a rate needs the whole
    window)."""
    wanted, limits = success.named(), failure.named()
    checks = []
    for metric, higher_is_worse in _HIGHER_IS_WORSE.items():
        good, bad = wanted.get(metric), limits.get(metric)
        if (good is None and bad is None) or (metric == "throughput" and not final):
            continue
        value = getattr(figures, _VALUE_OF[metric])
        checks.append(
            ThresholdCheck(
                metric=metric,
                value=value,
                success=good,
                failure=bad,
                outcome=_outcome(value, good, bad, higher_is_worse),
            )
        )
    return checks


def _outcome(value: float | None, good: float | None, bad: float | None, higher_is_worse: bool) -> Outcome:
    if value is None:
        return "not_available"

    def worse(limit: float) -> bool:
        return value > limit if higher_is_worse else value < limit

    if bad is not None and worse(bad):
        return "fail"
    if good is None or value == good or not worse(good):
        return "pass"
    return "marginal"


# --------------------------------------------------------------------------------------------
# Comparison with the stable revision
# --------------------------------------------------------------------------------------------
def compare_error_rates(
    candidate: Figures, stable: Figures, min_requests: int, significance: float, tolerance_points: float
) -> ComparisonCheck:
    """One-sided two-proportion z-test of H0: p_candidate - p_stable <= tolerance (pooled variance)."""
    n_c, n_s = candidate.requests or 0, stable.requests or 0
    check = ComparisonCheck(
        metric="errorRate",
        test="two_proportion_z",
        candidate_n=n_c,
        stable_n=n_s,
        candidate_value=candidate.error_rate,
        stable_value=stable.error_rate,
        tolerance=f"+{tolerance_points:g} points",
        outcome="not_available",
    )
    if n_c < min_requests or n_s < min_requests or candidate.errors is None or stable.errors is None:
        check.note = f"needs {min_requests} requests of each revision"
        return check
    p_c, p_s = candidate.errors / n_c, stable.errors / n_s
    pooled = (candidate.errors + stable.errors) / (n_c + n_s)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_s))
    difference = p_c - p_s - tolerance_points / 100.0
    # se is 0 only when both revisions are all-good (or all-bad): equal, so no evidence of a difference.
    z = difference / se if se > 0 else 0.0
    p_value = normal_sf(z)
    check.statistic, check.p_value = round(z, 4), _rounded(p_value)
    check.outcome = "worse" if p_value < significance else "pass"
    return check


def compare_latency(
    candidate: RevisionFigures, stable: RevisionFigures, settings: AnalysisSettings
) -> ComparisonCheck:
    """One-sided Mann-Whitney U of H1: the candidate's latencies exceed the stable's plus the tolerance."""
    comparison = settings.comparison
    cand, base = candidate.latency_samples, stable.latency_samples
    minimum = settings.min_request_count
    check = ComparisonCheck(
        metric="responseTime",
        test="mann_whitney_u",
        candidate_n=len(cand),
        stable_n=len(base),
        candidate_value=_median(cand),
        stable_value=_median(base),
        tolerance=f"+{comparison.response_time_tolerance:g}% and at least "
        f"+{comparison.response_time_tolerance_ms:g} ms",
        outcome="not_available",
    )
    if len(cand) < minimum or len(base) < minimum:
        check.note = f"needs {minimum} latency samples of each revision"
        return check
    median = check.stable_value or 0.0
    margin = max(median * comparison.response_time_tolerance / 100.0, comparison.response_time_tolerance_ms)
    statistic, p_value = mann_whitney_greater(cand, [value + margin for value in base])
    check.statistic, check.p_value = statistic, _rounded(p_value)
    check.outcome = "worse" if check.p_value < comparison.significance else "pass"
    if candidate.latency_binned or stable.latency_binned:
        check.note = "samples are histogram bucket bounds (ties corrected)"
    return check


def _median(values: list[float]) -> float | None:
    value = percentile(values, 50.0)
    return None if value is None else round(value, 3)


def _rounded(value: float) -> float:
    return float(f"{value:.6g}")


def _comparisons(window: WindowInput, candidate: Figures, stable: Figures) -> list[ComparisonCheck]:
    settings = window.settings
    assert window.stable is not None
    checks = [
        compare_error_rates(
            candidate,
            stable,
            settings.min_request_count,
            settings.comparison.significance,
            settings.comparison.error_rate_tolerance,
        )
    ]
    latency = compare_latency(window.candidate, window.stable, settings)
    if not window.candidate.latency_samples and not window.stable.latency_samples:
        latency.note = f"{window.provider or 'the metric provider'} gives no per-request latency samples"
    checks.append(latency)
    return checks


def breaches_failure(
    figures: RevisionFigures, availability: float | None, settings: AnalysisSettings
) -> bool:
    """Whether ``judge_window(final=False)`` would say ``failure``, in plain arithmetic: the frequent
    in-window check runs this, and builds the full judgement (to journal it) only when it is true."""
    failure = settings.failure_threshold
    if availability is not None and failure.availability is not None and availability < failure.availability:
        return True
    requests = figures.requests
    if requests is None or requests < settings.min_request_count:
        return False
    errors = figures.errors
    if (
        failure.error_rate is not None
        and errors is not None
        and 100.0 * errors / requests > failure.error_rate
    ):
        return True
    latency = figures.response_time_ms
    return latency is not None and failure.response_time is not None and latency > failure.response_time


# --------------------------------------------------------------------------------------------
# The judgement
# --------------------------------------------------------------------------------------------
def judge_window(window: WindowInput) -> Judgement:
    """The verdict on one window (``final``: at its end, with the comparison; else an in-window check for
    failure thresholds only)."""
    settings = window.settings
    percent = settings.response_time_percentile
    candidate = figures_of(window.candidate, percent, window.availability)
    stable = figures_of(window.stable, percent) if window.stable is not None else None
    thresholds = check_thresholds(
        candidate, settings.success_threshold, settings.failure_threshold, window.final
    )
    enough = candidate.requests is not None and candidate.requests >= settings.min_request_count
    comparison: list[ComparisonCheck] = []
    if window.final and enough and stable is not None and settings.comparison.enabled:
        comparison = _comparisons(window, candidate, stable)
    unavailable = [c.metric for c in thresholds if c.outcome == "not_available"]
    unavailable += [f"comparison.{c.metric}" for c in comparison if c.outcome == "not_available"]
    verdict = _verdict(thresholds, comparison, enough, candidate)
    return Judgement(
        verdict=verdict,
        reason=_reason(verdict, candidate, stable, thresholds, comparison, settings.min_request_count),
        final=window.final,
        candidate=candidate,
        stable=stable,
        thresholds=thresholds,
        comparison=comparison,
        unavailable=unavailable,
        min_requests=settings.min_request_count,
        extensions=window.extensions,
        provider=window.provider,
    )


def _verdict(
    thresholds: list[ThresholdCheck], comparison: list[ComparisonCheck], enough: bool, candidate: Figures
) -> Verdict:
    # Availability comes from health checks, not requests: a failing one counts even without traffic.
    if any(c.outcome == "fail" and (enough or c.metric == "availability") for c in thresholds):
        return Verdict.FAILURE
    if not enough:
        return Verdict.NO_DATA
    if any(c.outcome == "marginal" for c in thresholds) or any(c.outcome == "worse" for c in comparison):
        return Verdict.MARGINAL
    return Verdict.SUCCESS


def _reason(
    verdict: Verdict,
    candidate: Figures,
    stable: Figures | None,
    thresholds: list[ThresholdCheck],
    comparison: list[ComparisonCheck],
    min_requests: int,
) -> str:
    parts: list[str] = []
    if verdict is Verdict.NO_DATA:
        seen = "no request count" if candidate.requests is None else f"{candidate.requests} requests"
        parts.append(f"{seen}, fewer than the {min_requests} needed")
    parts += [_describe_threshold(c, candidate) for c in thresholds]
    parts += [_describe_comparison(c) for c in comparison]
    return "; ".join(parts) or f"{candidate.requests} requests, no threshold set"


_UNITS = {"errorRate": "%", "responseTime": " ms", "availability": "%", "throughput": " rps"}
_LABELS = {"errorRate": "error rate", "availability": "availability", "throughput": "throughput"}


def _describe_threshold(check: ThresholdCheck, figures: Figures) -> str:
    unit = _UNITS[check.metric]
    label = _LABELS.get(check.metric, f"p{figures.percentile:g} response time")
    worse = ">" if _HIGHER_IS_WORSE[check.metric] else "<"
    better = "<=" if _HIGHER_IS_WORSE[check.metric] else ">="
    limits = []
    if check.success is not None:
        limits.append(f"success {better} {check.success:g}{unit}")
    if check.failure is not None:
        limits.append(f"failure {worse} {check.failure:g}{unit}")
    if check.value is None:
        return f"{label} not available ({', '.join(limits)})"
    over = f" over {figures.requests} requests" if check.metric == "errorRate" else ""
    return f"{label} {check.value:.4g}{unit}{over} [{check.outcome}] ({', '.join(limits)})"


def _describe_comparison(check: ComparisonCheck) -> str:
    name = "error rate" if check.metric == "errorRate" else "median latency"
    if check.outcome == "not_available":
        return f"comparison of {name} not available: {check.note}"
    symbol = "z" if check.test == "two_proportion_z" else "U"
    return (
        f"{name} {check.candidate_value:.4g} vs stable {check.stable_value:.4g} "
        f"(n={check.candidate_n}/{check.stable_n}, {symbol}={check.statistic:.4g}, p={check.p_value:.3g}, "
        f"tolerance {check.tolerance}) [{check.outcome}]"
    )


# --------------------------------------------------------------------------------------------
# Blue-green switch triggers
# --------------------------------------------------------------------------------------------
class TriggerResult(Model):
    index: int
    type: str
    action: str
    metric: str | None = None
    operator: str | None = None
    expected: float | str | bool | None = None
    actual: float | str | None = None
    holds: bool | None = Field(default=None, description="None: the figure is not available")


_COMPARE = {
    TriggerOperator.EQ: lambda a, b: a == b,
    TriggerOperator.NE: lambda a, b: a != b,
    TriggerOperator.LT: lambda a, b: a < b,
    TriggerOperator.LTE: lambda a, b: a <= b,
    TriggerOperator.GT: lambda a, b: a > b,
    TriggerOperator.GTE: lambda a, b: a >= b,
}


def evaluate_triggers(
    triggers: list[SwitchTrigger], figures: dict[str, float | str | None]
) -> list[TriggerResult]:
    """Each trigger's condition against the validation's figures (``TRIGGER_METRICS`` names them)."""
    results = []
    for index, trigger in enumerate(triggers):
        result = TriggerResult(index=index, type=trigger.type.value, action=trigger.action.value)
        condition = trigger.condition
        if condition is not None:
            actual = figures.get(condition.metric)
            result.metric, result.operator = condition.metric, condition.operator.value
            result.expected, result.actual = condition.value, actual
            if actual is not None:
                expected = condition.value if isinstance(actual, str) else float(condition.value)
                result.holds = bool(_COMPARE[condition.operator](actual, expected))
        results.append(result)
    return results


def describe_trigger(result: TriggerResult) -> str:
    if result.metric is None:
        return f"{result.type} trigger"
    actual = "not available" if result.actual is None else f"{result.actual}"
    return f"{result.metric} {result.operator} {result.expected} (is {actual})"


# --------------------------------------------------------------------------------------------
# For people: a journaled judgement as lines (``status``)
# --------------------------------------------------------------------------------------------
def _figures_line(figures: Figures) -> str:
    parts = [f"{figures.requests if figures.requests is not None else '?'} requests"]
    if figures.error_rate is not None:
        parts.append(f"{figures.errors} errors ({figures.error_rate:.3g}%)")
    if figures.response_time_ms is not None:
        parts.append(f"p{figures.percentile:g} {figures.response_time_ms:.4g} ms")
    if figures.availability is not None:
        parts.append(f"availability {figures.availability:.4g}%")
    if figures.throughput is not None:
        parts.append(f"{figures.throughput:.3g} rps")
    parts.append(f"{figures.latency_samples} latency samples")
    return f"{figures.revision} over {figures.seconds:g}s: " + ", ".join(parts)


def describe_judgement(judgement: Judgement) -> list[str]:
    """The judgement's verdict, figures, thresholds, statistics and reason, one topic a line."""
    kind = "window" if judgement.final else "check"
    lines = [
        f"{judgement.verdict.value} ({kind}, judged by {judgement.judged_by}, "
        f"metrics from {judgement.provider or '?'}, min {judgement.min_requests} requests, "
        f"{judgement.extensions} extension(s))",
        f"candidate {_figures_line(judgement.candidate)}",
    ]
    if judgement.stable is not None:
        lines.append(f"stable    {_figures_line(judgement.stable)}")
    for check in judgement.thresholds:
        lines.append(f"threshold {_describe_threshold(check, judgement.candidate)}")
    for comparison in judgement.comparison:
        lines.append(f"compare   {_describe_comparison(comparison)}")
    if judgement.unavailable:
        lines.append(f"not available: {', '.join(judgement.unavailable)}")
    return lines
