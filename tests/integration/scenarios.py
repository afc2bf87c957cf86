"""Deployment scenarios every platform runs: the real engine (reconciler + journal) over the real adapter.

A platform's test module subclasses ``PlatformScenarios`` and provides a ``scenario_env`` fixture. The
harness itself lives in harness/scenarios.py (benchmarks use it too) and is re-exported here.
"""

from __future__ import annotations

import re

import pytest

from engine.models import Phase, RollbackTrigger
from engine.state import DeploymentState, EventKind
from harness.scenarios import *  # noqa: F403  (the harness' names, as the tests have imported them)
from harness.scenarios import (
    FIRST,
    ROLLING,
    Harness,
    ScenarioEnv,
    assert_no_downtime,
    blue_green_strategy,
    canary_strategy,
    leave_candidate,
)


class PlatformScenarios:
    """Subclass and provide a ``scenario_env`` fixture (function scope is fine)."""

    def _stable(self, env: ScenarioEnv, service: str) -> Harness:
        harness = Harness(env, service)
        first = harness.deploy("1.0.0", FIRST)
        assert first.phase() is Phase.SUCCEEDED, first.status()
        assert harness.weights() == {"1-0-0": 100}
        return harness

    def _adopts_left_candidate(self, env: ScenarioEnv, service: str) -> Harness:
        """A runner died after creating the candidate, before journaling it: the next one adopts it."""
        harness = self._stable(env, service)
        leave_candidate(env, harness.target, "2.0.0")
        with harness.live() as traffic:
            state = harness.deploy("2.0.0", ROLLING)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert_no_downtime(traffic)
        return harness

    def test_good_canary_is_promoted(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-good")
        with harness.live() as traffic:
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms))
        assert_no_downtime(traffic)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert harness.revisions() == {"2-0-0"}

    def test_bad_canary_is_rolled_back(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-bad")
        with harness.live() as traffic:
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms), faulty=True)
        assert state.phase() is Phase.ROLLED_BACK, state.status()
        assert_no_downtime(traffic, faulty={"2.0.0"})  # its own errors aside, every request was answered
        assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.METRICS
        assert_rolled_back_for_its_error_rate(harness, state)
        assert harness.weights() == {"1-0-0": 100}
        assert harness.revisions() == {"1-0-0"}

    def test_blue_green_switch_and_switch_back(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-bg")
        switched: list[dict[str, int]] = []

        def switch_back_once_switched(state: DeploymentState) -> None:
            if state.weights.get("2-0-0") == 100 and not switched:
                switched.append(dict(state.weights))
                harness.journal.append(
                    state.deployment_id,
                    EventKind.ROLLBACK_REQUESTED,
                    {"trigger": "manual", "reason": "switch back", "by": "scenario"},
                )

        with harness.live() as traffic:
            back = harness.deploy("2.0.0", blue_green_strategy(60_000), on_step=switch_back_once_switched)
            assert switched, "green never took the traffic"
            assert back.phase() is Phase.ROLLED_BACK, back.status()
            assert harness.weights() == {"1-0-0": 100}
            assert harness.revisions() == {"1-0-0"}
            forward = harness.deploy("3.0.0", blue_green_strategy(500))
        assert_no_downtime(traffic)
        assert forward.phase() is Phase.SUCCEEDED, forward.status()
        assert harness.weights() == {"3-0-0": 100}
        assert harness.revisions() == {"3-0-0"}

    def test_rolling_update(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-roll")
        with harness.live() as traffic:
            state = harness.deploy("2.0.0", ROLLING)
        assert_no_downtime(traffic)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert harness.revisions() == {"2-0-0"}

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-crash")
        with harness.live() as traffic:
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms), crash_after_steps=3)
        assert_no_downtime(traffic)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        events = harness.journal.events(state.deployment_id)
        assert [e.kind for e in events].count(EventKind.PLANNED) == 1
        completed = [e.data["index"] for e in events if e.kind is EventKind.STEP_COMPLETED]
        assert completed == list(range(len(completed)))
        assert harness.revisions() == {"2-0-0"}
        assert harness.weights() == {"2-0-0": 100}


BREACH = re.compile(r"error rate (?P<value>[0-9.]+)% over (?P<requests>[0-9]+) requests \[fail\]")


def assert_rolled_back_for_its_error_rate(harness: Harness, state: DeploymentState) -> None:
    """Rolled back for the error rate it showed (half of its requests fail, the failure threshold is 10%),
    with the value measured: not for a lack of data, an inconclusive window or any other metric."""
    assert state.rollback is not None
    reason = state.rollback.reason
    assert "no_data" not in reason and "inconclusive" not in reason and "fewer than" not in reason, reason
    breach = BREACH.search(reason)
    assert breach is not None, f"the rollback does not name the error rate's breach: {reason!r}"
    failed = [
        e.data
        for e in harness.journal.events(state.deployment_id)
        if e.kind is EventKind.MEASUREMENT and e.data.get("verdict") == "failure"
    ]
    assert failed, "no failing measurement was journaled"
    measured = failed[-1]["candidate"]
    assert measured["error_rate"] > 10 and float(breach["value"]) > 10, (reason, measured)
    assert float(breach["value"]) == pytest.approx(measured["error_rate"], rel=1e-3), (reason, measured)
    assert int(breach["requests"]) == measured["requests"], (reason, measured)
