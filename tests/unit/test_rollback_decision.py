"""The reconciler proposes automated rollbacks; the rollback system (DO-004) decides and records them, and
the runner records them itself (saying so) when DO-004 does not answer."""

from __future__ import annotations

from pathlib import Path

from engine.models import Phase, RollbackTrigger
from engine.reconciler import DeploymentReconciler
from engine.rollback_decision import (
    ROLLBACK_SYSTEM,
    DelegatingDecider,
    JournalDecider,
    RollbackDecider,
    record_rollback_decision,
)
from engine.state import EventKind
from tests.unit.test_reconciler import CANARY, World


class Proposals:
    """Records what the reconciler proposes, then lets DO-004's decision be journaled."""

    def __init__(self, world: World) -> None:
        self.seen: list[tuple[str, RollbackTrigger, str, str]] = []
        self.rollback_system = JournalDecider(world.journal, ROLLBACK_SYSTEM)

    def decide(self, deployment_id: str, trigger: RollbackTrigger, reason: str, proposed_by: str) -> None:
        self.seen.append((deployment_id, trigger, reason, proposed_by))
        self.rollback_system.decide(deployment_id, trigger, reason, proposed_by)


def run_with(world: World, deployment_id: str, decider: RollbackDecider) -> Phase:
    reconciler = DeploymentReconciler(
        world.journal,
        deployment_id,
        lambda cfg: world.platform,
        clock=world.clock,
        smoke=world.smoke,
        actor="runner-7",
        rollback_decider=decider,
    )
    for _ in range(10_000):
        delay = reconciler.reconcile()
        if delay is None:
            break
        world.clock.sleep(delay)
    return world.journal.state(deployment_id).phase()


def rollback_requests(world: World, deployment_id: str) -> list[tuple[str, dict[str, object]]]:
    return [
        (e.actor, e.data)
        for e in world.journal.events(deployment_id)
        if e.kind is EventKind.ROLLBACK_REQUESTED
    ]


def test_the_reconciler_proposes_and_the_rollback_system_records(tmp_path: Path) -> None:
    world = World(str(tmp_path / "journal.db"), error_rates={"2-0-0": 0.5})
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    proposals = Proposals(world)
    assert run_with(world, deployment_id, proposals) is Phase.ROLLED_BACK
    [(proposed_id, trigger, reason, by)] = proposals.seen
    assert (proposed_id, trigger, by) == (deployment_id, RollbackTrigger.METRICS, "runner-7")
    assert "error rate" in reason
    [(actor, data)] = rollback_requests(world, deployment_id)
    assert actor == ROLLBACK_SYSTEM
    assert data["by"] == ROLLBACK_SYSTEM and data["proposed_by"] == "runner-7" and "fallback" not in data
    assert world.platform.weights == {"1-0-0": 100}


def test_without_an_answer_from_the_rollback_system_the_runner_records_it_and_says_so(tmp_path: Path) -> None:
    world = World(str(tmp_path / "journal.db"), error_rates={"2-0-0": 0.5})
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    asked: list[str] = []

    def dead_rollback_system(deployment: str, trigger: RollbackTrigger, reason: str, by: str) -> None:
        asked.append(deployment)
        raise TimeoutError("no answer within 2s")

    decider = DelegatingDecider(dead_rollback_system, world.journal, "runner-7")
    assert run_with(world, deployment_id, decider) is Phase.ROLLED_BACK
    assert asked == [deployment_id]
    [(actor, data)] = rollback_requests(world, deployment_id)
    assert actor == "runner-7"
    assert data["trigger"] == "metrics"
    cause = "TimeoutError: no answer within 2s"
    assert data["fallback"] == f"DO-004 did not answer ({cause}); recorded by runner-7"
    assert world.platform.weights == {"1-0-0": 100}


def test_an_answering_rollback_system_records_alone(tmp_path: Path) -> None:
    world = World(str(tmp_path / "journal.db"), error_rates={"2-0-0": 0.5})
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    rollback_system = JournalDecider(world.journal, ROLLBACK_SYSTEM)
    decider = DelegatingDecider(rollback_system.decide, world.journal, "runner-7")
    assert run_with(world, deployment_id, decider) is Phase.ROLLED_BACK
    assert [actor for actor, _ in rollback_requests(world, deployment_id)] == [ROLLBACK_SYSTEM]


def test_a_late_decision_after_the_fallback_records_nothing_more(tmp_path: Path) -> None:
    world = World(str(tmp_path / "journal.db"))
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    fallback = "DO-004 did not answer (TimeoutError: late); recorded by runner-7"
    first = record_rollback_decision(
        world.journal, deployment_id, RollbackTrigger.HEALTH, "down", "runner-7", "runner-7", fallback
    )
    late = record_rollback_decision(world.journal, deployment_id, RollbackTrigger.HEALTH, "down", "runner-7")
    assert (first, late) == (True, False)
    assert [actor for actor, _ in rollback_requests(world, deployment_id)] == ["runner-7"]
