"""A deployment's durable facts, folded from its journal events; the phase is computed from them.

Nothing here is stored that can be derived: the phase users see comes from ``phase()``, the way Argo Rollouts
computes a rollout's phase from its status rather than storing it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field

from engine.models import (
    DeploymentRequest,
    DeploymentStatus,
    Model,
    Phase,
    RollbackTrigger,
)


class StepKind(str, Enum):
    DEPLOY = "deploy"  # ensure the revision runs with N replicas and wait until ready
    SET_WEIGHT = "set_weight"  # candidate gets ``weight`` percent, stable the rest
    ANALYZE = "analyze"  # judge the candidate on live metrics for ``duration_ms``
    VALIDATE = "validate"  # blue-green: health (and smoke checks) of the idle candidate
    AWAIT_PROMOTION = "await_promotion"  # wait for a person's promote (bounded by maxPauseDuration)
    HOLD = "hold"  # keep the old revision for a while (instant switch-back), still watching metrics
    REMOVE_STABLE = "remove_stable"  # the candidate becomes stable; the old one is removed


class Role(str, Enum):
    CANDIDATE = "candidate"
    STABLE = "stable"


class Step(Model):
    kind: StepKind
    role: Role = Role.CANDIDATE
    replicas: int = 0
    weight: int = 0
    duration_ms: int = 0
    smoke: bool = False

    @property
    def label(self) -> str:
        if self.kind is StepKind.DEPLOY:
            return f"deploy {self.role.value} x{self.replicas}"
        if self.kind is StepKind.SET_WEIGHT:
            return f"set weight {self.weight}%"
        if self.kind in (StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE):
            return f"{self.kind.value} {self.duration_ms / 1000:g}s"
        return self.kind.value.replace("_", " ")


class RollbackRequest(Model):
    trigger: RollbackTrigger
    reason: str
    by: str = "system"
    at: float = 0.0
    proposed_by: str | None = None  # an automated rollback: the runner that proposed it (DO-004 decides)
    fallback: str | None = None  # why the runner recorded it itself (DO-004 did not answer)


class DeploymentState(Model):
    deployment_id: str
    request: DeploymentRequest
    submitted_at: float
    updated_at: float
    last_seq: int = 0
    admitted_at: float | None = None
    runner: str | None = None
    planned: bool = False
    plan: list[Step] = Field(default_factory=list)
    step_index: int = 0
    step_started_at: float | None = None
    step_baseline: dict[str, Any] = Field(default_factory=dict)
    stable_revision: str | None = None
    candidate_revision: str | None = None
    versions: dict[str, str] = Field(default_factory=dict, description="revision -> version people gave it")
    weights: dict[str, int] = Field(default_factory=dict)
    address: str | None = None
    paused: bool = False
    paused_at: float | None = None
    promote_requested: bool = False
    rollback: RollbackRequest | None = None
    rollback_started: bool = False
    consecutive_failures: int = 0
    platform_fault: str | None = None  # analysis paused: the platform (not the candidate) is at fault
    platform_fault_since: float | None = None
    candidate_restarted_at: float | None = None  # a dead candidate replica was last started again then
    window_extensions: int = 0
    outcome: Phase | None = None
    message: str = ""
    finished_at: float | None = None
    approval: str | None = Field(default=None, description="The approval's state: pending, approved, ...")

    def phase(self) -> Phase:
        if self.outcome is not None:
            return self.outcome
        if self.rollback_started:
            return Phase.ROLLING_BACK
        if self.admitted_at is None:
            return Phase.AWAITING_APPROVAL if self.awaiting_approval else Phase.QUEUED
        if self.paused or self._awaiting_promotion():
            return Phase.PAUSED
        return Phase.PROGRESSING

    @property
    def awaiting_approval(self) -> bool:
        """Its environment's approval workflow applies and has not approved it (yet)."""
        governance = self.request.governance
        return governance is not None and bool(governance.approval_groups) and self.approval != "approved"

    def _awaiting_promotion(self) -> bool:
        step = self.current_step()
        return step is not None and step.kind is StepKind.AWAIT_PROMOTION and not self.promote_requested

    def current_step(self) -> Step | None:
        return self.plan[self.step_index] if self.planned and self.step_index < len(self.plan) else None

    @property
    def active(self) -> bool:
        return self.outcome is None

    def status(self) -> DeploymentStatus:
        step = self.current_step()
        return DeploymentStatus(
            deployment_id=self.deployment_id,
            target=self.request.target,
            phase=self.phase(),
            strategy=self.request.strategy.type,
            step_index=self.step_index,
            step_count=len(self.plan),
            step_name=step.label if step else None,
            stable_revision=self.stable_revision,
            candidate_revision=self.candidate_revision,
            weights=self.weights,
            address=self.address,
            message=self.message,
            rollback_trigger=self.rollback.trigger if self.rollback else None,
            rollback_reason=self.rollback.reason if self.rollback else None,
            submitted_at=self.submitted_at,
            updated_at=self.updated_at,
            finished_at=self.finished_at,
            runner=self.runner,
            versions={self.request.artifact.revision: self.request.artifact.version, **self.versions},
        )


class EventKind(str, Enum):
    SUBMITTED = "submitted"
    ADMITTED = "admitted"
    PLANNED = "planned"
    STEP_STARTED = "step_started"
    STEP_COMPLETED = "step_completed"
    WINDOW_RESTARTED = "window_restarted"
    WINDOW_EXTENDED = "window_extended"  # too few requests: the same window, one step duration longer
    WEIGHTS_SET = "weights_set"
    MEASUREMENT = "measurement"
    PAUSED = "paused"
    RESUMED = "resumed"
    PROMOTE_REQUESTED = "promote_requested"
    ROLLBACK_REQUESTED = "rollback_requested"
    ROLLBACK_STARTED = "rollback_started"
    FINISHED = "finished"
    NOTE = "note"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    APPROVAL_EXPIRED = "approval_expired"
    ARTIFACT_VERIFIED = "artifact_verified"
    COMPLIANCE_CHECKED = "compliance_checked"
    HOOK = "hook"  # a gating webhook's answer (engine/hooks.py): passed, held or failed
    AUDIT = "audit"  # an audit entry of no deployment's state (engine/audit.py): its data names the action
    DRIFT = "drift"  # supervision: what was found on the platform and what was done; no fact changes
    PLATFORM_FAULT = "platform_fault"  # the router or the platform API failed: analysis paused
    PLATFORM_RESTORED = "platform_restored"  # the platform serves again: analysis on a fresh window
    ENVIRONMENT_STATUS = "environment_status"  # of no deployment: subject "environment:<name>"


# Kinds that may follow a terminal event: they record, they change no deployment fact.
AFTER_TERMINAL = frozenset({EventKind.NOTE, EventKind.DRIFT})


class Event(Model):
    seq: int = 0
    deployment_id: str
    kind: EventKind
    at: float
    actor: str = "system"
    data: dict[str, Any] = Field(default_factory=dict)
    hash: str = ""


def fold(state: DeploymentState, event: Event) -> DeploymentState:
    """Apply one event to the facts; events after a terminal one change nothing. Returns a new state and
    leaves ``state`` as it was (it may be shared: the journal hands out the state it last read or wrote).
    The new state shares the values it does not change with ``state``: every fold below assigns the fields
    it changes, with new values, and never changes a list, dict or model of the state in place, so a
    shallow copy is enough."""
    if state.outcome is not None and event.kind not in AFTER_TERMINAL:
        return state
    new = state.model_copy()
    new.updated_at = event.at
    new.last_seq = max(new.last_seq, event.seq)
    _APPLY[event.kind](new, event)
    return new


def _admitted(s: DeploymentState, e: Event) -> None:
    s.admitted_at = e.at
    s.runner = e.data.get("runner")


def _planned(s: DeploymentState, e: Event) -> None:
    s.planned = True
    s.plan = [Step.model_validate(step) for step in e.data["plan"]]
    s.stable_revision = e.data.get("stable_revision")
    s.candidate_revision = e.data["candidate_revision"]
    s.weights = dict(e.data.get("weights", {}))
    s.address = e.data.get("address")
    s.step_index = 0
    s.versions = {s.request.artifact.revision: s.request.artifact.version}
    stable_artifact = e.data.get("stable_artifact")
    if s.stable_revision and isinstance(stable_artifact, dict) and stable_artifact.get("version"):
        s.versions[s.stable_revision] = str(stable_artifact["version"])


def _step_started(s: DeploymentState, e: Event) -> None:
    s.step_started_at = e.at
    s.step_baseline = dict(e.data.get("baseline", {}))
    s.window_extensions = 0


def _step_completed(s: DeploymentState, e: Event) -> None:
    s.step_index = int(e.data["index"]) + 1
    s.step_started_at = None
    s.step_baseline = {}
    s.consecutive_failures = 0
    s.window_extensions = 0
    step = s.plan[int(e.data["index"])]
    if step.kind is StepKind.REMOVE_STABLE:
        s.stable_revision, s.candidate_revision = s.candidate_revision, None
    if step.kind is StepKind.AWAIT_PROMOTION:
        s.promote_requested = False


def _window_restarted(s: DeploymentState, e: Event) -> None:
    s.consecutive_failures = int(e.data["consecutive_failures"])
    s.step_started_at = e.at
    s.step_baseline = dict(e.data.get("baseline", {}))
    s.window_extensions = 0


def _window_extended(s: DeploymentState, e: Event) -> None:
    s.window_extensions = int(e.data["extensions"])


def _weights_set(s: DeploymentState, e: Event) -> None:
    s.weights = dict(e.data["weights"])
    if e.data.get("address"):
        s.address = e.data["address"]


def _paused(s: DeploymentState, e: Event) -> None:
    s.paused, s.paused_at = True, e.at


def _resumed(s: DeploymentState, e: Event) -> None:
    s.paused, s.paused_at = False, None


def _promote_requested(s: DeploymentState, e: Event) -> None:
    s.promote_requested = True
    s.paused = False
    if e.data.get("full") and s.planned:
        # Skip what is left of the analysis: jump to the promotion tail (scale up, 100%, remove stable).
        s.step_index = max(s.step_index, _promotion_tail_start(s.plan))
        s.step_started_at = None


def _promotion_tail_start(plan: list[Step]) -> int:
    index = len(plan)
    while index > 0 and plan[index - 1].kind in (
        StepKind.DEPLOY,
        StepKind.SET_WEIGHT,
        StepKind.REMOVE_STABLE,
        StepKind.HOLD,
    ):
        if plan[index - 1].kind is StepKind.SET_WEIGHT and plan[index - 1].weight < 100:
            break
        index -= 1
    return index


def _rollback_requested(s: DeploymentState, e: Event) -> None:
    if s.rollback is None:
        s.rollback = RollbackRequest.model_validate({**e.data, "at": e.at})


def _rollback_started(s: DeploymentState, e: Event) -> None:
    s.rollback_started = True
    if s.rollback is None:
        s.rollback = RollbackRequest.model_validate({**e.data, "at": e.at})


def _finished(s: DeploymentState, e: Event) -> None:
    s.outcome = Phase(e.data["outcome"])
    s.message = str(e.data.get("message", ""))
    s.finished_at = e.at
    if "weights" in e.data:
        s.weights = dict(e.data["weights"])


def _note(s: DeploymentState, e: Event) -> None:
    if "message" in e.data:
        s.message = str(e.data["message"])


def _platform_fault(s: DeploymentState, e: Event) -> None:
    s.platform_fault = str(e.data.get("reason", "platform fault"))
    if s.platform_fault_since is None:
        s.platform_fault_since = e.at
    s.message = f"analysis paused: {s.platform_fault}"


def _platform_restored(s: DeploymentState, e: Event) -> None:
    s.platform_fault = s.platform_fault_since = None
    s.message = str(e.data.get("restored", ""))
    if e.data.get("fresh_window"):  # counters restart (a new router): judge from a new baseline
        s.step_started_at = e.at
        s.step_baseline = dict(e.data.get("baseline", {}))


def _approval(s: DeploymentState, e: Event) -> None:
    s.approval = str(e.data["state"])
    if e.data.get("message"):
        s.message = str(e.data["message"])


def _hook(s: DeploymentState, e: Event) -> None:
    if e.data.get("outcome") == "held":  # shown by status while the deployment waits at the gate
        s.message = (
            f"waiting for {e.data.get('type')} hook '{e.data.get('hook')}': {e.data.get('answer', '')}"
        )


def _nothing(s: DeploymentState, e: Event) -> None:
    return None


def _drift(s: DeploymentState, e: Event) -> None:
    if e.data.get("candidate_restart"):
        s.candidate_restarted_at = e.at


_APPLY = {
    EventKind.SUBMITTED: _nothing,
    EventKind.ADMITTED: _admitted,
    EventKind.PLANNED: _planned,
    EventKind.STEP_STARTED: _step_started,
    EventKind.STEP_COMPLETED: _step_completed,
    EventKind.WINDOW_RESTARTED: _window_restarted,
    EventKind.WINDOW_EXTENDED: _window_extended,
    EventKind.WEIGHTS_SET: _weights_set,
    EventKind.MEASUREMENT: _nothing,
    EventKind.PAUSED: _paused,
    EventKind.RESUMED: _resumed,
    EventKind.PROMOTE_REQUESTED: _promote_requested,
    EventKind.ROLLBACK_REQUESTED: _rollback_requested,
    EventKind.ROLLBACK_STARTED: _rollback_started,
    EventKind.FINISHED: _finished,
    EventKind.NOTE: _note,
    EventKind.APPROVAL_REQUESTED: _approval,
    EventKind.APPROVED: _approval,
    EventKind.REJECTED: _approval,
    EventKind.APPROVAL_EXPIRED: _approval,
    EventKind.ARTIFACT_VERIFIED: _nothing,
    EventKind.COMPLIANCE_CHECKED: _nothing,
    EventKind.HOOK: _hook,
    EventKind.AUDIT: _nothing,
    EventKind.DRIFT: _drift,
    EventKind.PLATFORM_FAULT: _platform_fault,
    EventKind.PLATFORM_RESTORED: _platform_restored,
    EventKind.ENVIRONMENT_STATUS: _nothing,
}
