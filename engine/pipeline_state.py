"""A pipeline run's durable facts, folded from its own event stream in the journal (as ``engine.state`` does
for a deployment); what users see (phase, results) is computed from them, not stored."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field
from pydantic.alias_generators import to_snake

from engine.models import Artifact, ChangeRecord, ComplianceLevel, DeploymentRequest, Model
from engine.pipeline_model import HttpCheck, RollbackScope, StageKind


class CamelAttributes:
    """``result.deploymentId`` reads ``result.deployment_id``: the seed's drivers use camelCase names."""

    def __getattr__(self, name: str) -> Any:
        snake = to_snake(name)
        if snake != name and snake in type(self).model_fields:  # type: ignore[attr-defined]
            return getattr(self, snake)
        return super().__getattr__(name)  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# What a run is made of (journaled once, when it is created: a resumed run needs nothing else)
# --------------------------------------------------------------------------------------------
class StageSpec(Model):
    id: str
    stage: str
    kind: StageKind
    environment: str | None = None
    service: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    timeout_ms: int
    command: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    request: DeploymentRequest | None = None
    approval_stage: str | None = Field(default=None, description="The approve stage a deploy stage carries")
    checks: list[HttpCheck] = Field(default_factory=list)
    attempts: int = 1
    interval_ms: int = 0
    approvers: list[str] = Field(default_factory=list)
    compliance_level: ComplianceLevel | None = None


class PipelineSpec(Model):
    pipeline_id: str
    name: str
    environments: list[str]
    services: list[str]
    artifacts: list[Artifact]
    stages: list[StageSpec]
    fail_fast: bool = True
    rollback: RollbackScope = "environment"
    max_parallel_stages: int = 0
    timeout_ms: int
    requested_by: str = "unknown"
    change_record: ChangeRecord | None = None

    def stage(self, stage_id: str) -> StageSpec:
        return next(s for s in self.stages if s.id == stage_id)


def approval_subject(pipeline_id: str, stage_id: str) -> str:
    """An approve stage's subject in engine.approvals (where a deployment's is its id)."""
    return f"{pipeline_id}.{stage_id}"


def deployment_id_for(pipeline_id: str, stage_id: str) -> str:
    """Fixed per stage: the queen's submit is idempotent per id, so a resumed run never deploys twice."""
    return f"{pipeline_id}.{stage_id}"


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------
class PipelineEventKind(str, Enum):
    CREATED = "created"
    STAGE_STARTED = "stage_started"
    STAGE_FINISHED = "stage_finished"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_SUBMITTED = "rollback_submitted"
    ROLLBACK_FINISHED = "rollback_finished"
    FINISHED = "finished"
    NOTE = "note"


class PipelineEvent(Model):
    seq: int = 0
    pipeline_id: str
    kind: PipelineEventKind
    at: float
    actor: str = "system"
    data: dict[str, Any] = Field(default_factory=dict)
    hash: str = ""


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------
class StageStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class PipelinePhase(str, Enum):
    RUNNING = "running"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StageRollback(Model):
    deployment_id: str
    reason: str
    rollback_id: str | None = None
    phase: str | None = None
    message: str = ""


class StageState(Model):
    status: StageStatus = StageStatus.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    reason: str = ""
    result: dict[str, Any] = Field(default_factory=dict)
    rollback: StageRollback | None = None


class PipelineState(Model):
    spec: PipelineSpec
    created_at: float
    updated_at: float
    last_seq: int = 0
    stages: dict[str, StageState] = Field(default_factory=dict)
    failed: list[str] = Field(default_factory=list, description="Failed stages, in the order they failed")
    outcome: PipelinePhase | None = None
    message: str = ""
    finished_at: float | None = None

    @property
    def pipeline_id(self) -> str:
        return self.spec.pipeline_id

    def phase(self) -> PipelinePhase:
        if self.outcome is not None:
            return self.outcome
        if any(s.rollback is not None and s.rollback.phase is None for s in self.stages.values()):
            return PipelinePhase.ROLLING_BACK
        return PipelinePhase.RUNNING

    def stopping(self) -> bool:
        """No new stage may start: a stage failed and the template fails fast."""
        return bool(self.failed) and self.spec.fail_fast

    def with_status(self, status: StageStatus) -> list[StageSpec]:
        return [s for s in self.spec.stages if self.stages[s.id].status is status]

    def ready(self) -> list[StageSpec]:
        """Pending stages whose dependencies all succeeded, in plan order (none once stopping)."""
        if self.stopping():
            return []
        done = StageStatus.SUCCEEDED
        return [
            s
            for s in self.with_status(StageStatus.PENDING)
            if all(self.stages[d].status is done for d in s.depends_on)
        ]

    def blocked(self) -> list[tuple[StageSpec, str]]:
        """Pending stages that can no longer run, each with the reason."""
        stopped = [s for s in self.spec.stages if self.stages[s.id].status in _ENDED_BADLY]
        bad = {s.id for s in stopped}
        found = []
        for spec in self.with_status(StageStatus.PENDING):
            culprit = next((d for d in spec.depends_on if d in bad), None)
            if culprit is not None:
                found.append((spec, f"blocked: {culprit} {self.stages[culprit].status.value}"))
            elif self.stopping():
                found.append((spec, f"stopped: {self.failed[0]} failed"))
        return found


_ENDED_BADLY = (StageStatus.FAILED, StageStatus.SKIPPED)


def new_state(event: PipelineEvent) -> PipelineState:
    spec = PipelineSpec.model_validate(event.data["spec"])
    return PipelineState(
        spec=spec,
        created_at=event.at,
        updated_at=event.at,
        last_seq=event.seq,
        stages={s.id: StageState() for s in spec.stages},
    )


def fold(state: PipelineState, event: PipelineEvent) -> PipelineState:
    """Apply one event in place; events after the terminal one only add notes."""
    state.updated_at = event.at
    state.last_seq = max(state.last_seq, event.seq)
    if state.outcome is None or event.kind is PipelineEventKind.NOTE:
        _APPLY[event.kind](state, event)
    return state


def fold_all(events: list[PipelineEvent]) -> PipelineState:
    if not events or events[0].kind is not PipelineEventKind.CREATED:
        raise ValueError("a pipeline's events must start with its creation")
    state = new_state(events[0])
    for event in events[1:]:
        fold(state, event)
    return state


def _stage_started(s: PipelineState, e: PipelineEvent) -> None:
    stage = s.stages[e.data["stage"]]
    stage.status = StageStatus.RUNNING
    stage.started_at = stage.started_at or e.at  # a resumed stage keeps its first start (and deadline)
    stage.result = {**stage.result, **e.data.get("result", {})}


def _stage_finished(s: PipelineState, e: PipelineEvent) -> None:
    stage = s.stages[e.data["stage"]]
    stage.status = StageStatus(e.data["status"])
    stage.finished_at = e.at
    stage.reason = str(e.data.get("reason", ""))
    stage.result = {**stage.result, **e.data.get("result", {})}
    if stage.status is StageStatus.FAILED:
        s.failed.append(e.data["stage"])


def _rollback_started(s: PipelineState, e: PipelineEvent) -> None:
    s.stages[e.data["stage"]].rollback = StageRollback(
        deployment_id=e.data["deployment_id"], reason=e.data["reason"]
    )


def _rollback_submitted(s: PipelineState, e: PipelineEvent) -> None:
    rollback = s.stages[e.data["stage"]].rollback
    if rollback is not None:
        rollback.rollback_id = e.data["rollback_id"]


def _rollback_finished(s: PipelineState, e: PipelineEvent) -> None:
    rollback = s.stages[e.data["stage"]].rollback
    if rollback is not None:
        rollback.phase = str(e.data["phase"])
        rollback.message = str(e.data.get("message", ""))
        rollback.rollback_id = e.data.get("rollback_id") or rollback.rollback_id


def _finished(s: PipelineState, e: PipelineEvent) -> None:
    s.outcome = PipelinePhase(e.data["outcome"])
    s.message = str(e.data.get("message", ""))
    s.finished_at = e.at


def _nothing(s: PipelineState, e: PipelineEvent) -> None:
    return None


_APPLY = {
    PipelineEventKind.CREATED: _nothing,
    PipelineEventKind.STAGE_STARTED: _stage_started,
    PipelineEventKind.STAGE_FINISHED: _stage_finished,
    PipelineEventKind.ROLLBACK_STARTED: _rollback_started,
    PipelineEventKind.ROLLBACK_SUBMITTED: _rollback_submitted,
    PipelineEventKind.ROLLBACK_FINISHED: _rollback_finished,
    PipelineEventKind.FINISHED: _finished,
    PipelineEventKind.NOTE: _nothing,
}


# --------------------------------------------------------------------------------------------
# What users see
# --------------------------------------------------------------------------------------------
class StageView(Model):
    id: str
    kind: StageKind
    environment: str | None = None
    service: str | None = None
    status: StageStatus
    reason: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    deployment_id: str | None = None
    phase: str | None = None
    address: str | None = None
    log: str | None = None
    rollback_id: str | None = None
    rollback_phase: str | None = None


class PipelineDeploymentResult(CamelAttributes, Model):
    """One deployment of a pipeline, as the seed's ``deployPipeline`` returns it."""

    deployment_id: str | None
    success: bool
    stage: str
    environment: str | None = None
    service: str | None = None
    phase: str
    rolled_back: bool = False
    rollback_deployment_id: str | None = None
    message: str = ""


class PipelineStatus(CamelAttributes, Model):
    pipeline_id: str
    name: str
    state: PipelinePhase
    stages: list[StageView]
    deployments: list[str] = Field(description="Deployment ids of the deploy stages that started")
    results: list[PipelineDeploymentResult]
    failed_stage: str | None = None
    message: str = ""
    rolled_back: list[str] = Field(
        default_factory=list, description="Deployments undone, by themselves or us"
    )
    requested_by: str = "unknown"
    created_at: float
    finished_at: float | None = None

    @property
    def success(self) -> bool:
        return self.state is PipelinePhase.SUCCEEDED and not self.rolled_back


def status_of(state: PipelineState) -> PipelineStatus:
    views = [_view(spec, state.stages[spec.id]) for spec in state.spec.stages]
    results = [_result(spec, state.stages[spec.id]) for spec in state.spec.stages if spec.request]
    return PipelineStatus(
        pipeline_id=state.pipeline_id,
        name=state.spec.name,
        state=state.phase(),
        stages=views,
        deployments=[r.deployment_id for r in results if r.deployment_id],
        results=results,
        failed_stage=state.failed[0] if state.failed else None,
        message=state.message,
        rolled_back=[r.deployment_id for r in results if r.rolled_back and r.deployment_id],
        requested_by=state.spec.requested_by,
        created_at=state.created_at,
        finished_at=state.finished_at,
    )


def _view(spec: StageSpec, stage: StageState) -> StageView:
    result, rollback = stage.result, stage.rollback
    return StageView(
        id=spec.id,
        kind=spec.kind,
        environment=spec.environment,
        service=spec.service,
        status=stage.status,
        reason=stage.reason,
        started_at=stage.started_at,
        finished_at=stage.finished_at,
        deployment_id=result.get("deployment_id"),
        phase=result.get("phase"),
        address=result.get("address"),
        log=result.get("log"),
        rollback_id=rollback.rollback_id if rollback else None,
        rollback_phase=rollback.phase if rollback else None,
    )


def _result(spec: StageSpec, stage: StageState) -> PipelineDeploymentResult:
    deployment_id = stage.result.get("deployment_id")
    phase = stage.result.get("phase") or stage.status.value
    rollback = stage.rollback
    undone = rollback is not None and rollback.phase == "succeeded"
    rolled_back = phase in ("rolled_back", "aborted") or undone
    return PipelineDeploymentResult(
        deployment_id=deployment_id,
        success=phase == "succeeded" and stage.status is StageStatus.SUCCEEDED and not rolled_back,
        stage=spec.id,
        environment=spec.environment,
        service=spec.service,
        phase=phase,
        rolled_back=rolled_back,
        rollback_deployment_id=rollback.rollback_id if rollback else None,
        message=stage.reason or (rollback.message if rollback else ""),
    )
