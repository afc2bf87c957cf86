"""The compliance gate: rules selected per level, each with evidence, the score, mandatory rules, the audit
trail check, and the report. No Ray."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.approvals import ApprovalRequest, Decision, Verdict
from engine.artifacts import Check
from engine.compliance import (
    RULES,
    AuditStatus,
    ComplianceFacts,
    Rule,
    audit_status,
    deployment_report,
    evaluate,
)
from engine.journal import Journal
from engine.models import (
    Artifact,
    ChangeRecord,
    ComplianceLevel,
    ConfigVersion,
    DeploymentRequest,
    Environment,
    Features,
    Governance,
    PlatformConfig,
    Strategy,
)
from engine.state import EventKind

NOW = 1_000_000.0
INTACT = AuditStatus(intact=True, events=12, head_seq=12, head_hash="ab" * 32, checked_at=NOW)


def _approval(state: str = "approved") -> ApprovalRequest:
    decisions = [
        Decision(person="alice", group="prod-team", verdict=Verdict.APPROVE, at=NOW),
        Decision(person="grace", group="security-team", verdict=Verdict.APPROVE, at=NOW),
    ]
    return ApprovalRequest(
        subject="web-1",
        environment="production",
        groups=["prod-team", "security-team"],
        requested_by="bob",
        requested_at=NOW - 60,
        expires_at=NOW + 3600,
        decisions=decisions if state == "approved" else decisions[:1],
        state=state,  # type: ignore[arg-type]
    )


CHECKS = [
    Check(name="source-allowed", status="passed", evidence="source 'local' is allowed"),
    Check(name="digest", status="passed", evidence="sha256 abc matches the content"),
    Check(name="signature", status="passed", evidence="ed25519 signature by key 'release' verified"),
    Check(name="vulnerability-scan", status="passed", evidence="scanned: 0 finding(s)"),
]


def facts(level: ComplianceLevel = ComplianceLevel.NASA_POT10, **changes: object) -> ComplianceFacts:
    base = ComplianceFacts(
        subject="web-1",
        environment="production",
        level=level,
        approval_groups=["prod-team", "security-team"],
        approval=_approval(),
        checks=CHECKS,
        change_record=ChangeRecord(id="CHG-42", summary="web 2.0.0"),
        config_version=ConfigVersion(sha256="c" * 64, git_commit="d" * 40, git_state="committed"),
        tls_required=False,
        platform="local",
        audit=INTACT,
    )
    return base.model_copy(update=changes)


def _by_rule(result: object) -> dict[Rule, object]:
    return {r.rule: r for r in result.rules}  # type: ignore[attr-defined]


def test_each_level_selects_its_rules_and_nasa_pot10_all_of_them() -> None:
    selected = {level: [r.rule for r in evaluate(facts(level), NOW).rules] for level in ComplianceLevel}
    assert selected[ComplianceLevel.STANDARD] == [Rule.APPROVALS_COMPLETE, Rule.AUDIT_TRAIL_INTACT]
    assert Rule.SIGNATURE_VERIFIED not in selected[ComplianceLevel.ENHANCED]
    assert Rule.TLS_ENFORCED not in selected[ComplianceLevel.STRICT]
    assert selected[ComplianceLevel.NASA_POT10] == [spec.rule for spec in RULES]
    assert sum(spec.weight for spec in RULES) == 100


def test_nasa_pot10_passes_at_95_percent_with_every_mandatory_rule() -> None:
    result = evaluate(facts(), NOW)  # everything but TLS (not required here): 95%
    assert (result.score, result.required_score, result.passed) == (95.0, 95.0, True)
    rules = _by_rule(result)
    assert not rules[Rule.TLS_ENFORCED].passed  # type: ignore[attr-defined]
    assert "tlsRequired is off" in rules[Rule.TLS_ENFORCED].evidence  # type: ignore[attr-defined]
    assert "endpoints are not probed" in rules[Rule.TLS_ENFORCED].evidence  # type: ignore[attr-defined]
    assert rules[Rule.APPROVALS_COMPLETE].evidence.startswith("approved by prod-team: alice at ")  # type: ignore[attr-defined]


def test_two_light_failures_bring_nasa_pot10_under_95_percent() -> None:
    uncommitted = ConfigVersion(sha256="c" * 64, git_state="not under git")
    result = evaluate(facts(config_version=uncommitted), NOW)
    assert result.score == 90.0 and not result.passed
    assert [r.rule for r in result.failures] == [Rule.CONFIGURATION_VERSION_RECORDED, Rule.TLS_ENFORCED]
    assert "not version-controlled (not under git)" in result.failures[0].evidence
    assert result.explain().startswith(
        "compliance gate (nasa-pot10) failed: score 90% (needs 95%); failed rules: "
    )


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"approval": _approval("pending")}, Rule.APPROVALS_COMPLETE),
        ({"change_record": None}, Rule.CHANGE_RECORD_PRESENT),
        ({"checks": None}, Rule.DIGEST_VERIFIED),
        (
            {
                "checks": [
                    c if c.name != "signature" else c.model_copy(update={"status": "skipped"}) for c in CHECKS
                ]
            },
            Rule.SIGNATURE_VERIFIED,
        ),
        (
            {
                "checks": [
                    c if c.name != "vulnerability-scan" else c.model_copy(update={"status": "failed"})
                    for c in CHECKS
                ]
            },
            Rule.VULNERABILITY_SCAN_PASSED,
        ),
        ({"audit": INTACT.model_copy(update={"intact": False, "first_bad_seq": 7})}, Rule.AUDIT_TRAIL_INTACT),
    ],
)
def test_a_failed_mandatory_rule_fails_nasa_pot10_naming_it(change: dict[str, object], rule: Rule) -> None:
    result = evaluate(facts(**change), NOW)
    assert not result.passed
    failed = _by_rule(result)[rule]
    assert not failed.passed and failed.mandatory  # type: ignore[attr-defined]
    assert f"{rule.value} [mandatory]" in result.explain()


def test_nasa_pot10_without_an_approval_workflow_fails_its_approvals_rule() -> None:
    result = evaluate(facts(approval_groups=[], approval=None), NOW)
    assert not result.passed
    assert "nasa-pot10 needs an approval workflow" in _by_rule(result)[Rule.APPROVALS_COMPLETE].evidence  # type: ignore[attr-defined]
    standard = evaluate(facts(ComplianceLevel.STANDARD, approval_groups=[], approval=None), NOW)
    assert standard.passed and standard.score == 100.0


def test_lower_levels_tolerate_what_they_do_not_make_mandatory() -> None:
    enhanced = evaluate(facts(ComplianceLevel.ENHANCED, change_record=None), NOW)
    assert enhanced.score == 75.0 and enhanced.passed  # change record: selected, not mandatory at enhanced
    strict = evaluate(facts(ComplianceLevel.STRICT, checks=[c for c in CHECKS if c.name != "signature"]), NOW)
    assert not strict.passed  # signature is mandatory from strict on


def _deployment(journal: Journal, level: str = "nasa-pot10") -> str:
    environment = Environment.model_validate(
        {
            "name": "production",
            "complianceLevel": level,
            "approvalWorkflow": {"required": True, "approverGroups": ["prod-team"]},
        }
    )
    request = DeploymentRequest(
        artifact=Artifact(name="web", version="2.0.0", command=["true"]),
        strategy=Strategy(type="rolling"),  # type: ignore[arg-type]
        environment="production",
        platform=PlatformConfig(type="local"),
        requested_by="bob",
        change_record=ChangeRecord(id="CHG-42", summary="web 2.0.0 | new checkout"),
        governance=Governance(environment=environment, features=Features().resolved()),
    )
    journal.submit("web-1", request, actor="bob")
    return "web-1"


def test_the_audit_trail_check_finds_an_edited_row(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    deployment_id = _deployment(journal)
    journal.append(deployment_id, EventKind.NOTE, {"message": "hello"})
    status = audit_status(journal)
    assert status.intact and status.events == 2 and status.head_hash == journal.events()[-1].hash
    with sqlite3.connect(tmp_path / "journal.db") as db:
        db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 1")
    broken = audit_status(journal)
    assert not broken.intact and broken.first_bad_seq == 1


def test_a_deployment_report_says_who_what_when_and_each_rule(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.db")
    deployment_id = _deployment(journal)
    report = deployment_report(journal, deployment_id)
    (evidence,) = report.deployments
    assert evidence.requested_by == "bob" and evidence.version == "2.0.0"
    assert not evidence.gate_enforced  # it never ran: evaluated for the report
    assert not report.passed  # not approved, not verified
    markdown = report.markdown()
    assert "# Compliance report: deployment web-1" in markdown
    assert "- **Who**: bob" in markdown
    assert "- **Change record**: CHG-42: web 2.0.0 | new checkout" in markdown
    assert f"head hash `{journal.head()[1]}`" in markdown
    assert "| approvals-complete | FAILED | yes | 15 | no approval was requested from prod-team |" in markdown
    assert '"kind": "deployment"' in report.to_json()
