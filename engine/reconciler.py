"""Drives one deployment to exactly one terminal state, one idempotent step at a time.

``DeploymentReconciler.reconcile()`` does one unit of work and returns how long to wait before the next call
(``None`` once terminal). All of its knowledge comes from the journal and the platform's actual state, so a
new reconciler after a crash simply goes on: it re-applies the current step (every step is idempotent) and
continues. Ray appears nowhere here; the runner actor calls ``reconcile`` in a loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from engine.analysis import Measurement, Verdict, baseline_of, judge
from engine.hooks import Halt, Hold, StepGate
from engine.journal import Journal
from engine.models import (
    DEFAULT_ANALYSIS_INTERVAL_MS,
    Artifact,
    FailureThresholds,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Thresholds,
)
from engine.plans import build_plan
from engine.platform import (
    MetricSnapshot,
    PlatformAdapter,
    PlatformError,
    RevisionSpec,
    RevisionStatus,
    TransientPlatformError,
)
from engine.state import DeploymentState, EventKind, Role, Step, StepKind
from engine.timing import TimedAdapter

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6
UNHEALTHY_CHECKS = 3


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class SmokeTester(Protocol):
    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        """Send ``count`` requests spread over the endpoints; returns (successes, failures)."""
        ...


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Wait:
    delay: float


@dataclass(frozen=True)
class RollBack:
    trigger: RollbackTrigger
    reason: str


StepOutcome = Done | Wait | RollBack


class DeploymentReconciler:
    def __init__(
        self,
        journal: Journal,
        deployment_id: str,
        adapter_factory: Callable[[PlatformConfig], PlatformAdapter],
        clock: Clock | None = None,
        smoke: SmokeTester | None = None,
        actor: str = "runner",
        tick_s: float = 0.5,
        gate: StepGate | None = None,
    ) -> None:
        self.journal = journal
        self.deployment_id = deployment_id
        self.clock = clock or SystemClock()
        self.smoke = smoke
        self.actor = actor
        self.tick_s = tick_s
        self._adapter_factory = adapter_factory
        self._adapter: PlatformAdapter | None = None
        self._timed: TimedAdapter | None = None
        self._step_platform_start = 0.0
        self._polls = 0
        self._transient_failures = 0
        self._unhealthy_checks = 0
        self._smoked_at: float | None = None
        self.gate = gate

    # ------------------------------------------------------------------------------- plumbing
    @property
    def adapter(self) -> PlatformAdapter:
        if self._adapter is None:
            self._timed = TimedAdapter(self._adapter_factory(self.state().request.platform))
            self._adapter = self._timed  # type: ignore[assignment]
        return self._adapter

    def close(self) -> None:
        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None

    def state(self) -> DeploymentState:
        return self.journal.state(self.deployment_id)

    def _append(self, kind: EventKind, **data: object) -> DeploymentState:
        return self.journal.append(self.deployment_id, kind, dict(data), actor=self.actor)

    def run(self, deadline_s: float, sleep: Callable[[float], None] = time.sleep) -> DeploymentState:
        """Reconcile until terminal or until ``deadline_s`` of wall time has passed."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            delay = self.reconcile()
            if delay is None:
                break
            sleep(delay)
        return self.state()

    # ------------------------------------------------------------------------------- main loop
    def reconcile(self) -> float | None:
        state = self.state()
        if state.outcome is not None:
            return None
        try:
            delay = self._reconcile(state)
            self._transient_failures = 0
            return delay
        except TransientPlatformError as error:
            self._transient_failures += 1
            if self._transient_failures <= MAX_TRANSIENT_RETRIES:
                backoff = min(30.0, 0.5 * 2 ** (self._transient_failures - 1))
                log.warning("%s: transient error, retry in %.1fs: %s", self.deployment_id, backoff, error)
                return backoff
            return self._on_permanent_error(state, error)
        except PlatformError as error:
            return self._on_permanent_error(state, error)
        except Exception as error:  # a bug or a client library's own exception: never leave it half-done
            log.exception("%s: unexpected error", self.deployment_id)
            return self._on_permanent_error(state, error)

    def _on_permanent_error(self, state: DeploymentState, error: Exception) -> float:
        reason = f"{type(error).__name__}: {error}" if not isinstance(error, PlatformError) else str(error)
        if not state.planned or state.rollback_started:
            # Nothing was changed yet (validation), or rolling back itself failed: stop here, say why.
            self._finish(Phase.FAILED, reason)
            return 0.0
        self._request_rollback(RollbackTrigger.ERROR, reason)
        return 0.0

    def _reconcile(self, state: DeploymentState) -> float:
        if state.admitted_at is None:
            return self.tick_s
        if state.rollback is not None:
            if not state.rollback_started:
                self._append(EventKind.ROLLBACK_STARTED, **state.rollback.model_dump(mode="json"))
            return self._roll_back(self.state())
        if not state.planned:
            return self._plan(state)
        if state.paused:
            return self._while_paused(state)
        step = state.current_step()
        if step is None:
            self._finish(Phase.SUCCEEDED, f"{state.candidate_revision or state.stable_revision} is live")
            return 0.0
        if state.step_started_at is None:
            held = self._gate(state, step)
            if held is not None:
                return held
            self._start_step(state, step)
            return 0.0
        outcome = self._run_step(state, step)
        if isinstance(outcome, Done):
            self._append(
                EventKind.STEP_COMPLETED, index=state.step_index, step=step.label, **self._step_timing(state)
            )
            return 0.0
        if isinstance(outcome, RollBack):
            self._request_rollback(outcome.trigger, outcome.reason)
            return 0.0
        return outcome.delay

    # ------------------------------------------------------------------------------- planning
    def _platform_seconds(self) -> float:
        return self._timed.seconds if self._timed is not None else 0.0

    def _step_timing(self, state: DeploymentState) -> dict[str, float]:
        """Wall time of the step and the part of it spent inside platform calls (read by benchmarks)."""
        return {
            "elapsed_s": round(self.clock.now() - (state.step_started_at or self.clock.now()), 6),
            "platform_s": round(self._platform_seconds() - self._step_platform_start, 6),
        }

    def _plan(self, state: DeploymentState) -> float:
        started = self._platform_seconds()
        adapter = self.adapter
        adapter.validate()
        request = state.request
        candidate = request.artifact.revision
        traffic = adapter.traffic(request.target)
        serving = {rev: w for rev, w in traffic.weights.items() if w > 0}
        stable = max(serving, key=lambda rev: serving[rev]) if serving else None
        if stable == candidate and serving.get(candidate) == 100:
            plan: list[Step] = []
            stable = None
        else:
            if stable == candidate:
                stable = next((rev for rev in serving if rev != candidate), None)
            plan = build_plan(request.strategy, has_stable=stable is not None)
        self._append(
            EventKind.PLANNED,
            plan=[step.model_dump(mode="json") for step in plan],
            stable_revision=stable,
            candidate_revision=candidate,
            weights=traffic.weights,
            address=traffic.address,
            stable_artifact=self._artifact_of(request.target.key, stable),
            platform_s=round(self._platform_seconds() - started, 6),
        )
        return 0.0

    def _artifact_of(self, target_key: str, revision: str | None) -> dict[str, object] | None:
        """The artifact of the newest deployment of this target that made ``revision`` live."""
        if revision is None:
            return None
        for past in reversed(self.journal.deployments(target_key=target_key)):
            artifact = past.request.artifact
            if artifact.revision == revision and past.outcome is Phase.SUCCEEDED:
                return artifact.model_dump(mode="json")
        return None

    def _stable_artifact(self) -> Artifact | None:
        return self.journal.planned_stable_artifact(self.deployment_id)

    # ------------------------------------------------------------------------------- steps
    def _gate(self, state: DeploymentState, step: Step) -> float | None:
        """The step's gating webhooks (engine/hooks.py): hold it, roll back, or let it start (None)."""
        verdict = self.gate.before_step(state, step) if self.gate is not None else None
        if isinstance(verdict, Halt):
            self._request_rollback(verdict.trigger, verdict.reason)
            return 0.0
        return verdict.delay if isinstance(verdict, Hold) else None

    def _start_step(self, state: DeploymentState, step: Step) -> None:
        baseline: dict[str, float] = {}
        if step.kind in (StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE) and state.candidate_revision:
            revision = state.candidate_revision
            baseline = baseline_of(self.adapter.metrics(state.request.target, revision).get(revision))
        # Timing of the step starts with its journaled start, as elapsed_s does.
        self._step_platform_start = self._platform_seconds()
        self._unhealthy_checks = 0
        self._smoked_at = None
        self._polls = 0
        self._append(EventKind.STEP_STARTED, index=state.step_index, step=step.label, baseline=baseline)

    def _run_step(self, state: DeploymentState, step: Step) -> StepOutcome:
        handlers: dict[StepKind, Callable[[DeploymentState, Step], StepOutcome]] = {
            StepKind.DEPLOY: self._step_deploy,
            StepKind.SET_WEIGHT: self._step_set_weight,
            StepKind.ANALYZE: self._step_analyze,
            StepKind.HOLD: self._step_analyze,
            StepKind.VALIDATE: self._step_validate,
            StepKind.AWAIT_PROMOTION: self._step_await_promotion,
            StepKind.REMOVE_STABLE: self._step_remove_stable,
        }
        return handlers[step.kind](state, step)

    def _wanted(self, replicas: int) -> int:
        """Platforms that scale by themselves (Lambda) run one revision object whatever count is asked."""
        return min(replicas, 1) if getattr(self.adapter, "scales_itself", False) else replicas

    def _elapsed(self, state: DeploymentState) -> float:
        return self.clock.now() - (state.step_started_at or self.clock.now())

    def _step_deploy(self, state: DeploymentState, step: Step) -> StepOutcome:
        target = state.request.target
        if step.role is Role.STABLE:
            artifact = self._stable_artifact()
            revision = state.stable_revision
            if revision is None:
                return Done()
        else:
            artifact, revision = state.request.artifact, state.candidate_revision
        wanted = self._wanted(step.replicas)
        status = self.adapter.revision_status(target, revision or "")
        if status is None or status.desired_replicas != wanted or status.running_replicas < wanted:
            if artifact is None:
                return Done() if status is None else self._scale_unknown(state, status, step)
            self.adapter.ensure_revision(
                RevisionSpec(
                    target=target,
                    artifact=artifact,
                    replicas=step.replicas,
                    deployment_id=state.deployment_id,
                )
            )
            status = self.adapter.revision_status(target, revision or "")
        if status is not None and status.ready and status.desired_replicas == wanted:
            return Done()
        deadline_s = state.request.strategy.progress_deadline / 1000
        if self._elapsed(state) > deadline_s:
            ready = f"{status.ready_replicas}/{status.desired_replicas}" if status else "0/?"
            return RollBack(
                RollbackTrigger.DEADLINE,
                f"{revision} not ready within the progress deadline of {deadline_s:g}s ({ready} ready)",
            )
        # Readiness is the platform's work: poll soon at first (a process is up in tens of ms), then back off.
        self._polls += 1
        return Wait(min(self.tick_s, 0.02 * 1.5**self._polls))

    def _scale_unknown(self, state: DeploymentState, status: RevisionStatus, step: Step) -> StepOutcome:
        """The stable revision was not deployed by us, so we cannot recreate it; we only never scale it up."""
        if status.desired_replicas <= step.replicas:
            return Done()
        raise PlatformError(
            self.adapter.platform,
            state.request.target.key,
            f"cannot scale {status.revision}: its artifact is not in the journal",
        )

    def _weights_for(self, state: DeploymentState, candidate_weight: int) -> dict[str, int]:
        assert state.candidate_revision is not None
        weights = {state.candidate_revision: candidate_weight}
        if state.stable_revision and state.stable_revision != state.candidate_revision:
            weights[state.stable_revision] = 100 - candidate_weight
        return weights

    def _step_set_weight(self, state: DeploymentState, step: Step) -> StepOutcome:
        weights = self._weights_for(state, step.weight)
        applied = self.adapter.set_traffic(state.request.target, weights)
        self._append(EventKind.WEIGHTS_SET, weights=applied.weights, address=applied.address)
        return Done()

    def _thresholds(self, state: DeploymentState) -> tuple[Thresholds, FailureThresholds, int, float]:
        strategy = state.request.strategy
        config = strategy.canary or strategy.blue_green or strategy.rolling
        assert config is not None
        interval = getattr(config, "analysis_interval", DEFAULT_ANALYSIS_INTERVAL_MS) / 1000
        return config.success_threshold, config.failure_threshold, config.min_request_count, interval

    def _candidate_metrics(self, state: DeploymentState) -> MetricSnapshot | None:
        revision = state.candidate_revision or ""
        return self.adapter.metrics(state.request.target, revision).get(revision)

    def _measure(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> Measurement:
        success, failure, min_requests, _ = self._thresholds(state)
        return judge(snapshot, state.step_baseline, success, failure, min_requests)

    def _healthy_now(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> bool:
        """The router's own health checks when it reports them (no extra probes), else a readiness check."""
        if snapshot is not None and snapshot.servers_total > 0:
            return snapshot.servers_up > 0
        status = self.adapter.revision_status(state.request.target, state.candidate_revision or "")
        return status is not None and status.ready_replicas > 0

    def _health(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> RollBack | None:
        """N consecutive checks with no healthy replica of the candidate mean unhealthy."""
        if self._healthy_now(state, snapshot):
            self._unhealthy_checks = 0
            return None
        self._unhealthy_checks += 1
        if self._unhealthy_checks < UNHEALTHY_CHECKS:
            return None
        return RollBack(
            RollbackTrigger.HEALTH,
            f"{state.candidate_revision} failed {self._unhealthy_checks} health checks in a row",
        )

    def _step_analyze(self, state: DeploymentState, step: Step) -> StepOutcome:
        _, failure, _, interval = self._thresholds(state)
        snapshot = self._candidate_metrics(state)
        unhealthy = self._health(state, snapshot)
        if unhealthy is not None:
            return unhealthy
        measurement = self._measure(state, snapshot)
        if measurement.verdict is Verdict.FAILURE:
            self._append(EventKind.MEASUREMENT, **measurement.model_dump(mode="json"))
            return RollBack(RollbackTrigger.METRICS, measurement.reason)
        remaining = step.duration_ms / 1000 - self._elapsed(state)
        if remaining > 0:
            return Wait(min(interval, remaining))
        self._append(EventKind.MEASUREMENT, **measurement.model_dump(mode="json"))
        if step.kind is StepKind.HOLD or measurement.verdict is Verdict.SUCCESS:
            return Done()
        failures = state.consecutive_failures + 1
        if failures >= failure.consecutive_failures:
            return RollBack(
                RollbackTrigger.METRICS,
                f"{failures} analysis windows in a row without success ({measurement.verdict.value}): "
                f"{measurement.reason}",
            )
        self._step_platform_start = self._platform_seconds()  # elapsed_s counts from the restart too
        self._append(
            EventKind.WINDOW_RESTARTED, consecutive_failures=failures, baseline=baseline_of(snapshot)
        )
        return Wait(interval)

    def _step_validate(self, state: DeploymentState, step: Step) -> StepOutcome:
        unhealthy = self._health(state, self._candidate_metrics(state))
        if unhealthy is not None:
            return unhealthy
        if step.smoke and self._smoked_at is None and self.smoke is not None:
            failed = self._smoke_test(state)
            if failed is not None:
                return failed
        remaining = step.duration_ms / 1000 - self._elapsed(state)
        return Done() if remaining <= 0 else Wait(min(self._thresholds(state)[3], remaining))

    def _smoke_test(self, state: DeploymentState) -> RollBack | None:
        assert self.smoke is not None
        status = self.adapter.revision_status(state.request.target, state.candidate_revision or "")
        self._smoked_at = self.clock.now()
        if status is None or not status.endpoints:
            self._append(EventKind.NOTE, message="smoke test skipped: the platform gives no direct endpoints")
            return None
        config = state.request.strategy.blue_green
        assert config is not None
        path = state.request.artifact.metadata.get("smokePath", "/")
        ok, failed = self.smoke.smoke(status.endpoints, path, config.smoke_requests)
        rate = failed / max(1, ok + failed)
        self._append(
            EventKind.MEASUREMENT, check="smoke", requests=ok + failed, errors=failed, error_rate=rate
        )
        if rate > config.failure_threshold.error_rate:
            return RollBack(RollbackTrigger.METRICS, f"smoke test: {failed} of {ok + failed} requests failed")
        return None

    def _step_await_promotion(self, state: DeploymentState, step: Step) -> StepOutcome:
        if state.promote_requested:
            return Done()
        limit = state.request.strategy.max_pause_duration / 1000
        if self._elapsed(state) > limit:
            return RollBack(RollbackTrigger.DEADLINE, f"not promoted within {limit:g}s")
        return Wait(max(self.tick_s, 1.0))

    def _step_remove_stable(self, state: DeploymentState, step: Step) -> StepOutcome:
        target = state.request.target
        candidate = state.candidate_revision
        assert candidate is not None
        if self.adapter.traffic(target).weights.get(candidate) != 100:
            applied = self.adapter.set_traffic(target, {candidate: 100})
            self._append(EventKind.WEIGHTS_SET, weights=applied.weights, address=applied.address)
        for revision in self.adapter.list_revisions(target):
            if revision.revision != candidate:
                self.adapter.remove_revision(target, revision.revision)
        return Done()

    def _while_paused(self, state: DeploymentState) -> float:
        limit = state.request.strategy.max_pause_duration / 1000
        if self.clock.now() - (state.paused_at or self.clock.now()) > limit:
            self._request_rollback(RollbackTrigger.DEADLINE, f"paused for longer than {limit:g}s")
            return 0.0
        return max(self.tick_s, 1.0)

    # ------------------------------------------------------------------------------- rollback
    def _request_rollback(self, trigger: RollbackTrigger, reason: str) -> None:
        log.warning("%s: rollback (%s): %s", self.deployment_id, trigger.value, reason)
        self._append(EventKind.ROLLBACK_REQUESTED, trigger=trigger.value, reason=reason, by=self.actor)

    def _roll_back(self, state: DeploymentState) -> float:
        """Traffic back to stable first (fast path, no analysis), then the new revision removed."""
        target = state.request.target
        stable, candidate = state.stable_revision, state.candidate_revision
        if stable and self._route_to_stable(state, stable) is False:
            return self.tick_s
        if candidate and candidate != stable:
            self.adapter.remove_revision(target, candidate)
        assert state.rollback is not None
        self._finish(_rollback_outcome(state), f"{state.rollback.trigger.value}: {state.rollback.reason}")
        return 0.0

    def _route_to_stable(self, state: DeploymentState, stable: str) -> bool:
        """Put 100% on stable as soon as one stable replica is ready; then restore its replica count."""
        target = state.request.target
        status = self.adapter.revision_status(target, stable)
        ready = status is not None and status.ready_replicas > 0
        if ready and self.adapter.traffic(target).weights.get(stable) != 100:
            applied = self.adapter.set_traffic(target, {stable: 100})
            self._append(EventKind.WEIGHTS_SET, weights=applied.weights, address=applied.address)
        replicas = self._wanted(state.request.strategy.replicas)
        artifact = self._stable_artifact()
        if artifact is not None and (status is None or status.desired_replicas < replicas):
            self.adapter.ensure_revision(
                RevisionSpec(
                    target=target, artifact=artifact, replicas=replicas, deployment_id=state.deployment_id
                )
            )
            return False
        if status is None or status.ready_replicas == 0:
            return self._stable_lost(state, stable)
        return True

    def _stable_lost(self, state: DeploymentState, stable: str) -> bool:
        waited = self.clock.now() - (state.rollback.at if state.rollback else self.clock.now())
        if waited > state.request.strategy.progress_deadline / 1000:
            raise PlatformError(
                self.adapter.platform,
                state.request.target.key,
                f"stable revision {stable} has no ready replica to roll back to",
            )
        return False

    def _finish(self, outcome: Phase, message: str) -> None:
        weights: dict[str, int] = {}
        try:
            weights = self.adapter.traffic(self.state().request.target).weights
        except PlatformError as error:
            log.warning("%s: could not read final weights: %s", self.deployment_id, error)
        self._append(EventKind.FINISHED, outcome=outcome.value, message=message, weights=weights)


def _rollback_outcome(state: DeploymentState) -> Phase:
    assert state.rollback is not None
    if state.rollback.trigger is RollbackTrigger.ABORT:
        return Phase.ABORTED
    if state.stable_revision is None:
        return Phase.FAILED
    return Phase.ROLLED_BACK
