"""CodeDeploy-style schedule names -> steps -> the orchestrator's strategy."""

from __future__ import annotations

import pytest

from engine.models import Strategy, StrategyType
from engine.schedules import parse_schedule, strategy_for_schedule, strategy_from_steps


def test_canary_is_one_hold_then_everything() -> None:
    assert parse_schedule("Canary10Percent5Minutes") == [(10, 300_000), (100, 0)]
    assert parse_schedule("Canary10Percent30Minutes") == [(10, 1_800_000), (100, 0)]


def test_linear_grows_by_the_percentage_every_interval() -> None:
    steps = parse_schedule("Linear10PercentEvery1Minute")
    assert [weight for weight, _ in steps] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert {hold for _, hold in steps[:-1]} == {60_000}
    assert steps[-1] == (100, 0)
    assert parse_schedule("Linear10PercentEvery10Minutes")[0] == (10, 600_000)


def test_linear_with_a_remainder_is_capped_at_100() -> None:
    assert [weight for weight, _ in parse_schedule("Linear30PercentEvery2Minutes")] == [30, 60, 90, 100]


def test_all_at_once_and_codedeploy_spelling() -> None:
    assert parse_schedule("AllAtOnce") == [(100, 0)]
    assert parse_schedule("CodeDeployDefault.LambdaAllAtOnce") == [(100, 0)]
    assert parse_schedule("CodeDeployDefault.LambdaCanary10Percent15Minutes") == [(10, 900_000), (100, 0)]


@pytest.mark.parametrize(
    "name",
    ["", "Canary", "Canary0Percent5Minutes", "Canary10Percent0Minutes", "Linear10PercentEvery1Hour", "Blue"],
)
def test_unknown_names_list_the_accepted_patterns(name: str) -> None:
    with pytest.raises(ValueError, match="AllAtOnce") as raised:
        parse_schedule(name)
    assert "Canary<P>Percent<N>Minutes" in str(raised.value)
    assert "Linear<P>PercentEvery<N>Minute" in str(raised.value)


def test_canary_schedule_becomes_a_two_step_canary() -> None:
    assert strategy_for_schedule("Canary10Percent5Minutes") == {
        "type": "canary",
        "canary": {
            "initialTrafficPercentage": 10,
            "stepPercentage": 90,
            "stepDuration": 300_000,
            "maxSteps": 2,
        },
    }


def test_linear_schedule_becomes_a_ten_step_canary() -> None:
    assert strategy_for_schedule("Linear10PercentEvery1Minute")["canary"] == {
        "initialTrafficPercentage": 10,
        "stepPercentage": 10,
        "stepDuration": 60_000,
        "maxSteps": 10,
    }


def test_all_at_once_becomes_a_full_blue_green_switch() -> None:
    strategy = Strategy.model_validate(strategy_for_schedule("AllAtOnce"))
    assert strategy.type is StrategyType.BLUE_GREEN
    assert strategy.blue_green is not None
    assert strategy.blue_green.switch_weights() == [100]


@pytest.mark.parametrize(
    "name",
    [
        "Canary10Percent5Minutes",
        "Canary25Percent30Minutes",
        "Linear10PercentEvery1Minute",
        "Linear10PercentEvery10Minutes",
        "Linear30PercentEvery3Minutes",
        "Linear1PercentEvery1Minute",
    ],
)
def test_the_lead_models_reproduce_the_schedule_weights(name: str) -> None:
    steps = parse_schedule(name)
    strategy = Strategy.model_validate(strategy_for_schedule(name))
    assert strategy.canary is not None
    assert strategy.canary.weights() == [weight for weight, _ in steps]
    assert strategy.canary.step_duration == steps[0][1]


@pytest.mark.parametrize(
    "steps",
    [
        [],
        [(10, 1000), (50, 1000)],
        [(50, 1000), (20, 1000), (100, 0)],
        [(10, 1000), (50, 1000), (100, 0)],
        [(10, 1000), (20, 2000), (100, 0)],
    ],
)
def test_steps_the_canary_model_cannot_express_are_refused(steps: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        strategy_from_steps(steps)
