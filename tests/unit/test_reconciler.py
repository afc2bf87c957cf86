"""The strategy state machines driven by the reconciler, with a fake clock and a fake platform, over a journal
of each backend (``journal_at``: a SQLite file, a database on a real PostgreSQL)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from engine.journal import Journal
from engine.judge import Judgement, LocalJudge, TriggerResult, WindowInput
from engine.models import (
    Artifact,
    DeploymentRequest,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Strategy,
    StrategyType,
    SwitchTrigger,
)
from engine.plans import LocalPlanner
from engine.reconciler import DeploymentReconciler
from engine.state import EventKind, Step
from tests.unit.fakes import FakeClock, FakeMetrics, FakePlatform, FakeSmoke

CANARY = {
    "type": "canary",
    "replicas": 3,
    "canary": {
        "initialTrafficPercentage": 10,
        "stepPercentage": 30,
        "stepDuration": 10_000,
        "maxSteps": 4,
        "successThreshold": {"errorRate": 1},
        "failureThreshold": {"errorRate": 5, "consecutiveFailures": 2},
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
    # Every check within a window asks for the candidate's metrics only (the platform may narrow its query);
    # only a window's start (baselines) and end (the comparison with stable) read both revisions.
    asked = world.platform.metrics_asked
    windows = 3
    assert asked.count(None) == 2 * windows and set(asked) == {"2-0-0", None}
    assert asked.count("2-0-0") > 3 * windows


@pytest.mark.parametrize("start_s", [0.1, 0.25, 0.65, 2.0, 30.0])
def test_a_starting_revision_is_seen_ready_soon_after_it_is(journal_at: str, start_s: float) -> None:
    """The deploy step polls readiness every 25 ms at first and then every quarter of the time it has waited
    (at most every tick, 0.5 s): it sees the replicas ready at most a quarter (or 25 ms) after they are,
    without asking a slow platform every 25 ms."""
    world = World(journal_at, ready_after_s=start_s)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", {"type": "rolling", "replicas": 3})
    world.platform.status_asked.clear()
    assert world.run(deployment_id) is Phase.SUCCEEDED
    deploy = next(e for e in world.journal.events(deployment_id) if e.kind is EventKind.STEP_COMPLETED)
    assert start_s <= deploy.data["elapsed_s"] <= start_s + max(0.03, min(0.5, start_s * 0.25) + 0.005)
    asked_while_starting = [t for t in world.platform.status_asked if t < deploy.at]
    # 25 ms apart for the first 0.1 s, then growing by a quarter each time until a tick apart
    assert len(asked_while_starting) <= 12 + 2 * math.log(max(start_s, 0.1) / 0.1, 1.25) + start_s / 0.5


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


def test_no_data_extends_the_window_then_pauses_for_a_person(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    world.platform.rps = 0
    deployment_id = world.submit("2.0.0", CANARY)
    assert world.run(deployment_id, steps=400) is Phase.PAUSED
    events = world.journal.events(deployment_id)
    assert [e.data["extensions"] for e in events if e.kind is EventKind.WINDOW_EXTENDED] == [1, 2]
    verdicts = [e.data["verdict"] for e in events if e.kind is EventKind.MEASUREMENT]
    assert verdicts == ["no_data", "no_data", "no_data", "inconclusive"]
    assert "fewer than the 10 needed" in events[-1].data.get("reason", "") or any(
        "inconclusive after 2 extension(s)" in str(e.data) for e in events
    )
    # Still 10% on the candidate: never promoted on too little data.
    assert world.platform.weights == {"1-0-0": 90, "2-0-0": 10}
    assert world.journal.state(deployment_id).step_index == 2  # the first analysis step, not past it


def test_no_data_fails_when_configured_so(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    world.platform.rps = 0
    strategy = {**CANARY, "canary": {**CANARY["canary"], "onInconclusive": "fail", "maxWindowExtensions": 1}}
    deployment_id = world.submit("2.0.0", strategy)
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    reason = world.journal.state(deployment_id).rollback.reason  # type: ignore[union-attr]
    assert reason.startswith("inconclusive after 1 extension(s): 0 requests, fewer than the 10 needed")
    assert world.platform.weights == {"1-0-0": 100}


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


class ReplicaKilledBeforeTheSmoke(FakeSmoke):
    """The first smoke test meets a green replica killed a moment before, which its platform still reports
    running (Docker, for a moment after the kill): 3 of 10 requests fail. Later ones pass."""

    def __init__(self, platform: FakePlatform) -> None:
        super().__init__()
        self.platform = platform

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        self.calls += 1
        if self.calls > 1:
            return count, 0
        self.platform.kill("2-0-0", 1)
        self.platform.stale_live_reads = 2
        return count - 3, 3


def test_a_smoke_test_that_met_a_replica_killed_a_moment_before_is_no_verdict(journal_at: str) -> None:
    """The full chaos matrix (Docker, blue-green, a green replica killed just after its deploy step): the
    smoke test failed on the dead replica before Docker reported it exited, and the good candidate was rolled
    back. The failed smoke test now waits (at most SMOKE_CONFIRM_S) for the platform to report a dead replica;
    the replica is started again and the smoke test runs again on a fresh window."""
    world = World(journal_at)
    world.deploy_stable()
    world.smoke = ReplicaKilledBeforeTheSmoke(world.platform)
    strategy = {"type": "blue_green", "replicas": 2, "blueGreen": {"validationDuration": 1000}}
    deployment_id = world.submit("2.0.0", strategy)
    assert world.run(deployment_id) is Phase.SUCCEEDED
    assert world.platform.weights == {"2-0-0": 100} and world.smoke.calls == 2
    drift = [e.data for e in world.journal.events(deployment_id) if e.kind is EventKind.DRIFT]
    assert [d.get("candidate_restart") for d in drift] == [True]


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


# --------------------------------------------------------------------------------------------
# Analysis through the seams: metric provider, planner, judge
# --------------------------------------------------------------------------------------------
class RecordingJudge(LocalJudge):
    """The judge seam as a domain worker would answer it, recording what it was asked."""

    def __init__(self) -> None:
        self.windows: list[WindowInput] = []
        self.switches: list[dict[str, Any]] = []

    def judge(self, window: WindowInput, strategy: StrategyType) -> Judgement:
        self.windows.append(window)
        judgement = super().judge(window, strategy)
        judgement.judged_by = f"recording ({strategy.value})"
        return judgement

    def switch(self, triggers: list[SwitchTrigger], figures: dict[str, Any]) -> list[TriggerResult]:
        self.switches.append(dict(figures))
        return super().switch(triggers, figures)


class RecordingPlanner(LocalPlanner):
    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    def plan(self, strategy: Strategy, has_stable: bool) -> list[Step]:
        self.asked.append((strategy.type.value, has_stable))
        return super().plan(strategy, has_stable)


def test_plans_and_window_ends_go_through_the_injected_seams(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    planner, judge = RecordingPlanner(), RecordingJudge()
    deployment_id = world.submit("2.0.0", CANARY)
    reconciler = DeploymentReconciler(
        world.journal,
        deployment_id,
        lambda cfg: world.platform,
        clock=world.clock,
        planner=planner,
        judge=judge,
    )
    for _ in range(10_000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    assert world.journal.state(deployment_id).phase() is Phase.SUCCEEDED
    assert planner.asked == [("canary", True)]
    # One judgement per window end, through the seam, with the stable revision beside the candidate.
    assert len(judge.windows) == 3 and all(w.final for w in judge.windows)
    assert [(w.candidate.revision, w.stable.revision if w.stable else None) for w in judge.windows] == [
        ("2-0-0", "1-0-0")
    ] * 3
    journaled = [e.data for e in world.journal.events(deployment_id) if e.kind is EventKind.MEASUREMENT]
    assert [d["judged_by"] for d in journaled] == ["recording (canary)"] * 3
    assert all(d["candidate"]["requests"] >= 10 and d["stable"]["requests"] > 0 for d in journaled)


def test_a_slower_candidate_is_rolled_back_by_the_comparison(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    latency = {"1-0-0": 20.0, "2-0-0": 60.0}  # within every threshold, three times slower than stable
    deployment_id = world.submit("2.0.0", CANARY)
    reconciler = DeploymentReconciler(
        world.journal,
        deployment_id,
        lambda cfg: world.platform,
        clock=world.clock,
        metrics=lambda request, adapter: FakeMetrics(world.platform, latency),
    )
    for _ in range(10_000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    state = world.journal.state(deployment_id)
    assert state.phase() is Phase.ROLLED_BACK
    assert state.rollback is not None and state.rollback.trigger is RollbackTrigger.METRICS
    assert state.rollback.reason.startswith("2 analysis windows in a row without success (marginal)")
    assert "median latency 60 vs stable 20" in state.rollback.reason and "[worse]" in state.rollback.reason
    assert world.platform.weights == {"1-0-0": 100}


def test_an_equally_fast_candidate_passes_the_comparison(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    latency = {"1-0-0": 20.0, "2-0-0": 20.0}
    deployment_id = world.submit("2.0.0", CANARY)
    reconciler = DeploymentReconciler(
        world.journal,
        deployment_id,
        lambda cfg: world.platform,
        clock=world.clock,
        metrics=lambda request, adapter: FakeMetrics(world.platform, latency),
    )
    for _ in range(10_000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    assert world.journal.state(deployment_id).phase() is Phase.SUCCEEDED


SEED_BLUE_GREEN = {
    "switchTrafficPercentage": 100,
    "validationDuration": 5000,  # the seed's 300000, shortened
    "autoSwitch": False,
    "switchTriggers": [
        {
            "type": "health",
            "condition": {"metric": "health_status", "operator": "eq", "value": "healthy"},
            "action": "switch",
        }
    ],
}


def run_for(world: World, deployment_id: str, reconciler: DeploymentReconciler, rounds: int) -> None:
    for _ in range(rounds):
        world.clock.sleep(reconciler.reconcile() or 0)


def test_the_seed_blue_green_validates_its_health_trigger_then_awaits_promotion(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    judge = RecordingJudge()
    deployment_id = world.submit("2.0.0", {"type": "blue_green", "blueGreen": SEED_BLUE_GREEN})
    reconciler = DeploymentReconciler(
        world.journal, deployment_id, lambda cfg: world.platform, clock=world.clock, judge=judge
    )
    run_for(world, deployment_id, reconciler, 200)
    assert world.journal.state(deployment_id).phase() is Phase.PAUSED  # autoSwitch false: a person promotes
    assert judge.switches and judge.switches[-1]["health_status"] == "healthy"
    [checked] = [
        e.data for e in world.journal.events(deployment_id) if e.data.get("check") == "switch_triggers"
    ]
    assert checked["triggers"][0]["holds"] is True and world.smoke.calls == 0  # no smoke trigger named
    world.journal.append(deployment_id, EventKind.PROMOTE_REQUESTED, {}, actor="alice")
    assert world.run(deployment_id) is Phase.SUCCEEDED


@pytest.mark.parametrize(("action", "phase"), [("rollback", Phase.ROLLED_BACK), ("pause", Phase.PAUSED)])
def test_a_trigger_acts_as_soon_as_its_condition_holds(journal_at: str, action: str, phase: Phase) -> None:
    world = World(journal_at)
    world.deploy_stable()
    world.smoke.failures = 3  # 3 of 20 smoke requests fail: 15%, below the failure threshold of 50%
    triggers = [
        *SEED_BLUE_GREEN["switchTriggers"],  # type: ignore[misc]
        {
            "type": "smoke_test",
            "condition": {"metric": "smoke_success_rate", "operator": "lt", "value": 90},
            "action": action,
        },
    ]
    strategy = {
        "type": "blue_green",
        "blueGreen": {
            **SEED_BLUE_GREEN,
            "validationDuration": 60_000,
            "autoSwitch": True,
            "switchTriggers": triggers,
            "failureThreshold": {"errorRate": 50},
            "successThreshold": {"errorRate": 1},
        },
    }
    deployment_id = world.submit("2.0.0", strategy)
    reconciler = world.reconciler(deployment_id)
    run_for(world, deployment_id, reconciler, 30)
    state = world.journal.state(deployment_id)
    assert state.phase() is phase
    assert world.clock.now() - (state.step_started_at or 0) < 60  # well before validation's end
    assert world.platform.weights == {"1-0-0": 100}  # green never got traffic
    fired = [e.data for e in world.journal.events(deployment_id) if e.data.get("check") == "switch_triggers"]
    assert fired[-1]["triggers"][0]["actual"] == 85.0 and fired[-1]["figures"]["smoke_success_rate"] == 85.0
    if action == "rollback":
        assert state.rollback is not None
        assert state.rollback.reason == "switch trigger smoke_success_rate lt 90.0 (is 85.0): rollback"


def test_a_switch_trigger_not_met_at_validation_end_rolls_back(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    triggers = [
        {"type": "metrics", "condition": {"metric": "request_count", "operator": "gte", "value": 1000}}
    ]
    strategy = {
        "type": "blue_green",
        "progressDeadline": 30_000,
        "blueGreen": {"validationDuration": 3000, "switchTriggers": triggers},
    }
    deployment_id = world.submit("2.0.0", strategy)
    assert world.run(deployment_id) is Phase.ROLLED_BACK
    state = world.journal.state(deployment_id)
    reason = state.rollback.reason  # type: ignore[union-attr]
    assert reason.startswith(
        "validation: switch trigger not met by the progress deadline (30s): request_count"
    )
    # It waited for the trigger past the validation window, up to the deadline, with green idle.
    assert 30 <= state.rollback.at - (state.step_started_at or 0) < 33  # type: ignore[union-attr]
    assert world.platform.weights == {"1-0-0": 100}


def test_the_switch_waits_for_the_router_to_see_green_healthy(journal_at: str) -> None:
    """Traffic switched to servers the router has not yet checked would find none up: the seed's health
    trigger waits for the router's own view (here: down for 4 s after validation's end)."""
    world = World(journal_at)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", {"type": "blue_green", "blueGreen": {"validationDuration": 0}})
    reconciler = world.reconciler(deployment_id)
    up_from = None

    def metrics(target: Any, revision: Any = None) -> dict[str, Any]:
        snapshots = FakePlatform.metrics(world.platform, target, revision)
        state = world.journal.state(deployment_id)
        nonlocal up_from
        if state.current_step() is not None and state.current_step().kind.value == "validate":  # type: ignore[union-attr]
            up_from = up_from or world.clock.now() + 4
            if world.clock.now() < up_from and "2-0-0" in snapshots:
                snapshots["2-0-0"] = snapshots["2-0-0"].model_copy(update={"servers_up": 0})
        return snapshots

    world.platform.metrics = metrics  # type: ignore[method-assign]
    for _ in range(1000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    assert world.journal.state(deployment_id).phase() is Phase.SUCCEEDED
    switched = next(e.at for e in world.journal.events(deployment_id) if e.kind is EventKind.WEIGHTS_SET)
    assert up_from is not None and switched >= up_from


def test_a_smoke_trigger_a_platform_cannot_measure_does_not_hold_the_switch_back(journal_at: str) -> None:
    """No direct endpoints (Lambda, a Service) or no smoke tester: the smoke figure cannot exist, so the
    default [health_check, smoke_test] triggers switch on health alone, and the journal says why."""
    world = World(journal_at)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", {"type": "blue_green", "blueGreen": {"validationDuration": 3000}})
    reconciler = DeploymentReconciler(
        world.journal, deployment_id, lambda cfg: world.platform, clock=world.clock
    )
    for _ in range(1000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    assert world.journal.state(deployment_id).phase() is Phase.SUCCEEDED
    [checked] = [
        e.data for e in world.journal.events(deployment_id) if e.data.get("check") == "switch_triggers"
    ]
    assert checked["not_measurable"] == ["smoke_success_rate"]
    assert [t["holds"] for t in checked["triggers"]] == [True, None]
