"""Runner actors: each drives exactly one deployment to a terminal state, without blocking its event loop.

A runner is started ahead of need (a warm standby, so a process start is not on a deployment's critical path)
and then assigned one deployment for its whole life. The assignment is written to the journal before the
runner starts work, so a runner that Ray restarts after a crash finds its deployment again by its own name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

import ray

from adapters import create_platform
from adapters.http_probe import HttpSmokeTester
from engine.journal import Journal
from engine.models import DeploymentStatus
from engine.reconciler import DeploymentReconciler

log = logging.getLogger(__name__)
ASSIGNMENT = "runner"


class DeploymentRunnerImpl:
    """Re-reads the journal and the platform after every (re)start: nothing it needs lives only in memory."""

    def __init__(self, journal_path: str) -> None:
        # A standby runner pays its imports now, not on a deployment's critical path (the local platform's;
        # other platforms' clients are imported when first used).
        import adapters.haproxy
        import adapters.local_process
        import adapters.routed  # noqa: F401

        self.journal = Journal(journal_path)
        self.name = ray.get_runtime_context().get_actor_name() or f"runner@{os.getpid()}"
        self.deployment_id: str | None = None
        self.reconciler: DeploymentReconciler | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[str] | None = None
        for record in self.journal.records(ASSIGNMENT):
            if record.get("runner") == self.name:  # restarted after a crash: same name, same deployment
                self._bind(str(record["deployment_id"]))

    def _bind(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        self.reconciler = DeploymentReconciler(
            self.journal, deployment_id, create_platform, smoke=HttpSmokeTester(), actor=self.name
        )

    async def ready(self) -> str:
        return self.name

    async def assign(self, deployment_id: str) -> str:
        """Bind this runner to one deployment, for good; assigning the same one again is a no-op."""
        if self.deployment_id not in (None, deployment_id):
            raise ValueError(f"{self.name} already runs {self.deployment_id}")
        if self.deployment_id is None:
            self.journal.put_record(
                ASSIGNMENT, self.name, {"runner": self.name, "deployment_id": deployment_id}
            )
            self._bind(deployment_id)
        return self.name

    async def run(self) -> str:
        """Run to the end; calling it again (after a restart or from a restarted queen) joins the same run."""
        if self.reconciler is None:
            raise ValueError(f"{self.name} has no deployment assigned")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(self.reconciler))
        return await asyncio.shield(self._task)

    async def _loop(self, reconciler: DeploymentReconciler) -> str:
        try:
            while True:
                delay = await asyncio.to_thread(_until_wait, reconciler)
                if delay is None:
                    return reconciler.state().phase().value
                self._wake.clear()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            await asyncio.to_thread(reconciler.close)

    async def wake(self) -> None:
        """A control request (pause, promote, abort, rollback) was journaled: look at it now."""
        self._wake.set()

    async def status(self) -> DeploymentStatus | None:
        return self.reconciler.state().status() if self.reconciler else None

    async def pid(self) -> int:
        return os.getpid()


def _until_wait(reconciler: DeploymentReconciler, most: int = 20) -> float | None:
    """Steps that need no wait follow one another in the same thread hop (bounded, so that a control
    request is still seen soon)."""
    delay = reconciler.reconcile()
    for _ in range(most):
        if delay != 0.0:
            break
        delay = reconciler.reconcile()
    return delay


DeploymentRunner: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(DeploymentRunnerImpl)
