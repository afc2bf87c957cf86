"""The judge on synthetic windows: thresholds in the seed's units, the statistical comparison with the stable
revision, low traffic, and the blue-green switch triggers."""

from __future__ import annotations

import random
from typing import Any

import pytest

from engine.judge import (
    Judgement,
    Verdict,
    WindowInput,
    describe_judgement,
    evaluate_triggers,
    judge_window,
)
from engine.metrics import RevisionFigures
from engine.models import BlueGreenConfig, CanaryConfig, SwitchTrigger
from engine.stats import mann_whitney_greater, normal_sf

# The seed's thresholds: errorRate and availability in percent, responseTime in ms (p95), throughput in rps.
SEED = CanaryConfig.model_validate(
    {
        "successThreshold": {"errorRate": 1, "responseTime": 500, "availability": 99.5, "throughput": 100},
        "failureThreshold": {
            "errorRate": 5,
            "responseTime": 2000,
            "availability": 95,
            "consecutiveFailures": 3,
        },
        "minRequestCount": 50,
    }
)
ONLY_ERRORS = CanaryConfig.model_validate({"minRequestCount": 50})  # 1% / 5% error rate, nothing else


def revision(
    name: str, requests: int, errors: int = 0, latencies: list[float] | None = None, seconds: float = 10.0
) -> RevisionFigures:
    return RevisionFigures(
        revision=name,
        seconds=seconds,
        requests=requests,
        errors=errors,
        latency_samples=latencies or [],
    )


def latencies(median: float, count: int, spread: float = 0.2, seed: int = 7) -> list[float]:
    """Log-normal-ish latencies around ``median`` ms, reproducible."""
    rng = random.Random(seed)
    return [median * rng.lognormvariate(0.0, spread) for _ in range(count)]


def window(
    candidate: RevisionFigures,
    stable: RevisionFigures | None = None,
    settings: CanaryConfig = ONLY_ERRORS,
    **extra: Any,
) -> WindowInput:
    return WindowInput(candidate=candidate, stable=stable, settings=settings, **extra)


def outcome(judgement: Judgement, metric: str) -> str:
    return next(c.outcome for c in [*judgement.thresholds, *judgement.comparison] if c.metric == metric)


# --------------------------------------------------------------------------------------------
# Thresholds in the seed's units
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("errors", "verdict", "shown"),
    [(8, Verdict.SUCCESS, "pass"), (30, Verdict.MARGINAL, "marginal"), (60, Verdict.FAILURE, "fail")],
)
def test_error_rate_is_percent(errors: int, verdict: Verdict, shown: str) -> None:
    """errorRate: 1 means 1%: 0.8% passes, 3% is between success and failure, 6% fails."""
    judgement = judge_window(window(revision("2-0-0", 1000, errors)))
    assert judgement.verdict is verdict
    assert judgement.candidate.error_rate == pytest.approx(errors / 10)
    assert outcome(judgement, "errorRate") == shown
    assert f"error rate {errors / 10:.4g}% over 1000 requests [{shown}]" in judgement.reason


def test_response_time_is_judged_on_the_p95_in_milliseconds() -> None:
    fast_with_slow_tail = [100.0] * 90 + [3000.0] * 10  # median 100 ms, p95 3000 ms
    judgement = judge_window(window(revision("c", 100, 0, fast_with_slow_tail, seconds=1), settings=SEED))
    assert judgement.candidate.response_time_ms == 3000.0
    assert judgement.verdict is Verdict.FAILURE and outcome(judgement, "responseTime") == "fail"
    assert "p95 response time 3000 ms [fail] (success <= 500 ms, failure > 2000 ms)" in judgement.reason
    p50 = SEED.model_copy(update={"response_time_percentile": 50.0})
    assert (
        judge_window(
            window(revision("c", 100, 0, fast_with_slow_tail, seconds=1), settings=p50)
        ).candidate.response_time_ms
        == 100
    )


def test_availability_and_throughput_are_judged_at_the_window_end() -> None:
    quick = revision("c", 2000, 0, [50.0] * 2000, seconds=10)  # 200 rps
    good = judge_window(window(quick, settings=SEED, availability=100.0))
    assert good.verdict is Verdict.SUCCESS, good.reason
    assert (good.candidate.throughput, good.candidate.availability) == (200.0, 100.0)
    half_down = judge_window(window(quick, settings=SEED, availability=97.0))
    assert half_down.verdict is Verdict.MARGINAL and outcome(half_down, "availability") == "marginal"
    slow_traffic = judge_window(
        window(revision("c", 400, 0, [50.0] * 400, seconds=10), settings=SEED, availability=100.0)
    )
    assert (
        slow_traffic.verdict is Verdict.MARGINAL
        and "throughput 40 rps [marginal] (success >= 100 rps)" in slow_traffic.reason
    )
    # Within the window (the frequent checks), a rate over a part of it is not judged.
    assert all(
        c.metric != "throughput" for c in judge_window(window(quick, settings=SEED, final=False)).thresholds
    )


def test_availability_below_the_failure_floor_fails_even_without_traffic() -> None:
    judgement = judge_window(window(revision("c", 0), settings=SEED, availability=80.0))
    assert judgement.verdict is Verdict.FAILURE and outcome(judgement, "availability") == "fail"


def test_a_figure_the_platform_does_not_report_is_named_not_passed_silently() -> None:
    no_latency = judge_window(window(revision("c", 2000, 0, seconds=10), settings=SEED, availability=100.0))
    assert "responseTime" in no_latency.unavailable
    assert "p95 response time not available (success <= 500 ms, failure > 2000 ms)" in no_latency.reason


# --------------------------------------------------------------------------------------------
# Low traffic: never a pass
# --------------------------------------------------------------------------------------------
def test_a_low_traffic_candidate_is_never_passed() -> None:
    perfect_but_few = revision("c", 49, 0, [1.0] * 49)
    stable = revision("s", 5000, 0, latencies(10, 2000))
    judgement = judge_window(window(perfect_but_few, stable, settings=SEED, availability=100.0))
    assert judgement.verdict is Verdict.NO_DATA
    assert judgement.reason.startswith("49 requests, fewer than the 50 needed")
    assert judgement.comparison == []  # nothing compared on too little data


def test_no_request_count_at_all_is_no_data() -> None:
    judgement = judge_window(window(RevisionFigures(revision="c", seconds=10)))
    assert judgement.verdict is Verdict.NO_DATA and "no request count" in judgement.reason


# --------------------------------------------------------------------------------------------
# The statistical comparison with the stable revision
# --------------------------------------------------------------------------------------------
def test_a_clearly_slower_candidate_is_worse_by_mann_whitney() -> None:
    stable = revision("s", 2000, 0, latencies(100, 2000, seed=1))
    slower = revision("c", 300, 0, latencies(180, 300, seed=2))  # within the thresholds, 80% slower
    judgement = judge_window(window(slower, stable))
    latency = next(c for c in judgement.comparison if c.metric == "responseTime")
    assert latency.test == "mann_whitney_u" and latency.outcome == "worse"
    assert latency.p_value is not None and latency.p_value < 1e-6
    assert latency.statistic is not None and latency.statistic > 0.8 * 300 * 2000
    assert (latency.candidate_n, latency.stable_n) == (300, 2000)
    assert judgement.verdict is Verdict.MARGINAL  # a window without success: counts to consecutiveFailures
    assert "median latency" in judgement.reason and "[worse]" in judgement.reason


def test_a_clearly_more_failing_candidate_is_worse_by_the_proportion_test() -> None:
    stable = revision("s", 5000, 10)  # 0.2%
    failing = revision("c", 500, 15)  # 3%: between the thresholds, and 2.8 points above stable
    judgement = judge_window(window(failing, stable))
    errors = next(c for c in judgement.comparison if c.metric == "errorRate")
    assert errors.test == "two_proportion_z" and errors.outcome == "worse"
    assert errors.statistic is not None and errors.statistic > 2.5 and errors.p_value is not None
    assert judgement.verdict is Verdict.MARGINAL


@pytest.mark.parametrize("seed", range(10))
def test_a_candidate_as_good_as_stable_passes(seed: int) -> None:
    stable = revision("s", 4000, 20, latencies(40, 2000, seed=seed))
    same = revision("c", 400, 2, latencies(40, 400, seed=seed + 100))
    judgement = judge_window(window(same, stable))
    assert judgement.verdict is Verdict.SUCCESS, judgement.reason
    assert [c.outcome for c in judgement.comparison] == ["pass", "pass"]


def test_a_slightly_slower_candidate_within_the_tolerance_passes() -> None:
    stable = revision("s", 4000, 0, latencies(100, 2000, spread=0.05, seed=3))
    slightly = revision("c", 2000, 0, latencies(110, 2000, spread=0.05, seed=4))  # 10% slower: tolerated
    judgement = judge_window(window(slightly, stable))
    assert outcome(judgement, "responseTime") == "pass", judgement.reason


def test_binned_samples_from_histogram_buckets_are_compared_with_ties() -> None:
    stable = RevisionFigures(
        revision="s",
        seconds=10,
        requests=1000,
        errors=0,
        latency_samples=[25.0] * 900 + [50.0] * 100,
        latency_binned=True,
    )
    slow = RevisionFigures(
        revision="c",
        seconds=10,
        requests=200,
        errors=0,
        latency_samples=[100.0] * 150 + [250.0] * 50,
        latency_binned=True,
    )
    latency = next(c for c in judge_window(window(slow, stable)).comparison if c.metric == "responseTime")
    assert latency.outcome == "worse" and "bucket bounds" in latency.note


def test_without_latency_samples_the_comparison_says_so() -> None:
    judgement = judge_window(window(revision("c", 500), revision("s", 5000), provider="cloudwatch"))
    latency = next(c for c in judgement.comparison if c.metric == "responseTime")
    assert latency.outcome == "not_available"
    assert "cloudwatch gives no per-request latency samples" in latency.note
    assert "comparison.responseTime" in judgement.unavailable
    assert judgement.verdict is Verdict.SUCCESS  # judged on what there is, and said so


def test_a_judgement_carries_what_status_shows() -> None:
    stable = revision("s", 2000, 4, latencies(100, 2000, seed=1))
    judgement = judge_window(
        window(revision("c", 300, 1, latencies(300, 300, seed=2)), stable, settings=SEED)
    )
    text = "\n".join(describe_judgement(Judgement.model_validate(judgement.model_dump(mode="json"))))
    assert "candidate c over 10s: 300 requests, 1 errors (0.333%)" in text
    assert "stable    s over 10s: 2000 requests" in text
    assert "threshold p95 response time" in text and "U=" in text and "z=" in text and "p=" in text


# --------------------------------------------------------------------------------------------
# Switch triggers
# --------------------------------------------------------------------------------------------
def trigger(metric: str, operator: str, value: Any, action: str = "switch") -> SwitchTrigger:
    return SwitchTrigger.model_validate(
        {
            "type": "metrics",
            "condition": {"metric": metric, "operator": operator, "value": value},
            "action": action,
        }
    )


@pytest.mark.parametrize(
    ("operator", "value", "holds"),
    [
        ("eq", 2, True),
        ("ne", 2, False),
        ("lt", 3, True),
        ("lte", 2, True),
        ("gt", 2, False),
        ("gte", 2.5, False),
    ],
)
def test_every_operator(operator: str, value: float, holds: bool) -> None:
    [result] = evaluate_triggers([trigger("error_rate", operator, value)], {"error_rate": 2.0})
    assert result.holds is holds and result.actual == 2.0


def test_the_seed_health_trigger_holds_only_on_a_healthy_candidate() -> None:
    [seed_trigger] = BlueGreenConfig.model_validate(
        {
            "switchTriggers": [
                {
                    "type": "health",
                    "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
                    "action": "switch",
                }
            ]
        }
    ).switch_triggers
    assert evaluate_triggers([seed_trigger], {"health_status": "healthy"})[0].holds is True
    assert evaluate_triggers([seed_trigger], {"health_status": "unhealthy"})[0].holds is False


def test_a_figure_not_measured_leaves_the_trigger_undecided() -> None:
    [result] = evaluate_triggers([trigger("response_time", "lt", 500)], {"response_time": None})
    assert result.holds is None


# --------------------------------------------------------------------------------------------
# The tests themselves agree with scipy's
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_agrees_with_scipy(seed: int) -> None:
    from scipy.stats import mannwhitneyu

    rng = random.Random(seed)
    # Rounded to whole milliseconds: many ties, as HAProxy's log gives them.
    x = [float(round(rng.lognormvariate(1.0 + seed * 0.1, 0.5))) for _ in range(rng.randint(10, 300))]
    y = [float(round(rng.lognormvariate(1.0, 0.5))) for _ in range(rng.randint(10, 2000))]
    ours = mann_whitney_greater(x, y)
    theirs = mannwhitneyu(x, y, alternative="greater", method="asymptotic")
    assert ours[0] == pytest.approx(float(theirs.statistic), rel=1e-12)
    assert ours[1] == pytest.approx(float(theirs.pvalue), rel=1e-9, abs=1e-15)


def test_the_normal_tail_agrees_with_scipy() -> None:
    from scipy.stats import norm

    for z in (-3.0, -0.5, 0.0, 1.2, 2.33, 5.0, 8.0):
        assert normal_sf(z) == pytest.approx(float(norm.sf(z)), rel=1e-12)


def test_all_tied_samples_show_no_difference() -> None:
    assert mann_whitney_greater([1.0] * 20, [1.0] * 50) == (500.0, 1.0)
