"""The approve and compliance stages of a pipeline, on governance's own modules (``engine.approvals``,
``engine.compliance``, ``engine.governance``): one approvals system and one compliance gate for deployments
and pipelines alike.

- approve: the stage's subject (``<pipeline id>.<stage id>``) is asked of every approver group, with the same
  rules and journal records as a deployment's approval (one distinct person per group, the requester cannot
  approve, a rejection ends it, it expires). The stage waits on a wake-up (DO-006 is told when a decision is
  recorded through the queen) and looks again at a slow interval for decisions written straight into the
  journal (the CLI without a cluster): waiting costs nothing. The deploy stages behind it carry its decisions
  to their deployments, so the groups are asked once per environment, not once per service.
- compliance: the gate of the stage's level over what the pipeline deploys to that environment: for each
  deploy stage there, the policy in force, the artifact's checks (digest, signature, source, scan), the
  environment's approval (the pipeline's approve stage), the change record, the configuration's version,
  TLS and the audit trail's state. It passes when every deployment's result passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.approvals import ApprovalRequest, Approvals, ApprovalState
from engine.artifacts import ContentDigests
from engine.compliance import ComplianceFacts, ComplianceResult, audit_status, evaluate, trail_paths
from engine.config import EnterpriseConfig
from engine.governance import governed, policy_for, refusals, verify_artifact
from engine.journal import Journal
from engine.models import ConfigVersion, DeploymentRequest, Environment, PlatformConfig
from engine.pipeline import StageContext, StageResult
from engine.pipeline_model import StageKind
from engine.pipeline_spec import APPROVAL_GRACE_MS
from engine.pipeline_state import PipelineSpec, StageSpec, approval_subject

RECHECK_S = 15.0  # decisions written without the cluster are seen within this


def deploy_refusals(
    config: EnterpriseConfig,
    spec: PipelineSpec,
    environments: Mapping[str, Environment],
    version: ConfigVersion,
) -> list[str]:
    """What the queen would refuse of the run's deployments (TLS a platform cannot serve, an unsigned artifact
    where signatures are required, a source not allowed, ...), each naming its stage: a run that could never
    reach production does not start by deploying to development."""
    problems = []
    for stage in spec.stages:
        if stage.request is None or stage.environment is None:
            continue
        environment = environments[stage.environment]
        policed = governed(config, stage.request, environment, version)
        problems += [f"stage {stage.id}: {problem}" for problem in refusals(policed, config.roles)]
    return problems


class ApproveStage:
    def __init__(self, approvals: Approvals, recheck_s: float = RECHECK_S) -> None:
        self.approvals = approvals
        self.recheck_s = recheck_s
        self._wake: dict[str, asyncio.Event] = {}

    def decided(self, subject: str) -> None:
        """A decision on ``subject`` was recorded: look at it now."""
        event = self._wake.get(subject)
        if event is not None:
            event.set()

    async def run(self, stage: StageSpec, context: StageContext) -> StageResult:
        subject = approval_subject(context.pipeline_id, stage.id)
        self._ask(subject, stage, context)
        wake = self._wake.setdefault(subject, asyncio.Event())
        try:
            while True:
                wake.clear()
                request = self.approvals.status(subject)
                if request.state.decided:
                    return self._outcome(subject, request)
                wait_s = min(self.recheck_s, max(0.05, request.expires_at - context.clock.now()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait_s)
        finally:
            self._wake.pop(subject, None)

    def _ask(self, subject: str, stage: StageSpec, context: StageContext) -> None:
        """Ask once (a resumed stage finds its request again; its expiry is the first start's)."""
        if self.approvals.find(subject) is not None:
            return
        assert stage.environment is not None
        expires_at = context.deadline - APPROVAL_GRACE_MS / 1000
        requester = context.spec.requested_by
        self.approvals.request(subject, stage.environment, stage.approvers, expires_at, requester)

    def _outcome(self, subject: str, request: ApprovalRequest) -> StageResult:
        data: dict[str, Any] = {"approval": subject, "summary": request.summary()}
        if request.state is ApprovalState.APPROVED:
            data["approved_by"] = {g: d.person for g, d in request.approvals().items()}
            return StageResult(True, "", data)
        if request.state is ApprovalState.EXPIRED:
            request = self.approvals.expire(subject)  # journaled once, like a deployment's
        return StageResult(False, request.summary(), data)

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        return None  # an unanswered request expires by itself


class ComplianceStage:
    def __init__(
        self,
        config: EnterpriseConfig,
        journal: Journal,
        environment_of: Callable[[str], Environment],
        config_version: Callable[[], ConfigVersion],
        content_digests: Callable[[PlatformConfig], ContentDigests],
    ) -> None:
        self.config = config
        self.journal = journal
        self.environment_of = environment_of
        self.config_version = config_version
        self.content_digests = content_digests

    async def run(self, stage: StageSpec, context: StageContext) -> StageResult:
        assert stage.environment is not None
        deploys = [
            s
            for s in context.spec.stages
            if s.kind is StageKind.DEPLOY and s.environment == stage.environment and s.request is not None
        ]
        if not deploys:
            return StageResult(
                False, f"the pipeline deploys nothing to {stage.environment}: nothing to judge"
            )
        results = await asyncio.to_thread(self._evaluate_all, stage, context, deploys)
        failed = [r for r in results if not r.passed]
        data = {
            "compliance": [r.model_dump(mode="json") for r in results],
            "score": min(r.score for r in results),
        }
        return StageResult(not failed, "; ".join(f"{r.subject}: {r.explain()}" for r in failed), data)

    def _evaluate_all(
        self, stage: StageSpec, context: StageContext, deploys: list[StageSpec]
    ) -> list[ComplianceResult]:
        assert stage.environment is not None
        environment = self.environment_of(stage.environment)
        version = self.config_version()
        approve = next(
            (
                s
                for s in context.spec.stages
                if s.kind is StageKind.APPROVE and s.environment == stage.environment
            ),
            None,
        )
        approval = (
            Approvals(self.journal).find(approval_subject(context.pipeline_id, approve.id))
            if approve
            else None
        )
        results = []
        for deploy in deploys:
            assert deploy.request is not None
            subject = f"{approval_subject(context.pipeline_id, stage.id)}.{deploy.service}"
            facts = self._facts(subject, stage, deploy.request, environment, version, approval)
            results.append(evaluate(facts, time.time()))
        return results

    def _facts(
        self,
        subject: str,
        stage: StageSpec,
        request: DeploymentRequest,
        environment: Environment,
        version: ConfigVersion,
        approval: ApprovalRequest | None,
    ) -> ComplianceFacts:
        governance = policy_for(self.config, environment, version)
        checks = None
        if governance.features.enabled("artifact_verification"):
            policed = governed(self.config, request, environment, version)
            checks = verify_artifact(policed, governance, self.content_digests(request.platform))
        checkpoints, public_key = trail_paths(self.config)
        return ComplianceFacts(
            subject=subject,
            environment=environment.name,
            level=stage.compliance_level or environment.compliance_level,
            approval_groups=governance.approval_groups,
            approval=approval,
            checks=checks,
            change_record=request.change_record,
            config_version=version,
            tls_required=environment.security.tls_required,
            platform=request.platform.type,
            audit=audit_status(self.journal, checkpoints=checkpoints, public_key=public_key),
        )

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        return None
