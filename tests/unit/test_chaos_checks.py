"""The chaos matrix's journal checks (chaoskit/checks.py) see the violations they are there for: a second
terminal event, a candidate given traffic again after its rollback was asked, a wrong outcome, and a
moment computed from the plan."""

from __future__ import annotations

from pathlib import Path

from chaoskit.cases import CANDIDATE_REV, STABLE_REV, Case, matrix, strategy_spec
from chaoskit.checks import right_outcome, terminal_events, weights_after_judgement
from chaoskit.run import judged_step
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, Phase, PlatformConfig, Strategy, Target
from engine.plans import build_plan
from engine.state import EventKind

TARGET = Target(service="chaos-unit", environment="development")


def journal_with_deployment(tmp_path: Path, deployment_id: str = "d-1") -> Journal:
    journal = Journal(tmp_path / "journal.db")
    request = DeploymentRequest(
        artifact=Artifact(name=TARGET.service, version="2.0.0", command=["true"]),
        strategy=Strategy.model_validate({"type": "canary"}),
        environment=TARGET.environment,
        platform=PlatformConfig(type="local"),
    )
    journal.submit(deployment_id, request, actor="test")
    journal.append(deployment_id, EventKind.ADMITTED, {})
    return journal


def weights(journal: Journal, candidate: int) -> None:
    split = {CANDIDATE_REV: candidate, STABLE_REV: 100 - candidate}
    journal.append("d-1", EventKind.WEIGHTS_SET, {"weights": split})


def test_one_terminal_event_passes_and_a_second_one_is_seen(tmp_path: Path) -> None:
    journal = journal_with_deployment(tmp_path)
    journal.append("d-1", EventKind.FINISHED, {"outcome": "succeeded", "message": "done"})
    journal.append("d-1", EventKind.DRIFT, {"subject": "router"})  # a record: allowed after the end
    assert terminal_events(journal, TARGET) == []
    journal.append("d-1", EventKind.FINISHED, {"outcome": "failed", "message": "again"})
    assert terminal_events(journal, TARGET) == ["d-1 has 2 terminal events"]


def test_a_deployment_left_active_is_seen(tmp_path: Path) -> None:
    journal = journal_with_deployment(tmp_path)
    assert terminal_events(journal, TARGET) == ["d-1 has 0 terminal events"]


def test_traffic_given_back_to_a_candidate_judged_bad_is_seen(tmp_path: Path) -> None:
    journal = journal_with_deployment(tmp_path)
    weights(journal, 20)
    weights(journal, 50)
    journal.append("d-1", EventKind.ROLLBACK_REQUESTED, {"trigger": "metrics", "reason": "errors"})
    weights(journal, 0)
    assert weights_after_judgement(journal, "d-1") == []
    weights(journal, 20)
    [problem] = weights_after_judgement(journal, "d-1")
    assert "2-0-0 got 20% after the rollback was asked" in problem


def test_the_outcome_must_match_the_candidate() -> None:
    good, bad = Case("canary", "router", "boundary"), Case("canary", "router", "boundary", bad=True)
    assert right_outcome(good, Phase.SUCCEEDED, {CANDIDATE_REV: 100, STABLE_REV: 0}) == []
    assert right_outcome(bad, Phase.ROLLED_BACK, {STABLE_REV: 100}) == []
    assert right_outcome(good, Phase.ROLLED_BACK, {STABLE_REV: 100})  # a healthy candidate blamed
    assert right_outcome(bad, Phase.SUCCEEDED, {CANDIDATE_REV: 100})  # a bad one promoted
    assert right_outcome(bad, Phase.ROLLED_BACK, {STABLE_REV: 80, CANDIDATE_REV: 20})  # traffic left on it


def test_every_strategy_has_a_judged_step_after_its_candidate_is_up() -> None:
    for name in ("canary", "blue_green", "rolling"):
        plan = build_plan(Strategy.model_validate(strategy_spec(name, 2000)), has_stable=True)
        dumped = [step.model_dump(mode="json") for step in plan]
        judged = judged_step(dumped)
        assert judged > 0 and dumped[judged - 1]["kind"] in ("deploy", "set_weight"), (name, dumped)


def test_the_full_matrix_has_every_combination() -> None:
    cases = matrix()
    local_good = {(c.strategy, c.fault, c.timing) for c in cases if c.platform == "local" and not c.bad}
    assert len(local_good) == 3 * 12 * 2
    docker = {c.fault for c in cases if c.platform == "docker"}
    assert docker == {"router", "stable_replica", "candidate_replica"}
    assert {c.fault for c in cases if c.bad and c.platform == "local"} >= {"router", "ray"}
