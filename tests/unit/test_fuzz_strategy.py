"""Fuzzing strategy settings (engine.models.Strategy and the configuration's strategy_for): the seed's canary
and blue-green blocks, mutated. Each one builds a strategy, or is refused with a pydantic ValidationError (a
ValueError) whose every error names its field; never another exception."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from engine.config import EnterpriseConfig, load_config
from engine.models import Strategy, StrategyType
from tests.unit.fuzzing import FUZZ, assert_clear, garbage, mutations
from tests.unit.test_models import SEED_BLUE_GREEN, SEED_CANARY  # the seed's blocks, verbatim

SEED = {"canary": SEED_CANARY, "blue_green": SEED_BLUE_GREEN}
CONFIG: EnterpriseConfig = load_config()
# The words a model-level check uses for its field when pydantic gives no location.
TOP_LEVEL_FIELDS = ("progressDeadline", "replicas", "maxPauseDuration", "type", "strategy")


def assert_names_its_fields(error: ValidationError) -> None:
    assert_clear(str(error))
    for problem in error.errors():
        located = bool(problem["loc"])
        assert located or any(word in problem["msg"] for word in TOP_LEVEL_FIELDS), problem


def test_the_seed_blocks_build_their_strategies() -> None:
    canary = Strategy.from_seed("canary", SEED_CANARY)
    assert canary.canary is not None and canary.canary.weights() == [10, 35, 60, 85]
    assert canary.canary.failure_threshold.consecutive_failures == 3
    blue_green = Strategy.from_seed("blueGreen", SEED_BLUE_GREEN)
    assert blue_green.type is StrategyType.BLUE_GREEN and blue_green.blue_green is not None
    assert blue_green.blue_green.validation_duration == 300_000 and not blue_green.blue_green.auto_switch


@given(st.sampled_from(sorted(SEED)), st.data())
@FUZZ
@example("canary", {"initialTrafficPercentage": 0})
@example("canary", {"stepPercentage": 0})
@example("canary", {"failureThreshold": {"errorRate": 0.5}})
@example("blue_green", {"switchTriggers": [{"type": "health", "condition": {"metric": "nope"}}]})
def test_a_mutated_seed_block_builds_or_names_the_field(kind: str, change: Any) -> None:
    if isinstance(change, dict):
        block = {**copy.deepcopy(SEED[kind]), **change}
    else:
        block = change.draw(mutations(SEED[kind]))[3]
    try:
        built = Strategy.from_seed(kind, block)
    except ValidationError as error:
        assert_names_its_fields(error)
        return
    assert built.type.value == kind


@given(
    st.one_of(
        st.sampled_from(["canary", "blueGreen", "blue-green", "rolling", "ROLLING"]), st.text(max_size=12)
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "stepPercentage",
                "step_duration",
                "maxSteps",
                "replicas",
                "progressDeadline",
                "maxPauseDuration",
                "successThreshold",
                "failureThreshold",
                "switchTrafficPercentage",
                "maxSurge",
                "maxUnavailable",
                "webhooks",
                "unknownKey",
            ]
        ),
        garbage,
        max_size=3,
    ),
    st.sampled_from(["development", "production", "nowhere"]),
)
@FUZZ
@example("canary", {"replicas": 0}, "production")
@example("canary", {"progressDeadline": "0s"}, "development")
@example("rolling", {"maxSurge": 0, "maxUnavailable": 0}, "development")
def test_deployment_overrides_over_the_defaults_build_or_name_the_field(
    type_: str, overrides: dict[str, Any], environment: str
) -> None:
    try:
        strategy = CONFIG.strategy_for(type_, overrides, environment)
    except ValidationError as error:
        assert_names_its_fields(error)
        return
    except ValueError as error:  # an unknown strategy name
        assert_clear(str(error))
        assert "strategy" in str(error), error
        return
    assert strategy.replicas >= 1 and strategy.progress_deadline > 0
