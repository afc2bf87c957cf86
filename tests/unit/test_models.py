"""The models accept the seed's camelCase and snake_case; impossible settings are refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from engine.models import (
    Artifact,
    BlueGreenConfig,
    CanaryConfig,
    PlatformConfig,
    RollingConfig,
    Strategy,
    StrategyType,
)

SEED_CANARY: dict[str, Any] = {
    "initialTrafficPercentage": 10,
    "stepPercentage": 20,
    "stepDuration": 300000,
    "maxSteps": 5,
    "successThreshold": {"errorRate": 0.01, "responseTime": 500},
    "failureThreshold": {"errorRate": 0.05, "responseTime": 2000, "consecutiveFailures": 3},
}
SEED_BLUE_GREEN: dict[str, Any] = {
    "switchTrafficPercentage": 100,
    "validationDuration": 300000,
    "autoSwitch": True,
    "switchTriggers": ["health_check", "smoke_test"],
}


def test_canary_loads_the_seed_camel_case_keys() -> None:
    canary = CanaryConfig.model_validate(SEED_CANARY)
    assert canary.initial_traffic_percentage == 10
    assert canary.step_percentage == 20
    assert canary.step_duration == 300_000
    assert canary.max_steps == 5
    assert canary.success_threshold.error_rate == 0.01
    assert canary.success_threshold.response_time == 500
    assert canary.failure_threshold.error_rate == 0.05
    assert canary.failure_threshold.consecutive_failures == 3


def test_canary_loads_snake_case_keys_to_the_same_model() -> None:
    snake = CanaryConfig.model_validate(
        {
            "initial_traffic_percentage": 10,
            "step_percentage": 20,
            "step_duration": 300000,
            "max_steps": 5,
            "success_threshold": {"error_rate": 0.01, "response_time": 500},
            "failure_threshold": {"error_rate": 0.05, "response_time": 2000, "consecutive_failures": 3},
        }
    )
    assert snake == CanaryConfig.model_validate(SEED_CANARY)


@pytest.mark.parametrize(
    ("written", "milliseconds"),
    [(300000, 300_000), ("30s", 30_000), ("5m", 300_000), ("250ms", 250), ("1h", 3_600_000), ("1.5s", 1_500)],
)
def test_step_duration_takes_milliseconds_or_strings_with_a_unit(written: Any, milliseconds: int) -> None:
    assert CanaryConfig.model_validate({"stepDuration": written}).step_duration == milliseconds


def test_a_duration_that_is_not_one_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="stepDuration") as caught:
        CanaryConfig.model_validate({"stepDuration": "soon"})
    assert "not a duration" in str(caught.value)


def test_blue_green_loads_the_seed_camel_case_keys() -> None:
    blue_green = BlueGreenConfig.model_validate(SEED_BLUE_GREEN)
    assert blue_green.switch_traffic_percentage == 100
    assert blue_green.validation_duration == 300_000
    assert blue_green.auto_switch is True
    assert blue_green.switch_triggers == ["health_check", "smoke_test"]


def test_blue_green_loads_snake_case_keys() -> None:
    blue_green = BlueGreenConfig.model_validate(
        {"switch_traffic_percentage": 50, "validation_duration": "30s", "auto_switch": False}
    )
    assert (blue_green.switch_traffic_percentage, blue_green.validation_duration) == (50, 30_000)
    assert blue_green.auto_switch is False


def test_models_serialise_back_to_camel_case() -> None:
    dumped = CanaryConfig.model_validate(SEED_CANARY).model_dump(by_alias=True)
    assert dumped["initialTrafficPercentage"] == 10
    assert dumped["failureThreshold"]["consecutiveFailures"] == 3


def test_strategy_from_seed_puts_the_flat_config_under_its_type() -> None:
    strategy = Strategy.from_seed("canary", SEED_CANARY)
    assert strategy.type is StrategyType.CANARY
    assert strategy.canary == CanaryConfig.model_validate(SEED_CANARY)
    assert strategy.blue_green is None and strategy.rolling is None


@pytest.mark.parametrize("spelling", ["blue_green", "blueGreen", "blue-green", "Blue_Green"])
def test_strategy_from_seed_accepts_the_usual_spellings_of_blue_green(spelling: str) -> None:
    strategy = Strategy.from_seed(spelling, SEED_BLUE_GREEN, replicas=3)
    assert strategy.type is StrategyType.BLUE_GREEN
    assert strategy.replicas == 3
    assert strategy.blue_green is not None and strategy.blue_green.validation_duration == 300_000


def test_a_strategy_without_config_gets_its_type_defaults() -> None:
    assert Strategy(type=StrategyType.ROLLING).rolling == RollingConfig()


def test_canary_weights_grow_by_step_up_to_max_steps() -> None:
    assert CanaryConfig.model_validate(SEED_CANARY).weights() == [10, 30, 50, 70, 90]


def test_canary_weights_stop_at_100() -> None:
    canary = CanaryConfig(initial_traffic_percentage=25, step_percentage=50, max_steps=10)
    assert canary.weights() == [25, 75, 100]


def test_blue_green_switch_weights_all_at_once_or_in_steps() -> None:
    assert BlueGreenConfig(switch_traffic_percentage=100).switch_weights() == [100]
    assert BlueGreenConfig(switch_traffic_percentage=25).switch_weights() == [25, 50, 75, 100]
    assert BlueGreenConfig(switch_traffic_percentage=30).switch_weights() == [30, 60, 90, 100]


def _refusal(model: type[Any], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    return str(caught.value)


@pytest.mark.parametrize("percent", [150, -1, 101])
def test_a_percentage_outside_0_to_100_is_refused(percent: int) -> None:
    message = _refusal(CanaryConfig, {"initialTrafficPercentage": percent})
    assert "initialTrafficPercentage" in message


def test_a_switch_percentage_outside_range_is_refused() -> None:
    assert "switchTrafficPercentage" in _refusal(BlueGreenConfig, {"switchTrafficPercentage": 150})
    assert "switchTrafficPercentage" in _refusal(BlueGreenConfig, {"switchTrafficPercentage": 0})


def test_a_step_of_zero_is_refused() -> None:
    message = _refusal(CanaryConfig, {"stepPercentage": 0})
    assert "stepPercentage" in message and "never finish" in message


def test_an_initial_canary_weight_of_zero_is_refused() -> None:
    assert "initialTrafficPercentage" in _refusal(CanaryConfig, {"initialTrafficPercentage": 0})


def test_a_failure_error_rate_looser_than_success_is_refused() -> None:
    message = _refusal(
        CanaryConfig, {"successThreshold": {"errorRate": 0.05}, "failureThreshold": {"errorRate": 0.01}}
    )
    assert "failureThreshold.errorRate" in message and "looser" in message


def test_a_failure_response_time_looser_than_success_is_refused() -> None:
    message = _refusal(
        BlueGreenConfig,
        {
            "successThreshold": {"errorRate": 0.01, "responseTime": 500},
            "failureThreshold": {"errorRate": 0.05, "responseTime": 100},
        },
    )
    assert "failureThreshold.responseTime" in message


def test_an_error_rate_above_one_is_refused() -> None:
    assert "errorRate" in _refusal(CanaryConfig, {"successThreshold": {"errorRate": 5}})


def test_rolling_that_could_never_progress_is_refused() -> None:
    message = _refusal(RollingConfig, {"maxSurge": 0, "maxUnavailable": 0})
    assert "maxSurge" in message and "maxUnavailable" in message


def test_an_unknown_key_is_refused_naming_it() -> None:
    assert "stepPercent" in _refusal(CanaryConfig, {"stepPercent": 10})


def test_an_unknown_strategy_is_refused_listing_the_known_ones() -> None:
    message = _refusal(Strategy, {"type": "linear"})
    assert "unknown strategy 'linear'" in message
    assert "blue_green" in message and "canary" in message and "rolling" in message
    with pytest.raises(ValidationError, match="unknown strategy"):
        Strategy.from_seed("linear", {})


def test_an_unknown_platform_is_refused_listing_the_supported_ones() -> None:
    message = _refusal(PlatformConfig, {"type": "azure_functions"})
    assert "type" in message and "unknown platform 'azure_functions'" in message
    assert "local, docker, kubernetes, lambda, vm" in message


def test_a_platform_name_is_normalised() -> None:
    assert PlatformConfig(type=" Docker ").type == "docker"


def test_a_good_artifact_loads_and_gives_a_safe_revision() -> None:
    artifact = Artifact(name="checkout", version="2.1.0_RC1", sha256="a" * 64)
    assert artifact.revision == "2-1-0-rc1"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "Checkout", "version": "1"}, "name"),
        ({"name": "check_out", "version": "1"}, "name"),
        ({"name": "x" * 64, "version": "1"}, "name"),
        ({"name": "checkout", "version": ""}, "version"),
        ({"name": "checkout", "version": "-1"}, "version"),
        ({"name": "checkout", "version": "1 beta"}, "version"),
        ({"name": "checkout", "version": "1", "sha256": "abc"}, "sha256"),
        ({"name": "checkout", "version": "1", "sha256": "G" * 64}, "sha256"),
    ],
)
def test_a_bad_artifact_is_refused_naming_the_field(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Artifact.model_validate(data)
    assert [error["loc"] for error in caught.value.errors()] == [(field,)]


def test_a_codedeploy_schedule_name_is_a_strategy() -> None:
    from engine.config import load_config
    from orchestrator import build_request

    artifact = {"name": "fn", "version": "2", "source": "fn.zip"}
    linear = build_request(load_config(), artifact, "Linear10PercentEvery1Minute", "development", "lambda")
    assert linear.strategy.canary is not None
    assert linear.strategy.canary.weights()[:3] == [10, 20, 30]
    assert linear.strategy.canary.step_duration == 60_000
    at_once = build_request(load_config(), artifact, "AllAtOnce", "development", "lambda")
    assert at_once.strategy.type.value == "blue_green"
