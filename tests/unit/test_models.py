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
    TriggerAction,
    TriggerOperator,
    TriggerType,
)

# The seed's two configuration blocks, verbatim (shared/seed: "Canary Configuration", "Blue-Green
# Configuration").
SEED_CANARY: dict[str, Any] = {
    "initialTrafficPercentage": 10,
    "stepPercentage": 25,
    "stepDuration": 300000,
    "maxSteps": 4,
    "successThreshold": {"errorRate": 1, "responseTime": 500, "availability": 99.5, "throughput": 100},
    "failureThreshold": {"errorRate": 5, "responseTime": 2000, "availability": 95, "consecutiveFailures": 3},
}
SEED_BLUE_GREEN: dict[str, Any] = {
    "switchTrafficPercentage": 100,
    "validationDuration": 300000,
    "autoSwitch": False,
    "switchTriggers": [
        {
            "type": "health",
            "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
            "action": "switch",
        }
    ],
}


def test_canary_loads_the_seed_block_verbatim_in_its_units() -> None:
    canary = CanaryConfig.model_validate(SEED_CANARY)
    assert canary.initial_traffic_percentage == 10
    assert canary.step_percentage == 25
    assert canary.step_duration == 300_000
    assert canary.max_steps == 4
    assert canary.weights() == [10, 35, 60, 85]
    success, failure = canary.success_threshold, canary.failure_threshold
    # Percent as the seed writes it: 1 means 1%, 99.5 means 99.5%.
    assert (success.error_rate, success.response_time, success.availability, success.throughput) == (
        1,
        500,
        99.5,
        100,
    )
    assert (failure.error_rate, failure.response_time, failure.availability) == (5, 2000, 95)
    assert failure.consecutive_failures == 3
    assert canary.response_time_percentile == 95  # responseTime is judged on p95 unless told otherwise


def test_canary_loads_snake_case_keys_to_the_same_model() -> None:
    snake = CanaryConfig.model_validate(
        {
            "initial_traffic_percentage": 10,
            "step_percentage": 25,
            "step_duration": 300000,
            "max_steps": 4,
            "success_threshold": {
                "error_rate": 1,
                "response_time": 500,
                "availability": 99.5,
                "throughput": 100,
            },
            "failure_threshold": {
                "error_rate": 5,
                "response_time": 2000,
                "availability": 95,
                "consecutive_failures": 3,
            },
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


def test_blue_green_loads_the_seed_block_verbatim() -> None:
    blue_green = BlueGreenConfig.model_validate(SEED_BLUE_GREEN)
    assert blue_green.switch_traffic_percentage == 100
    assert blue_green.validation_duration == 300_000
    assert blue_green.auto_switch is False and blue_green.manual_switch()
    [trigger] = blue_green.switch_triggers
    assert (trigger.type, trigger.action) == (TriggerType.HEALTH, TriggerAction.SWITCH)
    assert trigger.condition is not None
    assert (trigger.condition.metric, trigger.condition.operator, trigger.condition.value) == (
        "health_status",
        TriggerOperator.EQ,
        "healthy",
    )
    assert not blue_green.smoke_tested()


def test_blue_green_loads_snake_case_keys_to_the_same_model() -> None:
    blue_green = BlueGreenConfig.model_validate(
        {
            "switch_traffic_percentage": 100,
            "validation_duration": 300000,
            "auto_switch": False,
            "switch_triggers": [
                {
                    "type": "health",
                    "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
                    "action": "switch",
                }
            ],
        }
    )
    assert blue_green == BlueGreenConfig.model_validate(SEED_BLUE_GREEN)


def test_the_earlier_list_of_trigger_names_maps_onto_the_seed_shape() -> None:
    blue_green = BlueGreenConfig.model_validate({"switchTriggers": ["health_check", "smoke_test", "manual"]})
    health, smoke, manual = blue_green.switch_triggers
    assert health == BlueGreenConfig.model_validate(SEED_BLUE_GREEN).switch_triggers[0]
    assert smoke.condition is not None and smoke.condition.metric == "smoke_success_rate"
    assert blue_green.smoke_tested() and manual.type is TriggerType.MANUAL and blue_green.manual_switch()


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
    canary = CanaryConfig(initial_traffic_percentage=10, step_percentage=20, max_steps=5)
    assert canary.weights() == [10, 30, 50, 70, 90]


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
        CanaryConfig, {"successThreshold": {"errorRate": 5}, "failureThreshold": {"errorRate": 1}}
    )
    assert "failureThreshold.errorRate" in message and "looser" in message


def test_a_failure_response_time_looser_than_success_is_refused() -> None:
    message = _refusal(
        BlueGreenConfig,
        {
            "successThreshold": {"errorRate": 1, "responseTime": 500},
            "failureThreshold": {"errorRate": 5, "responseTime": 100},
        },
    )
    assert "failureThreshold.responseTime" in message


@pytest.mark.parametrize(
    ("thresholds", "named"),
    [
        (
            {"successThreshold": {"availability": 99.5}, "failureThreshold": {"availability": 99.9}},
            "availability",
        ),
        ({"successThreshold": {"throughput": 10}, "failureThreshold": {"throughput": 50}}, "throughput"),
    ],
)
def test_a_failure_floor_above_the_success_floor_is_refused(thresholds: dict[str, Any], named: str) -> None:
    message = _refusal(CanaryConfig, thresholds)
    assert f"failureThreshold.{named}" in message and "above" in message


@pytest.mark.parametrize(
    ("block", "field", "value"),
    [
        ("successThreshold", "errorRate", 150),
        ("failureThreshold", "errorRate", -1),
        ("successThreshold", "availability", 100.5),
        ("failureThreshold", "availability", -3),
        ("successThreshold", "responseTime", 0),
        ("successThreshold", "throughput", -1),
    ],
)
def test_a_threshold_outside_its_range_is_refused_naming_it(block: str, field: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        CanaryConfig.model_validate({block: {field: value}})
    assert [error["loc"] for error in caught.value.errors()] == [(block, field)]


@pytest.mark.parametrize("percentile", [0, 100, 150])
def test_a_response_time_percentile_outside_0_to_100_is_refused(percentile: float) -> None:
    assert "responseTimePercentile" in _refusal(CanaryConfig, {"responseTimePercentile": percentile})


def test_the_percentile_is_configurable() -> None:
    assert CanaryConfig.model_validate({"responseTimePercentile": 99}).response_time_percentile == 99


@pytest.mark.parametrize(
    ("condition", "complaint"),
    [
        ({"metric": "cpu_load", "operator": "lt", "value": 1}, "unknown metric 'cpu_load'"),
        ({"metric": "error_rate", "operator": "below", "value": 1}, "operator"),
        ({"metric": "health_status", "operator": "lt", "value": "healthy"}, "health_status takes eq or ne"),
        ({"metric": "error_rate", "operator": "lt", "value": "low"}, "error_rate is a number"),
    ],
)
def test_a_bad_switch_trigger_condition_is_refused_naming_it(
    condition: dict[str, Any], complaint: str
) -> None:
    message = _refusal(
        BlueGreenConfig, {"switchTriggers": [{"type": "metrics", "condition": condition, "action": "switch"}]}
    )
    assert "switchTriggers.0.condition" in message and complaint in message


def test_a_bad_switch_trigger_action_or_type_is_refused() -> None:
    condition = {"metric": "error_rate", "operator": "lt", "value": 1}
    assert "action" in _refusal(
        BlueGreenConfig, {"switchTriggers": [{"type": "metrics", "condition": condition, "action": "jump"}]}
    )
    assert "switchTriggers.0.type" in _refusal(BlueGreenConfig, {"switchTriggers": ["telepathy"]})
    assert "condition" in _refusal(BlueGreenConfig, {"switchTriggers": [{"type": "metrics"}]})


def test_a_metric_provider_is_checked_before_anything_starts() -> None:
    assert "url" in _refusal(CanaryConfig, {"metricProvider": {"type": "prometheus"}})
    assert "metricProvider.type" in _refusal(CanaryConfig, {"metricProvider": {"type": "graphite"}})
    message = _refusal(
        CanaryConfig,
        {
            "metricProvider": {
                "type": "prometheus",
                "url": "http://p:9090",
                "queries": {"latency": "x{{pod}}"},
            }
        },
    )
    assert "metricProvider.queries" in message and "unknown placeholder {pod}" in message
    provider = CanaryConfig.model_validate(
        {
            "metric_provider": {
                "type": "prometheus",
                "url": "http://p:9090",
                "queries": {"requests": "sum(x{{selector}})"},
            }
        }
    ).metric_provider
    assert provider is not None and provider.queries == {"requests": "sum(x{{selector}})"}


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
