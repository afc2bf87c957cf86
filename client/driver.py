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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.common import DOMAIN_WORKERS, QUEEN_NAME, find_actor, kill_quietly, worker_name
from client.local import bootstrap_if_new, find_token
from engine.config import load_config
from engine.journal import Journal
from engine.models import (
    Artifact,
    DeploymentRequest,
    DeploymentResult,
    DeploymentStatus,
    Environment,
    Phase,
    PlatformConfig,
    Strategy,
)
from engine.requests import build_request
from engine.state import Event

REPO = Path(__file__).resolve().parent.parent
CALL_TIMEOUT_S = 60.0
log = logging.getLogger("orchestrator")
ProgressCallback = Callable[[DeploymentStatus], None]


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
        self.journal_path = str(journal_path or self.config.journal_path())
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
                "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO)}},
            }
        ray.init(address=address or "local", **options)
        return address is None

    def _queen(self, max_concurrent: int | None) -> Any:
        from actors.queen import Queen

        queen = find_actor(QUEEN_NAME, self.namespace)
        if queen is None:
            queen = Queen.options(
                name=QUEEN_NAME, namespace=self.namespace, lifetime="detached", get_if_exists=True
            ).remote(self.config_path, self.journal_path, max_concurrent, secrets.token_urlsafe(32))
        try:
            ray.get(queen.ready.remote(), timeout=CALL_TIMEOUT_S * 2)
        except ray.exceptions.RayActorError as error:
            raise RuntimeError(f"the orchestrator could not start: {error}") from error
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

    def run_pipeline(
        self, artifact: Artifact | dict[str, Any], stages: list[dict[str, Any]], timeout_s: float = 3600.0
    ) -> Any:
        """Deploy through environments in order (DO-006); a stage that does not succeed stops the rest.

        Each stage: {"environment": ..., "strategy": name or dict, "platform": name or dict}."""
        from actors.domain import PipelineStage

        built = [
            PipelineStage.model_validate(
                build_request(
                    self.config,
                    artifact,
                    s.get("strategy", "rolling"),
                    s["environment"],
                    s.get("platform", "local"),
                ).model_dump(include={"environment", "strategy", "platform"})
            )
            for s in stages
        ]
        request = Artifact.model_validate(artifact) if isinstance(artifact, dict) else artifact
        who = os.environ.get("USER", "unknown")
        pipelines = self.worker("DO-006")
        pipeline_id = self._get(pipelines.start_pipeline.remote(request, built, who, token=self._token))
        deadline = time.monotonic() + timeout_s
        status = self._get(pipelines.pipeline_status.remote(pipeline_id, token=self._token))
        while status.state == "running" and time.monotonic() < deadline:
            time.sleep(0.5)
            status = self._get(pipelines.pipeline_status.remote(pipeline_id, token=self._token))
        return status

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


def read_journal(config_path: str | None = None, journal_path: str | None = None) -> Journal:
    """The journal, read straight from its file: history and status need no Ray cluster."""
    config = load_config(config_path)
    return Journal(journal_path or config.journal_path())
