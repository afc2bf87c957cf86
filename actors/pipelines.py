"""DO-006's Ray side: the queen as the pipeline engine's ``Deployer``, and the runs a DO-006 actor drives.

The engine (``engine.pipeline``) decides everything from the journal; this module only connects it to the
queen and keeps one asyncio task per unfinished run. A DO-006 that starts (first time, after Ray restarted it,
after the queen recreated it, or on a new cluster over the same journal) continues every unfinished run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from actors.common import QUEEN_NAME, NamedActor, call
from adapters import content_digests
from adapters.commands import SubprocessRunner
from adapters.git_version import config_version
from adapters.http_probe import HttpChecker
from engine.approvals import ApprovalRefused, Approvals, ApprovalState
from engine.config import EnterpriseConfig
from engine.governance import environment_of
from engine.journal import Journal, UnknownDeploymentError
from engine.models import DeploymentRequest, DeploymentStatus, Environment, Phase, Target
from engine.paths import orchestrator_home
from engine.pipeline import (
    CommandStage,
    DeployerUnavailable,
    DeployStage,
    PipelineEngine,
    StageExecutor,
    ValidateStage,
)
from engine.pipeline_gates import ApproveStage, ComplianceStage, deploy_refusals
from engine.pipeline_model import PipelineTemplate, StageKind
from engine.pipeline_spec import RunInput, build_spec
from engine.pipeline_state import PipelineStatus, status_of

log = logging.getLogger(__name__)
CALL_TIMEOUT_S = 60.0
RUN_ATTEMPTS = 5


class QueenDeployer:
    """The pipeline engine's view of the queen; a queen that is away (restarting) is 'unavailable', not an
    error, so that the engine waits for it within the stage's deadline."""

    def __init__(self, namespace: str, journal: Journal, service_secret: str | None = None) -> None:
        self.namespace = namespace
        self.journal = journal
        self.service_secret = service_secret  # DO-006 acts for the person who started the run
        # Made when DO-006 starts: a lookup blocks the loop that drives every stage (NamedActor).
        self._queen = NamedActor(QUEEN_NAME, namespace)

    async def _call(self, method: str, *args: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        queen = self._queen.get()
        if queen is None:
            raise DeployerUnavailable("the queen is not running")
        # Every queen call checks DO-006's secret; an approval carried over relays the person who gave it.
        try:
            return await call(getattr(queen, method).remote(*args, token=self.service_secret), timeout_s)
        except (RayActorError, ActorUnavailableError, GetTimeoutError, TimeoutError) as error:
            self._queen.forget()
            raise DeployerUnavailable(f"{method}: {type(error).__name__}: {error}") from error
        except RayTaskError as error:  # the queen refused: its own exception, not Ray's wrapper
            cause = error.cause if isinstance(error.cause, Exception) else error
            raise cause from None

    async def submit(self, request: DeploymentRequest, deployment_id: str) -> str:
        return str(await self._call("submit", request, deployment_id))

    async def wait(self, deployment_id: str, timeout_s: float) -> DeploymentStatus:
        status: DeploymentStatus = await self._call(
            "wait", deployment_id, timeout_s, timeout_s=timeout_s + CALL_TIMEOUT_S
        )
        return status

    async def abort(self, deployment_id: str, by: str, reason: str) -> None:
        await self._call("control", deployment_id, "abort", by, reason)

    async def rollback(self, deployment_id: str, by: str, reason: str) -> str:
        # The queen names the deployment that restores a succeeded one "<id>-rollback" and refuses a second
        # rollback of it: a rollback asked for before a crash is found again, not asked for twice.
        existing = f"{deployment_id}-rollback"
        with contextlib.suppress(UnknownDeploymentError):
            return self.journal.state(existing).deployment_id
        status: DeploymentStatus = await self._call("control", deployment_id, "rollback", by, reason)
        return status.deployment_id

    async def carry_approval(self, deployment_id: str, subject: str) -> None:
        approvals = Approvals(self.journal)
        given, needed = approvals.find(subject), approvals.find(deployment_id)
        if given is None or given.state is not ApprovalState.APPROVED:
            return
        if needed is None or needed.state.decided:  # no approval asked of it, or decided already
            return
        for group, decision in given.approvals().items():
            if group not in needed.groups or group in needed.approvals():
                continue
            why = f"approved once for the pipeline ({subject})" + (
                f": {decision.comment}" if decision.comment else ""
            )
            try:
                await self._call("approve", deployment_id, decision.person, group, why)
            except ApprovalRefused as error:  # e.g. the group's members changed: it waits for a person
                log.warning("carrying %s's approval to %s: %s", subject, deployment_id, error)

    async def address(self, target: Target) -> str | None:
        live = [
            s
            for s in self.journal.deployments(target_key=target.key, limit=1000)
            if s.outcome is Phase.SUCCEEDED and s.address
        ]
        return live[-1].address if live else None


class PipelineRuns:
    """The runs one DO-006 actor drives: started by ``start``, continued by ``resume_all`` at start-up."""

    def __init__(
        self, config: EnterpriseConfig, journal: Journal, namespace: str, service_secret: str | None = None
    ) -> None:
        self.config = config
        self.journal = journal
        self.deployer = QueenDeployer(namespace, journal, service_secret)
        self.checker = HttpChecker()
        self.approve = ApproveStage(Approvals(journal, config.roles))
        # Stage logs beside a SQLite journal; under $ORCH_HOME with a PostgreSQL one.
        logs = Path(journal.path).parent if journal.path is not None else orchestrator_home()
        commands = CommandStage(SubprocessRunner(), logs / "pipelines")
        executors: dict[StageKind, StageExecutor] = {
            StageKind.BUILD: commands,
            StageKind.TEST: commands,
            StageKind.DEPLOY: DeployStage(self.deployer),
            StageKind.VALIDATE: ValidateStage(self.checker, self.deployer),
            StageKind.APPROVE: self.approve,
            StageKind.COMPLIANCE: ComplianceStage(
                config,
                journal,
                lambda name: self.environments()[name],
                lambda: config_version(config.source, config.sha256),
                content_digests,
            ),
        }
        self.engine = PipelineEngine(journal, executors, self.deployer)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ended: dict[str, asyncio.Event] = {}

    def resume_all(self) -> list[str]:
        unfinished = self.engine.unfinished()
        for pipeline_id in unfinished:
            log.warning("resuming pipeline %s", pipeline_id)
            self._launch(pipeline_id)
        return unfinished

    def _launch(self, pipeline_id: str) -> None:
        if pipeline_id in self.tasks:
            return
        self.ended.setdefault(pipeline_id, asyncio.Event())
        self.tasks[pipeline_id] = asyncio.get_running_loop().create_task(self._drive(pipeline_id))

    async def _drive(self, pipeline_id: str) -> None:
        """Run to the outcome; an unexpected error (the journal busy, a bug) is retried a few times, then
        left for the next DO-006 start (the run is journaled, nothing is lost)."""
        try:
            for attempt in range(1, RUN_ATTEMPTS + 1):
                try:
                    await self.engine.run(pipeline_id)
                    return
                except Exception:  # the run must not end unjournaled because of one bad round
                    log.exception("pipeline %s: run failed (attempt %d)", pipeline_id, attempt)
                    await asyncio.sleep(min(30.0, 2.0**attempt))
        finally:
            self.tasks.pop(pipeline_id, None)
            self.ended[pipeline_id].set()

    def environments(self) -> dict[str, Environment]:
        """The environments a run may name: the configuration's, then registered ones (as the queen)."""
        registered = self.journal.records("environment")
        names = {*self.config.environments, *(str(r["name"]) for r in registered)}
        return {name: environment_of(self.config, registered, name) for name in names}

    def template(self, name: str) -> PipelineTemplate:
        if name not in self.config.pipelines:
            known = ", ".join(sorted(self.config.pipelines)) or "none"
            raise ValueError(f"unknown pipeline '{name}'; the configured pipelines are {known}")
        return self.config.pipelines[name]

    def start(self, run: RunInput, template: PipelineTemplate) -> str:
        """Expand, journal and start a run; bad input is refused before anything is journaled."""
        environments = self.environments()
        spec = build_spec(self.config, template, run, environments)
        version = config_version(self.config.source, self.config.sha256)
        problems = deploy_refusals(self.config, spec, environments, version)
        if problems:  # e.g. production cannot be reached: refuse the run before deploying anywhere
            raise ValueError(f"pipeline {run.name} cannot run: " + "; ".join(problems))
        self.engine.create(spec)
        self._launch(spec.pipeline_id)
        return spec.pipeline_id

    def status(self, pipeline_id: str) -> PipelineStatus:
        return status_of(self.engine.state(self.engine.find(pipeline_id)))

    async def wait(self, pipeline_id: str, timeout_s: float) -> PipelineStatus:
        """Returns once the run has its outcome or ``timeout_s`` has passed, whichever is first."""
        pipeline_id = self.engine.find(pipeline_id)
        ended = self.ended.get(pipeline_id)
        if ended is not None and pipeline_id in self.tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ended.wait(), timeout=timeout_s)
        return self.status(pipeline_id)
