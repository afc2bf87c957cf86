"""Governance from submission to the first platform change: what is refused at once, the approval gate the
queen asks, and the runner's preflight (artifact checks, compliance gate) before planning. No Ray."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.approvals import Approvals
from engine.artifacts import digest_path, public_key_pem, sign
from engine.config import EnterpriseConfig
from engine.governance import ApprovalGate, Gate, feature_enabled, governed, preflight, refusals
from engine.journal import Journal
from engine.models import (
    Artifact,
    ConfigVersion,
    DeploymentRequest,
    Phase,
    PlatformConfig,
    Strategy,
)
from engine.reconciler import DeploymentReconciler
from engine.state import EventKind
from tests.unit.fakes import FakeClock, FakePlatform
from tests.unit.test_reconciler import CANARY

KEY = Ed25519PrivateKey.generate()
ROLES = {"prod-team": ["alice"], "security-team": ["grace"]}
COMMITTED = ConfigVersion(
    path="/etc/orchestrator.yaml", sha256="c" * 64, git_commit="d" * 40, git_state="committed"
)


def _config(environment: dict[str, Any], **top: Any) -> EnterpriseConfig:
    return EnterpriseConfig.from_mapping(
        {
            "roles": ROLES,
            "trustedKeys": {"release": public_key_pem(KEY)},
            "environments": {"production": environment},
            **top,
        }
    )


def _request(config: EnterpriseConfig, artifact: Artifact, platform: str = "local") -> DeploymentRequest:
    request = DeploymentRequest(
        artifact=artifact,
        strategy=Strategy.model_validate({"type": "rolling", "replicas": 1}),
        environment="production",
        platform=PlatformConfig(type=platform),
        requested_by="bob",
        change_record={"id": "CHG-1", "summary": "web 2.0.0"},  # type: ignore[arg-type]
    )
    return governed(config, request, config.environment("production"), COMMITTED)


def _artifact(tmp_path: Path, signed: bool = True, **extra: Any) -> Artifact:
    file = tmp_path / "app.py"
    file.write_text("print('web')\n")
    artifact = Artifact.model_validate(
        {
            "name": "web",
            "version": "2.0.0",
            "source": "registry.example.com/web",
            "command": ["python3", str(file)],
            "path": str(file),
            "sha256": digest_path(file),
            **extra,
        }
    )
    return sign(artifact, KEY, "release") if signed else artifact


NASA = {
    "complianceLevel": "nasa-pot10",
    "approvalWorkflow": {"required": True, "approvers": ["prod-team", "security-team"]},
    "security": {
        "vulnerabilityScanning": True,
        "complianceScanning": True,
        "allowedSources": ["registry.example.com/"],
    },
}
SCANNER = {"vulnerability": {"command": ["python3", "-c", "print('{\"vulnerabilities\": []}')"]}}


# --------------------------------------------------------------------------------------------
# Refused at submission
# --------------------------------------------------------------------------------------------
def test_tls_required_on_a_platform_that_cannot_serve_it_is_refused_naming_both(tmp_path: Path) -> None:
    config = _config({**NASA, "security": {**NASA["security"], "tls_required": True}}, scanners=SCANNER)
    problems = refusals(_request(config, _artifact(tmp_path)), ROLES)
    assert problems == [
        "platform 'local' cannot serve TLS, and environments.production.security.tlsRequired is true: "
        "deploy there on a platform that serves HTTPS (none does yet) or turn the setting off"
    ]
    for platform in ("docker", "kubernetes", "vm", "lambda"):
        assert (
            f"platform '{platform}' cannot serve TLS"
            in refusals(_request(config, _artifact(tmp_path), platform), ROLES)[0]
        )


def test_what_can_never_pass_is_refused_at_once_each_named(tmp_path: Path) -> None:
    environment = {
        **NASA,
        "security": {**NASA["security"], "networkPolicy": {"enabled": True, "allowedNamespaces": ["web"]}},
    }
    config = _config(environment)  # no scanner configured
    unsigned = _artifact(tmp_path, signed=False, source="docker.io/web")
    problems = refusals(_request(config, unsigned), {"prod-team": ["alice"]})
    assert problems == [
        "platform 'local' cannot enforce environments.production.security.networkPolicy (enabled): "
        "no platform writes NetworkPolicies yet",
        "approver group 'security-team' (environments.production.approvalWorkflow) has no members: define it "
        "under 'roles'",
        "environments.production.security.vulnerabilityScanning is on but no scanner is configured "
        "(scanners.vulnerability)",
        "source 'docker.io/web' is not on the allowed list (registry.example.com/) "
        "(environments.production.security.allowedSources)",
        "artifact web 2.0.0 has no signature, and environments.production requires signed artifacts (sign it "
        "with: python orchestrator.py artifacts sign)",
    ]


def test_a_well_formed_nasa_pot10_request_is_not_refused(tmp_path: Path) -> None:
    config = _config(NASA, scanners=SCANNER)
    request = _request(config, _artifact(tmp_path))
    assert refusals(request, ROLES) == []
    assert request.governance is not None
    assert request.governance.approval_groups == ["prod-team", "security-team"]
    assert request.governance.trusted_keys == {"release": public_key_pem(KEY)}
    assert request.governance.config_version == COMMITTED


# --------------------------------------------------------------------------------------------
# The approval gate
# --------------------------------------------------------------------------------------------
class Setup:
    def __init__(self, tmp_path: Path, environment: dict[str, Any], **top: Any) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock()
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)
        self.config = _config(environment, **top)
        self.approvals = Approvals(self.journal, ROLES, clock=self.clock.now)
        self.gate = ApprovalGate(self.journal, self.approvals, clock=self.clock.now)
        self.platform = FakePlatform(clock=self.clock)
        self.adapters_made = 0

    def submit(self, artifact: Artifact, deployment_id: str = "web-1", strategy: Any = None) -> str:
        request = _request(self.config, artifact)
        if strategy is not None:
            request = request.model_copy(update={"strategy": Strategy.model_validate(strategy)})
        self.journal.submit(deployment_id, request, actor="bob")
        self.gate.request(self.journal.state(deployment_id))
        return deployment_id

    def approve_all(self, deployment_id: str) -> None:
        self.approvals.approve(deployment_id, "alice", "prod-team")
        self.approvals.approve(deployment_id, "grace", "security-team")

    def _adapter(self, config: PlatformConfig) -> FakePlatform:
        self.adapters_made += 1
        return self.platform

    def run(self, deployment_id: str) -> Phase:
        assert self.gate.check(self.journal.state(deployment_id)) is Gate.OPEN
        self.journal.append(deployment_id, EventKind.ADMITTED, {})
        checks = functools.partial(
            preflight, self.journal, content=lambda a: [digest_path(a.path or "")], clock=self.clock.now
        )
        reconciler = DeploymentReconciler(
            self.journal, deployment_id, self._adapter, clock=self.clock, preflight=checks
        )
        for _ in range(10_000):
            delay = reconciler.reconcile()
            if delay is None:
                break
            self.clock.sleep(delay)
        return self.journal.state(deployment_id).phase()


def test_the_gate_waits_for_every_group_then_opens(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    deployment_id = setup.submit(_artifact(tmp_path))
    assert setup.gate.check(setup.journal.state(deployment_id)) is Gate.WAITING
    setup.approvals.approve(deployment_id, "alice", "prod-team")
    assert setup.gate.check(setup.journal.state(deployment_id)) is Gate.WAITING
    setup.approvals.approve(deployment_id, "grace", "security-team")
    assert setup.gate.check(setup.journal.state(deployment_id)) is Gate.OPEN


def test_a_rejection_aborts_and_an_expiry_fails_the_deployment(tmp_path: Path) -> None:
    setup = Setup(
        tmp_path, {**NASA, "approvalWorkflow": {**NASA["approvalWorkflow"], "expiry": "1h"}}, scanners=SCANNER
    )
    rejected = setup.submit(_artifact(tmp_path), "web-1")
    setup.approvals.reject(rejected, "grace", "security-team", "CVE open")
    assert setup.gate.check(setup.journal.state(rejected)) is Gate.ENDED
    state = setup.journal.state(rejected)
    assert state.phase() is Phase.ABORTED and state.message == "rejected by grace for security-team: CVE open"
    expired = setup.submit(_artifact(tmp_path), "web-2")
    setup.clock.t += 3600
    assert setup.gate.check(setup.journal.state(expired)) is Gate.ENDED
    state = setup.journal.state(expired)
    assert state.phase() is Phase.FAILED
    assert state.message == "approval expired after 1h without prod-team, security-team"
    assert EventKind.APPROVAL_EXPIRED in [e.kind for e in setup.journal.events(expired)]


def test_no_approval_needed_opens_at_once(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"security": {"allowedSources": []}})
    deployment_id = setup.submit(_artifact(tmp_path, signed=False))
    assert setup.approvals.find(deployment_id) is None
    assert setup.gate.check(setup.journal.state(deployment_id)) is Gate.OPEN


# --------------------------------------------------------------------------------------------
# Preflight in the runner, before any platform change
# --------------------------------------------------------------------------------------------
def test_a_passing_nasa_pot10_deployment_records_its_checks_and_its_gate(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    deployment_id = setup.submit(_artifact(tmp_path))
    setup.approve_all(deployment_id)
    assert setup.run(deployment_id) is Phase.SUCCEEDED
    events = {e.kind: e.data for e in setup.journal.events(deployment_id)}
    assert [c["status"] for c in events[EventKind.ARTIFACT_VERIFIED]["checks"]] == ["passed"] * 4
    result = events[EventKind.COMPLIANCE_CHECKED]["result"]
    assert (result["score"], result["passed"]) == (95.0, True)


def test_a_digest_mismatch_stops_it_before_any_platform_call(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    artifact = _artifact(tmp_path)
    Path(artifact.path or "").write_text("print('tampered')\n")
    deployment_id = setup.submit(artifact)
    setup.approve_all(deployment_id)
    assert setup.run(deployment_id) is Phase.FAILED
    message = setup.journal.state(deployment_id).message
    assert message.startswith(
        f"artifact verification failed: digest: sha256 mismatch: the artifact says {artifact.sha256}"
    )
    assert setup.adapters_made == 0 and setup.platform.calls == []
    assert EventKind.COMPLIANCE_CHECKED not in [e.kind for e in setup.journal.events(deployment_id)]


def test_a_bad_signature_stops_it_before_any_platform_call(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    artifact = _artifact(tmp_path).model_copy(
        update={"command": ["python3", "-c", "print('not what was signed')"]}
    )
    deployment_id = setup.submit(artifact)
    setup.approve_all(deployment_id)
    assert setup.run(deployment_id) is Phase.FAILED
    assert (
        "signature: the signature does not verify with key 'release'"
        in setup.journal.state(deployment_id).message
    )
    assert setup.adapters_made == 0


def test_a_failing_scanner_stops_it_before_any_platform_call(tmp_path: Path) -> None:
    failing = {
        "vulnerability": {
            "command": [
                "python3",
                "-c",
                'print(\'{"vulnerabilities": [{"id": "CVE-9", "severity": "critical"}]}\'); exit(1)',
            ]
        }
    }
    setup = Setup(tmp_path, NASA, scanners=failing)
    deployment_id = setup.submit(_artifact(tmp_path))
    setup.approve_all(deployment_id)
    assert setup.run(deployment_id) is Phase.FAILED
    assert "vulnerability-scan: 1 finding(s) at high or above: CVE-9 (critical)" in (
        setup.journal.state(deployment_id).message
    )
    assert setup.adapters_made == 0


def test_a_failing_compliance_gate_stops_it_naming_the_rules(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    request = _request(setup.config, _artifact(tmp_path))
    governance = request.governance.model_copy(update={"config_version": ConfigVersion(sha256="c" * 64)})  # type: ignore[union-attr]
    request = request.model_copy(update={"governance": governance, "change_record": None})
    setup.journal.submit("web-1", request, actor="bob")
    setup.gate.request(setup.journal.state("web-1"))
    setup.approve_all("web-1")
    assert setup.run("web-1") is Phase.FAILED
    message = setup.journal.state("web-1").message
    assert message.startswith("compliance gate (nasa-pot10) failed: score 75% (needs 95%)")
    assert "change-record-present [mandatory]: no change record was given" in message
    assert "configuration-version-recorded: " in message
    assert setup.adapters_made == 0


def test_a_runner_restarted_after_its_preflight_does_not_run_it_again(tmp_path: Path) -> None:
    setup = Setup(tmp_path, NASA, scanners=SCANNER)
    deployment_id = setup.submit(_artifact(tmp_path))
    setup.approve_all(deployment_id)
    state = setup.journal.state(deployment_id)
    content = lambda a: [digest_path(a.path or "")]  # noqa: E731
    assert preflight(setup.journal, state, content, clock=setup.clock.now) is None
    count = len(setup.journal.events(deployment_id))
    assert (
        preflight(setup.journal, setup.journal.state(deployment_id), content, clock=setup.clock.now) is None
    )
    assert len(setup.journal.events(deployment_id)) == count


# --------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------
def test_with_automated_rollback_off_a_failed_analysis_pauses_for_a_person(tmp_path: Path) -> None:
    setup = Setup(tmp_path, {"features": {"automatedRollback": False}})
    stable = setup.submit(_artifact(tmp_path, signed=False, version="1.0.0"), "web-1")
    assert setup.run(stable) is Phase.SUCCEEDED
    setup.platform.error_rates["2-0-0"] = 0.5
    canary = setup.submit(_artifact(tmp_path, signed=False, version="2.0.0"), "web-2", strategy=CANARY)
    setup.journal.append(canary, EventKind.ADMITTED, {})
    reconciler = DeploymentReconciler(setup.journal, canary, setup._adapter, clock=setup.clock)
    for _ in range(200):
        setup.clock.sleep(reconciler.reconcile() or 0)
        if setup.journal.state(canary).paused:
            break
    state = setup.journal.state(canary)
    assert state.phase() is Phase.PAUSED and state.rollback is None
    assert state.message.startswith("automated rollback is off, paused for a person: ")
    assert setup.platform.weights.get("2-0-0") == 10  # still there, for a person to judge


@pytest.mark.parametrize(
    ("environment", "logged"), [({"features": {"debugLogging": True}}, True), ({}, False)]
)
def test_debug_logging_logs_each_step_of_the_environment_s_deployments(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, environment: dict[str, Any], logged: bool
) -> None:
    from actors.runner import debug_logging

    setup = Setup(tmp_path, environment)
    deployment_id = setup.submit(_artifact(tmp_path, signed=False))
    debug_logging(
        feature_enabled(setup.journal.state(deployment_id), "debug_logging")
    )  # as a runner binds it
    try:
        assert setup.run(deployment_id) is Phase.SUCCEEDED
    finally:
        debug_logging(False)
    assert any(f"{deployment_id}: step 1/" in r.getMessage() for r in caplog.records) is logged
