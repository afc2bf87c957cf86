"""The queen: admits deployments, gives each its own runner, supervises the domain workers.

Everything it knows is rebuilt from the journal and from the named actors still alive, so Ray may restart
it at any moment (the pattern of Ray Serve's controller). Admission: at most ``limit`` deployments run at
once, the rest wait in FIFO order, and at most one deployment per target (service x environment) is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
import uuid
from typing import Any

import ray
from ray.exceptions import RayActorError

from actors.common import (
    DOMAIN_WORKERS,
    RUNNER_PREFIX,
    find_actor,
    kill_quietly,
    new_runner_name,
    worker_name,
)
from actors.domain import WORKER_CLASSES
from actors.runner import ASSIGNMENT, DeploymentRunner
from actors.telemetry import Observer, Telemetry
from engine.audit import AuditKeeper
from engine.config import load_config
from engine.control import ControlRefused, control_event
from engine.identity import AccessControl, AccessRole
from engine.journal import Journal
from engine.models import (
    BlueGreenConfig,
    DeploymentRequest,
    DeploymentStatus,
    Phase,
    Strategy,
    StrategyType,
)
from engine.state import DeploymentState, Event, EventKind

log = logging.getLogger(__name__)

SUPERVISION_INTERVAL_S = 5.0
LEASE_TTL_S = 30.0
RUNNER_RESTARTS = 5


class DeploymentRefused(ControlRefused):
    """The request cannot be accepted as it is; the message says why."""


class JournalInUse(RuntimeError):
    """Another orchestrator drives this journal's deployments."""


QUEEN_LEASE = "queen"


class QueenImpl:
    def __init__(
        self,
        config_path: str | None,
        journal_path: str | None,
        max_concurrent: int | None,
        service_secret: str | None = None,
    ) -> None:
        self.config = load_config(config_path)
        self.config_path = config_path
        self.namespace = ray.get_runtime_context().namespace
        self.journal_path = str(journal_path or self.config.journal_path())
        self.journal = Journal(self.journal_path)
        self.owner = f"{ray.get_runtime_context().gcs_address} {self.namespace}"
        self._take_lease()
        # The secret the orchestrator's own actors call each other with: given by the driver that created
        # this queen, so that Ray restarting it (with the same arguments) keeps the workers' copy valid.
        self.service_secret = service_secret or secrets.token_urlsafe(32)
        self.access = AccessControl(self.config, self.journal, self.service_secret)
        self.audit = AuditKeeper(self.config, self.journal)
        self.limit = max_concurrent or self.config.concurrency.max_concurrent_deployments
        self.runs: dict[str, asyncio.Task[None]] = {}
        self.finished: dict[str, asyncio.Event] = {}
        self.workers: dict[str, Any] = {}
        self.standby: list[tuple[str, Any]] = []
        self.warm_runners = self.config.concurrency.warm_runners
        self.telemetry = Telemetry(self.config, self.journal_path)
        self.observer = Observer(self.config, self.journal_path, self.telemetry)  # hooks, alerts, metrics
        self.started = asyncio.Event()
        asyncio.get_running_loop().create_task(self._start())

    def _take_lease(self) -> None:
        holder = self.journal.acquire_lease(QUEEN_LEASE, self.owner, LEASE_TTL_S, alive=_cluster_answers)
        if holder is not None:
            raise JournalInUse(
                f"the journal {self.journal_path} is driven by another orchestrator (Ray cluster at "
                f"{holder}); connect to it with RAY_ADDRESS, give this one its own journal (journal.path or "
                f"ORCH_HOME), or wait {LEASE_TTL_S:g}s after the other one stops"
            )

    async def release(self, token: str | None = None) -> None:
        """Let another orchestrator take this journal over (called on a clean shutdown)."""
        self.access.require(token, AccessRole.ADMIN, action="release")
        self.audit.shutdown()
        self.journal.release_lease(QUEEN_LEASE, self.owner)

    # ------------------------------------------------------------------------------ start-up
    async def _start(self) -> None:
        self._ensure_workers()
        for state in self.journal.deployments(active_only=True, limit=100_000):
            if state.admitted_at is not None:
                self._launch(state.deployment_id, state.runner or new_runner_name())
        self._adopt_standby_runners()
        self._admit()
        self._refill()
        self.started.set()
        asyncio.get_running_loop().create_task(self._supervise())
        asyncio.get_running_loop().create_task(self.observer.run())

    async def warm(self, timeout_s: float) -> int:
        """Wait until every standby runner has started (bounded); returns how many are ready."""
        refs = [handle.ready.remote() for _, handle in self.standby]
        if not refs:
            return 0
        done, _ = await asyncio.wait([asyncio.ensure_future(r) for r in refs], timeout=timeout_s)
        return len(done)

    async def ready(self) -> dict[str, Any]:
        await asyncio.wait_for(self.started.wait(), timeout=60)
        return {
            "journal": self.journal_path,
            "limit": self.limit,
            "namespace": self.namespace,
            "workers": sorted(self.workers),
        }

    def _ensure_workers(self) -> None:
        """Every domain worker alive: one call to the GCS lists the live named actors; only a missing worker
        is looked up or created."""
        live = {name for name in ray.util.list_named_actors() if isinstance(name, str)}
        for code in DOMAIN_WORKERS:
            name = worker_name(code)
            if name in live and code in self.workers:
                continue
            handle = find_actor(name, self.namespace) if name in live else None
            if handle is None:
                log.warning("creating domain worker %s", name)
                handle = (
                    WORKER_CLASSES[code]
                    .options(name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True)
                    .remote(self.config_path, self.journal_path, self.service_secret)
                )
            self.workers[code] = handle

    async def _supervise(self) -> None:
        """A dead domain worker is recreated; a finished deployment's runner is not left behind."""
        while True:
            await asyncio.sleep(SUPERVISION_INTERVAL_S)
            try:
                self._take_lease()
                self._ensure_workers()
                self._admit()
                self.audit.tick()
            except Exception:  # supervision must go on whatever one round meets
                log.exception("supervision round failed")

    # ------------------------------------------------------------------------------ admission
    def _admit(self) -> None:
        active = self.journal.deployments(active_only=True, limit=100_000)
        running = [s for s in active if s.admitted_at is not None]
        busy = {s.request.target.key for s in running}
        for state in active:
            if len(running) >= self.limit:
                break
            if state.admitted_at is not None or state.request.target.key in busy:
                continue
            runner = self._take_runner()
            self.journal.append(
                state.deployment_id,
                EventKind.ADMITTED,
                {"limit": self.limit, "runner": runner},
                actor="queen",
            )
            busy.add(state.request.target.key)
            running.append(state)
            self._launch(state.deployment_id, runner)
        self._refill()
        self.telemetry.set_load(running=len(running), queued=len(active) - len(running))

    # ------------------------------------------------------------------------------ runners
    def _start_runner(self, name: str) -> Any:
        return DeploymentRunner.options(
            name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True
        ).remote(self.journal_path)

    def _refill(self) -> None:
        """Keep ``warm_runners`` runner processes started, idle or busy (busy ones come back to the pool when
        their deployment ends), so that the first ``warm_runners`` concurrent deployments wait for no process
        start and a steady flow of deployments starts none at all."""
        while len(self.standby) + len(self.runs) < self.warm_runners:
            name = new_runner_name()
            self.standby.append((name, self._start_runner(name)))

    def _take_runner(self) -> str:
        if self.standby:
            return self.standby.pop(0)[0]
        return new_runner_name()  # started by _drive: a cold start

    def _adopt_standby_runners(self) -> None:
        """Standby runners started by a previous queen (before it restarted) are used, not leaked."""
        assigned = {record["runner"] for record in self.journal.records(ASSIGNMENT)}
        # An admission journaled just before a crash names its runner before the runner records it.
        assigned |= {s.runner for s in self.journal.deployments(active_only=True, limit=100_000) if s.runner}
        for name in ray.util.list_named_actors():
            if isinstance(name, str) and name.startswith(RUNNER_PREFIX) and name not in assigned:
                handle = find_actor(name, self.namespace)
                if handle is not None and len(self.standby) + len(self.runs) < self.warm_runners:
                    self.standby.append((name, handle))
                elif handle is not None:
                    kill_quietly(handle)

    def _launch(self, deployment_id: str, runner: str) -> None:
        if deployment_id in self.runs:
            return
        self.finished.setdefault(deployment_id, asyncio.Event())
        self.runs[deployment_id] = asyncio.get_running_loop().create_task(self._drive(deployment_id, runner))

    async def _drive(self, deployment_id: str, name: str) -> None:
        """Assign the runner and await it; a runner lost for good is started again under the same name, finds
        its assignment in the journal and resumes the deployment from there."""
        runner, reusable = None, False
        try:
            for attempt in range(RUNNER_RESTARTS + 1):
                runner = find_actor(name, self.namespace) or self._start_runner(name)
                try:
                    await runner.assign.remote(deployment_id)
                    await runner.run.remote()
                    reusable = True
                    break
                except RayActorError as error:
                    log.warning("runner of %s lost (attempt %d): %s", deployment_id, attempt + 1, error)
                    await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
            else:
                self._fail(deployment_id, f"its runner was lost {RUNNER_RESTARTS + 1} times")
        finally:
            if runner is not None:
                self._release_runner(name, runner, reusable)
            self.runs.pop(deployment_id, None)
            self._on_finished(deployment_id)

    def _release_runner(self, name: str, runner: Any, reusable: bool) -> None:
        """A runner whose deployment ended goes back to the pool (up to ``warm_runners``); others stop."""
        if reusable and len(self.standby) < self.warm_runners:
            self.standby.append((name, runner))
        else:
            kill_quietly(runner)

    def _fail(self, deployment_id: str, message: str) -> None:
        if self.journal.state(deployment_id).active:
            self.journal.append(
                deployment_id, EventKind.FINISHED, {"outcome": "failed", "message": message}, actor="queen"
            )

    def _on_finished(self, deployment_id: str) -> None:
        state = self.journal.state(deployment_id)
        self.telemetry.finished(state)
        event = self.finished.pop(deployment_id, None)
        if event is not None:
            event.set()
        self._admit()

    # ------------------------------------------------------------------------------ public API
    async def submit(
        self, request: DeploymentRequest, deployment_id: str | None = None, token: str | None = None
    ) -> str:
        request = self.access.checked_request(token, request, action="submit")
        await asyncio.wait_for(self.started.wait(), timeout=60)
        self._check_environment(request.environment)
        active = self.journal.deployments(active_only=True, limit=100_000)
        if len(active) >= self.limit + self.config.concurrency.max_queued:
            raise DeploymentRefused(f"the queue is full ({len(active)} deployments waiting or running)")
        deployment_id = deployment_id or f"{request.artifact.name}-{uuid.uuid4().hex[:10]}"
        self.journal.submit(deployment_id, request, actor=request.requested_by)
        self.telemetry.submitted(request)
        self.finished.setdefault(deployment_id, asyncio.Event())
        self._admit()
        return deployment_id

    def _check_environment(self, name: str) -> None:
        known = set(self.config.environments) | {
            record["name"] for record in self.journal.records("environment")
        }
        if name not in known:
            raise DeploymentRefused(
                f"environment: unknown environment '{name}'; known: {', '.join(sorted(known))}"
            )

    async def status(self, deployment_id: str, token: str | None = None) -> DeploymentStatus:
        self.access.require(token, AccessRole.VIEWER, deployment=deployment_id, action="status")
        return self.journal.find(deployment_id).status()

    async def wait(self, deployment_id: str, timeout_s: float, token: str | None = None) -> DeploymentStatus:
        """Returns once the deployment is terminal or ``timeout_s`` has passed, whichever is first."""
        self.access.require(token, AccessRole.VIEWER, deployment=deployment_id, action="wait")
        state = self.journal.find(deployment_id)
        event = self.finished.get(state.deployment_id)
        if state.active and event is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=timeout_s)
        return self.journal.state(state.deployment_id).status()

    async def history(
        self, limit: int = 50, service: str | None = None, token: str | None = None
    ) -> list[DeploymentStatus]:
        self.access.require(token, AccessRole.VIEWER, action="history")
        states = self.journal.deployments(limit=limit if service is None else 100_000)
        chosen = [s for s in states if service is None or s.request.artifact.name == service]
        return [s.status() for s in chosen[-limit:]]

    async def control(
        self, deployment_id: str, action: str, by: str, reason: str = "", token: str | None = None
    ) -> DeploymentStatus:
        """pause | resume | promote | promote_full | abort | rollback, journaled, then the runner woken."""
        by = self.access.require(
            token, AccessRole.DEPLOYER, deployment=deployment_id, action=action
        ).acting_as(by)
        state = self.journal.find(deployment_id)
        if not state.active and action == "rollback" and state.phase() is Phase.SUCCEEDED:
            return await self._redeploy_previous(state, by, reason, token)
        if not state.active:
            raise DeploymentRefused(f"deployment {state.deployment_id} already ended: {state.phase().value}")
        if state.admitted_at is None and action in ("abort", "rollback", "rollback_health"):
            self.journal.append(
                state.deployment_id,
                EventKind.FINISHED,
                {"outcome": Phase.ABORTED.value, "message": f"{action} while queued: {reason}"},
                actor=by,
            )
            self._on_finished(state.deployment_id)
            return self.journal.state(state.deployment_id).status()
        kind, data = control_event(action, reason, by)
        self.journal.append(state.deployment_id, kind, data, actor=by)
        runner = find_actor(state.runner, self.namespace) if state.runner else None
        if runner is not None:
            runner.wake.remote()
        return self.journal.state(state.deployment_id).status()

    async def _redeploy_previous(
        self, state: DeploymentState, by: str, reason: str, token: str | None
    ) -> DeploymentStatus:
        """Rolling back a deployment that already succeeded: the revision it replaced comes back, switched in
        blue-green style as soon as it is ready (no analysis: the on-call engineer has decided)."""
        newer = [
            s
            for s in self.journal.deployments(target_key=state.request.target.key, limit=100_000)
            if s.submitted_at > state.submitted_at and s.phase() is not Phase.ABORTED
        ]
        if newer:
            raise DeploymentRefused(
                f"deployment {state.deployment_id} was already replaced by {newer[-1].deployment_id}: "
                "roll that one back instead"
            )
        previous = self.journal.planned_stable_artifact(state.deployment_id)
        if previous is None:
            raise DeploymentRefused(f"deployment {state.deployment_id} replaced nothing that can be restored")
        strategy = Strategy(
            type=StrategyType.BLUE_GREEN,
            replicas=state.request.strategy.replicas,
            blue_green=BlueGreenConfig(
                validation_duration=0, scale_down_delay=0, switch_triggers=["health_check"]
            ),
        )
        request = state.request.model_copy(
            update={"artifact": previous, "strategy": strategy, "requested_by": by}
        )
        new_id = await self.submit(request, f"{state.deployment_id}-rollback", token)
        self.journal.append(
            new_id, EventKind.NOTE, {"message": f"rollback of {state.deployment_id}: {reason}"}, actor=by
        )
        return self.journal.state(new_id).status()

    async def events(self, deployment_id: str, after_seq: int = 0, token: str | None = None) -> list[Event]:
        """A deployment's journal events after ``after_seq`` (the console's and ``status``'s detail)."""
        self.access.require(token, AccessRole.VIEWER, deployment=deployment_id, action="events")
        return self.journal.events(self.journal.find(deployment_id).deployment_id, after_seq)

    async def whoami(self, token: str | None = None) -> dict[str, Any]:
        """Who the token belongs to (a console's sign-in); never the token itself."""
        who = self.access.require(token, None, action="whoami")
        return {"person": who.person, "token_id": who.token_id}

    async def worker(self, code: str, token: str | None = None) -> Any:
        self.access.require(token, None, action="worker")  # each worker checks the role of its own calls
        if code not in DOMAIN_WORKERS:
            raise ValueError(f"unknown domain worker {code}: known are {', '.join(DOMAIN_WORKERS)}")
        self._ensure_workers()
        return self.workers[code]

    async def overview(self, token: str | None = None) -> dict[str, Any]:
        self.access.require(token, AccessRole.VIEWER, action="overview")
        counts = self.journal.phase_counts()
        return {
            "limit": self.limit,
            "running": len(self.runs),
            "phases": {p.value: n for p, n in counts.items()},
            "time": time.time(),
        }

    # ------------------------------------------------------------------------------ tokens (admin)
    async def issue_token(self, person: str, token: str | None = None) -> str:
        """A new token for ``person``, returned once (only its hash is kept)."""
        return self.access.issue_token(token, person).token

    async def revoke_token(
        self, token_id: str | None = None, person: str | None = None, token: str | None = None
    ) -> list[dict[str, Any]]:
        return [r.public() for r in self.access.revoke_token(token, token_id, person)]

    async def tokens(self, token: str | None = None) -> list[dict[str, Any]]:
        return self.access.list_tokens(token)


def _cluster_answers(owner: str) -> bool:
    """Whether the Ray cluster holding a lease still runs: its GCS accepts a connection (an embedded
    cluster ends with its driver, and its lease must not block the next one for the whole TTL)."""
    host, _, port = owner.split(" ")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


Queen: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(QueenImpl)
