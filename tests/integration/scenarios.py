"""Deployment scenarios every platform runs: the real engine (reconciler + journal) over the real adapter.

A platform's test module subclasses ``PlatformScenarios`` and provides a ``scenario_env`` fixture. Ray is not
involved here (tests/integration/test_orchestrator.py covers the actors); a "runner crash" is a reconciler and
adapter thrown away mid-deployment and new ones built over the same journal and platform.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters import create_metric_provider
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    Governance,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Strategy,
    Target,
)
from engine.platform import PlatformAdapter, RevisionSpec
from engine.reconciler import DeploymentReconciler, SmokeTester
from engine.state import DeploymentState, EventKind

Traffic = Callable[[PlatformAdapter, Target], AbstractContextManager[Any]]


@dataclass
class ScenarioEnv:
    make_adapter: Callable[[], PlatformAdapter]
    platform: PlatformConfig
    artifact: Callable[[str, str, bool], Artifact]  # (service, version, faulty)
    traffic: Traffic  # while entered, live traffic reaches the target's revisions and shows in metrics
    journal_dir: Path
    settle: Callable[[], None] = field(default=lambda: None)
    smoke: SmokeTester | None = None
    replicas: int = 2
    step_ms: int = 2500
    deadline_s: float = 180.0
    environment: str = "staging"
    governance: Governance | None = None  # the environment's settings recorded with each request


class Harness:
    def __init__(self, env: ScenarioEnv, service: str) -> None:
        self.env = env
        self.target = Target(service=service, environment=env.environment)
        self.journal = Journal(env.journal_dir / f"{service}.db")
        self.count = 0

    def deploy(
        self,
        version: str,
        strategy: dict[str, Any],
        faulty: bool = False,
        crash_after_steps: int | None = None,
        on_step: Callable[[DeploymentState], None] | None = None,
    ) -> DeploymentState:
        deployment_id = self._submit(version, strategy, faulty)
        reconciler = self._reconciler(deployment_id)
        end = time.monotonic() + self.env.deadline_s
        try:
            while time.monotonic() < end:
                self.env.settle()
                delay = reconciler.reconcile()
                state = self.journal.state(deployment_id)
                if delay is None:
                    return state
                if on_step is not None:
                    on_step(state)
                if crash_after_steps is not None and state.step_index >= crash_after_steps:
                    crash_after_steps = None
                    reconciler.close()  # the runner dies; a new one starts from the journal and the platform
                    reconciler = self._reconciler(deployment_id)
                time.sleep(min(delay, 0.2))
        finally:
            reconciler.close()
        raise AssertionError(
            f"{deployment_id} did not end within {self.env.deadline_s}s: "
            f"{self.journal.state(deployment_id).status()}"
        )

    def _submit(self, version: str, strategy: dict[str, Any], faulty: bool) -> str:
        self.count += 1
        request = DeploymentRequest(
            artifact=self.env.artifact(self.target.service, version, faulty),
            strategy=Strategy.model_validate({"replicas": self.env.replicas, **strategy}),
            environment=self.env.environment,
            platform=self.env.platform,
            requested_by="scenario",
            governance=self.env.governance,
        )
        deployment_id = f"{self.target.service}-{self.count}"
        self.journal.submit(deployment_id, request, actor="scenario")
        self.journal.append(deployment_id, EventKind.ADMITTED, {})
        return deployment_id

    def _reconciler(self, deployment_id: str) -> DeploymentReconciler:
        adapter = self.env.make_adapter()
        return DeploymentReconciler(
            self.journal,
            deployment_id,
            lambda _: adapter,
            smoke=self.env.smoke,
            actor="scenario",
            tick_s=0.2,
            metrics=create_metric_provider,  # the platform's own provider, as a runner has it
        )

    def revisions(self) -> set[str]:
        adapter = self.env.make_adapter()
        try:
            self.env.settle()
            return {r.revision for r in adapter.list_revisions(self.target)}
        finally:
            adapter.close()

    def weights(self) -> dict[str, int]:
        adapter = self.env.make_adapter()
        try:
            return {k: v for k, v in adapter.traffic(self.target).weights.items() if v > 0}
        finally:
            adapter.close()

    def live(self) -> AbstractContextManager[Any]:
        adapter = self.env.make_adapter()
        return self.env.traffic(adapter, self.target)


def canary_strategy(step_ms: int) -> dict[str, Any]:
    return {
        "type": "canary",
        "canary": {
            "initialTrafficPercentage": 25,
            "stepPercentage": 25,
            "stepDuration": step_ms,
            "maxSteps": 3,
            "analysisInterval": 500,
            "minRequestCount": 5,
            "successThreshold": {"errorRate": 2},
            "failureThreshold": {"errorRate": 10, "consecutiveFailures": 2},
        },
    }


def blue_green_strategy(hold_ms: int) -> dict[str, Any]:
    return {
        "type": "blue_green",
        "blueGreen": {
            "validationDuration": 1000,
            "switchTrafficPercentage": 100,
            "scaleDownDelay": hold_ms,
            "smokeRequests": 5,
            "analysisInterval": 500,
            "minRequestCount": 5,
            "successThreshold": {"errorRate": 2},
            "failureThreshold": {"errorRate": 10},
        },
    }


def leave_candidate(env: ScenarioEnv, target: Target, version: str) -> None:
    """What a runner that died after creating the candidate, before journaling it, leaves on the platform."""
    adapter = env.make_adapter()
    try:
        artifact = env.artifact(target.service, version, False)
        adapter.ensure_revision(
            RevisionSpec(target=target, artifact=artifact, replicas=1, deployment_id="dead")
        )
    finally:
        adapter.close()


ROLLING = {"type": "rolling", "rolling": {"maxSurge": 1, "maxUnavailable": 0}}
FIRST = {"type": "rolling"}


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
        with harness.live():
            state = harness.deploy("2.0.0", ROLLING)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        return harness

    def test_good_canary_is_promoted(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-good")
        with harness.live():
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms))
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert harness.revisions() == {"2-0-0"}

    def test_bad_canary_is_rolled_back(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-bad")
        with harness.live():
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms), faulty=True)
        assert state.phase() is Phase.ROLLED_BACK, state.status()
        assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.METRICS
        # Rolled back for the error rate it showed (half of its requests fail), not for a lack of data.
        assert "error rate" in state.rollback.reason and "[fail]" in state.rollback.reason, state.rollback
        assert "no_data" not in state.rollback.reason and "inconclusive" not in state.rollback.reason
        failed = [
            e.data
            for e in harness.journal.events(state.deployment_id)
            if e.kind is EventKind.MEASUREMENT and e.data.get("verdict") == "failure"
        ]
        assert failed and failed[-1]["candidate"]["error_rate"] > 10, failed
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

        with harness.live():
            back = harness.deploy("2.0.0", blue_green_strategy(60_000), on_step=switch_back_once_switched)
            assert switched, "green never took the traffic"
            assert back.phase() is Phase.ROLLED_BACK, back.status()
            assert harness.weights() == {"1-0-0": 100}
            assert harness.revisions() == {"1-0-0"}
            forward = harness.deploy("3.0.0", blue_green_strategy(500))
        assert forward.phase() is Phase.SUCCEEDED, forward.status()
        assert harness.weights() == {"3-0-0": 100}
        assert harness.revisions() == {"3-0-0"}

    def test_rolling_update(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-roll")
        with harness.live():
            state = harness.deploy("2.0.0", ROLLING)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        assert harness.weights() == {"2-0-0": 100}
        assert harness.revisions() == {"2-0-0"}

    def test_runner_crash_resumes_without_duplicates(self, scenario_env: ScenarioEnv) -> None:
        harness = self._stable(scenario_env, "sc-crash")
        with harness.live():
            state = harness.deploy("2.0.0", canary_strategy(scenario_env.step_ms), crash_after_steps=3)
        assert state.phase() is Phase.SUCCEEDED, state.status()
        events = harness.journal.events(state.deployment_id)
        assert [e.kind for e in events].count(EventKind.PLANNED) == 1
        completed = [e.data["index"] for e in events if e.kind is EventKind.STEP_COMPLETED]
        assert completed == list(range(len(completed)))
        assert harness.revisions() == {"2-0-0"}
        assert harness.weights() == {"2-0-0": 100}
