"""The strategy state machines driven by the reconciler, with a fake clock and a fake platform, over a journal
of each backend (``journal_at``: a SQLite file, a database on a real PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, Phase, PlatformConfig, RollbackTrigger, Strategy
from engine.reconciler import DeploymentReconciler
from engine.state import EventKind
from tests.unit.fakes import FakeClock, FakePlatform, FakeSmoke

CANARY = {
    "type": "canary",
    "replicas": 3,
    "canary": {
        "initialTrafficPercentage": 10,
        "stepPercentage": 30,
        "stepDuration": 10_000,
        "maxSteps": 4,
        "successThreshold": {"errorRate": 0.01},
        "failureThreshold": {"errorRate": 0.05, "consecutiveFailures": 2},
    },
}


class World:
    def __init__(self, journal_at: str, **platform: Any) -> None:
        self.clock = FakeClock()
        self.platform = FakePlatform(clock=self.clock, **platform)
        self.journal = Journal(journal_at, clock=self.clock.now)
        self.smoke = FakeSmoke()
        self.count = 0

    def submit(self, version: str, strategy: dict[str, Any]) -> str:
        self.count += 1
        request = DeploymentRequest(
            artifact=Artifact(name="web", version=version, command=["true"]),
            strategy=Strategy.model_validate(strategy),
            environment="staging",
            platform=PlatformConfig(type="local"),
        )
        deployment_id = f"d{self.count}"
        self.journal.submit(deployment_id, request, actor="test")
        self.journal.append(deployment_id, EventKind.ADMITTED, {})
        return deployment_id

    def reconciler(self, deployment_id: str) -> DeploymentReconciler:
        return DeploymentReconciler(
            self.journal, deployment_id, lambda cfg: self.platform, clock=self.clock, smoke=self.smoke
        )

    def run(self, deployment_id: str, steps: int = 10_000) -> Phase:
        reconciler = self.reconciler(deployment_id)
        for _ in range(steps):
            delay = reconciler.reconcile()
            if delay is None:
                break
            self.clock.sleep(delay)
        return self.journal.state(deployment_id).phase()

    def deploy_stable(self) -> None:
        assert self.run(self.submit("1.0.0", {"type": "rolling", "replicas": 3})) is Phase.SUCCEEDED


def test_first_deployment_goes_straight_to_full_traffic(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    assert world.platform.weights == {"1-0-0": 100}
    assert world.platform.revisions["1-0-0"].replicas == 3


def test_good_canary_is_promoted_through_every_weight(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    assert world.run(world.submit("2.0.0", CANARY)) is Phase.SUCCEEDED
    traffic_calls = [c for c in world.platform.calls if c.startswith("traffic")]
    assert "traffic [('1-0-0', 90), ('2-0-0', 10)]" in traffic_calls
    assert "traffic [('1-0-0', 60), ('2-0-0', 40)]" in traffic_calls
    assert "traffic [('1-0-0', 30), ('2-0-0', 70)]" in traffic_calls
    assert world.platform.weights == {"2-0-0": 100}
    assert set(world.platform.revisions) == {"2-0-0"}
    assert world.platform.revisions["2-0-0"].replicas == 3
    # Every analysis check asks for the candidate's metrics only (the platform may narrow its query).
    assert world.platform.metrics_asked and set(world.platform.metrics_asked) == {"2-0-0"}


def test_bad_canary_is_rolled_back_on_metrics(journal_at: str) -> None:
    world = World(journal_at, error_rates={"2-0-0": 0.5})
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    state = world.journal.state(deployment_id)
    assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.METRICS
    assert "error rate" in state.rollback.reason
    assert world.platform.weights == {"1-0-0": 100}
    assert set(world.platform.revisions) == {"1-0-0"}
    # Rolled back during the first step: the canary never got more than 10%.
    assert "traffic [('1-0-0', 60), ('2-0-0', 40)]" not in world.platform.calls


def test_no_data_is_not_a_pass(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    world.platform.rps = 0
    deployment_id = world.submit("2.0.0", CANARY)
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    reason = world.journal.state(deployment_id).rollback.reason  # type: ignore[union-attr]
    assert "no_data" in reason


def test_never_ready_candidate_hits_the_progress_deadline(journal_at: str) -> None:
    world = World(journal_at, never_ready={"2-0-0"})
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", {**CANARY, "progressDeadline": 30_000})
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    state = world.journal.state(deployment_id)
    assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.DEADLINE
    assert world.platform.weights == {"1-0-0": 100}


def test_validation_failure_changes_nothing(journal_at: str) -> None:
    world = World(journal_at, fail_validate="connection refused")
    deployment_id = world.submit("1.0.0", CANARY)
    assert world.run(deployment_id) is Phase.FAILED
    assert "connection refused" in world.journal.state(deployment_id).message
    assert world.platform.calls == []


def test_blue_green_waits_for_promotion_then_switches(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    strategy = {
        "type": "blue_green",
        "replicas": 3,
        "blueGreen": {"autoSwitch": False, "validationDuration": 5_000, "scaleDownDelay": 5_000},
    }
    deployment_id = world.submit("2.0.0", strategy)
    reconciler = world.reconciler(deployment_id)
    for _ in range(200):
        world.clock.sleep(reconciler.reconcile() or 0)
    assert world.journal.state(deployment_id).phase() is Phase.PAUSED
    assert world.platform.weights == {"1-0-0": 100}
    assert world.smoke.calls == 1
    world.journal.append(deployment_id, EventKind.PROMOTE_REQUESTED, {}, actor="alice")
    assert world.run(deployment_id) is Phase.SUCCEEDED
    assert world.platform.weights == {"2-0-0": 100}


def test_failed_smoke_test_rolls_blue_green_back_before_any_switch(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    world.smoke.failures = 20
    deployment_id = world.submit("2.0.0", {"type": "blue_green", "blueGreen": {"validationDuration": 1000}})
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    assert not any("2-0-0', " in c for c in world.platform.calls if c.startswith("traffic"))


def test_manual_rollback_pause_resume_and_abort(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    paused = world.submit("2.0.0", CANARY)
    world.journal.append(paused, EventKind.PAUSED, {}, actor="bob")
    reconciler = world.reconciler(paused)
    for _ in range(50):
        world.clock.sleep(reconciler.reconcile() or 0)
    assert world.journal.state(paused).phase() is Phase.PAUSED
    world.journal.append(paused, EventKind.RESUMED, {}, actor="bob")
    world.journal.append(
        paused, EventKind.ROLLBACK_REQUESTED, {"trigger": "manual", "reason": "on-call says no", "by": "bob"}
    )
    assert world.run(paused) is Phase.ROLLED_BACK
    assert world.journal.state(paused).rollback.reason == "on-call says no"  # type: ignore[union-attr]
    aborted = world.submit("3.0.0", CANARY)
    world.journal.append(aborted, EventKind.ROLLBACK_REQUESTED, {"trigger": "abort", "reason": "stop"})
    assert world.run(aborted) is Phase.ABORTED
    assert world.platform.weights == {"1-0-0": 100}


def test_promote_skips_the_remaining_analysis(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    reconciler = world.reconciler(deployment_id)
    for _ in range(10):
        world.clock.sleep(reconciler.reconcile() or 0)
    world.journal.append(deployment_id, EventKind.PROMOTE_REQUESTED, {"full": True})
    assert world.run(deployment_id) is Phase.SUCCEEDED
    assert "traffic [('1-0-0', 30), ('2-0-0', 70)]" not in world.platform.calls


def test_a_new_reconciler_resumes_without_repeating_steps(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    first = world.reconciler(deployment_id)
    for _ in range(30):
        world.clock.sleep(first.reconcile() or 0)
    index = world.journal.state(deployment_id).step_index
    assert index > 2
    assert world.run(deployment_id) is Phase.SUCCEEDED
    completed = [
        e.data["index"] for e in world.journal.events(deployment_id) if e.kind is EventKind.STEP_COMPLETED
    ]
    assert completed == sorted(set(completed))


def test_rolling_update_keeps_capacity_and_ends_on_candidate(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    assert world.run(world.submit("2.0.0", {"type": "rolling", "replicas": 3})) is Phase.SUCCEEDED
    ensures = [c for c in world.platform.calls if c.startswith("ensure")]
    assert ensures[-5:] == [
        "ensure 2-0-0 x1",
        "ensure 1-0-0 x2",
        "ensure 2-0-0 x2",
        "ensure 1-0-0 x1",
        "ensure 2-0-0 x3",
    ]
    assert world.platform.weights == {"2-0-0": 100}


def test_journal_chain_detects_tampering(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    assert world.journal.verify_chain() == (True, None)
    world.journal._store.write(lambda db: db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 2"))
    ok, bad = world.journal.verify_chain()
    assert not ok and bad == 2


@pytest.mark.parametrize("trigger", ["manual", "health"])
def test_rollback_of_a_first_deployment_fails_it(journal_at: str, trigger: str) -> None:
    world = World(journal_at)
    deployment_id = world.submit("1.0.0", CANARY)
    world.journal.append(deployment_id, EventKind.ROLLBACK_REQUESTED, {"trigger": trigger, "reason": "x"})
    assert world.run(deployment_id) is Phase.FAILED
    assert world.platform.revisions == {}


def test_one_orchestrator_per_journal(journal_at: str) -> None:
    world = World(journal_at)
    assert world.journal.acquire_lease("queen", "cluster-a", ttl_s=30) is None
    assert world.journal.acquire_lease("queen", "cluster-a", ttl_s=30) is None  # renewal
    assert world.journal.acquire_lease("queen", "cluster-b", ttl_s=30) == "cluster-a"
    world.clock.sleep(31)
    assert world.journal.acquire_lease("queen", "cluster-b", ttl_s=30) is None  # a stale lease is taken over
    world.journal.release_lease("queen", "cluster-b")
    assert world.journal.acquire_lease("queen", "cluster-c", ttl_s=30) is None
