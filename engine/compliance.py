"""The compliance gate and compliance reports (plain Python, no Ray).

A compliance level selects named rules; each rule is passed or failed with its evidence. The score is the
weight of the rules passed over the weight of the rules selected, in percent. A gate passes when the score
reaches the level's ``REQUIRED_SCORE`` and every rule mandatory at that level passed:

| rule                           | weight | selected from | mandatory from |
| ------------------------------ | ------ | ------------- | -------------- |
| approvals-complete             | 15     | standard      | standard       |
| audit-trail-intact             | 15     | standard      | enhanced       |
| digest-verified                | 15     | enhanced      | strict         |
| change-record-present          | 15     | enhanced      | nasa-pot10     |
| signature-verified             | 15     | strict        | strict         |
| vulnerability-scan-passed      | 15     | strict        | nasa-pot10     |
| configuration-version-recorded | 5      | strict        | -              |
| tls-enforced                   | 5      | nasa-pot10    | -              |

``nasa-pot10`` needs 95%: every rule, or all but one of the two light ones. ``evaluate`` is pure: the facts
are gathered first (``facts_for_deployment``, or built by a caller such as a pipeline's compliance stage).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from engine.approvals import ApprovalRequest, Approvals, ApprovalState
from engine.artifacts import Check
from engine.audit import CheckpointStore, Verification, public_key_path, verify_stored, verify_trail
from engine.audit import load_public_key as load_audit_key
from engine.config import EnterpriseConfig
from engine.journal import GENESIS, Journal, UnknownDeploymentError
from engine.models import ChangeRecord, ComplianceLevel, ConfigVersion, Governance, Model
from engine.state import DeploymentState, EventKind


class Rule(str, Enum):
    APPROVALS_COMPLETE = "approvals-complete"
    AUDIT_TRAIL_INTACT = "audit-trail-intact"
    DIGEST_VERIFIED = "digest-verified"
    CHANGE_RECORD_PRESENT = "change-record-present"
    SIGNATURE_VERIFIED = "signature-verified"
    VULNERABILITY_SCAN_PASSED = "vulnerability-scan-passed"
    CONFIGURATION_VERSION_RECORDED = "configuration-version-recorded"
    TLS_ENFORCED = "tls-enforced"


@dataclass(frozen=True)
class RuleSpec:
    rule: Rule
    weight: int
    selected_from: ComplianceLevel
    mandatory_from: ComplianceLevel | None

    def selected(self, level: ComplianceLevel) -> bool:
        return level.rank >= self.selected_from.rank

    def mandatory(self, level: ComplianceLevel) -> bool:
        return self.mandatory_from is not None and level.rank >= self.mandatory_from.rank


_L = ComplianceLevel
RULES: tuple[RuleSpec, ...] = (
    RuleSpec(Rule.APPROVALS_COMPLETE, 15, _L.STANDARD, _L.STANDARD),
    RuleSpec(Rule.AUDIT_TRAIL_INTACT, 15, _L.STANDARD, _L.ENHANCED),
    RuleSpec(Rule.DIGEST_VERIFIED, 15, _L.ENHANCED, _L.STRICT),
    RuleSpec(Rule.CHANGE_RECORD_PRESENT, 15, _L.ENHANCED, _L.NASA_POT10),
    RuleSpec(Rule.SIGNATURE_VERIFIED, 15, _L.STRICT, _L.STRICT),
    RuleSpec(Rule.VULNERABILITY_SCAN_PASSED, 15, _L.STRICT, _L.NASA_POT10),
    RuleSpec(Rule.CONFIGURATION_VERSION_RECORDED, 5, _L.STRICT, None),
    RuleSpec(Rule.TLS_ENFORCED, 5, _L.NASA_POT10, None),
)
REQUIRED_SCORE: dict[ComplianceLevel, float] = {
    _L.STANDARD: 0.0,
    _L.ENHANCED: 75.0,
    _L.STRICT: 80.0,
    _L.NASA_POT10: 95.0,
}


# --------------------------------------------------------------------------------------------
# Facts
# --------------------------------------------------------------------------------------------
class AuditStatus(Model):
    """The audit trail's state: whether its hash chain (and the signed checkpoints, when known) verify."""

    intact: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    signed_seq: int | None = Field(default=None, description="The last entry a signed checkpoint covers")
    summary: str = ""
    checked_at: float


def audit_status(
    journal: Journal,
    clock: Callable[[], float] = time.time,
    *,
    checkpoints: str | None = None,
    public_key: str | None = None,
) -> AuditStatus:
    """The one place the compliance gate and reports ask whether the audit trail is intact: the journal's
    hash chain from its pruning anchor, and its signed checkpoints (engine/audit.py's ``verify_trail``) when
    their store and public key are given (``trail_paths``). An unreadable store or key is not intact."""
    try:
        key_file = Path(public_key) if public_key else None
        public = load_audit_key(key_file) if key_file is not None and key_file.exists() else None
        if checkpoints:
            verification = verify_stored(journal, CheckpointStore(Path(checkpoints)), public)
        else:  # no store to read: the chain alone (its checkpoint entries cannot be matched)
            verification = verify_trail(journal, [], public, store_read=False)
    except ValueError as error:
        verification = Verification(ok=False, problem=str(error))
    seq, digest = journal.head() or (0, GENESIS)
    return AuditStatus(
        intact=verification.ok,
        events=verification.entries,
        head_seq=seq,
        head_hash=digest,
        first_bad_seq=verification.first_bad_seq,
        signed_seq=verification.signed_seq,
        summary=verification.summary(),
        checked_at=clock(),
    )


def trail_paths(config: EnterpriseConfig) -> tuple[str, str]:
    """Where the configuration keeps the audit trail's signed checkpoints and the key that checks them."""
    return str(config.audit_checkpoints_path()), str(public_key_path(config.audit_key_path()))


class ComplianceFacts(Model):
    """Everything the rules look at, gathered before they are evaluated."""

    subject: str = Field(description="A deployment id, a pipeline id or a pipeline stage id")
    environment: str
    level: ComplianceLevel
    approval_groups: list[str] = Field(default_factory=list, description="Groups required; empty: none")
    approval: ApprovalRequest | None = None
    checks: list[Check] | None = Field(default=None, description="The artifact's checks; None: not verified")
    change_record: ChangeRecord | None = None
    config_version: ConfigVersion | None = None
    tls_required: bool = False
    platform: str = ""
    serves_tls: bool = Field(default=False, description="What the platform declared when submitted")
    audit: AuditStatus


class RuleResult(Model):
    rule: Rule
    passed: bool
    mandatory: bool
    weight: int
    evidence: str


class ComplianceResult(Model):
    subject: str
    environment: str
    level: ComplianceLevel
    score: float = Field(description="Percent of the selected rules' weight that passed")
    required_score: float
    passed: bool
    rules: list[RuleResult]
    evaluated_at: float

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def explain(self) -> str:
        """One paragraph: the verdict, the score and every failed rule with its evidence."""
        verdict = "passed" if self.passed else "failed"
        head = (
            f"compliance gate ({self.level.value}) {verdict}: score {self.score:g}% "
            f"(needs {self.required_score:g}%)"
        )
        failed = "; ".join(
            f"{r.rule.value}{' [mandatory]' if r.mandatory else ''}: {r.evidence}" for r in self.failures
        )
        return f"{head}; failed rules: {failed}" if failed else head


# --------------------------------------------------------------------------------------------
# Rules
# --------------------------------------------------------------------------------------------
def _approvals(facts: ComplianceFacts) -> tuple[bool, str]:
    if not facts.approval_groups:
        if facts.level is ComplianceLevel.NASA_POT10:
            return (
                False,
                f"{facts.environment} requires no approval, and nasa-pot10 needs an approval workflow",
            )
        return True, f"no approval is required in {facts.environment}"
    if facts.approval is None:
        return False, f"no approval was requested from {', '.join(facts.approval_groups)}"
    missing = [g for g in facts.approval_groups if g not in facts.approval.approvals()]
    if facts.approval.state is ApprovalState.APPROVED and not missing:
        given = facts.approval.approvals()
        return True, "approved by " + ", ".join(
            f"{g}: {given[g].person} at {_stamp(given[g].at)}" for g in facts.approval_groups
        )
    return False, facts.approval.summary()


def _check_rule(name: str, what: str) -> Callable[[ComplianceFacts], tuple[bool, str]]:
    def rule(facts: ComplianceFacts) -> tuple[bool, str]:
        if facts.checks is None:
            return False, f"{what} was not checked: artifact verification did not run"
        check = next((c for c in facts.checks if c.name == name), None)
        if check is None:
            return False, f"{what} was not checked"
        prefix = "" if check.status == "passed" else f"not verified ({check.status}): "
        return check.status == "passed", prefix + check.evidence

    return rule


def _change_record(facts: ComplianceFacts) -> tuple[bool, str]:
    record = facts.change_record
    if record is None:
        return False, "no change record was given with the deployment (changeRecord: {id, summary})"
    return True, f"{record.id}: {record.summary}"


def _config_version(facts: ComplianceFacts) -> tuple[bool, str]:
    version = facts.config_version
    if version is None or version.sha256 is None:
        return False, "the configuration's version was not recorded"
    content = f"{version.path or 'configuration'} sha256 {version.sha256}"
    if version.git_commit and version.git_state == "committed":
        return True, f"{content}, committed in git {version.git_commit}"
    return False, f"{content} recorded, but not version-controlled ({version.git_state})"


def _tls(facts: ComplianceFacts) -> tuple[bool, str]:
    note = "a check of the settings: endpoints are not probed"
    if not facts.tls_required:
        return (
            False,
            f"security.tlsRequired is off in {facts.environment}: endpoints may serve plain HTTP ({note})",
        )
    if not facts.serves_tls:
        return False, f"platform '{facts.platform}' did not declare that it serves TLS ({note})"
    return True, f"security.tlsRequired is on and platform '{facts.platform}' serves TLS ({note})"


def _audit(facts: ComplianceFacts) -> tuple[bool, str]:
    audit = facts.audit
    head = f"head {audit.head_seq} {audit.head_hash}"
    if not audit.intact:
        return (
            False,
            f"{audit.summary or 'the hash chain is broken'} (first bad entry {audit.first_bad_seq}); {head}",
        )
    return True, f"{audit.summary or f'hash chain verified over {audit.events} events'}; {head}"


_EVALUATE: dict[Rule, Callable[[ComplianceFacts], tuple[bool, str]]] = {
    Rule.APPROVALS_COMPLETE: _approvals,
    Rule.AUDIT_TRAIL_INTACT: _audit,
    Rule.DIGEST_VERIFIED: _check_rule("digest", "the sha256 digest"),
    Rule.CHANGE_RECORD_PRESENT: _change_record,
    Rule.SIGNATURE_VERIFIED: _check_rule("signature", "the signature"),
    Rule.VULNERABILITY_SCAN_PASSED: _check_rule("vulnerability-scan", "the vulnerability scan"),
    Rule.CONFIGURATION_VERSION_RECORDED: _config_version,
    Rule.TLS_ENFORCED: _tls,
}


def evaluate(facts: ComplianceFacts, now: float | None = None) -> ComplianceResult:
    """The rules of ``facts.level``, each with its evidence, the score and the verdict."""
    results = []
    for spec in RULES:
        if spec.selected(facts.level):
            passed, evidence = _EVALUATE[spec.rule](facts)
            results.append(
                RuleResult(
                    rule=spec.rule,
                    passed=passed,
                    mandatory=spec.mandatory(facts.level),
                    weight=spec.weight,
                    evidence=evidence,
                )
            )
    total = sum(r.weight for r in results)
    score = round(100.0 * sum(r.weight for r in results if r.passed) / total, 1) if total else 100.0
    required = REQUIRED_SCORE[facts.level]
    passed = score >= required and all(r.passed for r in results if r.mandatory)
    return ComplianceResult(
        subject=facts.subject,
        environment=facts.environment,
        level=facts.level,
        score=score,
        required_score=required,
        passed=passed,
        rules=results,
        evaluated_at=time.time() if now is None else now,
    )


def gate_applies(governance: Governance) -> bool:
    """The gate runs where the environment asks for it (complianceScanning, or the nasa-pot10 level),
    unless the complianceGate feature is off (refused by the configuration for nasa-pot10)."""
    environment = governance.environment
    asked = (
        environment.security.compliance_scanning or environment.compliance_level is ComplianceLevel.NASA_POT10
    )
    return asked and governance.features.enabled("compliance_gate")


# --------------------------------------------------------------------------------------------
# Deployments
# --------------------------------------------------------------------------------------------
def recorded_checks(journal: Journal, deployment_id: str) -> list[Check] | None:
    """The artifact checks of a deployment's latest verification, from its events (None: not verified)."""
    found: list[Check] | None = None
    for event in journal.events(deployment_id):
        if event.kind is EventKind.ARTIFACT_VERIFIED:
            found = [Check.model_validate(c) for c in event.data.get("checks", [])]
    return found


def recorded_result(journal: Journal, deployment_id: str) -> ComplianceResult | None:
    """The compliance gate's latest result for a deployment, as journaled when it ran."""
    found = None
    for event in journal.events(deployment_id):
        if event.kind is EventKind.COMPLIANCE_CHECKED:
            found = ComplianceResult.model_validate(event.data["result"])
    return found


def facts_for_deployment(
    journal: Journal,
    state: DeploymentState,
    checks: list[Check] | None = None,
    clock: Callable[[], float] = time.time,
) -> ComplianceFacts:
    """The facts of one deployment: its recorded policy, approval, checks, change record and the trail."""
    request = state.request
    governance = request.governance
    environment = governance.environment if governance else None
    return ComplianceFacts(
        subject=state.deployment_id,
        environment=request.environment,
        level=environment.compliance_level if environment else ComplianceLevel.STANDARD,
        approval_groups=governance.approval_groups if governance else [],
        approval=Approvals(journal, clock=clock).find(state.deployment_id),
        checks=checks if checks is not None else recorded_checks(journal, state.deployment_id),
        change_record=request.change_record,
        config_version=governance.config_version if governance else None,
        tls_required=environment.security.tls_required if environment else False,
        platform=request.platform.type,
        serves_tls=bool(governance and governance.capabilities and governance.capabilities.serves_tls),
        audit=audit_status(
            journal,
            clock,
            checkpoints=governance.audit_checkpoints if governance else None,
            public_key=governance.audit_public_key if governance else None,
        ),
    )


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
class DeploymentEvidence(Model):
    """What a report says about one deployment: who, what, when, and its compliance."""

    deployment_id: str
    requested_by: str
    service: str
    version: str
    source: str
    sha256: str | None
    environment: str
    platform: str
    strategy: str
    phase: str
    message: str
    submitted_at: float
    admitted_at: float | None
    finished_at: float | None
    change_record: ChangeRecord | None
    config_version: ConfigVersion | None
    approval: ApprovalRequest | None
    checks: list[Check] | None
    compliance: ComplianceResult
    gate_enforced: bool = Field(
        description="False: the gate did not run at deploy time; evaluated for this report"
    )


class ComplianceReport(Model):
    kind: Literal["deployment", "pipeline"]
    id: str
    generated_at: float
    deployments: list[DeploymentEvidence]
    approvals: list[ApprovalRequest] = Field(
        default_factory=list, description="Other subjects (pipeline stages)"
    )
    audit: AuditStatus

    @property
    def passed(self) -> bool:
        return all(d.compliance.passed for d in self.deployments)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def markdown(self) -> str:
        return render_markdown(self)


def deployment_evidence(journal: Journal, state: DeploymentState) -> DeploymentEvidence:
    recorded = recorded_result(journal, state.deployment_id)
    facts = facts_for_deployment(journal, state)
    request = state.request
    return DeploymentEvidence(
        deployment_id=state.deployment_id,
        requested_by=request.requested_by,
        service=request.artifact.name,
        version=request.artifact.version,
        source=request.artifact.source,
        sha256=request.artifact.sha256,
        environment=request.environment,
        platform=request.platform.type,
        strategy=request.strategy.type.value,
        phase=state.phase().value,
        message=state.message,
        submitted_at=state.submitted_at,
        admitted_at=state.admitted_at,
        finished_at=state.finished_at,
        change_record=request.change_record,
        config_version=facts.config_version,
        approval=facts.approval,
        checks=facts.checks,
        compliance=recorded or evaluate(facts),
        gate_enforced=recorded is not None,
    )


def _trail(journal: Journal, config: EnterpriseConfig | None) -> AuditStatus:
    checkpoints, public_key = trail_paths(config) if config is not None else (None, None)
    return audit_status(journal, checkpoints=checkpoints, public_key=public_key)


def deployment_report(
    journal: Journal, deployment_id: str, config: EnterpriseConfig | None = None
) -> ComplianceReport:
    """A deployment's report; with ``config`` the trail's signed checkpoints are verified too."""
    state = journal.find(deployment_id)
    return ComplianceReport(
        kind="deployment",
        id=state.deployment_id,
        generated_at=time.time(),
        deployments=[deployment_evidence(journal, state)],
        audit=_trail(journal, config),
    )


def pipeline_report(
    journal: Journal,
    pipeline_id: str,
    deployment_ids: Sequence[str],
    approval_subjects: Sequence[str] = (),
    config: EnterpriseConfig | None = None,
) -> ComplianceReport:
    """One report over a pipeline's deployments and its approve stages' approvals."""
    approvals = Approvals(journal)
    return ComplianceReport(
        kind="pipeline",
        id=pipeline_id,
        generated_at=time.time(),
        deployments=[deployment_evidence(journal, journal.find(d)) for d in deployment_ids],
        approvals=[a for a in (approvals.find(s) for s in approval_subjects) if a is not None],
        audit=_trail(journal, config),
    )


class UnknownReport(KeyError):
    def __init__(self, report_id: str) -> None:
        super().__init__(f"no deployment or pipeline '{report_id}' in the journal")

    def __str__(self) -> str:
        return str(self.args[0])


PIPELINE_RECORD = "pipeline"  # a pipeline's journal record: {"deployments": [ids], "approvals": [subjects]}


def report(journal: Journal, report_id: str, config: EnterpriseConfig | None = None) -> ComplianceReport:
    """The report of a pipeline (its id) or of a deployment (id or unique prefix). A pipeline first: its id
    is also the prefix of its deployments' ids."""
    record = journal.record(PIPELINE_RECORD, report_id)
    if record is not None:
        deployments = [str(d) for d in record.get("deployments", [])]
        subjects = [str(a) for a in record.get("approvals", [])]
        return pipeline_report(journal, report_id, deployments, subjects, config)
    try:
        return deployment_report(journal, report_id, config)
    except UnknownDeploymentError:
        raise UnknownReport(report_id) from None


def _stamp(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def _markdown_deployment(d: DeploymentEvidence) -> list[str]:
    result = d.compliance
    enforced = "enforced at deploy time" if d.gate_enforced else "not enforced at deploy time (evaluated now)"
    lines = [
        f"## Deployment {d.deployment_id}",
        "",
        f"- **Who**: {d.requested_by}",
        f"- **What**: {d.service} {d.version} from `{d.source}` (sha256 `{d.sha256 or '-'}`), "
        f"{d.strategy} on {d.platform} to **{d.environment}**",
        f"- **When**: submitted {_stamp(d.submitted_at)}, admitted {_stamp(d.admitted_at)}, "
        f"finished {_stamp(d.finished_at)}",
        f"- **Outcome**: {d.phase}{f' ({d.message})' if d.message else ''}",
        f"- **Change record**: {_change(d.change_record)}",
    ]
    if d.config_version is not None:
        version = d.config_version
        commit = version.git_commit or "-"
        lines.append(f"- **Configuration**: sha256 `{version.sha256}`, git {commit} ({version.git_state})")
    lines += [
        "",
        f"### Compliance: {result.level.value}, score {result.score:g}% (needs {result.required_score:g}%): "
        f"**{'PASSED' if result.passed else 'FAILED'}**, {enforced}",
        "",
        "| rule | result | mandatory | weight | evidence |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.rule.value} | {'passed' if r.passed else 'FAILED'} | {'yes' if r.mandatory else 'no'} | "
        f"{r.weight} | {_cell(r.evidence)} |"
        for r in result.rules
    ]
    lines += ["", "### Approvals", ""]
    lines += _markdown_approval(d.approval) if d.approval else ["No approval was requested."]
    lines += ["", "### Artifact checks", ""]
    lines += [f"- {c.name}: {c.status}: {c.evidence}" for c in d.checks] if d.checks else ["Not verified."]
    return [*lines, ""]


def _markdown_approval(approval: ApprovalRequest) -> list[str]:
    lines = [
        f"{approval.subject}: **{approval.state.value}**, requested by {approval.requested_by} at "
        f"{_stamp(approval.requested_at)}, groups {', '.join(approval.groups)}, "
        f"expires {_stamp(approval.expires_at)}",
        "",
    ]
    for decision in approval.decisions:
        comment = f": {decision.comment}" if decision.comment else ""
        who = f"{decision.person} for {decision.group}"
        lines.append(f"- {decision.verdict.value} by {who} at {_stamp(decision.at)}{comment}")
    return lines


def _change(record: ChangeRecord | None) -> str:
    return f"{record.id}: {record.summary}" if record else "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: ComplianceReport) -> str:
    audit = report.audit
    trail = "intact" if audit.intact else f"BROKEN at event {audit.first_bad_seq}"
    lines: list[str] = [
        f"# Compliance report: {report.kind} {report.id}",
        "",
        f"Generated {_stamp(report.generated_at)}. Overall: **{'PASSED' if report.passed else 'FAILED'}**.",
        "",
        f"Audit trail: {trail}, {audit.events} events, head hash `{audit.head_hash}` "
        f"(event {audit.head_seq}). {audit.summary}",
        "",
    ]
    for deployment in report.deployments:
        lines += _markdown_deployment(deployment)
    if report.approvals:
        lines += ["## Pipeline approvals", ""]
        for approval in report.approvals:
            lines += [*_markdown_approval(approval), ""]
    return "\n".join(lines)


def checks_payload(checks: Sequence[Check]) -> dict[str, Any]:
    """An ARTIFACT_VERIFIED event's data."""
    return {
        "checks": [c.model_dump(mode="json") for c in checks],
        "passed": not any(c.failed for c in checks),
    }
