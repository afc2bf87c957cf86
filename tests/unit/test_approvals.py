"""Approvals: every group, distinct persons who are members, rejection, expiry (fake clock), and the events
and phase of a deployment that waits for one. No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.approvals import ApprovalRefused, Approvals, ApprovalState, UnknownApproval
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    Environment,
    Features,
    Governance,
    Phase,
    PlatformConfig,
    Strategy,
)
from engine.state import EventKind
from tests.unit.fakes import FakeClock

ROLES = {"sre": ["carol", "dave"], "security": ["grace", "carol"], "qa": ["erin"]}
HOUR = 3600.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def journal(tmp_path: Path, clock: FakeClock) -> Journal:
    return Journal(tmp_path / "journal.db", clock=clock.now)


@pytest.fixture
def approvals(journal: Journal, clock: FakeClock) -> Approvals:
    return Approvals(journal, ROLES, clock=clock.now)


def ask(approvals: Approvals, clock: FakeClock, subject: str = "pipeline-1/approve-prod") -> None:
    approvals.request(subject, "production", ["sre", "security"], clock.now() + HOUR, requested_by="bob")


def test_every_group_must_approve(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    first = approvals.approve("pipeline-1/approve-prod", "dave", "sre", "looks good")
    assert first.state is ApprovalState.PENDING
    assert first.missing_groups() == ["security"]
    done = approvals.approve("pipeline-1/approve-prod", "grace", "security", "scanned")
    assert done.state is ApprovalState.APPROVED
    assert approvals.status("pipeline-1/approve-prod").state is ApprovalState.APPROVED
    assert {d.person for d in done.approvals().values()} == {"dave", "grace"}
    assert done.summary() == "approved by sre: dave, security: grace"


def test_one_person_cannot_approve_for_two_groups(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    approvals.approve("pipeline-1/approve-prod", "carol", "sre")
    with pytest.raises(
        ApprovalRefused, match=r"carol already approved .* for sre; one person approves for one"
    ):
        approvals.approve("pipeline-1/approve-prod", "carol", "security")
    assert approvals.status("pipeline-1/approve-prod").state is ApprovalState.PENDING


def test_a_person_must_be_a_member_of_the_group(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    with pytest.raises(ApprovalRefused, match=r"person: erin is not a member of sre \(carol, dave\)"):
        approvals.approve("pipeline-1/approve-prod", "erin", "sre")
    with pytest.raises(ApprovalRefused, match="group: 'qa' is not asked to approve"):
        approvals.approve("pipeline-1/approve-prod", "erin", "qa")
    with pytest.raises(ApprovalRefused, match="person: erin is not a member of sre"):
        approvals.reject("pipeline-1/approve-prod", "erin", "sre", "no")
    assert approvals.status("pipeline-1/approve-prod").decisions == []


def test_the_requester_cannot_approve_their_own_request(journal: Journal, clock: FakeClock) -> None:
    approvals = Approvals(journal, {"sre": ["bob", "dave"]}, clock=clock.now)
    approvals.request("s", "production", ["sre"], clock.now() + HOUR, requested_by="bob")
    with pytest.raises(ApprovalRefused, match="bob requested s and cannot approve it too"):
        approvals.approve("s", "bob", "sre")


def test_a_group_is_approved_once_and_a_retry_is_harmless(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    approvals.approve("pipeline-1/approve-prod", "dave", "sre")
    again = approvals.approve("pipeline-1/approve-prod", "dave", "sre")  # a retried call
    assert len(again.decisions) == 1
    with pytest.raises(ApprovalRefused, match=r"group: sre already approved .* \(by dave\)"):
        approvals.approve("pipeline-1/approve-prod", "carol", "sre")


def test_a_rejection_ends_it(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    approvals.approve("pipeline-1/approve-prod", "dave", "sre")
    rejected = approvals.reject("pipeline-1/approve-prod", "grace", "security", "CVE open")
    assert rejected.state is ApprovalState.REJECTED
    assert rejected.summary() == "rejected by grace for security: CVE open"
    with pytest.raises(ApprovalRefused, match="already rejected"):
        approvals.approve("pipeline-1/approve-prod", "carol", "security")


def test_a_request_expires_after_its_time(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    approvals.approve("pipeline-1/approve-prod", "dave", "sre")
    clock.t += HOUR - 1
    assert approvals.status("pipeline-1/approve-prod").state is ApprovalState.PENDING
    clock.t += 1
    assert approvals.status("pipeline-1/approve-prod").state is ApprovalState.EXPIRED
    with pytest.raises(ApprovalRefused, match="expired"):
        approvals.approve("pipeline-1/approve-prod", "grace", "security")
    expired = approvals.expire("pipeline-1/approve-prod")
    assert expired.state is ApprovalState.EXPIRED
    assert expired.summary() == "approval expired after 1h without security"
    assert approvals.list(pending_only=True) == []
    assert [r.state for r in approvals.list()] == [ApprovalState.EXPIRED]


def test_unknown_subjects_and_bad_requests_are_named(approvals: Approvals, clock: FakeClock) -> None:
    with pytest.raises(UnknownApproval, match="no approval was requested for 'nothing'"):
        approvals.approve("nothing", "dave", "sre")
    with pytest.raises(ValueError, match="no approver groups"):
        approvals.request("s", "production", [], clock.now() + HOUR)
    with pytest.raises(ValueError, match="not in the future"):
        approvals.request("s", "production", ["sre"], clock.now())


def test_asking_again_keeps_the_first_request(approvals: Approvals, clock: FakeClock) -> None:
    ask(approvals, clock)
    approvals.approve("pipeline-1/approve-prod", "dave", "sre")
    ask(approvals, clock)
    assert len(approvals.status("pipeline-1/approve-prod").decisions) == 1


def _governed_request() -> DeploymentRequest:
    environment = Environment.model_validate(
        {"name": "production", "approvalWorkflow": {"required": True, "approverGroups": ["sre", "security"]}}
    )
    return DeploymentRequest(
        artifact=Artifact(name="web", version="2.0.0", command=["true"]),
        strategy=Strategy(type="rolling"),  # type: ignore[arg-type]
        environment="production",
        platform=PlatformConfig(type="local"),
        requested_by="bob",
        governance=Governance(environment=environment, features=Features().resolved()),
    )


def test_a_deployment_shows_that_it_awaits_approval_and_its_decisions_are_journaled(
    journal: Journal, approvals: Approvals, clock: FakeClock
) -> None:
    journal.submit("web-1", _governed_request(), actor="bob")
    assert journal.state("web-1").phase() is Phase.AWAITING_APPROVAL
    approvals.request("web-1", "production", ["sre", "security"], clock.now() + HOUR, requested_by="bob")
    approvals.approve("web-1", "dave", "sre", "ok")
    state = journal.state("web-1")
    assert state.phase() is Phase.AWAITING_APPROVAL
    assert state.status().message == "awaiting approval from security (approved: sre: dave)"
    approvals.approve("web-1", "grace", "security", "ok")
    assert journal.state("web-1").phase() is Phase.QUEUED  # approved: the queen may admit it
    kinds = [e.kind for e in journal.events("web-1")]
    assert kinds == [
        EventKind.SUBMITTED,
        EventKind.APPROVAL_REQUESTED,
        EventKind.APPROVED,
        EventKind.APPROVED,
    ]
    approved = journal.events("web-1")[-1]
    assert (approved.actor, approved.data["group"], approved.data["state"]) == (
        "grace",
        "security",
        "approved",
    )
    assert journal.verify_chain() == (True, None)


def test_a_refused_decision_changes_nothing_in_the_journal(
    journal: Journal, approvals: Approvals, clock: FakeClock
) -> None:
    journal.submit("web-1", _governed_request(), actor="bob")
    approvals.request("web-1", "production", ["sre", "security"], clock.now() + HOUR, requested_by="bob")
    before = len(journal.events("web-1"))
    with pytest.raises(ApprovalRefused):
        approvals.approve("web-1", "erin", "sre")
    assert len(journal.events("web-1")) == before
    assert approvals.status("web-1").decisions == []
