"""The queen's admission and runner pool, in plain Python: the queen actor is a thin seam over this module.

In the style of Ray Serve's ``deployment_state.py``: the managers here decide, and an injected ``Runners``
(the queen's, the only code that calls Ray) starts, finds, drives and stops runner actors. Everything is
rebuilt from the journal after the queen restarts: which deployments were admitted (each is driven again by
the runner named in its admission), which runner actors are assigned to a deployment, and which are idle
standbys that a previous queen left behind.

Admission rules: at most ``limit`` deployments run at once; the others wait in submission order (FIFO); at
most one deployment per target (service x environment) is active; at most ``limit + max_queued`` deployments
are active at once, beyond which a submission is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from engine.control import ControlRefused
from engine.governance import Gate
from engine.state import DeploymentState, EventKind

log = logging.getLogger(__name__)

ALL = 100_000  # "every deployment" for the journal's queries
RUNNER_RESTARTS = 5
RUNNER_ASSIGNMENT = "runner"  # journal record kind: runner name -> the deployment it drives


class DeploymentRefused(ControlRefused):
    """The request cannot be accepted as it is; the message says why."""


class RunnerLost(Exception):
    """The runner actor died while it was assigned or running a deployment (its process is gone)."""


class NoPlaceToRun(RuntimeError):
    """No runner can drive the deployment: e.g. the node that holds its platform's state left the cluster.
    The deployment fails with this message rather than start over on an empty state."""


class Runners(Protocol):
    """Runner actors by name. The queen's implementation is the only one that calls Ray."""

    def new_name(self) -> str: ...

    def start(self, name: str, deployment_id: str | None = None) -> Any:
        """Start (or get, if it already runs) the runner actor of that name, where ``deployment_id``'s
        platform needs it when one is given; returns its handle."""
        ...

    def place(self, state: DeploymentState) -> str | None:
        """The node a runner of this deployment must run on, or None when any will do; raises NoPlaceToRun."""
        ...

    def node_of(self, name: str) -> str | None:
        """Where that runner runs, once known."""
        ...

    def find(self, name: str) -> Any | None:
        """The handle of the live runner of that name, or None."""
        ...

    def live_names(self) -> list[str]:
        """The names of every live runner actor."""
        ...

    def stop(self, handle: Any) -> None: ...

    async def drive(self, handle: Any, deployment_id: str) -> None:
        """Assign the deployment to the runner and return once it is terminal; raises RunnerLost."""
        ...


class Clock(Protocol):
    """Waits between attempts (a fake one in tests records them instead)."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AdmissionJournal(Protocol):
    """What admission needs of the journal (``engine.journal.Journal``)."""

    def deployments(
        self, active_only: bool = False, limit: int = 1000, target_key: str | None = None
    ) -> list[DeploymentState]: ...

    def state(self, deployment_id: str) -> DeploymentState: ...

    def append(
        self, deployment_id: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> DeploymentState: ...

    def records(self, kind: str) -> list[dict[str, Any]]: ...


class AdmissionGate(Protocol):
    """Whether a queued deployment may be admitted (the approval gate, ``engine.governance.ApprovalGate``):
    OPEN, WAITING (it keeps its place and holds its target), or ENDED (ended by the gate, journaled)."""

    def check(self, state: DeploymentState) -> Gate: ...


class _AlwaysOpen:
    def check(self, state: DeploymentState) -> Gate:
        return Gate.OPEN


class AdmissionListener(Protocol):
    """Told of the load and of each ending (the queen's telemetry)."""

    def set_load(self, running: int, queued: int) -> None: ...

    def finished(self, state: DeploymentState) -> None: ...


class _Silent:
    def set_load(self, running: int, queued: int) -> None:
        return None

    def finished(self, state: DeploymentState) -> None:
        return None


class RunnerPool:
    """Runner actors kept started, idle or busy, up to ``warm``: the first ``warm`` concurrent deployments
    wait for no process start and a steady flow of deployments starts none at all (a process start costs more
    CPU than a deployment's whole orchestration). Busy runners come back when their deployment ends."""

    def __init__(self, runners: Runners, warm: int) -> None:
        self.runners = runners
        self.warm = warm
        self.standby: list[tuple[str, Any]] = []

    def refill(self, busy: int) -> None:
        while len(self.standby) + busy < self.warm:
            name = self.runners.new_name()
            self.standby.append((name, self.runners.start(name)))

    def take(self, state: DeploymentState | None = None) -> str:
        """A standby runner's name (one on the node ``state``'s platform needs, when it needs one), or a new
        name (its actor is then started by the drive: a cold start). Raises NoPlaceToRun."""
        node = self.runners.place(state) if state is not None else None
        for index, (name, _) in enumerate(self.standby):
            if node is None or self.runners.node_of(name) == node:
                return self.standby.pop(index)[0]
        return self.runners.new_name()

    def forget_dead(self, live: set[str]) -> None:
        """Standby runners whose actors are gone (lost with their node) are forgotten; ``refill`` replaces
        them."""
        self.standby = [(name, handle) for name, handle in self.standby if name in live]

    def give_back(self, name: str, handle: Any, reusable: bool) -> None:
        """A runner whose deployment ended goes back to the pool (up to ``warm``); others stop."""
        if reusable and len(self.standby) < self.warm:
            self.standby.append((name, handle))
        else:
            self.runners.stop(handle)

    def adopt(self, assigned: set[str], busy: int) -> None:
        """Standby runners a previous queen started (before it restarted) are used, not leaked; those beyond
        ``warm`` stop."""
        for name in self.runners.live_names():
            if name in assigned or any(name == kept for kept, _ in self.standby):
                continue
            handle = self.runners.find(name)
            if handle is None:
                continue
            if len(self.standby) + busy < self.warm:
                self.standby.append((name, handle))
            else:
                self.runners.stop(handle)

    def handles(self) -> list[Any]:
        return [handle for _, handle in self.standby]


class Admission:
    """Admits deployments from the journal's queue and drives each with a runner from the pool.

    Must be used from one asyncio event loop (the queen's): each admitted deployment is driven by a task."""

    def __init__(
        self,
        journal: AdmissionJournal,
        runners: Runners,
        limit: int,
        max_queued: int,
        warm_runners: int,
        clock: Clock | None = None,
        listener: AdmissionListener | None = None,
        restarts: int = RUNNER_RESTARTS,
        actor: str = "queen",
        gate: AdmissionGate | None = None,
    ) -> None:
        self.journal = journal
        self.runners = runners
        self.limit = limit
        self.max_queued = max_queued
        self.clock = clock or SystemClock()
        self.listener = listener or _Silent()
        self.restarts = restarts
        self.actor = actor
        self.gate = gate or _AlwaysOpen()
        self.pool = RunnerPool(runners, warm_runners)
        self.runs: dict[str, asyncio.Task[None]] = {}
        self._ended: dict[str, asyncio.Event] = {}

    def _active(self) -> list[DeploymentState]:
        return self.journal.deployments(active_only=True, limit=ALL)

    # ------------------------------------------------------------------------------ start-up
    def recover(self) -> None:
        """After a (re)start: every admitted deployment is driven again by the runner named in its
        admission (a live one is found and joined, so nothing runs twice), idle runners are adopted and the
        queue is admitted."""
        for state in self._active():
            if state.admitted_at is not None:
                self._launch(state.deployment_id, state.runner or self.runners.new_name())
        self.pool.adopt(self._assigned(), busy=len(self.runs))
        self.admit()

    def _assigned(self) -> set[str]:
        assigned = {str(record["runner"]) for record in self.journal.records(RUNNER_ASSIGNMENT)}
        # An admission journaled just before a crash names its runner before the runner records it.
        return assigned | {s.runner for s in self._active() if s.runner}

    # ------------------------------------------------------------------------------ admission
    def check_room(self) -> None:
        """Refuses a new submission when ``limit + max_queued`` deployments are already active."""
        active = len(self._active())
        if active >= self.limit + self.max_queued:
            raise DeploymentRefused(f"the queue is full ({active} deployments waiting or running)")

    def submitted(self, deployment_id: str) -> None:
        """A deployment was journaled as submitted: admit it if there is room."""
        self._ended.setdefault(deployment_id, asyncio.Event())
        self.admit()

    def admit(self) -> list[str]:
        """Admit queued deployments in FIFO order while there is room; returns the ids admitted now."""
        active, waiting = self._gated(self._active())
        running = [s for s in active if s.admitted_at is not None]
        busy = {s.request.target.key for s in running}
        admitted: list[str] = []
        for state in active:
            if len(running) >= self.limit:
                break
            if state.admitted_at is not None or state.request.target.key in busy:
                continue
            if state.deployment_id in waiting:  # it holds its target: the target's deployments keep order
                busy.add(state.request.target.key)
                continue
            try:
                runner = self.pool.take(state)
            except NoPlaceToRun as error:
                self._fail(state.deployment_id, str(error))
                self._notify_ended(state.deployment_id)
                continue
            self.journal.append(
                state.deployment_id, EventKind.ADMITTED, {"limit": self.limit, "runner": runner}, self.actor
            )
            busy.add(state.request.target.key)
            running.append(state)
            admitted.append(state.deployment_id)
            self._launch(state.deployment_id, runner)
        self.pool.refill(busy=len(self.runs))
        self.listener.set_load(running=len(running), queued=len(active) - len(running))
        return admitted

    def _gated(self, active: list[DeploymentState]) -> tuple[list[DeploymentState], set[str]]:
        """Every queued deployment's gate looked at, whatever the limit or its target: one the gate ends
        (a rejected or expired approval) ends now. Returns the deployments still active and the ids still
        waiting at their gate."""
        kept: list[DeploymentState] = []
        waiting: set[str] = set()
        for state in active:
            gate = Gate.OPEN if state.admitted_at is not None else self.gate.check(state)
            if gate is Gate.ENDED:
                self._notify_ended(state.deployment_id)
                continue
            if gate is Gate.WAITING:
                waiting.add(state.deployment_id)
            kept.append(state)
        return kept, waiting

    def ended(self, deployment_id: str) -> None:
        """A deployment is terminal (its run ended, or it was ended while queued): wake its waiters, admit."""
        self._notify_ended(deployment_id)
        self.admit()

    def _notify_ended(self, deployment_id: str) -> None:
        self.listener.finished(self.journal.state(deployment_id))
        event = self._ended.pop(deployment_id, None)
        if event is not None:
            event.set()

    async def wait(self, deployment_id: str, timeout_s: float) -> None:
        """Returns once the deployment is terminal or ``timeout_s`` has passed, whichever is first."""
        if not self.journal.state(deployment_id).active:
            return
        event = self._ended.setdefault(deployment_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout_s)

    # ------------------------------------------------------------------------------ runs
    def _launch(self, deployment_id: str, runner: str) -> None:
        if deployment_id in self.runs:
            return
        self._ended.setdefault(deployment_id, asyncio.Event())
        self.runs[deployment_id] = asyncio.get_running_loop().create_task(self._drive(deployment_id, runner))

    async def _drive(self, deployment_id: str, name: str) -> None:
        """Drive the deployment with its runner; a runner lost for good is started again under the same
        name, finds its assignment in the journal and resumes the deployment from there, up to ``restarts``
        times; then the deployment fails."""
        handle, reusable = None, False
        try:
            handle, reusable = await self._attempts(deployment_id, name)
        except NoPlaceToRun as error:
            self._fail(deployment_id, str(error))
        finally:
            if handle is not None:
                self.pool.give_back(name, handle, reusable)
            self.runs.pop(deployment_id, None)
            self.ended(deployment_id)

    async def _attempts(self, deployment_id: str, name: str) -> tuple[Any, bool]:
        """(the runner, whether it may be reused) once the deployment ended, or the attempts ran out (a lost
        runner is started again, on another node if its own is gone)."""
        handle = None
        for attempt in range(self.restarts + 1):
            handle = self.runners.find(name) or self.runners.start(name, deployment_id)
            try:
                await self.runners.drive(handle, deployment_id)
                return handle, True
            except RunnerLost as error:
                log.warning("runner of %s lost (attempt %d): %s", deployment_id, attempt + 1, error)
                await self.clock.sleep(min(10.0, 0.5 * 2**attempt))
        self._fail(deployment_id, f"its runner was lost {self.restarts + 1} times")
        return handle, False

    def _fail(self, deployment_id: str, message: str) -> None:
        if self.journal.state(deployment_id).active:
            self.journal.append(
                deployment_id, EventKind.FINISHED, {"outcome": "failed", "message": message}, self.actor
            )
