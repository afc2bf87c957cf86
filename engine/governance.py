"""Governance of a deployment, from submission to the first platform change (plain Python, no Ray).

1. At submission the queen records the policy in force with the request (``policy_for``: the environment's
   settings, the features, the trusted keys, the scanner, the configuration's version) and refuses what can
   never pass (``refusals``: TLS or NetworkPolicy on a platform that cannot do it, a source not allowed, an
   unsigned artifact where signatures are required, ...), before anything is recorded.
2. Until its approval is complete, the queen does not admit it (``ApprovalGate``): it stays queued, its
   phase ``awaiting_approval``, no runner works for it. A rejection ends it (aborted), an expiry fails it.
3. Its runner, before planning (so before any platform change), verifies the artifact (digest, signature,
   source, vulnerability scan) and runs the compliance gate where the environment asks for it
   (``preflight``). Each result is journaled; a failure ends the deployment naming the checks or rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from pydantic import ValidationError

from engine.approvals import ApprovalRefused, ApprovalRequest, Approvals, ApprovalState
from engine.artifacts import (
    ArtifactRegistry,
    Check,
    ContentDigests,
    check_digest,
    check_signature,
    check_source,
    load_public_key,
    run_scanner,
)
from engine.compliance import checks_payload, evaluate, facts_for_deployment, gate_applies
from engine.config import EnterpriseConfig
from engine.journal import Journal
from engine.models import (
    ComplianceLevel,
    ConfigVersion,
    DeploymentRequest,
    Environment,
    FeatureName,
    Features,
    Governance,
    Phase,
)
from engine.platform import ENFORCES_NETWORK_POLICY, SERVES_TLS
from engine.state import DeploymentState, EventKind

_NASA = ComplianceLevel.NASA_POT10
# What nasa-pot10 cannot do without (its gate's mandatory rules depend on them).
_NASA_FEATURES = ("approvals", "artifact_verification", "compliance_gate")


# --------------------------------------------------------------------------------------------
# The configuration: problems found when it is loaded
# --------------------------------------------------------------------------------------------
def configuration_problems(config: EnterpriseConfig) -> Iterable[tuple[str, str]]:
    """(YAML path, problem) for the governance settings that are wrong whatever is deployed."""
    for key_id, text in config.trusted_keys.items():
        try:
            load_public_key(text)
        except ValueError as error:
            yield f"trustedKeys.{key_id}", str(error)
    for name, environment in config.environments.items():
        path = f"environments.{name}"
        for index, key_id in enumerate(environment.security.trusted_keys):
            if key_id not in config.trusted_keys:
                known = ", ".join(sorted(config.trusted_keys)) or "none are defined"
                yield (
                    f"{path}.security.trustedKeys[{index}]",
                    f"key '{key_id}' is not under trustedKeys ({known})",
                )
        yield from _override_problems(config, name, environment)
        if environment.compliance_level is _NASA:
            yield from _nasa_feature_problems(config, name, environment)


def _override_problems(
    config: EnterpriseConfig, name: str, environment: Environment
) -> Iterable[tuple[str, str]]:
    from engine.config import explain_error  # the file's own error wording

    for kind, override in environment.strategy_overrides.items():
        path = f"environments.{name}.strategyOverrides.{_CAMEL[kind]}"
        if not isinstance(override, Mapping):
            yield path, "must be a mapping of strategy settings (e.g. stepDuration: 10m)"
            continue
        try:
            config.strategy_for(kind, None, name)
        except ValidationError as error:
            for detail in error.errors():
                yield explain_error(path, detail, strip=_CAMEL[kind])


_CAMEL = {"canary": "canary", "blue_green": "blueGreen", "rolling": "rolling"}


def _nasa_feature_problems(
    config: EnterpriseConfig, name: str, environment: Environment
) -> Iterable[tuple[str, str]]:
    for flag in _NASA_FEATURES:
        camel = "".join(part.title() if i else part for i, part in enumerate(flag.split("_")))
        if getattr(environment.features, flag) is False:
            yield (
                f"environments.{name}.features.{camel}",
                f"cannot be off: {name} is nasa-pot10, whose gate needs it",
            )
        elif getattr(environment.features, flag) is None and getattr(config.features, flag) is False:
            yield (
                f"features.{camel}",
                f"cannot be off while environments.{name} is nasa-pot10 (its gate needs it)",
            )


# --------------------------------------------------------------------------------------------
# Submission: the policy recorded with a request, and what is refused at once
# --------------------------------------------------------------------------------------------
def environment_of(
    config: EnterpriseConfig, registered: Sequence[Mapping[str, Any]], name: str
) -> Environment:
    """An environment's settings: the configuration file's (reviewed, versioned) before a registered one."""
    if name in config.environments:
        return config.environments[name]
    for record in registered:
        if record.get("name") == name:
            return Environment.model_validate(record)
    known = sorted({*config.environments, *(str(r.get("name")) for r in registered)})
    raise ValueError(f"environment: unknown environment '{name}'; known: {', '.join(known)}")


def policy_for(config: EnterpriseConfig, environment: Environment, version: ConfigVersion) -> Governance:
    security = environment.security
    chosen = security.trusted_keys or sorted(config.trusted_keys)
    scanner = config.scanners.vulnerability
    if scanner is not None and scanner.working_dir is None and config.source is not None:
        scanner = scanner.model_copy(update={"working_dir": str(config.source.parent)})
    return Governance(
        environment=environment,
        features=config.features_for(environment),
        trusted_keys={
            key_id: config.trusted_keys[key_id] for key_id in chosen if key_id in config.trusted_keys
        },
        vulnerability_scanner=scanner if security.vulnerability_scanning else None,
        config_version=version,
    )


def governed(
    config: EnterpriseConfig, request: DeploymentRequest, environment: Environment, version: ConfigVersion
) -> DeploymentRequest:
    """The request with the policy in force recorded in it (whatever the client put there)."""
    return request.model_copy(update={"governance": policy_for(config, environment, version)})


def refusals(request: DeploymentRequest, roles: Mapping[str, Sequence[str]]) -> list[str]:
    """Why a governed request can never pass, each naming the setting; empty when it may go on."""
    governance = request.governance
    if governance is None:
        return ["the request carries no governance policy"]
    environment = governance.environment
    where = f"environments.{environment.name}"
    problems = _platform_refusals(request.platform.type, where, environment)
    problems += _approval_refusals(governance, where, roles)
    if governance.features.enabled("artifact_verification"):
        problems += _artifact_refusals(request, governance, where)
    return problems


def _platform_refusals(platform: str, where: str, environment: Environment) -> list[str]:
    security = environment.security
    problems = []
    if security.tls_required and platform not in SERVES_TLS:
        problems.append(
            f"platform '{platform}' cannot serve TLS, and {where}.security.tlsRequired is true: "
            "deploy there on a platform that serves HTTPS (none does yet) or turn the setting off"
        )
    elif security.tls_required and security.tls.certificate is None:
        problems.append(
            f"{where}.security.tlsRequired is true but {where}.security.tls has no certificate and key"
        )
    if security.network_policy.enabled and platform not in ENFORCES_NETWORK_POLICY:
        problems.append(
            f"platform '{platform}' cannot enforce {where}.security.networkPolicy (enabled): "
            "no platform writes NetworkPolicies yet"
        )
    return problems


def _approval_refusals(governance: Governance, where: str, roles: Mapping[str, Sequence[str]]) -> list[str]:
    environment = governance.environment
    problems = [
        f"approver group '{group}' ({where}.approvalWorkflow) has no members: define it under 'roles'"
        for group in governance.approval_groups
        if not roles.get(group)
    ]
    if environment.compliance_level is _NASA and not governance.approval_groups:
        problems.append(
            f"{where} is nasa-pot10, which needs approvals: set {where}.approvalWorkflow.required"
        )
    if environment.security.vulnerability_scanning and governance.vulnerability_scanner is None:
        problems.append(
            f"{where}.security.vulnerabilityScanning is on but no scanner is configured "
            "(scanners.vulnerability)"
        )
    if environment.compliance_level is _NASA and not environment.security.vulnerability_scanning:
        problems.append(
            f"{where} is nasa-pot10, whose gate needs a scan: set {where}.security.vulnerabilityScanning"
        )
    return problems


def signatures_required(environment: Environment) -> bool:
    return (
        environment.security.require_signed_artifacts
        or environment.compliance_level.rank >= ComplianceLevel.STRICT.rank
    )


def _artifact_refusals(request: DeploymentRequest, governance: Governance, where: str) -> list[str]:
    artifact, environment = request.artifact, governance.environment
    problems = []
    source = check_source(artifact, environment.security.allowed_sources)
    if source.failed:
        problems.append(f"{source.evidence} ({where}.security.allowedSources)")
    if signatures_required(environment):
        if not governance.trusted_keys:
            problems.append(f"{where} requires signed artifacts but no trusted key applies (trustedKeys)")
        if artifact.sha256 is None or artifact.signature is None:
            missing = " and ".join(
                k for k, v in (("sha256", artifact.sha256), ("signature", artifact.signature)) if v is None
            )
            problems.append(
                f"artifact {artifact.name} {artifact.version} has no {missing}, and {where} requires signed "
                "artifacts (sign it with: python orchestrator.py artifacts sign)"
            )
    return problems


# --------------------------------------------------------------------------------------------
# Admission: the approval gate the queen asks
# --------------------------------------------------------------------------------------------
class Gate(str, Enum):
    OPEN = "open"
    WAITING = "waiting"
    ENDED = "ended"


class ApprovalGate:
    """Whether a queued deployment may be admitted as far as approvals go. Ends it (journaled) when its
    approval was rejected or expired."""

    def __init__(
        self, journal: Journal, approvals: Approvals, clock: Callable[[], float] = time.time
    ) -> None:
        self.journal = journal
        self.approvals = approvals
        self.clock = clock

    def request(self, state: DeploymentState) -> ApprovalRequest | None:
        """Ask the environment's groups (idempotent); None when no approval is needed."""
        governance = state.request.governance
        if governance is None or not governance.approval_groups:
            return None
        expiry = governance.environment.approval_workflow.expiry / 1000
        return self.approvals.request(
            state.deployment_id,
            state.request.environment,
            governance.approval_groups,
            expires_at=state.submitted_at + expiry,
            requested_by=state.request.requested_by,
        )

    def check(self, state: DeploymentState) -> Gate:
        """OPEN: approved or not needed; WAITING; ENDED: rejected or expired, and ended here (journaled)."""
        if not state.awaiting_approval:
            return Gate.OPEN
        request = self.approvals.find(state.deployment_id)
        if request is None:  # a queen that stopped between submitting and asking
            if state.submitted_at + self._expiry(state) <= self.clock():
                self._end(state, Phase.FAILED, "approval expired before it was asked for")
                return Gate.ENDED
            request = self.request(state)
        if request is None or request.state is ApprovalState.APPROVED:
            return Gate.OPEN
        if request.state is ApprovalState.EXPIRED:
            self._end(state, Phase.FAILED, self.approvals.expire(state.deployment_id).summary())
            return Gate.ENDED
        if request.state is ApprovalState.REJECTED:
            self._end(state, Phase.ABORTED, request.summary())
            return Gate.ENDED
        return Gate.WAITING

    @staticmethod
    def _expiry(state: DeploymentState) -> float:
        governance = state.request.governance
        return governance.environment.approval_workflow.expiry / 1000 if governance else 0.0

    def _end(self, state: DeploymentState, outcome: Phase, message: str) -> None:
        self.journal.append(
            state.deployment_id,
            EventKind.FINISHED,
            {"outcome": outcome.value, "message": message},
            actor="queen",
        )


def subject_of(journal: Journal, text: str) -> str:
    """An approval subject: a deployment id or unique prefix made whole, any other subject as it is."""
    try:
        return journal.find(text).deployment_id
    except KeyError:
        return text


def decide(
    journal: Journal, approvals: Approvals, subject: str, person: str, group: str, comment: str, approve: bool
) -> ApprovalRequest:
    """One person's approval or rejection for one group (the queen's and the command line's one path); a
    deployment that has already ended takes no more decisions."""
    whole = subject_of(journal, subject)
    try:
        state = journal.state(whole)
    except KeyError:
        state = None
    if state is not None and not state.active:
        raise ApprovalRefused(f"deployment {whole} already ended ({state.phase().value}): {state.message}")
    decision = approvals.approve if approve else approvals.reject
    return decision(whole, person, group, comment)


def open_requests(
    journal: Journal, approvals: Approvals, environment: str | None = None
) -> list[ApprovalRequest]:
    """Requests awaiting a decision, leaving out those of deployments that ended meanwhile (aborted)."""
    found = []
    for request in approvals.list(environment, pending_only=True):
        try:
            ended = not journal.state(request.subject).active
        except KeyError:
            ended = False  # not a deployment: a pipeline stage, say
        if not ended:
            found.append(request)
    return found


# --------------------------------------------------------------------------------------------
# Preflight: in the runner, before planning (so before any platform change)
# --------------------------------------------------------------------------------------------
def verify_artifact(
    request: DeploymentRequest, governance: Governance, content: ContentDigests
) -> list[Check]:
    """Every artifact check the environment asks for, in order; the scanner runs only when the others
    passed (a tampered artifact is not worth scanning)."""
    artifact, environment = request.artifact, governance.environment
    required = signatures_required(environment)
    checks = [
        check_source(artifact, environment.security.allowed_sources),
        check_digest(artifact, content, required),
        check_signature(artifact, governance.trusted_keys, required),
    ]
    scanner = governance.vulnerability_scanner
    if scanner is None:
        checks.append(
            Check(name="vulnerability-scan", status="skipped", evidence="no scan is configured here")
        )
    elif any(c.failed for c in checks):
        checks.append(
            Check(name="vulnerability-scan", status="skipped", evidence="not run: an earlier check failed")
        )
    else:
        checks.append(run_scanner(artifact, scanner))
    return checks


def _passed_before(journal: Journal, deployment_id: str, gate: bool) -> bool:
    """A runner restarted after its preflight passed does not run it again."""
    kinds = {
        e.kind: e.data.get("passed") for e in journal.events(deployment_id) if e.kind in _PREFLIGHT_EVENTS
    }
    verified = kinds.get(EventKind.ARTIFACT_VERIFIED) is True
    return verified and (not gate or kinds.get(EventKind.COMPLIANCE_CHECKED) is True)


_PREFLIGHT_EVENTS = (EventKind.ARTIFACT_VERIFIED, EventKind.COMPLIANCE_CHECKED)


def preflight(
    journal: Journal,
    state: DeploymentState,
    content: ContentDigests,
    actor: str = "runner",
    clock: Callable[[], float] = time.time,
) -> str | None:
    """Verify the artifact and run the compliance gate; journals each result. Returns why the deployment
    must stop, or None when it may go on."""
    governance = state.request.governance
    if governance is None:
        return None
    gate = gate_applies(governance)
    if _passed_before(journal, state.deployment_id, gate):
        return None
    if state.awaiting_approval:  # the queen admitted it without its approval: refuse to go on
        return "admitted without its approval: " + (state.message or "approval incomplete")
    checks: list[Check] | None = None
    if governance.features.enabled("artifact_verification"):
        checks = verify_artifact(state.request, governance, content)
        ArtifactRegistry(journal, clock).record_verification(
            state.request.artifact, state.deployment_id, checks
        )
    journal.append(
        state.deployment_id,
        EventKind.ARTIFACT_VERIFIED,
        checks_payload(checks or []) | {"ran": checks is not None},
        actor=actor,
    )
    failed = [c for c in checks or [] if c.failed]
    if failed:
        return "artifact verification failed: " + "; ".join(f"{c.name}: {c.evidence}" for c in failed)
    if not gate:
        return None
    result = evaluate(facts_for_deployment(journal, state, checks, clock), clock())
    journal.append(
        state.deployment_id,
        EventKind.COMPLIANCE_CHECKED,
        {"result": result.model_dump(mode="json"), "passed": result.passed},
        actor=actor,
    )
    return None if result.passed else result.explain()


def feature_enabled(state: DeploymentState, flag: FeatureName) -> bool:
    """A flag recorded with the deployment (defaults for a request recorded without a policy)."""
    features = state.request.governance.features if state.request.governance else Features()
    return features.enabled(flag)
