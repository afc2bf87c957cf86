"""The queen: admits deployments, gives each its own runner, supervises the domain workers.

Everything it knows is rebuilt from the journal and from the named actors still alive, so Ray may restart
it at any moment (the pattern of Ray Serve's controller). Admission: at most ``limit`` deployments run at
once, the rest wait in FIFO order, and at most one deployment per target (service x environment) is active.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError

from actors.common import (
    DOMAIN_WORKERS,
    LEASE_TTL_S,
    QUEEN_LEASE,
    RUNNER_PREFIX,
    call,
    cluster_answers,
    find_actor,
    freeze_startup_heap,
    kill_quietly,
    named_actors,
    new_runner_name,
    worker_name,
)
from actors.domain import WORKER_CLASSES
from actors.placement import (
    platform_node,
    platform_strategy,
    spread_over_nodes,
)
from actors.runner import DeploymentRunner
from actors.telemetry import Observer, Telemetry
from adapters import platform_capabilities
from adapters.git_version import config_version
from engine.admission import ALL, Admission, DeploymentRefused, RunnerLost
from engine.approvals import ApprovalRequest, Approvals
from engine.artifacts import ArtifactRegistry
from engine.audit import AuditKeeper
from engine.config import load_config
from engine.control import control_event
from engine.control_signals import ControlSignals
from engine.governance import (
    ApprovalGate,
    ConfigVersions,
    decide_as,
    environment_of,
    governed,
    open_requests,
    refusals,
    subject_of,
)
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
from engine.one_journal import queen_identity
from engine.platform import PlatformError
from engine.readiness import with_capabilities
from engine.state import DeploymentState, Event, EventKind

log = logging.getLogger(__name__)
RUNNER_START_TIMEOUT_S = 300.0  # a runner's process start on a loaded node

SUPERVISION_INTERVAL_S = 5.0
__all__ = ["DeploymentRefused", "JournalInUse", "Queen", "QueenImpl"]


class JournalInUse(RuntimeError):
    """Another orchestrator drives this journal's deployments."""


class QueenImpl:
    def __init__(
        self,
        config_path: str | None,
        journal_path: str | None,
        max_concurrent: int | None,
        service_secret: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self.config = load_config(config_path)
        self.config_path = config_path
        # The namespace it was created in: the runtime context gives the job's, which is another
        # orchestrator's when one driver runs two.
        self.namespace = namespace or ray.get_runtime_context().namespace
        self.journal_path = str(journal_path or self.config.journal_location())  # a path, URL or reference
        self.journal = Journal(self.journal_path)
        self.owner = f"{ray.get_runtime_context().gcs_address} {self.namespace}"
        self._take_lease()
        # The secret the orchestrator's own actors call each other with: given by the driver that created
        # this queen, so that Ray restarting it (with the same arguments) keeps the workers' copy valid.
        self.service_secret = service_secret or secrets.token_urlsafe(32)
        self.access = AccessControl(self.config, self.journal, self.service_secret)
        self.audit = AuditKeeper(self.config, self.journal)
        self.limit = max_concurrent or self.config.concurrency.max_concurrent_deployments
        self.workers: dict[str, Any] = {}
        self.telemetry = Telemetry(self.config, self.journal_path)
        self.observer = Observer(self.config, self.journal_path, self.telemetry)  # hooks, alerts, metrics
        self.approvals = Approvals(self.journal, self.config.roles)
        self.approval_gate = ApprovalGate(self.journal, self.approvals)
        self.artifacts = ArtifactRegistry(self.journal)
        self.config_versions = ConfigVersions(self.config, config_version)
        self.controls = ControlSignals()  # what waiting runners hear of control requests through
        self.admission = Admission(
            self.journal,
            _RayRunners(self.namespace, self.journal, self.journal_path, self.service_secret, self.controls),
            limit=self.limit,
            max_queued=self.config.concurrency.max_queued,
            warm_runners=self.config.concurrency.warm_runners,
            listener=self.telemetry,
            gate=self.approval_gate,
        )
        self.started = asyncio.Event()
        asyncio.get_running_loop().create_task(self._start())
        freeze_startup_heap()

    def _take_lease(self) -> None:
        holder = self.journal.acquire_lease(QUEEN_LEASE, self.owner, LEASE_TTL_S, alive=cluster_answers)
        if holder is not None:
            raise JournalInUse(
                f"the journal {self.journal.location} is driven by another orchestrator (Ray cluster at "
                f"{holder}); connect to it with RAY_ADDRESS={holder.split(' ')[0]}, give this one its own "
                f"journal (journal.path or ORCH_HOME), or wait {LEASE_TTL_S:g}s after the other one stops"
            )

    async def release(self, token: str | None = None) -> None:
        """Let another orchestrator take this journal over (called on a clean shutdown)."""
        self.access.require(token, AccessRole.ADMIN, action="release")
        self.audit.shutdown()
        self.journal.release_lease(QUEEN_LEASE, self.owner)

    # ------------------------------------------------------------------------------ start-up
    async def _start(self) -> None:
        self._ensure_workers()
        self.admission.recover()
        self.started.set()
        asyncio.get_running_loop().create_task(self._supervise())
        asyncio.get_running_loop().create_task(self.observer.run())

    async def warm(self, timeout_s: float) -> int:
        """Wait until every standby runner has started (bounded); returns how many are ready."""
        refs = [handle.ready.remote() for handle in self.admission.pool.handles()]
        if not refs:
            return 0
        done, _ = await asyncio.wait([asyncio.ensure_future(r) for r in refs], timeout=timeout_s)
        return len(done)

    async def ready(self) -> dict[str, Any]:
        await asyncio.wait_for(self.started.wait(), timeout=60)
        return {
            "limit": self.limit,
            "namespace": self.namespace,
            "workers": sorted(self.workers),
            **queen_identity(self.config, self.journal_path),  # a driver attaches only if they are its own
        }

    def _ensure_workers(self) -> None:
        """Every domain worker alive: one call to the GCS lists the live named actors; only a missing worker
        is looked up or created."""
        live = named_actors(self.namespace)
        # Standby runners lost with their node are forgotten (and replaced by _refill).
        self.admission.pool.forget_dead(live)
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
                    .remote(self.config_path, self.journal_path, self.service_secret, self.namespace)
                )
            self.workers[code] = handle

    async def _supervise(self) -> None:
        """A dead domain worker is recreated; a finished deployment's runner is not left behind."""
        while True:
            await asyncio.sleep(SUPERVISION_INTERVAL_S)
            try:
                self._take_lease()
                self._ensure_workers()
                self.admission.admit()
                self.audit.tick()
            except Exception:  # supervision must go on whatever one round meets
                log.exception("supervision round failed")

    # ------------------------------------------------------------------------------ public API
    async def submit(
        self, request: DeploymentRequest, deployment_id: str | None = None, token: str | None = None
    ) -> str:
        request = self.access.checked_request(token, request, action="submit")
        await asyncio.wait_for(self.started.wait(), timeout=60)
        self._check_environment(request.environment)
        request = await self._governed(request)
        self.admission.check_room()
        deployment_id = deployment_id or f"{request.artifact.name}-{uuid.uuid4().hex[:10]}"
        state = self.journal.submit(deployment_id, request, actor=request.requested_by)
        self.artifacts.register(request.artifact, request.requested_by)
        self.approval_gate.request(state)
        self.telemetry.submitted(request)
        self.admission.submitted(deployment_id)
        return deployment_id

    async def _governed(self, request: DeploymentRequest) -> DeploymentRequest:
        """The request with the policy in force recorded in it; refused, naming every setting at fault,
        when it could never pass (before anything is recorded or changed)."""
        environment = environment_of(self.config, self.journal.records("environment"), request.environment)
        version = await asyncio.to_thread(self.config_versions.for_environment, environment)  # may call git
        governed_request = governed(self.config, request, environment, version)
        try:  # what the platform declares it can do: its adapter, made from the settings (no call to it)
            capabilities = await asyncio.to_thread(platform_capabilities, request.platform)
        except (ValueError, PlatformError) as error:
            raise DeploymentRefused(f"platform '{request.platform.type}': {error}") from None
        governed_request = with_capabilities(governed_request, capabilities)
        problems = refusals(governed_request, self.config.roles)
        conflict = self.artifacts.conflict(request.artifact)
        if conflict is not None:
            problems.append(conflict)
        if problems:
            raise DeploymentRefused("; ".join(problems))
        return governed_request

    async def approve(
        self, subject: str, person: str | None, group: str, comment: str = "", token: str | None = None
    ) -> ApprovalRequest:
        """One group's approval of a deployment (or any subject, e.g. a pipeline stage), by the token's
        person; a deployment whose approval completes is admitted at once."""
        decided = decide_as(self.access, token, self.approvals, subject, person, group, comment, approve=True)
        self.admission.admit()
        self._tell_pipelines(decided.subject)
        return decided

    async def reject(
        self, subject: str, person: str | None, group: str, comment: str = "", token: str | None = None
    ) -> ApprovalRequest:
        """A rejection ends the subject's approval; a deployment waiting for it ends, aborted."""
        decided = decide_as(
            self.access, token, self.approvals, subject, person, group, comment, approve=False
        )
        self.admission.admit()
        self._tell_pipelines(decided.subject)
        return decided

    def _tell_pipelines(self, subject: str) -> None:
        """A pipeline's approve stage waits in DO-006 for its subject's decisions: wake it (no reply)."""
        pipelines = self.workers.get("DO-006")
        if pipelines is not None:
            pipelines.approval_decided.remote(subject, token=self.service_secret)

    async def approval_requests(
        self,
        subject: str | None = None,
        pending_only: bool = True,
        environment: str | None = None,
        token: str | None = None,
    ) -> list[ApprovalRequest]:
        """One subject's approval, or the requests (pending ones by default), oldest first."""
        self.access.require(token, AccessRole.VIEWER, environment, action="approvals")
        if subject is not None:
            return [self.approvals.status(subject_of(self.journal, subject))]
        if pending_only:
            return open_requests(self.journal, self.approvals, environment)
        return self.approvals.list(environment)

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
        await self.admission.wait(state.deployment_id, timeout_s)
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
            self.admission.ended(state.deployment_id)
            return self.journal.state(state.deployment_id).status()
        kind, data = control_event(action, reason, by)
        self.journal.append(state.deployment_id, kind, data, actor=by)
        self.controls.signal(state.deployment_id)  # its runner, waiting on control_signal, looks now
        return self.journal.state(state.deployment_id).status()

    async def control_signal(self, deployment_id: str, wait_s: float, token: str | None = None) -> bool:
        """A runner waits here between its checks (a system call): True as soon as a control request for its
        deployment is journaled, False when ``wait_s`` (at most CONTROL_WAIT_S) passed."""
        if token is None or not secrets.compare_digest(token, self.service_secret):
            raise PermissionError("control_signal is for the orchestrator's runners")
        return await self.controls.wait(deployment_id, wait_s)

    async def _redeploy_previous(
        self, state: DeploymentState, by: str, reason: str, token: str | None
    ) -> DeploymentStatus:
        """Rolling back a deployment that already succeeded: the revision it replaced comes back, switched in
        blue-green style as soon as it is ready (no analysis: the on-call engineer has decided)."""
        newer = [
            s
            for s in self.journal.deployments(target_key=state.request.target.key, limit=ALL)
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
            "running": len(self.admission.runs),
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


class _RayRunners:
    """Runner actors for ``engine.admission``: the only place admission reaches Ray."""

    def __init__(
        self,
        namespace: str,
        journal: Journal,
        journal_path: str,
        service_secret: str,
        controls: ControlSignals,
    ) -> None:
        self.controls = controls
        self.namespace = namespace
        self.journal = journal
        self.journal_path = journal_path
        self.service_secret = service_secret
        self.nodes: dict[str, str] = {}  # where each runner runs, once it said so

    def new_name(self) -> str:
        return new_runner_name()

    def start(self, name: str, deployment_id: str | None = None) -> Any:
        """A runner spread over the nodes; pinned to the platform's node for a deployment whose platform
        keeps state on one (a cold start, when no standby runner was there)."""
        strategy = None
        if deployment_id is not None:
            strategy = platform_strategy(self.journal.state(deployment_id).request.platform)
        handle = DeploymentRunner.options(
            name=name,
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=True,
            scheduling_strategy=strategy or spread_over_nodes(1)[0],
        ).remote(self.journal_path, self.service_secret, self.namespace)
        self._learn_node(name, handle)
        return handle

    def _learn_node(self, name: str, handle: Any) -> None:
        """Record where a runner runs once it answers (Ray may place or restart it on another node)."""

        async def learn() -> None:
            try:
                self.nodes[name] = await call(handle.node.remote(), RUNNER_START_TIMEOUT_S)
            except (RayActorError, ActorUnschedulableError, TimeoutError):
                self.nodes.pop(name, None)

        self.nodes.pop(name, None)
        asyncio.get_running_loop().create_task(learn())

    def place(self, state: DeploymentState) -> str | None:
        return platform_node(state.request.platform)  # PlatformNodeGone is admission's NoPlaceToRun

    def node_of(self, name: str) -> str | None:
        return self.nodes.get(name)

    def find(self, name: str) -> Any | None:
        handle = find_actor(name, self.namespace)
        if handle is not None and name not in self.nodes:
            self._learn_node(name, handle)  # e.g. a standby runner a previous queen started
        return handle

    def live_names(self) -> list[str]:
        return sorted(n for n in named_actors(self.namespace) if n.startswith(RUNNER_PREFIX))

    def stop(self, handle: Any) -> None:
        kill_quietly(handle)

    async def drive(self, handle: Any, deployment_id: str) -> None:
        try:
            # A runner that never starts (its process, or its node, stuck) is lost, not waited for forever.
            await call(handle.assign.remote(deployment_id), RUNNER_START_TIMEOUT_S)
            await handle.run.remote()
        except TimeoutError as error:
            kill_quietly(handle)
            raise RunnerLost(f"it did not start within {RUNNER_START_TIMEOUT_S:.0f} s") from error
        except (RayActorError, ActorUnschedulableError) as error:
            raise RunnerLost(str(error)) from error
        finally:
            self.controls.release(deployment_id)  # a wait its runner left pending ends


Queen: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(QueenImpl)
