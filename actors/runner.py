"""Runner actors: each drives one deployment at a time to a terminal state, on its main thread.

A runner is started ahead of need (a warm standby, so a process start is not on a deployment's critical path)
and is then assigned one deployment, which it alone drives until that deployment is terminal; then it goes
back to the queen's pool for the next one (a process start costs far more CPU than a whole deployment's
orchestration). The assignment is written to the journal before the runner starts work and erased when the
deployment is terminal, so a runner that Ray restarts after a crash finds its deployment again by its name.

The run blocks the actor's main thread until the deployment is terminal (a synchronous actor): Ray's core
worker wakes that thread every 10 ms to check for signals while it is idle, which costs an idle runner more
CPU than its checks; a thread blocked in the run is not woken so. Between its checks the runner waits on one
pending call to the queen that answers when a control request is journaled (engine/control_signals.py).
Calls to the runner while it runs wait for the run to end: what it does is in the journal (its assignment
names its pid).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import ray

from actors.common import QUEEN_NAME, NamedActor, find_actor, freeze_startup_heap, worker_name
from actors.delegates import WORKER_OF, DomainWorkers, WorkerJudge, WorkerPlanner
from adapters import content_digests, create_metric_provider, create_platform
from adapters.http_probe import HttpSmokeTester
from adapters.webhooks import HttpWebhookSender
from engine.admission import RUNNER_ASSIGNMENT
from engine.control_signals import CONTROL_WAIT_S
from engine.governance import feature_enabled, preflight
from engine.hooks import WebhookGate
from engine.journal import Journal
from engine.models import DeploymentStatus, RollbackTrigger
from engine.reconciler import DeploymentReconciler
from engine.rollback_decision import ROLLBACK_SYSTEM, DelegatingDecider
from engine.state import EventKind

log = logging.getLogger(__name__)
ASSIGNMENT = RUNNER_ASSIGNMENT  # the record admission reads to know which runners are busy
# How long a rollback may wait for DO-004's decision before the runner records it itself: short, because the
# candidate may be failing live traffic meanwhile (an answer takes about a millisecond).
ROLLBACK_DECISION_TIMEOUT_S = 2.0
_DEBUG_HANDLER = logging.StreamHandler()  # the worker's stderr: its log file
_DEBUG_HANDLER.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def debug_logging(on: bool) -> None:
    """The debugLogging feature of the deployment a runner drives: every step of it logged, or not."""
    for name in ("engine", "adapters"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if on else logging.NOTSET)
        if on and _DEBUG_HANDLER not in logger.handlers:
            logger.addHandler(_DEBUG_HANDLER)
        elif not on:
            logger.removeHandler(_DEBUG_HANDLER)


class DeploymentRunnerImpl:
    """Re-reads the journal and the platform after every (re)start: nothing it needs lives only in memory."""

    def __init__(
        self, journal_path: str, service_secret: str | None = None, namespace: str | None = None
    ) -> None:
        # A standby runner pays its imports now, not on a deployment's critical path (the local platform's;
        # other platforms' clients are imported when first used).
        import adapters.haproxy
        import adapters.local_process
        import adapters.routed  # noqa: F401

        self.journal = Journal(journal_path)
        self.name = ray.get_runtime_context().get_actor_name() or f"runner@{os.getpid()}"
        self.namespace = namespace or ray.get_runtime_context().namespace  # its own, not the job's
        self.service_secret = service_secret  # how it asks DO-004 to decide its rollbacks (a system call)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.deployment_id: str | None = None
        self.reconciler: DeploymentReconciler | None = None
        self._phase: str | None = None  # how the bound deployment's run ended (None: not run to its end)
        self._control: Any = None  # the pending call to the queen that returns on a control request
        self.workers = DomainWorkers(self.namespace)
        # Handles made now, while the runner stands by, not on a deployment's first wait (NamedActor).
        self._queen = NamedActor(QUEEN_NAME, self.namespace)
        self.workers.look_up(*WORKER_OF.values())
        for record in self.journal.records(ASSIGNMENT):
            if record.get("runner") == self.name:  # restarted after a crash: same name, same deployment
                self._resume(str(record["deployment_id"]), record.get("node"))
        freeze_startup_heap()

    def _resume(self, deployment_id: str, node: str | None) -> None:
        if not self.journal.state(deployment_id).active:  # it ended just before the crash: the runner is free
            self.journal.delete_record(ASSIGNMENT, self.name)
            return
        self._bind(deployment_id)
        self._record_assignment(deployment_id)
        # Where it goes on after a restart (another node when its node died), in the journal's history.
        note = {"runner_restarted": self.name, "node": self.node_id, "previous_node": node}
        self.journal.append(deployment_id, EventKind.NOTE, note, actor=self.name)

    def _record_assignment(self, deployment_id: str) -> None:
        # The pid: how an operator (or a test) finds the process while it runs (it takes no calls then).
        record: dict[str, Any] = {"runner": self.name, "deployment_id": deployment_id, "node": self.node_id}
        record["pid"] = os.getpid()
        self.journal.put_record(ASSIGNMENT, self.name, record)

    def _bind(self, deployment_id: str) -> None:
        self.deployment_id = deployment_id
        state = self.journal.state(deployment_id)
        debug_logging(feature_enabled(state, "debug_logging"))
        checks = functools.partial(
            preflight, self.journal, content=content_digests(state.request.platform), actor=self.name
        )
        self.reconciler = DeploymentReconciler(
            self.journal,
            deployment_id,
            create_platform,
            smoke=HttpSmokeTester(),
            actor=self.name,
            rollback_decider=DelegatingDecider(self._ask_rollback_system, self.journal, self.name),
            preflight=checks,
            metrics=create_metric_provider,
            planner=WorkerPlanner(self.workers),
            judge=WorkerJudge(self.workers),
            gate=WebhookGate(self.journal, HttpWebhookSender(), actor=self.name),
        )

    def _ask_rollback_system(
        self, deployment_id: str, trigger: RollbackTrigger, reason: str, proposed_by: str
    ) -> None:
        """DO-004 decides and records the rollback; called from the run's thread, which may block briefly."""
        handle = find_actor(worker_name(ROLLBACK_SYSTEM), self.namespace)
        if handle is None:
            raise RuntimeError(f"{ROLLBACK_SYSTEM} is not running")
        ref = handle.decide_rollback.remote(
            deployment_id, trigger.value, reason, proposed_by, token=self.service_secret
        )
        ray.get(ref, timeout=ROLLBACK_DECISION_TIMEOUT_S)

    def ready(self) -> str:
        return self.name

    def assign(self, deployment_id: str) -> str:
        """Bind this runner to a deployment until it is terminal; assigning the same one again is a no-op."""
        if self.deployment_id == deployment_id:
            return self.name
        if self.deployment_id is not None and self._phase is None:
            raise ValueError(f"{self.name} already runs {self.deployment_id}")
        self._record_assignment(deployment_id)
        self._phase = None
        self._bind(deployment_id)
        return self.name

    def run(self) -> str:
        """Run to the end on this (the main) thread; calling it again (a restarted queen) returns the end."""
        if self.reconciler is None:
            raise ValueError(f"{self.name} has no deployment assigned")
        if self._phase is None:
            self._phase = self._drive(self.reconciler)
        return self._phase

    def _drive(self, reconciler: DeploymentReconciler) -> str:
        """Checks and waits until the deployment is terminal. A control request during a check is kept by
        the queen for the next wait."""
        try:
            while True:
                delay = _until_wait(reconciler)
                if delay is None:
                    return reconciler.state().phase().value
                if delay > 0:
                    self._wait(reconciler.deployment_id, delay)
        finally:
            self._forget_control()
            reconciler.close()
            if not reconciler.state().active:
                self.journal.delete_record(ASSIGNMENT, self.name)  # free for the next deployment

    def _wait(self, deployment_id: str, delay: float) -> None:
        """Blocks for ``delay`` seconds or until a control request is journaled, whichever is first."""
        deadline = time.monotonic() + delay
        if self._control is None:
            queen = self._queen.get()
            if queen is None:  # the queen restarts: the journal is read again after the wait
                time.sleep(delay)
                return
            token = self.service_secret
            self._control = queen.control_signal.remote(deployment_id, CONTROL_WAIT_S, token=token)
        ready, _ = ray.wait([self._control], timeout=delay)
        if not ready:
            return
        control, self._control = self._control, None
        try:
            ray.get(control, timeout=0)
        except ray.exceptions.RayError:  # the queen restarted meanwhile: wait out the delay, ask the next one
            self._queen.forget()
            time.sleep(max(0.0, deadline - time.monotonic()))

    def _forget_control(self) -> None:
        if self._control is not None:
            ray.cancel(self._control)
            self._control = None

    def status(self) -> DeploymentStatus | None:
        return self.reconciler.state().status() if self.reconciler else None

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return self.node_id


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
