"""One runner actor per deployment: drives its reconciler to a terminal state without blocking the loop."""

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


class DeploymentRunnerImpl:
    """Re-reads the journal and the platform after every (re)start: nothing it needs lives only in memory."""

    def __init__(self, deployment_id: str, journal_path: str) -> None:
        self.deployment_id = deployment_id
        self.journal = Journal(journal_path)
        self.reconciler = DeploymentReconciler(
            self.journal,
            deployment_id,
            create_platform,
            smoke=HttpSmokeTester(),
            actor=f"runner@{os.getpid()}",
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[str] | None = None

    async def run(self) -> str:
        """Run to the end; calling it again (after a restart or from a restarted queen) joins the same run."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return await asyncio.shield(self._task)

    async def _loop(self) -> str:
        try:
            while True:
                delay = await asyncio.to_thread(self.reconciler.reconcile)
                if delay is None:
                    return self.journal.state(self.deployment_id).phase().value
                self._wake.clear()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=delay)
        finally:
            await asyncio.to_thread(self.reconciler.close)

    async def wake(self) -> None:
        """A control request (pause, promote, abort, rollback) was journaled: look at it now."""
        self._wake.set()

    async def status(self) -> DeploymentStatus:
        return self.journal.state(self.deployment_id).status()

    async def pid(self) -> int:
        return os.getpid()


DeploymentRunner: Any = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(DeploymentRunnerImpl)
