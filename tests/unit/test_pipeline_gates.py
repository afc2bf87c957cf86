"""The approve and compliance stages on governance's approvals and compliance gate (the real modules over a
real journal), with the fake queen and a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from engine.approvals import Approvals
from engine.artifacts import digest_path, path_digests, public_key_pem, sign
from engine.config import EnterpriseConfig
from engine.journal import Journal
from engine.models import Artifact, ChangeRecord, ConfigVersion
from engine.pipeline import DeployStage, PipelineEngine
from engine.pipeline_gates import ApproveStage, ComplianceStage
from engine.pipeline_model import PipelineTemplate, StageKind
from engine.pipeline_spec import RunInput, build_spec
from engine.pipeline_state import PipelinePhase, PipelineState, StageStatus, approval_subject
from tests.unit.fakes import FakeClock
from tests.unit.pipeline_fakes import FakeQueen

KEY = Ed25519PrivateKey.generate()
ROLES = {"release-managers": ["bob"], "sre": ["carol"], "qa": ["erin"]}


def _config(level: str = "standard", scanning: bool = False) -> EnterpriseConfig:
    production = {
        "complianceLevel": level,
        "approvalWorkflow": {"required": True, "approvers": ["release-managers", "sre"], "expiry": "1h"},
        "security": {"vulnerabilityScanning": scanning, "allowedSources": ["file://*"]},
    }
    return EnterpriseConfig.from_mapping(
        {
            "roles": ROLES,
            "environments": {"development": {}, "production": production},
            "platforms": {"local": {"type": "local"}},
            "trustedKeys": {"release": public_key_pem(KEY)},
        }
    )


APPROVE_THEN_DEPLOY = {
    "stages": [
        {"name": "approve", "kind": "approve"},
        {"name": "deploy", "kind": "deploy", "dependsOn": ["approve"], "strategy": {"type": "rolling"}},
    ]
}


class World:
    def __init__(self, tmp_path: Path, config: EnterpriseConfig) -> None:
        self.config = config
        self.clock = FakeClock()
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)
        self.queen = FakeQueen(clock=self.clock)
        self.approvals = Approvals(self.journal, ROLES, clock=self.clock.now)
        self.approve = ApproveStage(self.approvals, recheck_s=30)
        self.engine = self.new_engine()

    def new_engine(self) -> PipelineEngine:
        self.approve = ApproveStage(self.approvals, recheck_s=self.approve.recheck_s)
        executors: dict[StageKind, Any] = {
            StageKind.DEPLOY: DeployStage(self.queen),
            StageKind.APPROVE: self.approve,
        }
        return PipelineEngine(self.journal, executors, self.queen, clock=self.clock)

    def start(self, template: dict[str, Any], artifact: Artifact | None = None) -> str:
        artifact = artifact or Artifact(name="web", version="2.0.0")
        run = RunInput("release", [artifact], ["development", "production"], requested_by="dave")
        return self.engine.create(
            build_spec(self.config, PipelineTemplate.model_validate(template), run)
        ).pipeline_id

    async def until(self, predicate: Any) -> None:
        for _ in range(5000):
            if predicate():
                return
            await asyncio.sleep(0.002)
        raise AssertionError("condition not reached")

    def asked(self, pipeline_id: str) -> bool:
        return self.approvals.find(approval_subject(pipeline_id, "approve.production")) is not None


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path, _config())
    yield world
    world.journal.close()


def _decide(world: World, pipeline_id: str, *decisions: tuple[str, str, str]) -> PipelineState:
    """Run the pipeline; once its approval is asked, record ``decisions`` (verb, person, group)."""
    subject = approval_subject(pipeline_id, "approve.production")

    async def scenario() -> PipelineState:
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await world.until(lambda: world.asked(pipeline_id))
        for verb, person, group in decisions:
            getattr(world.approvals, verb)(subject, person, group, f"comment from {person}")
            world.approve.decided(subject)  # what the queen tells DO-006
        return await asyncio.wait_for(task, 30)

    return asyncio.run(scenario())


def test_production_waits_for_its_approval_and_its_deployment_carries_it(world: World) -> None:
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)
    state = _decide(world, pipeline_id, ("approve", "bob", "release-managers"), ("approve", "carol", "sre"))
    assert state.outcome is PipelinePhase.SUCCEEDED, state.message
    subject = approval_subject(pipeline_id, "approve.production")
    assert state.stages["approve.production"].result["approved_by"] == {
        "release-managers": "bob",
        "sre": "carol",
    }
    # Production was deployed only after the approval; development needed none.
    production = f"{pipeline_id}.deploy.production.web"
    assert world.queen.carried == [(production, subject)]
    request = world.approvals.status(subject)
    assert request.requested_by == "dave" and request.groups == ["release-managers", "sre"]
    assert request.expires_at == state.stages["approve.production"].started_at + 3600


def test_one_group_is_not_enough(world: World) -> None:
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)

    async def scenario() -> StageStatus:
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await world.until(lambda: world.asked(pipeline_id))
        subject = approval_subject(pipeline_id, "approve.production")
        world.approvals.approve(subject, "bob", "release-managers")
        world.approve.decided(subject)
        await asyncio.sleep(0.2)
        status = world.engine.state(pipeline_id).stages["approve.production"].status
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return status

    assert asyncio.run(scenario()) is StageStatus.RUNNING
    assert f"{pipeline_id}.deploy.production.web" not in world.queen.created


def test_a_rejection_ends_the_pipeline_before_production(world: World) -> None:
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)
    state = _decide(world, pipeline_id, ("approve", "bob", "release-managers"), ("reject", "carol", "sre"))
    assert state.outcome is PipelinePhase.FAILED
    assert state.message.startswith(
        "stage approve.production failed: rejected by carol for sre: comment from carol"
    )
    assert state.stages["deploy.production.web"].status is StageStatus.SKIPPED
    assert f"{pipeline_id}.deploy.production.web" not in world.queen.created


def test_an_expired_approval_fails_the_pipeline(world: World) -> None:
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)
    subject = approval_subject(pipeline_id, "approve.production")

    async def scenario() -> PipelineState:
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await world.until(lambda: world.asked(pipeline_id))
        world.clock.t += 3601  # an hour later, nobody has answered
        world.approve.decided(subject)  # any wake-up (or the re-check) finds it expired
        return await asyncio.wait_for(task, 30)

    state = asyncio.run(scenario())
    assert state.outcome is PipelinePhase.FAILED
    assert "approval expired after 1h without release-managers, sre" in state.message
    with pytest.raises(ValueError, match="expired"):
        world.approvals.approve(subject, "bob", "release-managers")


def test_a_decision_written_without_the_cluster_is_seen_at_the_recheck(world: World) -> None:
    world.approve.recheck_s = 0.05
    world.engine = world.new_engine()
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)
    subject = approval_subject(pipeline_id, "approve.production")

    async def scenario() -> PipelineState:
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await world.until(lambda: world.asked(pipeline_id))
        world.approvals.approve(subject, "bob", "release-managers")  # nobody tells DO-006
        world.approvals.approve(subject, "carol", "sre")
        return await asyncio.wait_for(task, 30)

    assert asyncio.run(scenario()).outcome is PipelinePhase.SUCCEEDED


def test_a_resumed_approve_stage_keeps_its_request_and_expiry(world: World) -> None:
    pipeline_id = world.start(APPROVE_THEN_DEPLOY)
    subject = approval_subject(pipeline_id, "approve.production")

    async def scenario() -> PipelineState:
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await world.until(lambda: world.asked(pipeline_id))
        world.approvals.approve(subject, "bob", "release-managers")
        task.cancel()  # DO-006 dies while it waits
        with contextlib.suppress(asyncio.CancelledError):
            await task
        world.clock.t += 600
        world.engine = world.new_engine()
        resumed = asyncio.ensure_future(world.engine.run(pipeline_id))
        await asyncio.sleep(0.05)
        world.approvals.approve(subject, "carol", "sre")
        world.approve.decided(subject)
        return await asyncio.wait_for(resumed, 30)

    first_ask = world.clock.now()
    state = asyncio.run(scenario())
    assert state.outcome is PipelinePhase.SUCCEEDED
    request = world.approvals.status(subject)
    assert request.requested_at == first_ask  # asked once; the decision before the crash still counts
    assert [d.person for d in request.decisions] == ["bob", "carol"]


# --------------------------------------------------------------------------------------------
# Compliance
# --------------------------------------------------------------------------------------------
def _compliance_world(tmp_path: Path, level: str) -> tuple[World, ComplianceStage]:
    world = World(tmp_path, _config(level))
    committed = ConfigVersion(
        path="enterprise_config.yaml", sha256="0" * 64, git_commit="abc123", git_state="committed"
    )
    stage = ComplianceStage(
        world.config,
        world.journal,
        lambda name: world.config.environments[name],
        lambda: committed,
        lambda platform: path_digests,
    )
    world.engine.executors[StageKind.COMPLIANCE] = stage
    return world, stage


GATED = {
    "stages": [
        {"name": "approve", "kind": "approve"},
        {
            "name": "compliance",
            "kind": "compliance",
            "environments": ["production"],
            "dependsOn": ["approve"],
        },
        {"name": "deploy", "kind": "deploy", "dependsOn": ["compliance"], "strategy": {"type": "rolling"}},
    ]
}


def _artifact(tmp_path: Path, signed: bool) -> Artifact:
    file = tmp_path / "app.py"
    file.write_text("print('hello')\n")
    artifact = Artifact(
        name="web", version="2.0.0", source=f"file://{file}", path=str(file), sha256=digest_path(file)
    )
    return sign(artifact, KEY, "release") if signed else artifact


def test_the_compliance_gate_passes_a_signed_approved_change(tmp_path: Path) -> None:
    world, _ = _compliance_world(tmp_path, "strict")
    run = RunInput(
        "release",
        [_artifact(tmp_path, signed=True)],
        ["development", "production"],
        requested_by="dave",
        change_record=ChangeRecord(id="CHG-42", summary="web 2.0.0"),
    )
    spec = build_spec(world.config, PipelineTemplate.model_validate(GATED), run)
    pipeline_id = world.engine.create(spec).pipeline_id
    state = _decide(world, pipeline_id, ("approve", "bob", "release-managers"), ("approve", "carol", "sre"))
    assert state.outcome is PipelinePhase.SUCCEEDED, state.message
    [result] = state.stages["compliance.production"].result["compliance"]
    rules = {r["rule"]: r["passed"] for r in result["rules"]}
    assert rules["approvals-complete"] and rules["signature-verified"] and rules["digest-verified"]
    assert rules["change-record-present"] and rules["audit-trail-intact"]
    assert not rules["vulnerability-scan-passed"]  # no scanner here: counted, not mandatory at strict
    assert result["passed"] and result["score"] >= 80


def test_the_compliance_gate_stops_an_unsigned_artifact_before_production(tmp_path: Path) -> None:
    world, _ = _compliance_world(tmp_path, "strict")
    run = RunInput("release", [_artifact(tmp_path, signed=False)], ["development", "production"], "dave")
    spec = build_spec(world.config, PipelineTemplate.model_validate(GATED), run)
    pipeline_id = world.engine.create(spec).pipeline_id
    state = _decide(world, pipeline_id, ("approve", "bob", "release-managers"), ("approve", "carol", "sre"))
    assert state.outcome is PipelinePhase.FAILED
    assert state.failed == ["compliance.production"]
    reason = state.stages["compliance.production"].reason
    assert "compliance gate (strict) failed" in reason and "signature-verified [mandatory]" in reason
    assert "change-record-present" in reason
    assert f"{pipeline_id}.deploy.production.web" not in world.queen.created


def test_a_run_the_queen_would_refuse_in_production_is_refused_before_it_starts() -> None:
    from engine.config import DEFAULT_CONFIG_FILE, load_config
    from engine.pipeline_gates import deploy_refusals

    shipped = load_config(DEFAULT_CONFIG_FILE)  # production: the seed's block, TLS required
    template = PipelineTemplate.model_validate({"stages": [{"name": "deploy", "kind": "deploy"}]})
    run = RunInput("p", [Artifact(name="web", version="2.0.0")], ["development", "production"])
    spec = build_spec(shipped, template, run)
    problems = deploy_refusals(shipped, spec, shipped.environments, ConfigVersion())
    assert problems and all(p.startswith("stage deploy.production.web: ") for p in problems)
    assert any("cannot serve TLS" in p and "tlsRequired" in p for p in problems)
    assert any("requires signed artifacts" in p for p in problems)
    development_only = build_spec(shipped, template, RunInput("p", run.artifacts, ["development"]))
    assert deploy_refusals(shipped, development_only, shipped.environments, ConfigVersion()) == []
