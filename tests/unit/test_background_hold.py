"""How long a background driver may hold its embedded Ray: each deployment's own deadlines plus a margin."""

from __future__ import annotations

from engine.background_hold import HOLD_MARGIN_S, deployment_time_bound, hold_deadline, hold_remaining
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy
from engine.state import DeploymentState


def request(strategy: dict[str, object]) -> DeploymentRequest:
    return DeploymentRequest(
        artifact=Artifact(name="web", version="2.0.0", command=["true"]),
        strategy=Strategy.model_validate(strategy),
        environment="staging",
        platform=PlatformConfig(type="local"),
    )


CANARY = {
    "type": "canary",
    "progressDeadline": 60_000,
    "maxPauseDuration": 3_600_000,
    "canary": {
        "initialTrafficPercentage": 20,
        "stepPercentage": 40,
        "stepDuration": 10_000,
        "maxSteps": 2,
        "failureThreshold": {"errorRate": 5, "consecutiveFailures": 3},
        "maxWindowExtensions": 1,
    },
}


def test_a_canary_is_bounded_by_its_steps_windows_and_rollback() -> None:
    bound = deployment_time_bound(request(CANARY))
    # Plan: deploy x1, weight 20%, analyze 10 s, weight 60%, analyze 10 s, deploy x2, weight 100%, remove.
    # Six platform steps up to the progress deadline (60 s) each, two analyses of up to 3 windows of 10 s
    # each lengthened once at most (too few requests), and a rollback at the end (60 s); no pause is counted
    # unless the deployment is paused.
    assert bound == 6 * 60.0 + 2 * 3 * 2 * 10.0 + 60.0


def test_a_paused_deployment_may_be_held_for_its_pause_limit() -> None:
    state = DeploymentState(
        deployment_id="d1", request=request(CANARY), submitted_at=1000.0, updated_at=1000.0
    )
    running = hold_deadline(state)
    assert running == 1000.0 + deployment_time_bound(state.request) + HOLD_MARGIN_S
    paused = state.model_copy(update={"paused": True, "paused_at": 1000.0})
    assert hold_deadline(paused) == running + 3600.0


def test_nothing_to_hold_for_or_past_every_bound() -> None:
    state = DeploymentState(deployment_id="d1", request=request(CANARY), submitted_at=0.0, updated_at=0.0)
    assert hold_remaining([]) == 0.0
    assert hold_remaining([state], now=hold_deadline(state) + 1) == 0.0
    assert hold_remaining([state], now=hold_deadline(state) - 5) == 5.0
