"""The driver API: ``DeploymentOrchestrator``, a handle on the queen actor for Python driver scripts.

orch = DeploymentOrchestrator()            # RAY_ADDRESS's cluster, or an embedded local Ray
result = orch.deploy(artifact, "canary", "staging", "local")
print(result.success, result.deployment_id, result.status.phase)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from actors.common import (
    DOMAIN_WORKERS,
    LEASE_TTL_S,
    QUEEN_LEASE,
    QUEEN_NAME,
    cluster_answers,
    find_actor,
    kill_quietly,
    worker_name,
)
from client.local import bootstrap_if_new, find_token
from client.ray_settings import RAY_SYSTEM_CONFIG, code_on_workers_path
from engine.approvals import ApprovalRequest
from engine.artifacts import ArtifactEntry, ArtifactRegistry
from engine.compliance import ComplianceReport, report
from engine.config import load_config
from engine.journal import CopyReport, Journal, copy_journal
from engine.journal_store import is_postgres
from engine.models import (
    Artifact,
    ChangeRecord,
    DeploymentRequest,
    DeploymentResult,
    DeploymentStatus,
    Environment,
    Phase,
    PlatformConfig,
    Strategy,
)
from engine.one_journal import identity_mismatch, queen_identity
from engine.pipeline_model import PipelineTemplate
from engine.pipeline_spec import RunInput
from engine.pipeline_state import PipelineDeploymentResult, PipelinePhase, PipelineStatus
from engine.requests import build_request
from engine.state import Event

REPO = Path(__file__).resolve().parent.parent
CALL_TIMEOUT_S = 60.0
log = logging.getLogger("orchestrator")
ProgressCallback = Callable[[DeploymentStatus], None]
ArtifactLike = Artifact | dict[str, Any]
EnvironmentLike = str | Environment | dict[str, Any]
_PIPELINE_ACTIVE = (PipelinePhase.RUNNING, PipelinePhase.ROLLING_BACK)


class PipelineResults(list[PipelineDeploymentResult]):
    """One result per deployment of a pipeline run (the seed's ``results.forEach``), plus the run itself."""

    def __init__(self, status: PipelineStatus) -> None:
        super().__init__(status.results)
        self.pipeline = status

    @property
    def pipeline_id(self) -> str:
        return self.pipeline.pipeline_id

    @property
    def success(self) -> bool:
        return self.pipeline.success


def _artifact(artifact: ArtifactLike) -> Artifact:
    return Artifact.model_validate(artifact) if isinstance(artifact, dict) else artifact


def _artifacts(artifact: ArtifactLike | Sequence[ArtifactLike]) -> list[Artifact]:
    """One artifact, or one per service."""
    if isinstance(artifact, Artifact | dict):
        return [_artifact(artifact)]
    return [_artifact(a) for a in artifact]


def _environment_name(environment: EnvironmentLike) -> str:
    if isinstance(environment, str):
        return environment
    if isinstance(environment, dict):
        return str(Environment.model_validate(environment).name)
    return environment.name


class ClusterUnreachable(RuntimeError):
    """The Ray cluster named by the address cannot be joined; the message says what to check."""


class OrchestratorMismatch(RuntimeError):
    """The queen running in this namespace uses another journal or configuration than this driver."""


class DeploymentOrchestrator:
    """The driver API. Every call goes to the queen actor; history also reads the journal without Ray.

    Every call carries the caller's personal token: ``token=``, else ``$ORCH_TOKEN``, else the file
    ``$ORCH_HOME/token``. Without a cluster named (embedded, or a local Ray), on a journal that has no admin
    yet, it makes the first admin token there itself (the quickstart works for a new user); the actors check
    the token and the role."""

    def __init__(
        self,
        address: str | None = None,
        config_path: str | Path | None = None,
        journal_path: str | Path | None = None,
        max_concurrent: int | None = None,
        num_cpus: int | None = None,
        token: str | None = None,
    ) -> None:
        self.config = load_config(config_path)
        self.config_path = str(self.config.source) if self.config.source else None
        self.journal_path = str(journal_path or self.config.journal_location())  # a path, URL or reference
        self.namespace = self.config.namespace
        self._token = find_token(token)
        # On this machine's journal (no cluster named), a new user gets the first admin token made for them.
        if self._token is None and not (address or os.environ.get("RAY_ADDRESS")):
            self._token = bootstrap_if_new(self.config, self.journal_path)
        embedded = self._connect(address, num_cpus)
        self.queen = self._queen(max_concurrent)
        if embedded:  # the local Ray ends with this process: hand the journal over at once, not after a TTL
            atexit.register(self._release)

    # ------------------------------------------------------------------------------ connection
    def _connect(self, address: str | None, num_cpus: int | None) -> bool:
        """Connect to the cluster, or start an embedded one; returns True when embedded."""
        if ray.is_initialized():
            return False
        address = address or os.environ.get("RAY_ADDRESS") or None
        options: dict[str, Any] = {
            "namespace": self.namespace,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        if address is None:  # embedded: this process starts a local Ray that ends with it
            options |= {
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",  # embedded: everything stays on loopback
                "num_cpus": num_cpus or os.cpu_count() or 2,
                "_system_config": dict(RAY_SYSTEM_CONFIG),  # fewer timer wake-ups in Ray's own processes
            }
        try:
            with code_on_workers_path(REPO) if address is None else contextlib.nullcontext():
                ray.init(address=address or "local", **options)
        except (ConnectionError, ray.exceptions.AuthenticationError) as error:
            if address is None:
                raise
            raise ClusterUnreachable(connection_problem(address, error)) from error
        return address is None

    def _queen(self, max_concurrent: int | None) -> Any:
        from actors.queen import Queen

        queen = find_actor(QUEEN_NAME, self.namespace)
        if queen is None:
            queen = Queen.options(
                name=QUEEN_NAME, namespace=self.namespace, lifetime="detached", get_if_exists=True
            ).remote(
                self.config_path, self.journal_path, max_concurrent, secrets.token_urlsafe(32), self.namespace
            )
        try:
            running = ray.get(queen.ready.remote(), timeout=CALL_TIMEOUT_S * 2)
        except ray.exceptions.RayActorError as error:
            raise RuntimeError(f"the orchestrator could not start: {error}") from error
        problem = identity_mismatch(running, queen_identity(self.config, self.journal_path), self.namespace)
        if problem is not None:
            raise OrchestratorMismatch(problem)
        return queen

    def _get(self, ref: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
        return ray.get(ref, timeout=timeout_s)

    def warm_up(self, timeout_s: float = 120.0) -> int:
        """Block until the standby runners have started (e.g. before a burst of deployments)."""
        return int(self._get(self.queen.warm.remote(timeout_s), timeout_s + CALL_TIMEOUT_S))

    def worker(self, code: str) -> Any:
        """A domain worker's handle: DO-001 environments ... DO-006 pipelines."""
        return self._get(self.queen.worker.remote(code, token=self._token))

    # ------------------------------------------------------------------------------ requests
    def request(
        self,
        artifact: Artifact | dict[str, Any],
        strategy: Strategy | dict[str, Any] | str,
        environment: str,
        platform: PlatformConfig | dict[str, Any] | str = "local",
        requested_by: str | None = None,
        **strategy_overrides: Any,
    ) -> DeploymentRequest:
        """Validate the pieces of a deployment; strategy names take the config file's defaults."""
        return build_request(
            self.config, artifact, strategy, environment, platform, requested_by, **strategy_overrides
        )

    def submit(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        deployment_id: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a deployment and return its id at once (it may wait in the queue)."""
        request = self.request(artifact, strategy, environment, platform, **kwargs)
        return self.submit_request(request, deployment_id)

    def submit_request(self, request: DeploymentRequest, deployment_id: str | None = None) -> str:
        """Start an already validated request (see ``request``); returns its id at once."""
        return str(self._get(self.queen.submit.remote(request, deployment_id, token=self._token)))

    def deploy(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        timeout_s: float = 3600.0,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> DeploymentResult:
        """Deploy and block until the deployment ends (or ``timeout_s`` passes)."""
        deployment_id = self.submit(artifact, strategy, environment, platform, **kwargs)
        return self.wait(deployment_id, timeout_s, on_progress)

    def status(self, deployment_id: str) -> DeploymentStatus:
        return self._get(self.queen.status.remote(deployment_id, token=self._token))  # type: ignore[no-any-return]

    def wait(
        self, deployment_id: str, timeout_s: float = 3600.0, on_progress: ProgressCallback | None = None
    ) -> DeploymentResult:
        deadline = time.monotonic() + timeout_s
        status = self.status(deployment_id)
        poll = 1.0 if on_progress else 30.0
        while not status.phase.terminal and time.monotonic() < deadline:
            if on_progress:
                on_progress(status)
            wait_s = max(0.0, min(poll, deadline - time.monotonic()))
            status = self._get(
                self.queen.wait.remote(deployment_id, wait_s, token=self._token), wait_s + CALL_TIMEOUT_S
            )
        if on_progress:
            on_progress(status)
        return DeploymentResult(
            deployment_id=status.deployment_id, success=status.phase is Phase.SUCCEEDED, status=status
        )

    def as_caller(self, token: str) -> DeploymentOrchestrator:
        """The same orchestrator calling with another person's token (a console serving several people:
        each request acts as the person who made it, checked inside the actors)."""
        caller = copy.copy(self)
        caller._token = token
        return caller

    def whoami(self) -> dict[str, Any]:
        """The person the token belongs to (and the token's id); refused for an unknown or revoked token."""
        return self._get(self.queen.whoami.remote(token=self._token))  # type: ignore[no-any-return]

    def events(self, deployment_id: str, after_seq: int = 0) -> list[Event]:
        """A deployment's journal events (steps, weights, judgements, hooks, ...) after ``after_seq``."""
        ref = self.queen.events.remote(deployment_id, after_seq, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def environments(self) -> list[Environment]:
        """The configured and registered environments (DO-001)."""
        return self._get(self.worker("DO-001").environments.remote(token=self._token))  # type: ignore[no-any-return]

    def history(self, limit: int = 50, service: str | None = None) -> list[DeploymentStatus]:
        return self._get(self.queen.history.remote(limit, service, token=self._token))  # type: ignore[no-any-return]

    def control(
        self, deployment_id: str, action: str, reason: str = "", by: str | None = None
    ) -> DeploymentStatus:
        """pause | resume | promote | promote_full | abort | rollback, through the queen (recorded as the
        token's person; ``by`` is kept for compatibility)."""
        who = by or os.environ.get("USER", "unknown")
        ref = self.queen.control.remote(deployment_id, action, who, reason, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def rollback(
        self, deployment_id: str, reason: str = "manual rollback", by: str | None = None
    ) -> DeploymentStatus:
        return self.control(deployment_id, "rollback", reason, by)

    def pause(self, deployment_id: str, reason: str = "", by: str | None = None) -> DeploymentStatus:
        return self.control(deployment_id, "pause", reason, by)

    def resume(self, deployment_id: str, by: str | None = None) -> DeploymentStatus:
        return self.control(deployment_id, "resume", "", by)

    def promote(self, deployment_id: str, full: bool = False, by: str | None = None) -> DeploymentStatus:
        return self.control(deployment_id, "promote_full" if full else "promote", "", by)

    def abort(self, deployment_id: str, reason: str = "aborted", by: str | None = None) -> DeploymentStatus:
        return self.control(deployment_id, "abort", reason, by)

    # ------------------------------------------------------------------------------ governance
    def approve(self, subject: str, person: str | None, group: str, comment: str = "") -> ApprovalRequest:
        """An approval for ``group`` of a deployment (id or unique prefix) or another subject (a pipeline
        stage), by the person whose token this driver holds (``person``, when given, must be them). A
        deployment is admitted as soon as every group has approved."""
        ref = self.queen.approve.remote(subject, person, group, comment, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def reject(self, subject: str, person: str | None, group: str, comment: str = "") -> ApprovalRequest:
        """A rejection for ``group``: the approval ends, and a deployment waiting for it too."""
        ref = self.queen.reject.remote(subject, person, group, comment, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def approvals(
        self, subject: str | None = None, pending_only: bool = True, environment: str | None = None
    ) -> list[ApprovalRequest]:
        """One subject's approval, or the requests awaiting a decision (all: ``pending_only=False``)."""
        ref = self.queen.approval_requests.remote(subject, pending_only, environment, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def artifacts(self, service: str) -> list[ArtifactEntry]:
        """A service's versions (digest, source, build, signer, checks) and where each is live now."""
        return ArtifactRegistry(Journal(self.journal_path)).versions(service)

    def report(self, report_id: str) -> ComplianceReport:
        """The compliance report of a deployment or a pipeline (``.markdown()``, ``.to_json()``)."""
        return report(Journal(self.journal_path), report_id, self.config)  # its trail's store and key

    # ------------------------------------------------------------------------------ domain workers
    def register_environment(self, environment: Environment | dict[str, Any]) -> Environment:
        env = Environment.model_validate(environment) if isinstance(environment, dict) else environment
        ref = self.worker("DO-001").register_environment.remote(env, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def monitor_environment_health(self, environment: str, urls: list[str] | None = None) -> list[str]:
        ref = self.worker("DO-001").monitor_environment_health.remote(environment, urls, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def get_environment_health(self, environment: str) -> Any:
        return self._get(self.worker("DO-001").get_environment_health.remote(environment, token=self._token))

    def environment_readiness(
        self, environment: str, platform: PlatformConfig | str = "local", replicas: int = 1
    ) -> Any:
        """Would ``replicas`` new replicas go to ``environment`` on ``platform`` now (DO-001)? TLS,
        NetworkPolicy and replica limits against the platform's declared capabilities, then its free memory,
        disk or quota: a ``ReadinessReport`` naming what is short. Changes nothing."""
        config = self.config.platform(platform) if isinstance(platform, str) else platform
        ref = self.worker("DO-001").environment_readiness.remote(
            environment, config, replicas, token=self._token
        )
        return self._get(ref, CALL_TIMEOUT_S * 2)

    def environment_status(self, environment: str) -> Any:
        """The environment's last recorded status (ready, not ready, capacity short), or None."""
        return self._get(self.worker("DO-001").environment_status.remote(environment, token=self._token))

    def monitor_deployment(
        self,
        deployment_id: str,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        unhealthy_threshold: int = 3,
    ) -> str:
        return self._get(
            self.worker("DO-004").monitor_deployment.remote(  # type: ignore[no-any-return]
                deployment_id, interval_s, timeout_s, unhealthy_threshold, token=self._token
            )
        )

    def trigger_rollback(self, deployment_id: str, reason: str, by: str | None = None) -> DeploymentStatus:
        who = by or os.environ.get("USER", "unknown")
        ref = self.worker("DO-004").trigger_rollback.remote(deployment_id, reason, who, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ pipelines (DO-006)
    def start_pipeline(
        self,
        name: str | PipelineTemplate | dict[str, Any],
        artifact: ArtifactLike | Sequence[ArtifactLike],
        environments: Sequence[EnvironmentLike] | None = None,
        by: str | None = None,
        pipeline_name: str | None = None,
        change_record: ChangeRecord | dict[str, Any] | None = None,
    ) -> str:
        """Start a run of a pipeline template and return its id at once. ``name``: a template under
        ``pipelines:`` in enterprise_config.yaml, or a template given here (``pipeline_name`` names its runs).
        ``artifact``: one artifact (the template's services, or the artifact's own) or one per service.
        ``environments``: names (or Environment objects) in promotion order; None: the template's.
        ``change_record``: {id, summary} of the change, carried by every deployment of the run."""
        template = PipelineTemplate.model_validate(name) if isinstance(name, dict) else name
        run = RunInput(
            name=name if isinstance(name, str) else pipeline_name or "pipeline",
            artifacts=_artifacts(artifact),
            environments=[_environment_name(e) for e in environments] if environments is not None else None,
            requested_by=by or os.environ.get("USER", "unknown"),
            change_record=ChangeRecord.model_validate(change_record) if change_record else None,
        )
        templated = None if isinstance(template, str) else template
        # The first call to DO-006 also waits for its process to start and its runs to be resumed.
        ref = self.worker("DO-006").start_pipeline.remote(run, templated, token=self._token)
        return str(self._get(ref, 3 * CALL_TIMEOUT_S))

    def pipeline_status(self, pipeline_id: str) -> PipelineStatus:
        """A run's stages, deployments and outcome (an id prefix works)."""
        ref = self.worker("DO-006").pipeline_status.remote(pipeline_id, token=self._token)
        return self._get(ref)  # type: ignore[no-any-return]

    def wait_pipeline(
        self,
        pipeline_id: str,
        timeout_s: float = 6 * 3600.0,
        on_progress: Callable[[PipelineStatus], None] | None = None,
    ) -> PipelineStatus:
        """Block until the run has its outcome (or ``timeout_s`` passes); DO-006 answers when it ends."""
        deadline = time.monotonic() + timeout_s
        status = self.pipeline_status(pipeline_id)
        poll = 2.0 if on_progress else 60.0
        while status.state in _PIPELINE_ACTIVE and time.monotonic() < deadline:
            if on_progress:
                on_progress(status)
            wait_s = max(0.0, min(poll, deadline - time.monotonic()))
            asked = time.monotonic()
            pipelines = self.worker("DO-006")
            ref = pipelines.wait_pipeline.remote(pipeline_id, wait_s, token=self._token)
            status = self._get(ref, wait_s + CALL_TIMEOUT_S)
            if status.state in _PIPELINE_ACTIVE and time.monotonic() - asked < 1.0:
                time.sleep(1.0)  # a DO-006 that does not drive this run (yet) answers at once: do not spin
        if on_progress:
            on_progress(status)
        return status

    def deploy_pipeline(
        self,
        name: str | PipelineTemplate | dict[str, Any],
        artifact: ArtifactLike | Sequence[ArtifactLike],
        environments: Sequence[EnvironmentLike] | None = None,
        timeout_s: float = 6 * 3600.0,
        by: str | None = None,
        on_progress: Callable[[PipelineStatus], None] | None = None,
        change_record: ChangeRecord | dict[str, Any] | None = None,
    ) -> PipelineResults:
        """The seed's ``deployPipeline(name, artifact, [dev, staging, prod])``: run the pipeline to its end
        and return one result per deployment (``deployment_id``/``deploymentId``, ``success``); the list also
        carries the whole run as ``.pipeline``."""
        pipeline_id = self.start_pipeline(name, artifact, environments, by, change_record=change_record)
        status = self.wait_pipeline(pipeline_id, timeout_s, on_progress)
        return PipelineResults(status)

    deployPipeline = deploy_pipeline

    def run_pipeline(
        self, artifact: Artifact | dict[str, Any], stages: list[dict[str, Any]], timeout_s: float = 3600.0
    ) -> PipelineStatus:
        """Deploy through environments in order; a stage that does not succeed stops the rest (and rolls its
        environment back). Each stage: {"environment": ..., "strategy": name or dict, "platform": ...}.
        A thin form of ``deploy_pipeline``: one deploy stage per environment, each after the one before."""
        steps = [
            {
                "name": f"deploy-{i}",
                "kind": "deploy",
                "environments": [s["environment"]],
                "strategy": s.get("strategy", "rolling"),
                "platform": s.get("platform", "local"),
            }
            for i, s in enumerate(stages)
        ]  # promotion (sequential) makes each environment wait for the one before it
        template = PipelineTemplate.model_validate({"stages": steps})
        environments = [s["environment"] for s in stages]
        pipeline_id = self.start_pipeline(template, artifact, environments, pipeline_name="stages")
        return self.wait_pipeline(pipeline_id, timeout_s)

    def validate_platform(self, platform: PlatformConfig | str) -> Any:
        config = self.config.platform(platform) if isinstance(platform, str) else platform
        return self._get(self.worker("DO-005").validate_platform.remote(config, token=self._token))

    # ------------------------------------------------------------------------------ async variants
    async def submit_async(
        self, artifact: Any, strategy: Any, environment: str, platform: Any = "local", **kwargs: Any
    ) -> str:
        request = self.request(artifact, strategy, environment, platform, **kwargs)
        ref = self.queen.submit.remote(request, None, token=self._token)
        return str(await asyncio.wait_for(ref, CALL_TIMEOUT_S))

    async def wait_async(self, deployment_id: str, timeout_s: float = 3600.0) -> DeploymentResult:
        deadline = time.monotonic() + timeout_s
        status: DeploymentStatus = await self.queen.status.remote(deployment_id, token=self._token)
        while not status.phase.terminal and time.monotonic() < deadline:
            wait_s = max(0.0, min(30.0, deadline - time.monotonic()))
            status = await asyncio.wait_for(
                self.queen.wait.remote(deployment_id, wait_s, token=self._token), wait_s + CALL_TIMEOUT_S
            )
        return DeploymentResult(
            deployment_id=status.deployment_id, success=status.phase is Phase.SUCCEEDED, status=status
        )

    async def deploy_async(
        self,
        artifact: Any,
        strategy: Any,
        environment: str,
        platform: Any = "local",
        timeout_s: float = 3600.0,
        **kwargs: Any,
    ) -> DeploymentResult:
        deployment_id = await self.submit_async(artifact, strategy, environment, platform, **kwargs)
        return await self.wait_async(deployment_id, timeout_s)

    async def status_async(self, deployment_id: str) -> DeploymentStatus:
        ref = self.queen.status.remote(deployment_id, token=self._token)
        return await asyncio.wait_for(ref, CALL_TIMEOUT_S)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ tokens (admin)
    def issue_token(self, person: str) -> str:
        """A new personal token for ``person``: shown once, only its hash is kept."""
        return str(self._get(self.queen.issue_token.remote(person, token=self._token)))

    def revoke_token(self, token_id: str | None = None, person: str | None = None) -> list[dict[str, Any]]:
        """Revoke one token (by its id, as ``tokens()`` lists it) or every token of ``person``."""
        return self._get(self.queen.revoke_token.remote(token_id, person, token=self._token))  # type: ignore[no-any-return]

    def tokens(self) -> list[dict[str, Any]]:
        """Every token's id, person, issuer and dates (never a secret or a hash)."""
        return self._get(self.queen.tokens.remote(token=self._token))  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------ lifecycle
    def _release(self) -> None:
        with contextlib.suppress(ray.exceptions.RayError, RuntimeError):
            if ray.is_initialized():
                ray.get(self.queen.release.remote(token=self._token), timeout=10)

    def shutdown(self, stop_ray: bool = True) -> None:
        """Stop the queen and the domain workers (deployments in flight resume when a queen starts again)."""
        for code in DOMAIN_WORKERS:
            handle = find_actor(worker_name(code), self.namespace)
            if handle is not None:
                kill_quietly(handle)
        self._release()
        kill_quietly(self.queen)
        if stop_ray:
            ray.shutdown()


def connection_problem(address: str, error: BaseException) -> str:
    """Why joining the cluster failed, and what to set: Ray 2.60 itself says only "Failed to connect"
    when the cluster wants a token this client does not send."""
    causes: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(causes) < 5:
        causes.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " ".join(causes)
    mode = os.environ.get("RAY_AUTH_MODE")
    setting = f"RAY_AUTH_MODE is '{mode}' here" if mode else "RAY_AUTH_MODE is not set here"
    token_help = (
        "set RAY_AUTH_MODE=token (the cluster's mode) and give this client the cluster's token: "
        "RAY_AUTH_TOKEN_PATH=<file>, RAY_AUTH_TOKEN, or ~/.ray/auth_token (`ray get-auth-token` on the "
        "head node prints it)"
    )
    if any(mark in text for mark in ("AuthenticationError", "InvalidAuthToken", "Unauthenticated")):
        return (
            f"the Ray cluster at {address} refused this client: it uses token authentication and this "
            f"client sent no valid token ({setting}). To connect, {token_help}"
        )
    return (
        f"could not connect to the Ray cluster at {address} ({causes[0]}). Check that it runs "
        f"(`ray status --address {address}`); if it uses token authentication ({setting}), {token_help}"
    )


def read_journal(config_path: str | None = None, journal_path: str | None = None) -> Journal:
    """The journal, read straight from its file or database: history and status need no Ray cluster."""
    config = load_config(config_path)
    return Journal(journal_path or config.journal_location())


def running_cluster(config_path: str | None = None) -> str | None:
    """The address of the Ray cluster whose queen drives this configuration's journal, if it still answers
    (the embedded Ray of a `deploy` or of a background driver in another process, for instance)."""
    held = read_journal(config_path).lease(QUEEN_LEASE)
    if held is None or time.time() - float(held["renewed_at"]) > LEASE_TTL_S:
        return None
    owner = str(held["owner"])
    return owner.split(" ")[0] if cluster_answers(owner) else None


def connect_to_running(
    config_path: str | None = None, token: str | None = None
) -> DeploymentOrchestrator | None:
    """A driver on the cluster named by RAY_ADDRESS, else on the one whose queen drives this journal; None
    when neither exists (no orchestrator runs for this journal)."""
    address = os.environ.get("RAY_ADDRESS") or None
    if address is None:
        address = running_cluster(config_path)
        if address is None:
            return None
        if "RAY_AUTH_MODE" not in os.environ and _token_at_hand():
            _ask_for_token_auth()  # a cluster found on this machine: Ray's own default for local clusters
    return DeploymentOrchestrator(address=address, config_path=config_path, token=token)


def _ask_for_token_auth() -> None:
    """Ray 2.60 turns token authentication on for the clusters it starts when a token exists (ray.init's
    embedded one, `ray start --head`); a client must ask for the same mode or it is refused. Ray reads the
    mode into its cached configuration when it is imported, so the cache is refreshed, as Ray itself does
    when it turns the mode on for a cluster it starts."""
    from ray._raylet import Config  # type: ignore[attr-defined]

    os.environ["RAY_AUTH_MODE"] = "token"
    Config.initialize("")


def _token_at_hand() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def migrate_journal(target: str, source: str | None = None, config_path: str | None = None) -> CopyReport:
    """Copy a journal (``source``, by default the configured SQLite one) into an empty PostgreSQL journal
    (``target``: ``env:NAME``, ``file:/path`` or a URL), hash chain intact: verified before and after."""
    if not is_postgres(target):
        raise ValueError(
            f"journal migrate --to: '{target}' is not env:NAME, file:/path or a postgresql:// URL"
        )
    origin = Journal(source or load_config(config_path).journal_location())
    try:
        destination = Journal(target)
        try:
            return copy_journal(origin, destination)
        finally:
            destination.close()
    finally:
        origin.close()
