"""The pipeline engine (DO-006's logic): a run's stage graph driven to one outcome, journaled as it goes.

Every decision is folded from the pipeline's own event stream (``engine.pipeline_state``), so a run that is
interrupted at any moment (its actor, the queen or the whole cluster killed) is continued by ``run`` from the
journal: finished stages are not run again, a running stage is started again (its executor is idempotent: a
deploy stage's deployment id is fixed per stage and the queen's submit is idempotent per id) and keeps its
first start's deadline.

- Ready stages (all dependencies succeeded) start at once, in parallel, up to ``maxParallelStages``.
- A failed stage blocks what depends on it; with ``failFast`` (the default) nothing new starts either.
  Running stages end on their own (each has a deadline).
- Then what the pipeline deployed is rolled back (the template's ``rollback`` scope: the failed stage's
  environment by default) through the queen's rollback of a succeeded deployment, in parallel.
- The outcome names the failed stage and the reason, what did not run and what was rolled back.

No Ray here: the queen, the HTTP checks and the commands are reached through small protocols; unit tests
drive it with fakes and a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.compliance import PIPELINE_RECORD
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, DeploymentStatus, Phase, Target
from engine.pipeline_model import StageKind
from engine.pipeline_state import (
    PipelineEventKind,
    PipelinePhase,
    PipelineSpec,
    PipelineState,
    StageSpec,
    StageStatus,
    approval_subject,
    deployment_id_for,
    fold,
    fold_all,
)
from engine.reconciler import Clock, SystemClock

log = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_SLICE_S = 30.0  # one wait on the queen; a deadline ends the whole wait
MIN_WAIT_CALL_S = 1.0  # the queen answers at once for a deployment it does not follow yet: do not spin
STOP_TIMEOUT_S = 30.0


class UnknownPipelineError(KeyError):
    def __init__(self, pipeline_id: str) -> None:
        super().__init__(f"no pipeline '{pipeline_id}' in the journal")

    def __str__(self) -> str:
        return str(self.args[0])


class DeployerUnavailable(RuntimeError):
    """The queen cannot be reached just now (restarting, or the cluster is coming back): try again."""


# --------------------------------------------------------------------------------------------
# Seams
# --------------------------------------------------------------------------------------------
class Deployer(Protocol):
    """The queen, as a pipeline uses it."""

    async def submit(self, request: DeploymentRequest, deployment_id: str) -> str: ...

    async def wait(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        """Returns once the deployment is terminal or ``timeout_s`` has passed."""
        ...

    async def abort(self, deployment_id: str, by: str, reason: str) -> None: ...

    async def rollback(self, deployment_id: str, by: str, reason: str) -> str:
        """Roll back a succeeded deployment (its previous revision comes back); returns the id of the
        deployment doing it. Idempotent: asking again returns the same one."""
        ...

    async def address(self, target: Target) -> str | None:
        """The address of the target's live revision (its newest succeeded deployment)."""
        ...

    async def carry_approval(self, deployment_id: str, subject: str) -> None:
        """Give a deployment waiting for its environment's approval the decisions already recorded for
        ``subject`` (the pipeline's approve stage), group by group, in the queen's approvals."""
        ...


@dataclass
class StageResult:
    ok: bool
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    spec: PipelineSpec
    stage: StageSpec
    deadline: float
    clock: Clock
    results: dict[str, dict[str, Any]]  # the dependencies' results, by stage id
    actor: str = "DO-006"

    @property
    def pipeline_id(self) -> str:
        return self.spec.pipeline_id

    def remaining(self) -> float:
        return self.deadline - self.clock.now()

    def artifact(self) -> Artifact:
        """The stage's service's artifact (the first one for a stage without a service)."""
        service = self.stage.service
        return next((a for a in self.spec.artifacts if a.name == service), self.spec.artifacts[0])


class StageExecutor(Protocol):
    async def run(self, stage: StageSpec, context: StageContext) -> StageResult: ...

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        """The stage ran out of time: undo or cancel what it started, if anything."""
        ...


# --------------------------------------------------------------------------------------------
# Waiting on the queen (bounded, never spinning)
# --------------------------------------------------------------------------------------------
async def until_available(call: Callable[[], Awaitable[T]], deadline: float, clock: Clock) -> T:
    """``call()``, tried again while the queen is unavailable, until ``deadline``."""
    backoff = 0.5
    while True:
        try:
            return await call()
        except DeployerUnavailable as error:
            if clock.now() + backoff >= deadline:
                raise TimeoutError(f"the queen stayed unavailable until the deadline: {error}") from error
            log.warning("queen unavailable, retrying in %.1fs: %s", backoff, error)
            await asyncio.sleep(backoff)
            backoff = min(10.0, backoff * 2)


async def wait_terminal(
    deployer: Deployer, deployment_id: str, deadline: float, clock: Clock
) -> DeploymentStatus | None:
    """The deployment's terminal status, or its last status (None if none was read) at ``deadline``."""
    status: DeploymentStatus | None = None
    while (remaining := deadline - clock.now()) > 0:
        started = time.monotonic()
        try:
            status = await deployer.wait(deployment_id, min(WAIT_SLICE_S, remaining))
        except DeployerUnavailable as error:
            log.warning("waiting for %s: queen unavailable: %s", deployment_id, error)
        if status is not None and status.phase.terminal:
            return status
        took = time.monotonic() - started
        if took < MIN_WAIT_CALL_S:
            await asyncio.sleep(min(MIN_WAIT_CALL_S - took, max(0.0, deadline - clock.now())))
    return status


# --------------------------------------------------------------------------------------------
# Stage kinds that need nothing but the queen
# --------------------------------------------------------------------------------------------
class DeployStage:
    """A deployment through the queen, with the id fixed for the stage (submitted once, whatever happens)."""

    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer

    async def run(self, stage: StageSpec, context: StageContext) -> StageResult:
        request = stage.request
        if request is None:
            return StageResult(False, f"stage {stage.id} has no deployment request")
        wanted = deployment_id_for(context.pipeline_id, stage.id)
        deployment_id = await until_available(
            lambda: self.deployer.submit(request, wanted), context.deadline, context.clock
        )
        if stage.approval_stage is not None:  # the environment's groups approved the pipeline already
            subject = approval_subject(context.pipeline_id, stage.approval_stage)
            await until_available(
                lambda: self.deployer.carry_approval(deployment_id, subject), context.deadline, context.clock
            )
        status = await wait_terminal(self.deployer, deployment_id, context.deadline, context.clock)
        data: dict[str, Any] = {"deployment_id": deployment_id}
        if status is None or not status.phase.terminal:
            reason = f"deployment {deployment_id} did not end within the stage's {stage.timeout_ms / 1000:g}s"
            await self.stop(stage, context, reason)
            return StageResult(False, reason, {**data, "phase": status.phase.value if status else None})
        data |= {"phase": status.phase.value, "address": status.address, "message": status.message}
        if status.phase is Phase.SUCCEEDED:
            return StageResult(True, "", data)
        why = status.rollback_reason or status.message or "no reason given"
        return StageResult(False, f"deployment {deployment_id} {status.phase.value}: {why}", data)

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        deployment_id = deployment_id_for(context.pipeline_id, stage.id)
        try:
            await self.deployer.abort(deployment_id, context.actor, reason)
        except (ValueError, KeyError, DeployerUnavailable) as error:  # already ended, or never submitted
            log.info("abort of %s: %s", deployment_id, error)


class HttpChecker(Protocol):
    async def check(self, url: str, expect_status: int, contains: str | None, timeout_s: float) -> str | None:
        """None when the answer is as expected, else what was wrong."""
        ...


class ValidateStage:
    """HTTP health and smoke checks against the deployed service's address (its router, as users reach it)."""

    def __init__(self, checker: HttpChecker, deployer: Deployer, parallel: int = 8) -> None:
        self.checker = checker
        self.deployer = deployer
        self.parallel = parallel

    async def run(self, stage: StageSpec, context: StageContext) -> StageResult:
        address = await self._address(stage, context)
        if not address:
            return StageResult(False, f"{stage.service}.{stage.environment} has no live deployment to check")
        problems: list[str] = []
        for attempt in range(1, stage.attempts + 1):
            problems = [p for check in stage.checks if (p := await self._check(address, check))]
            if not problems:
                return StageResult(True, "", {"address": address, "attempts": attempt})
            if attempt < stage.attempts:
                await asyncio.sleep(min(stage.interval_ms / 1000, max(0.0, context.remaining())))
        return StageResult(False, "; ".join(problems), {"address": address, "attempts": stage.attempts})

    async def _address(self, stage: StageSpec, context: StageContext) -> str | None:
        for dependency in stage.depends_on:
            other = context.spec.stage(dependency)
            same = (other.environment, other.service) == (stage.environment, stage.service)
            if other.kind is StageKind.DEPLOY and same and context.results.get(dependency, {}).get("address"):
                return str(context.results[dependency]["address"])
        if stage.service is None or stage.environment is None:
            return None
        target = Target(service=stage.service, environment=stage.environment)
        return await until_available(lambda: self.deployer.address(target), context.deadline, context.clock)

    async def _check(self, address: str, check: Any) -> str | None:
        url = address.rstrip("/") + check.path
        limit = asyncio.Semaphore(self.parallel)

        async def one() -> str | None:
            async with limit:
                return await self.checker.check(
                    url, check.expect_status, check.contains, check.timeout / 1000
                )

        answers = await asyncio.gather(*(one() for _ in range(check.requests)))
        failures = [a for a in answers if a is not None]
        if len(failures) <= check.max_failures:
            return None
        return f"GET {check.path}: {len(failures)} of {check.requests} failed ({failures[0]})"

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        return None  # checks change nothing


class CommandOutcome(Protocol):
    exit_code: int | None
    timed_out: bool
    error: str | None

    def tail(self, lines: int) -> str: ...


class CommandRunner(Protocol):
    async def run(
        self, argv: Sequence[str], cwd: str | None, env: Mapping[str, str], timeout_s: float, log_path: Path
    ) -> CommandOutcome: ...


class CommandStage:
    """build and test: the configured command, its output in a file, its exit status the verdict."""

    def __init__(self, runner: CommandRunner, log_dir: Path) -> None:
        self.runner = runner
        self.log_dir = log_dir

    async def run(self, stage: StageSpec, context: StageContext) -> StageResult:
        artifact = context.artifact()
        env = {
            **stage.env,
            "PIPELINE_ID": context.pipeline_id,
            "PIPELINE_NAME": context.spec.name,
            "STAGE_ID": stage.id,
            "ENVIRONMENT": stage.environment or "",
            "SERVICE": stage.service or "",
            "ARTIFACT_NAME": artifact.name,
            "ARTIFACT_VERSION": artifact.version,
            "ARTIFACT_SOURCE": artifact.source,
        }
        log_path = self.log_dir / context.pipeline_id / f"{stage.id}.log"
        timeout_s = max(0.0, context.remaining())
        outcome = await self.runner.run(stage.command, stage.working_dir, env, timeout_s, log_path)
        data = {"log": str(log_path), "exit_code": outcome.exit_code}
        shown = " ".join(stage.command)
        if outcome.error:
            return StageResult(False, f"`{shown}` could not start: {outcome.error}", data)
        if outcome.timed_out:
            return StageResult(False, f"`{shown}` timed out after {timeout_s:g}s (log: {log_path})", data)
        if outcome.exit_code != 0:
            last = outcome.tail(1).strip()
            detail = f": {last[-200:]}" if last else ""
            return StageResult(False, f"`{shown}` exited with status {outcome.exit_code}{detail}", data)
        return StageResult(True, "", data)

    async def stop(self, stage: StageSpec, context: StageContext, reason: str) -> None:
        return None  # the runner kills the command at its own timeout


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------
def read_pipeline(journal: Journal, pipeline_id: str) -> PipelineState:
    """A run's state, folded from its events (also where no cluster runs: the CLI's ``pipeline status``)."""
    events = journal.pipeline_events(pipeline_id)
    if not events:
        raise UnknownPipelineError(pipeline_id)
    return fold_all(events)


def find_pipeline(journal: Journal, prefix: str) -> str:
    """A pipeline by id or unique id prefix (as the CLI accepts)."""
    matches = journal.pipeline_ids(prefix=prefix)
    if prefix in matches:
        return prefix
    if len(matches) != 1:
        raise UnknownPipelineError(prefix) if not matches else KeyError(f"'{prefix}' is ambiguous")
    return matches[0]


class PipelineEngine:
    """Creates runs and drives them to their outcome; ``run`` also continues an interrupted run."""

    def __init__(
        self,
        journal: Journal,
        executors: Mapping[StageKind, StageExecutor],
        deployer: Deployer,
        clock: Clock | None = None,
        actor: str = "DO-006",
    ) -> None:
        self.journal = journal
        self.executors = dict(executors)
        self.deployer = deployer
        self.clock = clock or SystemClock()
        self.actor = actor

    def create(self, spec: PipelineSpec) -> PipelineState:
        """Journal a new run (creating the same id twice records it once)."""
        data = {"spec": spec.model_dump(mode="json", by_alias=True)}
        self.journal.append_pipeline_event(
            spec.pipeline_id, PipelineEventKind.CREATED, data, actor=spec.requested_by, only_first=True
        )
        return self.state(spec.pipeline_id)

    def state(self, pipeline_id: str) -> PipelineState:
        return read_pipeline(self.journal, pipeline_id)

    def unfinished(self) -> list[str]:
        return self.journal.pipeline_ids(unfinished_only=True)

    def find(self, prefix: str) -> str:
        return find_pipeline(self.journal, prefix)

    async def run(self, pipeline_id: str) -> PipelineState:
        return await _Run(self, self.state(pipeline_id)).drive()


class _Run:
    """One run being driven: its state in memory, kept equal to the journal by folding what it appends."""

    def __init__(self, engine: PipelineEngine, state: PipelineState) -> None:
        self.engine = engine
        self.state = state
        self.tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def clock(self) -> Clock:
        return self.engine.clock

    def _append(self, kind: PipelineEventKind, **data: Any) -> None:
        event = self.engine.journal.append_pipeline_event(
            self.state.pipeline_id, kind, data, actor=self.engine.actor
        )
        assert event is not None
        fold(self.state, event)

    async def drive(self) -> PipelineState:
        if self.state.outcome is not None:
            return self.state
        try:
            while True:
                self._skip_blocked()
                self._start_stages()
                if not self.tasks:
                    break
                done, _ = await asyncio.wait(self.tasks.values(), return_when=asyncio.FIRST_COMPLETED)
                for stage_id in [s for s, t in self.tasks.items() if t in done]:
                    self.tasks.pop(stage_id).result()  # _run_stage journals every outcome itself
        finally:  # interrupted (or broken): no stage of this run goes on behind the next one's back
            for task in self.tasks.values():
                task.cancel()
        await self._roll_back()
        self._finish()
        return self.state

    def _skip_blocked(self) -> None:
        while blocked := self.state.blocked():
            for spec, reason in blocked:
                self._append(PipelineEventKind.STAGE_FINISHED, stage=spec.id, status="skipped", reason=reason)

    def _start_stages(self) -> None:
        for spec in self.state.with_status(StageStatus.RUNNING):  # interrupted: started again
            if spec.id not in self.tasks:
                self.tasks[spec.id] = asyncio.ensure_future(self._run_stage(spec))
        limit = self.state.spec.max_parallel_stages or len(self.state.spec.stages)
        for spec in self.state.ready()[: max(0, limit - len(self.tasks))]:
            started = {"deployment_id": deployment_id_for(self.state.pipeline_id, spec.id)}
            self._append(
                PipelineEventKind.STAGE_STARTED,
                stage=spec.id,
                result=started if spec.kind is StageKind.DEPLOY else {},
            )
            if spec.kind in (StageKind.DEPLOY, StageKind.APPROVE):
                self._record_for_reports()
            self.tasks[spec.id] = asyncio.ensure_future(self._run_stage(spec))

    def _record_for_reports(self) -> None:
        """The deployments and approvals of the run, where the compliance report looks for them."""
        pipeline_id, stages = self.state.pipeline_id, self.state.stages
        deployments = [str(s.result["deployment_id"]) for s in stages.values() if "deployment_id" in s.result]
        deployments += [
            s.rollback.rollback_id for s in stages.values() if s.rollback and s.rollback.rollback_id
        ]
        approvals = [
            approval_subject(pipeline_id, s.id)
            for s in self.state.spec.stages
            if s.kind is StageKind.APPROVE and stages[s.id].status is not StageStatus.PENDING
        ]
        record = {"deployments": deployments, "approvals": approvals}
        self.engine.journal.put_record(PIPELINE_RECORD, pipeline_id, record)

    def _context(self, spec: StageSpec) -> StageContext:
        stage = self.state.stages[spec.id]
        started = stage.started_at or self.clock.now()
        deadline = min(
            started + spec.timeout_ms / 1000, self.state.created_at + self.state.spec.timeout_ms / 1000
        )
        results = {d: self.state.stages[d].result for d in spec.depends_on}
        return StageContext(self.state.spec, spec, deadline, self.clock, results, self.engine.actor)

    async def _run_stage(self, spec: StageSpec) -> None:
        context = self._context(spec)
        executor = self.engine.executors.get(spec.kind)
        try:
            if executor is None:
                result = StageResult(
                    False, f"{spec.kind.value} stages cannot run here: no executor is connected"
                )
            else:
                result = await asyncio.wait_for(executor.run(spec, context), max(0.0, context.remaining()))
        except TimeoutError:
            reason = f"timed out after {spec.timeout_ms / 1000:g}s"
            await self._stop(executor, spec, context, reason)
            result = StageResult(False, reason)
        except Exception as error:  # one stage's bug or a lost service must not end the whole run unjournaled
            log.exception("%s: stage %s", self.state.pipeline_id, spec.id)
            result = StageResult(False, f"{type(error).__name__}: {error}")
        status = StageStatus.SUCCEEDED if result.ok else StageStatus.FAILED
        self._append(
            PipelineEventKind.STAGE_FINISHED,
            stage=spec.id,
            status=status.value,
            reason=result.reason,
            result=result.data,
        )

    async def _stop(
        self, executor: StageExecutor | None, spec: StageSpec, context: StageContext, why: str
    ) -> None:
        if executor is None:
            return
        try:
            await asyncio.wait_for(executor.stop(spec, context, why), STOP_TIMEOUT_S)
        except Exception as error:  # stopping is best effort; the stage fails either way
            log.warning("%s: stopping %s: %s", self.state.pipeline_id, spec.id, error)

    # ------------------------------------------------------------------------------ rollback
    def _rollback_scope(self) -> list[StageSpec]:
        scope = self.state.spec.rollback
        if not self.state.failed or scope == "none":
            return []
        failed_envs = {self.state.spec.stage(s).environment for s in self.state.failed}
        chosen = []
        for spec in self.state.with_status(StageStatus.SUCCEEDED):
            rollback = self.state.stages[spec.id].rollback
            in_scope = scope == "pipeline" or spec.environment in failed_envs
            pending = rollback is None or rollback.phase is None
            if spec.kind is StageKind.DEPLOY and in_scope and pending:
                chosen.append(spec)
        return sorted(chosen, key=lambda s: -(self.state.stages[s.id].finished_at or 0.0))

    async def _roll_back(self) -> None:
        chosen = self._rollback_scope()
        if not chosen:
            return
        first = self.state.failed[0]
        reason = f"pipeline {self.state.pipeline_id}: stage {first} failed: {self.state.stages[first].reason}"
        await asyncio.gather(*(self._roll_back_stage(spec, reason) for spec in chosen))

    async def _roll_back_stage(self, spec: StageSpec, reason: str) -> None:
        stage = self.state.stages[spec.id]
        deployment_id = str(stage.result["deployment_id"])
        if stage.rollback is None:
            self._append(
                PipelineEventKind.ROLLBACK_STARTED, stage=spec.id, deployment_id=deployment_id, reason=reason
            )
        assert stage.rollback is not None
        deadline = self.clock.now() + spec.timeout_ms / 1000
        deployer = self.engine.deployer
        try:
            rollback_id = stage.rollback.rollback_id
            if rollback_id is None:
                rollback_id = await until_available(
                    lambda: deployer.rollback(deployment_id, self.engine.actor, reason), deadline, self.clock
                )
                self._append(PipelineEventKind.ROLLBACK_SUBMITTED, stage=spec.id, rollback_id=rollback_id)
                self._record_for_reports()
            status = await wait_terminal(deployer, rollback_id, deadline, self.clock)
            phase = status.phase.value if status and status.phase.terminal else "timed_out"
            message = status.message if status else "no answer from the queen"
        except (ValueError, KeyError, TimeoutError) as error:  # refused: e.g. nothing before it to restore
            rollback_id, phase, message = None, "refused", str(error)
        self._append(
            PipelineEventKind.ROLLBACK_FINISHED,
            stage=spec.id,
            rollback_id=rollback_id,
            phase=phase,
            message=message,
        )

    # ------------------------------------------------------------------------------ outcome
    def _finish(self) -> None:
        if not self.state.failed:
            count = len(self.state.spec.stages)
            self._append(
                PipelineEventKind.FINISHED,
                outcome=PipelinePhase.SUCCEEDED.value,
                message=f"{count} stages succeeded",
            )
            return
        self._append(
            PipelineEventKind.FINISHED, outcome=PipelinePhase.FAILED.value, message=self._failure_message()
        )

    def _failure_message(self) -> str:
        stages = self.state.stages
        first = self.state.failed[0]
        parts = [f"stage {first} failed: {stages[first].reason}"]
        others = self.state.failed[1:]
        if others:
            parts.append("also failed: " + ", ".join(others))
        skipped = [s.id for s in self.state.with_status(StageStatus.SKIPPED)]
        if skipped:
            parts.append("not run: " + ", ".join(skipped))
        undone = [
            f"{r.deployment_id} ({r.rollback_id or 'no rollback'}: {r.phase}"
            + (f": {r.message})" if r.phase != "succeeded" else ")")
            for s in stages.values()
            if (r := s.rollback) is not None
        ]
        if undone:
            parts.append("rolled back: " + ", ".join(undone))
        return "; ".join(parts)
