"""Governance end to end on the local platform, with the session's real local Ray: approvals hold a
deployment in the queue until every group approved; artifact checks and the compliance gate stop it before any
platform change; TLS-required production is refused; a passing nasa-pot10 deployment's compliance report."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from adapters import create_platform
from engine.approvals import ApprovalRefused, ApprovalState
from engine.models import Environment, Phase, Target
from engine.state import EventKind
from tests.integration.conftest import orch_journal, sample_artifact
from tests.integration.governance_kit import GovernanceKit

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ROLLING = {"type": "rolling", "replicas": 1}
# Groups and members of the session's configuration (a copy of enterprise_config.yaml's roles).
APPROVERS = {
    "release-managers": "bob",
    "prod-team": "alice",
    "security-team": "grace",
    "compliance-team": "ivan",
}


def register(orch: Any, name: str, **settings: Any) -> str:
    orch.register_environment(Environment.model_validate({"name": name, **settings}))
    return name


def two_groups(orch: Any, name: str) -> str:
    """An environment whose deployments release-managers and prod-team must both approve."""
    workflow = {"required": True, "approvers": ["release-managers", "prod-team"]}
    return register(orch, name, approvalWorkflow=workflow)


def nothing_deployed(orch: Any, service: str, environment: str) -> None:
    """No replica process and no HAProxy were started for the target, and no step was planned."""
    platform = create_platform(orch.config.platform("local"))
    target = Target(service=service, environment=environment)
    try:
        assert platform.list_revisions(target) == []
        assert platform.traffic(target).address == ""  # no router state: HAProxy never started for it
    finally:
        platform.close()
    journal = orch_journal(orch)
    for state in journal.deployments(target_key=target.key):
        kinds = {event.kind for event in journal.events(state.deployment_id)}
        assert not kinds & {EventKind.PLANNED, EventKind.WEIGHTS_SET}, kinds


def cli(orch: Any, *args: str, person: str | None = None) -> str:
    """The command line with no cluster named (RAY_ADDRESS empty): it reads and writes the journal; with
    ``person``, with that person's token (else the session admin's, in ORCH_HOME/token)."""
    as_person = ["--token-file", str(Path(orch.config_path).parent / "tokens" / person)] if person else []
    done = subprocess.run(
        [sys.executable, "orchestrator.py", "--config", orch.config_path, *as_person, *args],
        cwd=REPO,
        env={**os.environ, "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def wait_phase(orch: Any, deployment_id: str, phase: Phase, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    status = orch.status(deployment_id)
    while status.phase is not phase and time.monotonic() < deadline:
        time.sleep(0.3)
        status = orch.status(deployment_id)
    assert status.phase is phase, status
    return status


# --------------------------------------------------------------------------------------------
# Approvals
# --------------------------------------------------------------------------------------------
def test_a_deployment_waits_queued_until_every_group_approves_then_runs(
    orchestrator: Any, people: dict[str, Any]
) -> None:
    environment = two_groups(orchestrator, "gov-approve")
    deployment_id = orchestrator.submit(sample_artifact("gov-wait", "1.0.0"), ROLLING, environment)
    time.sleep(3)  # more than enough for an admission: it must not happen
    status = orchestrator.status(deployment_id)
    assert status.phase is Phase.AWAITING_APPROVAL, status
    assert status.message == "awaiting approval from release-managers, prod-team (approved: none yet)"
    assert status.runner is None
    nothing_deployed(orchestrator, "gov-wait", environment)
    (pending,) = [r for r in orchestrator.approvals() if r.subject == deployment_id]
    assert pending.groups == ["release-managers", "prod-team"]

    with pytest.raises(ApprovalRefused, match="the token is bob's, not alice's"):
        people["bob"].approve(deployment_id, "alice", "prod-team")  # one decides for oneself only
    people["bob"].approve(deployment_id, "bob", "release-managers", "release notes read")
    with pytest.raises(ApprovalRefused, match="bob is not a member of prod-team"):
        people["bob"].approve(deployment_id, None, "prod-team")
    refusals = [e.data for e in orch_journal(orchestrator).events(deployment_id) if e.kind is EventKind.AUDIT]
    assert [(r["action"], r["attempted"]) for r in refusals] == [("role_refused", "approve")] * 2
    time.sleep(1)
    assert orchestrator.status(deployment_id).phase is Phase.AWAITING_APPROVAL
    decided = people["alice"].approve(deployment_id[:12], None, "prod-team", "go")  # a prefix works too
    assert decided.state is ApprovalState.APPROVED

    result = orchestrator.wait(deployment_id, timeout_s=120)
    assert result.success, result.status
    kinds = [e.kind for e in orch_journal(orchestrator).events(deployment_id)]
    assert kinds.index(EventKind.ADMITTED) > max(i for i, k in enumerate(kinds) if k is EventKind.APPROVED)


def test_one_person_cannot_approve_for_two_groups(orchestrator: Any, people: dict[str, Any]) -> None:
    environment = two_groups(orchestrator, "gov-approve2")
    deployment_id = orchestrator.submit(sample_artifact("gov-twice", "1.0.0"), ROLLING, environment)
    people["alice"].approve(deployment_id, "alice", "release-managers")  # alice is in both groups
    with pytest.raises(ApprovalRefused, match=r"alice already approved .* for release-managers"):
        people["alice"].approve(deployment_id, "alice", "prod-team")
    assert orchestrator.status(deployment_id).phase is Phase.AWAITING_APPROVAL
    orchestrator.abort(deployment_id, "test over")
    assert orchestrator.status(deployment_id).phase is Phase.ABORTED


def test_a_rejection_ends_it_before_anything_runs(orchestrator: Any, people: dict[str, Any]) -> None:
    environment = two_groups(orchestrator, "gov-reject")
    deployment_id = orchestrator.submit(sample_artifact("gov-reject", "1.0.0"), ROLLING, environment)
    people["bob"].approve(deployment_id, "bob", "release-managers")
    # From the command line without a cluster: straight into the journal; the queen's round ends it.
    listed = cli(orchestrator, "approvals", "--environment", environment)
    assert (
        deployment_id in listed
        and "awaiting approval from prod-team (approved: release-managers: bob)" in listed
    )
    reject = ["reject", deployment_id[:14], "--group", "prod-team", "--comment", "not during the sale"]
    cli(orchestrator, *reject, person="carol")
    result = orchestrator.wait(deployment_id, timeout_s=30)
    assert result.status.phase is Phase.ABORTED
    assert result.status.message == "rejected by carol for prod-team: not during the sale"
    nothing_deployed(orchestrator, "gov-reject", environment)


def test_an_expired_request_fails_it(orchestrator: Any, people: dict[str, Any]) -> None:
    environment = register(
        orchestrator, "gov-expire", approvalWorkflow={"required": True, "approvers": ["qa"], "expiry": "2s"}
    )
    deployment_id = orchestrator.submit(sample_artifact("gov-expire", "1.0.0"), ROLLING, environment)
    # The queen's supervision round (every 5 s) notices the expiry: nothing polls in between.
    result = orchestrator.wait(deployment_id, timeout_s=30)
    assert result.status.phase is Phase.FAILED, result.status
    assert result.status.message == "approval expired after 2s without qa"
    with pytest.raises(ApprovalRefused, match=r"already ended .*approval expired"):
        people["erin"].approve(deployment_id, "erin", "qa")
    nothing_deployed(orchestrator, "gov-expire", environment)


# --------------------------------------------------------------------------------------------
# Artifact checks, before any platform change
# --------------------------------------------------------------------------------------------
VERIFIED = {
    "security": {
        "requireSignedArtifacts": True,
        "allowedSources": ["file://*"],
        "vulnerabilityScanning": True,
    }
}


def test_a_digest_mismatch_stops_it_before_any_platform_change(
    orchestrator: Any, governance_kit: GovernanceKit
) -> None:
    environment = register(orchestrator, "gov-verify", **VERIFIED)
    good = governance_kit.artifact("gov-digest", "1.0.0")
    lying = governance_kit.signed(good.model_copy(update={"sha256": "0" * 64}))  # signed, but not its content
    result = orchestrator.deploy(lying, ROLLING, environment, timeout_s=60)
    assert result.status.phase is Phase.FAILED
    assert "digest: sha256 mismatch: the artifact says " + "0" * 64 in result.status.message
    nothing_deployed(orchestrator, "gov-digest", environment)


def test_a_bad_signature_stops_it_before_any_platform_change(
    orchestrator: Any, governance_kit: GovernanceKit
) -> None:
    environment = register(orchestrator, "gov-verify", **VERIFIED)
    signed = governance_kit.artifact("gov-signature", "1.0.0")
    changed = signed.model_copy(update={"command": [sys.executable, "-c", "print('not what was signed')"]})
    result = orchestrator.deploy(changed, ROLLING, environment, timeout_s=60)
    assert result.status.phase is Phase.FAILED
    assert "signature: the signature does not verify with key 'test-release'" in result.status.message
    nothing_deployed(orchestrator, "gov-signature", environment)


def test_a_source_not_allowed_is_refused_before_anything_is_recorded(
    orchestrator: Any, governance_kit: GovernanceKit
) -> None:
    environment = register(orchestrator, "gov-verify", **VERIFIED)
    artifact = governance_kit.artifact("gov-source", "1.0.0", source="https://downloads.example.net/web.zip")
    with pytest.raises(
        ray.exceptions.RayTaskError, match=r"source 'https://downloads.example.net/web.zip' is not"
    ):
        orchestrator.submit(artifact, ROLLING, environment)
    assert orch_journal(orchestrator).deployments(target_key=f"gov-source.{environment}") == []
    nothing_deployed(orchestrator, "gov-source", environment)


def test_a_failing_scanner_stops_it_before_any_platform_change(
    orchestrator: Any, governance_kit: GovernanceKit, tmp_path: Path
) -> None:
    environment = register(orchestrator, "gov-verify", **VERIFIED)
    folder = governance_kit.vulnerable_folder(tmp_path / "web")
    artifact = governance_kit.artifact("gov-scan", "1.0.0", folder=folder)
    result = orchestrator.deploy(artifact, ROLLING, environment, timeout_s=90)
    assert result.status.phase is Phase.FAILED
    assert (
        "vulnerability-scan: 1 finding(s) at high or above: CVE-2014-0160 (critical)" in result.status.message
    )
    nothing_deployed(orchestrator, "gov-scan", environment)


def test_a_verified_artifact_deploys_and_the_registry_says_where(
    orchestrator: Any, governance_kit: GovernanceKit
) -> None:
    environment = register(orchestrator, "gov-verify", **VERIFIED)
    result = orchestrator.deploy(
        governance_kit.artifact("gov-ok", "1.0.0"), ROLLING, environment, timeout_s=120
    )
    assert result.success, result.status
    (entry,) = orchestrator.artifacts("gov-ok")
    assert entry.live_in == [environment] and entry.signed_by == "test-release"
    assert entry.verification == {
        "source-allowed": "passed",
        "digest": "passed",
        "signature": "passed",
        "vulnerability-scan": "passed",
        "deployment": result.deployment_id,
    }


# --------------------------------------------------------------------------------------------
# TLS and the compliance gate
# --------------------------------------------------------------------------------------------
def test_tls_required_production_without_a_certificate_is_refused(
    orchestrator: Any, governance_kit: GovernanceKit
) -> None:
    """Production over plain HTTP is refused: local serves HTTPS, but only with a certificate to serve."""
    artifact = governance_kit.artifact("gov-tls", "1.0.0")
    with pytest.raises(ray.exceptions.RayTaskError) as refused:
        orchestrator.submit(artifact, ROLLING, "production", change_record={"id": "CHG-1", "summary": "tls"})
    assert (
        "environments.production.security.tlsRequired is true but environments.production.security.tls has "
        "no certificate and key" in str(refused.value)
    )
    assert orch_journal(orchestrator).deployments(target_key="gov-tls.production") == []
    nothing_deployed(orchestrator, "gov-tls", "production")


def _commit_configuration(orch: Any) -> str:
    """The session's configuration, committed in git as it was loaded (configuration-version-recorded)."""
    folder = Path(orch.config_path).parent
    git = ["git", "-C", str(folder), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    for args in (
        ["init", "-q"],
        ["add", Path(orch.config_path).name],
        ["commit", "-q", "-m", "configuration"],
    ):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=30)
    done = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


POT10 = {
    "complianceLevel": "nasa-pot10",
    "approvalWorkflow": {"required": True, "approvers": ["prod-team", "security-team", "compliance-team"]},
    "security": {"vulnerabilityScanning": True, "complianceScanning": True, "allowedSources": ["file://*"]},
}


def test_the_compliance_report_of_a_passing_nasa_pot10_deployment(
    orchestrator: Any, governance_kit: GovernanceKit, people: dict[str, Any]
) -> None:
    environment = register(orchestrator, "gov-pot10", **POT10)
    commit = _commit_configuration(orchestrator)
    change = {"id": "CHG-2041", "summary": "web 1.0.0: first release"}
    deployment_id = orchestrator.submit(
        governance_kit.artifact("gov-pot10", "1.0.0"), ROLLING, environment, change_record=change
    )
    wait_phase(orchestrator, deployment_id, Phase.AWAITING_APPROVAL)
    for group in ("prod-team", "security-team", "compliance-team"):
        people[APPROVERS[group]].approve(deployment_id, None, group, f"{group} agrees")
    result = orchestrator.wait(deployment_id, timeout_s=120)
    assert result.success, result.status

    report = orchestrator.report(deployment_id)
    (evidence,) = report.deployments
    assert report.passed and evidence.gate_enforced
    assert (evidence.compliance.score, evidence.compliance.required_score) == (95.0, 95.0)
    failed = [r.rule.value for r in evidence.compliance.rules if not r.passed]
    assert failed == ["tls-enforced"]  # POT10 here does not set security.tlsRequired
    assert evidence.config_version is not None and evidence.config_version.git_commit == commit
    assert evidence.approval is not None and [d.person for d in evidence.approval.decisions] == [
        "alice",
        "grace",
        "ivan",
    ]

    markdown = cli(orchestrator, "report", deployment_id[:14])
    assert f"# Compliance report: deployment {deployment_id}" in markdown
    assert "nasa-pot10, score 95% (needs 95%): **PASSED**, enforced at deploy time" in markdown
    assert "- **Change record**: CHG-2041: web 1.0.0: first release" in markdown
    assert "approve by grace for security-team" in markdown
    assert f"git {commit} (committed)" in markdown
    assert (
        "| vulnerability-scan-passed | passed | yes | 15 | scanned: 0 finding(s), none at high or above |"
        in markdown
    )
    assert "head hash `" in markdown and report.audit.intact


def test_deciding_without_a_token_is_refused_inside_the_queen_and_audited(orchestrator: Any) -> None:
    from actors.common import QUEEN_NAME
    from engine.identity import AccessDenied

    environment = two_groups(orchestrator, "gov-guarded")
    deployment_id = orchestrator.submit(sample_artifact("gov-guarded", "1.0.0"), ROLLING, environment)
    queen = ray.get_actor(QUEEN_NAME, namespace=orchestrator.namespace)  # bypassing the driver
    with pytest.raises(AccessDenied, match="approve refused: no token"):
        ray.get(queen.approve.remote(deployment_id, "bob", "release-managers", "sneaky"), timeout=60)
    with pytest.raises(AccessDenied, match="approvals refused: no token"):
        ray.get(queen.approval_requests.remote(), timeout=60)
    audited = [e.data for e in orch_journal(orchestrator).events() if e.kind is EventKind.AUDIT]
    assert {"approve", "approvals"} <= {str(d.get("attempted")) for d in audited}
    assert orchestrator.approvals(deployment_id)[0].decisions == []
    orchestrator.abort(deployment_id, "test over")
