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
from typing import Protocol, cast

from engine.analysis import MetricsFactory, WindowReader, analysis_settings, platform_counters, window_end
from engine.control import control_event
from engine.governance import feature_enabled
from engine.hooks import Halt, Hold, StepGate
from engine.journal import Journal
from engine.judge import (
    Judgement,
    LocalJudge,
    TriggerResult,
    Verdict,
    WindowJudge,
    describe_trigger,
    evaluate_triggers,
    judge_window,
)
from engine.models import (
    Artifact,
    Environment,
    FailureThresholds,
    OnInconclusive,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Thresholds,
    TriggerAction,
)
from engine.plans import LocalPlanner, Planner
from engine.platform import (
    LiveState,
    MetricSnapshot,
    PlatformAdapter,
    PlatformError,
    RepairablePlatform,
    RevisionSpec,
    RevisionStatus,
    SupervisionMode,
    TransientPlatformError,
)
from engine.readiness import (
    EnvironmentStatus,
    declared_problems,
    needs_room,
    readiness_notes,
    record_environment_status,
    serving_for,
)
from engine.resources import peak_extra_replicas, shortages
from engine.rollback_decision import JournalDecider, RollbackDecider
from engine.state import DeploymentState, EventKind, Role, Step, StepKind
from engine.supervision import restore_serving
from engine.timing import TimedAdapter

log = logging.getLogger(__name__)

MAX_TRANSIENT_RETRIES = 6
UNHEALTHY_CHECKS = 3
# A candidate replica whose process is gone is started again this many times per deployment, as a
# platform's own controller would (a Kubernetes ReplicaSet): a replica killed from outside is no verdict on
# the candidate; one that keeps dying is.
CANDIDATE_RESTARTS = 2
# ...and what the router counted while it was dead is left out: the analysis waits (at most this long) for
# the restarted replica to be ready and up in the router, then starts a fresh window.
REVIVE_SETTLE_S = 10.0
REVIVE_POLL_S = 0.25
# A container killed a moment ago refuses connections before Docker reports it exited: a failed smoke test
# (blue-green's green has no traffic yet, so waiting costs no request) looks this long for a dead candidate
# replica before its verdict stands. The full chaos matrix met it: the smoke test ran within that moment.
SMOKE_CONFIRM_S = 1.0
# A deploy step asks the platform whether its replicas are ready every READY_POLL_S at first, and then every
# READY_POLL_SHARE of the time the step has waited (never more often than the first, never less than tick_s).
READY_POLL_S = 0.025
READY_POLL_SHARE = 0.25
PLATFORM_FAULT_BACKOFF_S = 5.0  # the longest wait between two attempts to restore a faulty platform
WINDOW_STEPS = (StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE)
# Rollbacks decided by judging the candidate (the automatedRollback feature may leave them to a person).
_JUDGED = (RollbackTrigger.METRICS, RollbackTrigger.HEALTH)


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
        rollback_decider: RollbackDecider | None = None,
        preflight: Callable[[DeploymentState], str | None] | None = None,
        metrics: MetricsFactory | None = None,
        planner: Planner | None = None,
        judge: WindowJudge | None = None,
        gate: StepGate | None = None,
    ) -> None:
        self.journal = journal
        # Automated rollbacks are proposed here and decided (and journaled) by the rollback system, DO-004.
        self.rollback_decider = rollback_decider or JournalDecider(journal, actor)
        self.preflight = preflight  # governance checks before the first platform change (None: none)
        self.deployment_id = deployment_id
        self.clock = clock or SystemClock()
        self.smoke = smoke
        self.actor = actor
        self.tick_s = tick_s
        self._adapter_factory = adapter_factory
        self._adapter: PlatformAdapter | None = None
        self._timed: TimedAdapter | None = None
        self._step_platform_start = 0.0
        self._transient_failures = 0
        self._unhealthy_checks = 0
        self._smoked_at: float | None = None
        self._waiting_noted = False
        self._restore_error: str | None = None
        self.planner = planner or LocalPlanner()
        self.judge = judge or LocalJudge()
        self.window = WindowReader(lambda: self.adapter, metrics or platform_counters, self.clock.now)
        self._fired: set[int] = set()  # pause triggers already acted on in this step
        self.gate = gate

    # ------------------------------------------------------------------------------- plumbing
    @property
    def adapter(self) -> PlatformAdapter:
        if self._adapter is None:
            self._timed = TimedAdapter(self._adapter_factory(self.state().request.platform))
            self._adapter = self._timed  # type: ignore[assignment]
        return self._adapter

    def close(self) -> None:
        self.window.close()
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
            if state.planned and state.rollback is None:
                return self._on_platform_fault(state, str(error))
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
        if not state.planned:  # nothing was changed yet (validation): stop here, say why
            self._finish(Phase.FAILED, reason)
            return 0.0
        if state.rollback_started:  # rolling back itself failed: say what is left and where traffic goes
            left, weights = self._left_behind(state)
            self._finish(Phase.FAILED, f"rolling back failed: {reason}; {left}", weights)
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
            refusal = self.preflight(state) if self.preflight is not None else None
            if refusal is not None:  # nothing was changed: no platform call, not even to read traffic
                self._append(EventKind.FINISHED, outcome=Phase.FAILED.value, message=refusal)
                return 0.0
            return self._plan(state)
        if state.paused:
            return self._while_paused(state)
        if state.platform_fault is not None:
            return self._restore_platform(state)
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
            if outcome.trigger in _JUDGED and self._revive_candidate(state):
                return 0.0  # a replica killed from outside, not the candidate: a fresh window once it is up
            if outcome.trigger in _JUDGED and not feature_enabled(state, "automated_rollback"):
                self._append(
                    EventKind.NOTE,
                    message=f"automated rollback is off, paused for a person: {outcome.reason}",
                )
                kind, data = control_event("pause", outcome.reason, self.actor)
                self._append(kind, **data)
                return 0.0
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
        request = state.request
        environment = request.governance.environment if request.governance else None
        if environment is not None:  # what the platform declared: asked before the platform itself
            refused = declared_problems(
                environment, adapter.platform, adapter.capabilities, request.strategy.replicas
            )
            if refused:
                return self._refuse(refused)
        adapter.validate()
        candidate = request.artifact.revision
        traffic = adapter.traffic(request.target)
        serving = {rev: w for rev, w in traffic.weights.items() if w > 0}
        stable = max(serving, key=lambda rev: serving[rev]) if serving else None
        if stable == candidate and serving.get(candidate) == 100 and self._runs_healthy(state, candidate):
            plan: list[Step] = []
            stable = None
        else:
            if stable == candidate:
                stable = next((rev for rev in serving if rev != candidate), None)
            plan = self.planner.plan(request.strategy, stable is not None)
        if environment is not None and self._not_ready(state, environment, plan, stable):
            return 0.0
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

    def _not_ready(
        self, state: DeploymentState, environment: Environment, plan: list[Step], stable: str | None
    ) -> bool:
        """Room for the plan's peak on the platform (the environment's status journaled when it changes);
        True when the deployment was refused for lack of it. What the platform will not enforce is noted."""
        need = environment.resources.per_replica
        extra = 0
        if needs_room(need):
            status = self.adapter.revision_status(state.request.target, stable) if stable else None
            extra = peak_extra_replicas(plan, status.desired_replicas if status else 0)
        if extra > 0:  # room was asked for: its answer is the environment's status now
            shortages_found = shortages(
                environment.name, need, self.adapter.capacity(state.request.target, extra)
            )
            status_now = EnvironmentStatus.CAPACITY_SHORT if shortages_found else EnvironmentStatus.READY
            reason = "; ".join(shortages_found) or f"room for {extra} more replica(s) of {need.described()}"
            record_environment_status(self.journal, environment.name, status_now, reason, self.actor)
            if shortages_found:
                self._refuse(shortages_found)
                return True
        notes = readiness_notes(environment, self.adapter.platform, self.adapter.capabilities)
        if notes:
            self._append(EventKind.NOTE, message="; ".join(notes))
        return False

    def _refuse(self, problems: list[str]) -> float:
        """End the deployment before any change, saying why."""
        self._append(
            EventKind.FINISHED,
            outcome=Phase.FAILED.value,
            message="refused before any change: " + "; ".join(problems),
        )
        return 0.0

    def _spec(self, state: DeploymentState, artifact: Artifact, replicas: int) -> RevisionSpec:
        """A revision as the environment wants it served: its limits per replica, TLS, who may reach it."""
        environment = state.request.governance.environment if state.request.governance else None
        return RevisionSpec(
            target=state.request.target,
            artifact=artifact,
            replicas=replicas,
            deployment_id=state.deployment_id,
            resources=environment.resources.per_replica if environment else None,
            serving=serving_for(environment) if environment else None,
        )

    def _artifact_of(self, target_key: str, revision: str | None) -> dict[str, object] | None:
        """The artifact of the newest deployment of this target that made ``revision`` live."""
        past = self.journal.newest_that_made_live(target_key, revision) if revision is not None else None
        return past.request.artifact.model_dump(mode="json") if past is not None else None

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
        baseline: dict[str, object] = {}
        self._fresh_checks()
        if step.kind in (StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE) and state.candidate_revision:
            baseline = self.window.baseline(state)
        # Timing of the step starts with its journaled start, as elapsed_s does.
        self._step_platform_start = self._platform_seconds()
        log.debug("%s: step %d/%d %s", self.deployment_id, state.step_index + 1, len(state.plan), step.label)
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
        return min(replicas, 1) if self.adapter.capabilities.scales_itself else replicas

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
            self.adapter.ensure_revision(self._spec(state, artifact, step.replicas))
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
        # A platform that can wait for readiness cheaply (its replicas' ports) waits up to a tick here.
        waiting = getattr(self.adapter, "await_ready", None)
        if waiting is not None and status is not None and status.desired_replicas == wanted:
            status = waiting(target, revision or "", min(self.tick_s, deadline_s - self._elapsed(state)))
            if status is not None and status.ready and status.desired_replicas == wanted:
                return Done()
        # Readiness is the platform's work: poll soon (a process is up in tens of ms), then less often, so
        # that it is seen ready at most a quarter of the time already waited late, and a slow platform is
        # asked at most once a tick. Backing off by half each time had it seen up to half that late: a
        # start that took 0.25 s on a busy machine was seen 0.15 s late.
        return Wait(min(self.tick_s, max(READY_POLL_S, READY_POLL_SHARE * self._elapsed(state))))

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
        if self._stable_restarted(state, weights):
            return Wait(self.tick_s)
        applied = self.adapter.set_traffic(state.request.target, weights)
        self._append(EventKind.WEIGHTS_SET, weights=applied.weights, address=applied.address)
        return Done()

    def _thresholds(self, state: DeploymentState) -> tuple[Thresholds, FailureThresholds, int, float]:
        config = analysis_settings(state.request.strategy)
        interval = config.analysis_interval / 1000
        return config.success_threshold, config.failure_threshold, config.min_request_count, interval

    def _candidate_metrics(self, state: DeploymentState) -> MetricSnapshot | None:
        """Through the metric provider (which may read the servers' health with the counts, in one query)."""
        return self.window.candidate_snapshot(state)

    def _healthy_now(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> bool:
        """The router's own health checks when it reports them (no extra probes), else a readiness check."""
        if snapshot is not None and snapshot.servers_total > 0:
            return snapshot.servers_up > 0
        status = self.adapter.revision_status(state.request.target, state.candidate_revision or "")
        return status is not None and status.ready_replicas > 0

    def _health(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> RollBack | None:
        """N consecutive checks with no healthy replica of the candidate mean unhealthy."""
        # A dead candidate replica is started again first, even beside live ones: a blue-green switch
        # waits for every green server, and one replica lost to an outside kill is no verdict. Only
        # looked for when the router sees a server down (or reports none): not on every healthy check.
        some_down = snapshot is None or snapshot.servers_up < snapshot.servers_total
        if (some_down and self._revive_candidate(state)) or self._healthy_now(state, snapshot):
            self._unhealthy_checks = 0
            return None
        self._unhealthy_checks += 1
        if self._unhealthy_checks < UNHEALTHY_CHECKS:
            return None
        return RollBack(
            RollbackTrigger.HEALTH,
            f"{state.candidate_revision} failed {self._unhealthy_checks} health checks in a row",
        )

    def _revive_candidate(self, state: DeploymentState) -> bool:
        """Start the candidate's dead replicas again (journaled as drift), up to CANDIDATE_RESTARTS times per
        deployment, on platforms whose replicas we run; True when it did."""
        revision = state.candidate_revision
        observed = self._candidate_live(state)
        dead = [replica.index for replica in observed.replicas if not replica.alive] if observed else []
        if observed is None or not dead or revision is None:
            return False
        restarts = sum(
            1
            for event in self.journal.events(state.deployment_id)
            if event.kind is EventKind.DRIFT and event.data.get("candidate_restart")
        )
        if restarts >= CANDIDATE_RESTARTS:
            return False
        status = self.adapter.ensure_revision(
            self._spec(state, state.request.artifact, len(observed.replicas))
        )
        self._append(
            EventKind.DRIFT,
            candidate_restart=True,
            found=f"{revision}: replica(s) {dead} not running",
            done=f"started again ({status.running_replicas}/{status.desired_replicas}), "
            f"restart {restarts + 1} of {CANDIDATE_RESTARTS}",
        )
        return True

    def _candidate_live(self, state: DeploymentState) -> LiveState | None:
        """The candidate's replicas as the platform sees them; None where we do not run them."""
        repairable, revision = self._repairable(), state.candidate_revision
        if repairable is None or revision is None:
            return None
        return repairable.live_state(state.request.target, revision)

    def _fresh_checks(self) -> None:
        """This process's part of a new window: its smoke test, fired triggers and health count."""
        self.window.start_step()
        self._fired = set()
        self._unhealthy_checks = 0
        self._smoked_at = None

    def _health_or_settle(
        self, state: DeploymentState, snapshot: MetricSnapshot | None
    ) -> StepOutcome | None:
        """The health checks, except while a candidate replica started again settles: until it is up in the
        router its server is down there, which is no failed health check."""
        settling = self._settling(state, snapshot)
        if settling is not None:
            return settling
        unhealthy = self._health(state, snapshot)
        if unhealthy is not None:
            return unhealthy
        return self._settling(state, snapshot)  # the health check may have just started one again

    def _settling(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> StepOutcome | None:
        revived_at = _unsettled_restart(self.state())  # the journal's, current: it may have just happened
        return None if revived_at is None else self._settle_revived(state, snapshot, revived_at)

    def _settle_revived(
        self, state: DeploymentState, snapshot: MetricSnapshot | None, revived_at: float
    ) -> StepOutcome:
        """A candidate replica killed from outside and started again is no verdict on the candidate, nor
        are the requests the router sent it while it was dead: the analysis waits until the candidate is
        ready and all its servers are up in the router (at most REVIVE_SETTLE_S), then resumes on a fresh
        window, as after a platform fault. One that dies again is met by the health checks. Journaled, so a
        runner restarted meanwhile settles it too."""
        waited = self.clock.now() - revived_at
        if waited < REVIVE_SETTLE_S and self._candidate_starting(state, snapshot):
            return Wait(min(self.tick_s, REVIVE_POLL_S))
        self._fresh_checks()
        self._restart_window(
            state, state.consecutive_failures, reason="a candidate replica was started again"
        )
        return Wait(0.0)

    def _candidate_starting(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> bool:
        """Its replicas run but are not all ready and up in the router yet. One that died again is not
        waited for: the checks meet it (and the restarts are bounded)."""
        revision = state.candidate_revision or ""
        repairable = self._repairable()
        if repairable is not None and any(
            not replica.alive for replica in repairable.live_state(state.request.target, revision).replicas
        ):
            return False
        status = self.adapter.revision_status(state.request.target, revision)
        if status is None or not status.ready or status.ready_replicas < status.desired_replicas:
            return True
        return (
            snapshot is not None
            and snapshot.servers_total > 0
            and snapshot.servers_up < snapshot.servers_total
        )

    def _step_analyze(self, state: DeploymentState, step: Step) -> StepOutcome:
        _, failure, _, interval = self._thresholds(state)
        snapshot = self._candidate_metrics(state)
        if self._platform_at_fault(state, snapshot):
            return Wait(0.0)
        checked = self._health_or_settle(state, snapshot)
        if checked is not None:
            return checked
        # Failure thresholds at every check, in this process (cheap); the whole window at its end, through
        # the strategy's judge (its domain worker), with the comparison against the stable revision.
        self.window.observe_health(state, snapshot)
        failing = self.window.failing(state)
        if failing is not None:
            early = judge_window(failing)
            early.judged_by = "runner (in-window check)"
            self._journal_judgement(early)
            return RollBack(RollbackTrigger.METRICS, early.reason)
        remaining = window_end(state, step) - self.clock.now()
        if remaining > 0:
            return Wait(min(interval, remaining))
        judgement = self.judge.judge(self.window.window_end(state), state.request.strategy.type)
        self._journal_judgement(judgement)
        if judgement.verdict is Verdict.FAILURE:
            return RollBack(RollbackTrigger.METRICS, judgement.reason)
        if step.kind is StepKind.HOLD or judgement.verdict is Verdict.SUCCESS:
            return Done()
        if judgement.verdict is Verdict.NO_DATA:
            return self._too_little_data(state, judgement, interval)
        failures = state.consecutive_failures + 1
        if failures >= failure.consecutive_failures:
            return RollBack(
                RollbackTrigger.METRICS,
                f"{failures} analysis windows in a row without success ({judgement.verdict.value}): "
                f"{judgement.reason}",
            )
        self._restart_window(state, failures)
        return Wait(interval)

    def _journal_judgement(self, judgement: Judgement, **extra: object) -> None:
        self._append(EventKind.MEASUREMENT, check="analysis", **judgement.model_dump(mode="json"), **extra)

    def _restart_window(self, state: DeploymentState, failures: int, reason: str | None = None) -> None:
        self._step_platform_start = self._platform_seconds()  # elapsed_s counts from the restart too
        extra = {"reason": reason} if reason else {}
        self._append(
            EventKind.WINDOW_RESTARTED,
            consecutive_failures=failures,
            baseline=self.window.baseline(state),
            **extra,
        )

    def _too_little_data(self, state: DeploymentState, judgement: Judgement, interval: float) -> StepOutcome:
        """Never a silent pass: the same window goes on longer (bounded), then ends inconclusive, which
        pauses for a person (a fresh window once resumed) or fails, as configured."""
        settings = analysis_settings(state.request.strategy)
        if state.window_extensions < settings.max_window_extensions:
            self._append(
                EventKind.WINDOW_EXTENDED, extensions=state.window_extensions + 1, reason=judgement.reason
            )
            return Wait(interval)
        reason = f"inconclusive after {state.window_extensions} extension(s): {judgement.reason}"
        self._journal_judgement(
            judgement.model_copy(update={"verdict": Verdict.INCONCLUSIVE, "reason": reason})
        )
        if settings.on_inconclusive is OnInconclusive.FAIL:
            return RollBack(RollbackTrigger.METRICS, reason)
        self._restart_window(state, state.consecutive_failures)
        self._append(EventKind.NOTE, message=f"paused: {reason}")
        self._append(EventKind.PAUSED, reason=reason, by=self.actor)
        return Wait(self.tick_s)

    def _step_validate(self, state: DeploymentState, step: Step) -> StepOutcome:
        snapshot = self._candidate_metrics(state)
        if self._platform_at_fault(state, snapshot):
            return Wait(0.0)
        checked = self._health_or_settle(state, snapshot)
        if checked is not None:
            return checked
        if step.smoke and self._smoked_at is None and self.smoke is not None:
            failed = self._smoke_test(state)
            if failed is not None:
                return failed
        if self.smoke is None:
            self.window.not_measurable.add("smoke_success_rate")
        self.window.observe_health(state, snapshot)
        return self._switch_triggers(state, step, snapshot)

    def _switch_triggers(
        self, state: DeploymentState, step: Step, snapshot: MetricSnapshot | None
    ) -> StepOutcome:
        """The seed's switch triggers on the idle candidate: a rollback or pause trigger acts as soon as its
        condition holds; from the window's end on, the switch goes ahead once every switch trigger holds
        (confirmed by the strategy's judge), and a green they never all hold for is rolled back at the
        progress deadline."""
        config = state.request.strategy.blue_green
        interval = self._thresholds(state)[3]
        remaining = step.duration_ms / 1000 - self._elapsed(state)
        if config is None:
            return Done() if remaining <= 0 else Wait(min(interval, remaining))
        figures = self.window.validation_figures(state, *self._candidate_readiness(state, snapshot))
        results = evaluate_triggers(config.switch_triggers, figures)
        for result in results:
            if (
                result.holds
                and result.action != TriggerAction.SWITCH.value
                and result.index not in self._fired
            ):
                return self._trigger_fired(state, result, figures)
        if remaining > 0:
            return Wait(min(interval, remaining))
        unmet = self._unmet(results)
        if not unmet:
            results = self.judge.switch(config.switch_triggers, figures)
            unmet = self._unmet(results)
        deadline_s = state.request.strategy.progress_deadline / 1000
        if unmet and self._elapsed(state) <= deadline_s:
            return Wait(interval)  # e.g. a router that has not yet looked at the green's servers
        self._append(
            EventKind.MEASUREMENT,
            check="switch_triggers",
            triggers=[r.model_dump(mode="json") for r in results],
            figures=figures,
            not_measurable=sorted(self.window.not_measurable),
        )
        if unmet:
            reasons = ", ".join(describe_trigger(r) for r in unmet)
            return RollBack(
                RollbackTrigger.METRICS,
                f"validation: switch trigger not met by the progress deadline ({deadline_s:g}s): {reasons}",
            )
        return Done()

    def _unmet(self, results: list[TriggerResult]) -> list[TriggerResult]:
        """Switch triggers that do not hold. A figure this platform cannot measure at all (no direct endpoints
        to smoke-test) does not hold a switch back; one it can measure but did not is never taken as met."""
        return [
            r
            for r in results
            if r.action == TriggerAction.SWITCH.value
            and r.metric
            and r.holds is not True
            and r.metric not in self.window.not_measurable
        ]

    def _candidate_readiness(
        self, state: DeploymentState, snapshot: MetricSnapshot | None
    ) -> tuple[bool, int]:
        """(every replica of the candidate healthy, how many are): by the router's own checks when it has the
        candidate's servers (traffic switched before it has looked at them would find none up), else by
        the platform's readiness probes."""
        if snapshot is not None and snapshot.servers_total > 0:
            return snapshot.servers_up == snapshot.servers_total, snapshot.servers_up
        status = self.adapter.revision_status(state.request.target, state.candidate_revision or "")
        if status is None:
            return False, 0
        return status.ready_replicas > 0 and status.ready, status.ready_replicas

    def _trigger_fired(
        self, state: DeploymentState, result: TriggerResult, figures: dict[str, float | str | None]
    ) -> StepOutcome:
        reason = f"switch trigger {describe_trigger(result)}: {result.action}"
        self._append(
            EventKind.MEASUREMENT,
            check="switch_triggers",
            triggers=[result.model_dump(mode="json")],
            figures=figures,
        )
        if result.action == TriggerAction.ROLLBACK.value:
            trigger = RollbackTrigger.HEALTH if result.metric == "health_status" else RollbackTrigger.METRICS
            return RollBack(trigger, reason)
        self._fired.add(result.index)
        self._append(EventKind.NOTE, message=f"paused: {reason}")
        self._append(EventKind.PAUSED, reason=reason, by=self.actor)
        return Wait(self.tick_s)

    def _smoke_test(self, state: DeploymentState) -> RollBack | None:
        assert self.smoke is not None
        status = self.adapter.revision_status(state.request.target, state.candidate_revision or "")
        self._smoked_at = self.clock.now()
        if status is None or not status.endpoints:
            self._append(EventKind.NOTE, message="smoke test skipped: the platform gives no direct endpoints")
            self.window.not_measurable.add("smoke_success_rate")
            return None
        config = state.request.strategy.blue_green
        assert config is not None
        path = state.request.artifact.metadata.get("smokePath", "/")
        ok, failed = self.smoke.smoke(status.endpoints, path, config.smoke_requests)
        self.window.smoke = (ok, failed)
        rate = 100.0 * failed / max(1, ok + failed)  # percent, as the thresholds
        self._append(
            EventKind.MEASUREMENT, check="smoke", requests=ok + failed, errors=failed, error_rate=rate
        )
        limit = config.failure_threshold.error_rate
        if limit is not None and rate > limit:
            self._await_dead_candidate(state, SMOKE_CONFIRM_S)  # then the judged rollback revives it
            return RollBack(RollbackTrigger.METRICS, f"smoke test: {failed} of {ok + failed} requests failed")
        return None

    def _await_dead_candidate(self, state: DeploymentState, within_s: float) -> None:
        """Until the platform reports a candidate replica dead, or ``within_s`` passes (then the verdict is
        the candidate's own); only where we run the replicas."""
        deadline = time.monotonic() + within_s
        while True:
            observed = self._candidate_live(state)
            if observed is None or any(not r.alive for r in observed.replicas):
                return
            if time.monotonic() >= deadline:
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

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
        log.warning("%s: rollback proposed (%s): %s", self.deployment_id, trigger.value, reason)
        self.rollback_decider.decide(self.deployment_id, trigger, reason, self.actor)

    def _roll_back(self, state: DeploymentState) -> float:
        """Traffic back to stable first (fast path, no analysis), then the new revision removed; within
        the progress deadline, or the deployment fails saying what is left running and where traffic goes."""
        if self._rollback_overdue(state):
            return 0.0
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
        lost = status is None or status.desired_replicas < replicas or status.running_replicas < replicas
        if artifact is not None and lost:  # gone, scaled down, or dead: recreated from the journaled artifact
            self.adapter.ensure_revision(self._spec(state, artifact, replicas))
            return self._stable_lost(state, stable)
        if status is None or status.ready_replicas == 0:
            return self._stable_lost(state, stable)
        return True

    def _stable_lost(self, state: DeploymentState, stable: str) -> bool:
        """Waiting for the stable revision to become ready (said once in the journal; bounded by
        ``_rollback_overdue``)."""
        if not self._waiting_noted:
            self._waiting_noted = True
            self._append(EventKind.NOTE, message=f"rolling back: waiting for a ready replica of {stable}")
        return False

    def _finish(self, outcome: Phase, message: str, weights: dict[str, int] | None = None) -> None:
        if weights is None:
            weights = {}
            try:
                weights = self.adapter.traffic(self.state().request.target).weights
            except PlatformError as error:
                log.warning("%s: could not read final weights: %s", self.deployment_id, error)
        self._append(EventKind.FINISHED, outcome=outcome.value, message=message, weights=weights)

    # ------------------------------------------------------------------------------- platform faults
    def _repairable(self) -> RepairablePlatform | None:
        """The adapter when it runs the router and the replicas itself (the platforms it declares REPAIR)."""
        adapter = self.adapter
        return cast(RepairablePlatform, adapter) if adapter.supervision is SupervisionMode.REPAIR else None

    def _on_platform_fault(self, state: DeploymentState, reason: str) -> float:
        """The platform (router, API), not the candidate, failed: analysis pauses (journaled once), and the
        next passes restore it, backing off; past the progress deadline the deployment fails, naming it."""
        if state.platform_fault is None:
            log.warning("%s: platform fault, analysis paused: %s", self.deployment_id, reason)
            state = self._append(EventKind.PLATFORM_FAULT, reason=reason, weights=state.weights)
        if self._fault_overdue(state):
            return 0.0
        self._transient_failures += 1
        return min(PLATFORM_FAULT_BACKOFF_S, 0.2 * 2 ** (self._transient_failures - 1))

    def _fault_overdue(self, state: DeploymentState) -> bool:
        deadline = state.request.strategy.progress_deadline / 1000
        if self.clock.now() - (state.platform_fault_since or self.clock.now()) <= deadline:
            return False
        left, weights = self._left_behind(state)
        fault = state.platform_fault
        if self._restore_error:
            fault = f"{fault} (restoring it failed: {self._restore_error})"
        message = (
            f"platform fault not resolved within the progress deadline of {deadline:g}s: {fault}; {left}"
        )
        self._finish(Phase.FAILED, message, weights)
        return True

    def _restore_platform(self, state: DeploymentState) -> float:
        """Replicas that died with the platform and the router (with the journaled weights) come back, then
        the analysis resumes on a fresh window: a restarted router counts from zero."""
        if self._fault_overdue(state):
            return 0.0
        since = state.platform_fault_since or self.clock.now()
        done = "the platform answers again"
        repairable = self._repairable()
        try:
            if repairable is not None:
                done = restore_serving(
                    repairable,
                    state.request.target,
                    self._artifacts(state),
                    state.weights,
                    lambda artifact, replicas: self._spec(state, artifact, replicas),
                )
            step = state.current_step()
            fresh = step is not None and step.kind in WINDOW_STEPS and state.step_started_at is not None
            baseline = self.window.baseline(state) if fresh else {}
        except PlatformError as error:  # not restored yet (a transient one is retried the same way)
            self._restore_error = str(error)
            return self._on_platform_fault(state, str(error))
        down = self.clock.now() - since
        self._append(
            EventKind.PLATFORM_RESTORED,
            restored=f"platform restored after {down:.1f}s: {done}",
            fresh_window=fresh,
            baseline=baseline,
            down_s=round(down, 3),
        )
        self._unhealthy_checks = self._transient_failures = 0
        self._step_platform_start = self._platform_seconds()
        return 0.0

    def _artifacts(self, state: DeploymentState) -> dict[str, Artifact]:
        """The journaled artifacts of the revisions this deployment runs (to start dead replicas again)."""
        artifacts: dict[str, Artifact] = {}
        stable = self._stable_artifact()
        if state.stable_revision and stable is not None:
            artifacts[state.stable_revision] = stable
        if state.candidate_revision:
            artifacts[state.candidate_revision] = state.request.artifact
        return artifacts

    def _platform_at_fault(self, state: DeploymentState, snapshot: MetricSnapshot | None) -> bool:
        """A candidate that looks down may be the platform's fault: our router not running, or every
        revision (stable too) down at once. Looked for only then, so a healthy check costs nothing more."""
        if self._repairable() is None or (snapshot is not None and snapshot.servers_up > 0):
            return False
        reason = self._router_down(state) or self._every_revision_down(state)
        if reason is None:
            return False
        self._on_platform_fault(state, reason)
        return True

    def _router_down(self, state: DeploymentState) -> str | None:
        target = state.request.target
        router = self.adapter.live_state(target, state.candidate_revision or "").router
        if router is None or not router.running:
            why = (router.detail if router is not None else "") or "not running"
            return f"the router of {target.key} is down: {why}"
        return None

    def _every_revision_down(self, state: DeploymentState) -> str | None:
        stable = state.stable_revision
        if stable is None or stable == state.candidate_revision:
            return None
        snapshot = self.adapter.metrics(state.request.target, stable).get(stable)
        if snapshot is None or snapshot.servers_total == 0 or snapshot.servers_up > 0:
            return None
        return f"every revision is down at once ({state.candidate_revision} and {stable}: no server up)"

    def _stable_restarted(self, state: DeploymentState, weights: dict[str, int]) -> bool:
        """Traffic is about to go to a stable revision whose replicas all died: start them again from its
        journaled artifact first (returns True while they start; the step's deadline bounds it)."""
        stable, repairable = state.stable_revision, self._repairable()
        if repairable is None or stable is None or weights.get(stable, 0) == 0:
            return False
        observed = repairable.live_state(state.request.target, stable)
        if any(r.alive for r in observed.replicas):
            return False
        artifact = self._stable_artifact()
        if artifact is None:  # not deployed by us: set_traffic says what is wrong
            return False
        if self._elapsed(state) > state.request.strategy.progress_deadline / 1000:
            cause = f"stable revision {stable} has no running replica and did not start again"
            raise PlatformError(self.adapter.platform, state.request.target.key, cause)
        replicas = len(observed.replicas) or self._wanted(state.request.strategy.replicas)
        spec = RevisionSpec(
            target=state.request.target,
            artifact=artifact,
            replicas=replicas,
            deployment_id=self.deployment_id,
        )
        repairable.ensure_revision(spec)
        self._append(EventKind.NOTE, message=f"stable {stable} had no running replica: started again")
        return True

    def _runs_healthy(self, state: DeploymentState, revision: str) -> bool:
        """ "Already live" means running with every wanted replica ready behind a router that answers (its
        weights were just read from it); anything less is deployed again."""
        status = self.adapter.revision_status(state.request.target, revision)
        wanted = self._wanted(state.request.strategy.replicas)
        return status is not None and status.desired_replicas == wanted and status.ready_replicas >= wanted

    def _rollback_overdue(self, state: DeploymentState) -> bool:
        deadline = state.request.strategy.progress_deadline / 1000
        started = state.rollback.at if state.rollback is not None else self.clock.now()
        if self.clock.now() - started <= deadline:
            return False
        left, weights = self._left_behind(state)
        stable = state.stable_revision or "no stable revision"
        message = f"rollback to {stable} did not complete within the progress deadline of {deadline:g}s; "
        self._finish(Phase.FAILED, message + left, weights)
        return True

    def _left_behind(self, state: DeploymentState) -> tuple[str, dict[str, int]]:
        """What is left running and where traffic goes, for a deployment that ends without completing:
        read from the platform, or the journal's last word when the platform does not answer."""
        target = state.request.target
        try:
            revisions = self.adapter.list_revisions(target)
            weights, source = self.adapter.traffic(target).weights, "in force"
            running = ", ".join(
                f"{r.revision} ({r.ready_replicas}/{r.desired_replicas} ready)" for r in revisions
            )
        except (PlatformError, ValueError, OSError) as error:
            weights, source = dict(state.weights), "as last journaled"
            running = f"unknown (the platform does not answer: {error})"
        shares = ", ".join(f"{rev} {pct}%" for rev, pct in weights.items() if pct > 0) or "no revision"
        return (
            f"still running on {self.adapter.platform}: {running or 'nothing'}; traffic ({source}): {shares}",
            weights,
        )


def _rollback_outcome(state: DeploymentState) -> Phase:
    assert state.rollback is not None
    if state.rollback.trigger is RollbackTrigger.ABORT:
        return Phase.ABORTED
    if state.stable_revision is None:
        return Phase.FAILED
    return Phase.ROLLED_BACK


def _unsettled_restart(state: DeploymentState) -> float | None:
    """When a candidate replica was started again inside the current window (journaled), else None."""
    at = state.candidate_restarted_at
    return at if at is not None and at > (state.step_started_at or 0.0) else None
