"""Supervision of live revisions (DO-001 with DO-005): what the journal says should run against what runs.

Desired state comes from the journal: per target, the newest deployment that succeeded made its revision live,
with that deployment's artifact, replica count and final weights (``LiveTarget``). Actual state comes from the
platform's cheap liveness (``PlatformAdapter.live_state``): pid + start time of our HAProxy and of each
replica (the adapters' parsed state files are reused while unchanged), a container's state; every
``healthInterval`` also one runtime API round trip per router, which says whether HAProxy answers and what its
own health checks see. Nothing is probed over HTTP by the supervisor.

Repairs (platforms whose ``supervision`` is REPAIR: local, Docker, VM):
- a replica whose process or container is gone, or that is missing, is started again from the journaled
  artifact (the router is given the replacement, on the same port when it is free, before anything else);
- a dead router is started again with the journaled weights; one that runs but does not answer for
  ``unhealthyChecks`` deep checks in a row is restarted;
- a replica that runs but fails the router's health checks ``unhealthyChecks`` deep checks in a row is
  stopped and started again;
- restarts are bounded per subject (the router, the revision's replicas): exponential back-off from
  ``restartBackoff`` up to ``maxBackoff``, and ``crashLoopRestarts`` restarts within ``crashLoopWindow`` are a
  crash loop: journaled, handed to ``report_crash_loop`` (the alerting hook), no more restarts until the
  oldest of them leaves the window.
Kubernetes heals itself: ready against desired replicas is journaled when it changes, nothing is repaired.
Lambda has nothing to supervise. A revision with neither router nor replica left was removed on purpose (or by
hand): that is journaled once and nothing is recreated.

Every finding and what was done about it is a DRIFT event on the deployment that made the revision live (so
``status`` shows it); DRIFT changes no deployment fact and may follow its terminal event.

During a deployment the runner owns its target, so a target with an admitted deployment that has not ended is
not supervised (checked again just before any repair): the reconciler restores the router itself when it finds
it down (``engine/reconciler.py``, platform faults), recreates a dead stable revision before it shifts weight
to it or rolls back to it, and the supervisor takes over when the deployment ends. Ray appears nowhere here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Any, Protocol, cast

from pydantic import Field, model_validator

from engine.journal import Journal
from engine.models import Artifact, DurationMs, Model, PlatformConfig, Target
from engine.platform import (
    LiveState,
    PlatformAdapter,
    PlatformError,
    RepairablePlatform,
    RevisionSpec,
    SupervisionMode,
)
from engine.state import DeploymentState, EventKind

log = logging.getLogger(__name__)
# A removal (the router's record taken away) that ran between the observation and the repair: not undone.
REMOVED_MEANWHILE = "nothing: the target was removed meanwhile (its router's record is gone)"

PositiveMs = Annotated[DurationMs, Field(gt=0)]


class SupervisionSettings(Model):
    """The ``supervision:`` section of ``enterprise_config.yaml``."""

    enabled: bool = True
    interval: PositiveMs = Field(
        default=1000, description="Liveness of every live revision (pid + start time, container state)"
    )
    health_interval: PositiveMs = Field(
        default=5000, description="Each router's socket and its own health checks per replica"
    )
    unhealthy_checks: int = Field(default=3, ge=1, le=100, description="Deep checks in a row before a repair")
    restart_backoff: PositiveMs = 1000
    max_backoff: PositiveMs = 30_000
    crash_loop_restarts: int = Field(default=5, ge=1, le=1000)
    crash_loop_window: PositiveMs = 300_000

    @model_validator(mode="after")
    def _ordered(self) -> SupervisionSettings:
        if self.max_backoff < self.restart_backoff:
            raise ValueError(
                f"maxBackoff ({self.max_backoff} ms) is below restartBackoff ({self.restart_backoff} ms)"
            )
        if self.health_interval < self.interval:
            raise ValueError(
                f"healthInterval ({self.health_interval} ms) is shorter than interval ({self.interval} ms)"
            )
        return self


class Clock(Protocol):
    def now(self) -> float: ...


class _SystemClock:
    def now(self) -> float:
        return time.time()


# --------------------------------------------------------------------------------------------
# Target state (from the journal) and the crash-loop hook
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LiveTarget:
    """What should run on a target: the newest succeeded deployment's revision."""

    deployment_id: str
    target: Target
    platform: PlatformConfig
    artifact: Artifact
    replicas: int
    weights: dict[str, int]
    revision: str = ""  # the artifact's, computed once (a round asks for it at every check)

    def __post_init__(self) -> None:
        object.__setattr__(self, "revision", self.artifact.revision)

    @classmethod
    def of(cls, state: DeploymentState) -> LiveTarget:
        revision = state.request.artifact.revision
        final = {rev: pct for rev, pct in state.weights.items() if pct > 0}
        return cls(
            deployment_id=state.deployment_id,
            target=state.request.target,
            platform=state.request.platform,
            artifact=state.request.artifact,
            replicas=state.request.strategy.replicas,
            weights=final if sum(final.values()) == 100 else {revision: 100},
        )

    def spec(self) -> RevisionSpec:
        return RevisionSpec(
            target=self.target,
            artifact=self.artifact,
            replicas=self.replicas,
            deployment_id=self.deployment_id,
        )


@dataclass(frozen=True)
class CrashLoop:
    deployment_id: str
    target: Target
    revision: str
    platform: str
    subject: str
    restarts: int
    window_s: float


def report_crash_loop(crash: CrashLoop) -> None:
    """Where a crash loop leaves the orchestrator (it is journaled too): the alerting work hooks here."""
    log.error(
        "crash loop: %s of %s on %s (%s) restarted %d times within %gs; restarts stopped",
        crash.subject,
        crash.revision,
        crash.platform,
        crash.target.key,
        crash.restarts,
        crash.window_s,
    )


# --------------------------------------------------------------------------------------------
# Per-target reconciler (the *State)
# --------------------------------------------------------------------------------------------
class RepairKind(str, Enum):
    REPLACE_REPLICAS = "replace_replicas"  # dead or missing replicas started again (ensure_revision)
    RESTART_REPLICA = "restart_replica"  # one that runs but stays unhealthy: stopped, started again
    RESTORE_ROUTER = "restore_router"  # a dead router started again with the journaled weights
    RESTART_ROUTER = "restart_router"  # a router that runs but does not answer
    CRASH_LOOP = "crash_loop"  # too many restarts within the window: reported, restarts stop
    REPORT = "report"  # the platform heals itself, or the revision is gone: only journaled


@dataclass(frozen=True)
class Repair:
    kind: RepairKind
    subject: str
    found: str
    index: int | None = None
    restarts: int = 0


@dataclass(frozen=True)
class Drift:
    """One journaled finding: what was found on the platform and what was done."""

    subject: str
    found: str
    done: str
    crash_loop: bool = False


@dataclass
class RestartBudget:
    """Bounded restarts with exponential back-off for one subject (a router, a revision's replicas)."""

    restarts: list[float] = field(default_factory=list)
    looping: bool = False

    def recent(self, now: float, settings: SupervisionSettings) -> list[float]:
        self.restarts = [t for t in self.restarts if now - t < settings.crash_loop_window / 1000]
        return self.restarts

    def wait_s(self, now: float, settings: SupervisionSettings) -> float | None:
        """0: restart now; more: back-off left; None: a crash loop (no restart until the window slides)."""
        recent = self.recent(now, settings)
        if len(recent) >= settings.crash_loop_restarts:
            return None
        self.looping = False
        if not recent:
            return 0.0
        backoff = min(settings.max_backoff, settings.restart_backoff * 2 ** (len(recent) - 1)) / 1000
        return max(0.0, recent[-1] + backoff - now)

    def record(self, now: float) -> None:
        self.restarts.append(now)


class TargetSupervisor:
    """Compares one live target's desired state with what the platform reports and decides the repairs."""

    def __init__(self, live: LiveTarget, settings: SupervisionSettings) -> None:
        self.live = live
        self.settings = settings
        self.router_budget = RestartBudget()
        self.replica_budget = RestartBudget()
        self.unhealthy: dict[int, int] = {}
        self.router_silent = 0
        self.reported: str | None = None  # the last state reported (self-healing platforms, unreachable)
        self.platform_key = live.platform.model_dump_json()

    # ---- decisions ----------------------------------------------------------------------------
    def decide(self, observed: LiveState, deep: bool, now: float) -> list[Repair]:
        """What to do about a platform we run the router and replicas of (REPAIR)."""
        if observed.router is None:  # only a removal takes the router's record away: not ours to undo
            return self._report_once(
                f"the router of {self.live.target.key} on {self.live.platform.type} was removed "
                f"({len(observed.replicas)} replica(s) of {self.live.revision} left): nothing recreated; "
                "deploy again to bring it back"
            )
        self.reported = None
        repairs = self._replica_repairs(observed, now)
        repairs += self._router_repairs(observed, deep, now)
        if deep:
            repairs += self._unhealthy_repairs(observed, now)
        return repairs

    def _replica_repairs(self, observed: LiveState, now: float) -> list[Repair]:
        present = {r.index for r in observed.replicas}
        missing = [i for i in range(self.live.replicas) if i not in present]
        dead = [r for r in observed.replicas if not r.alive and r.index < self.live.replicas]
        if not dead and not missing:
            return []
        found = [f"replica {r.index} ({r.address}) is not running" for r in dead]
        found += [f"replica {i} is missing" for i in missing]
        return self._budgeted(
            self.replica_budget, "replicas", "; ".join(found), RepairKind.REPLACE_REPLICAS, now
        )

    def _router_repairs(self, observed: LiveState, deep: bool, now: float) -> list[Repair]:
        router = observed.router
        assert router is not None
        if not router.running:
            self.router_silent = 0
            return self._budgeted(self.router_budget, "router", router.detail, RepairKind.RESTORE_ROUTER, now)
        if not deep or router.answering is None:
            return []
        self.router_silent = 0 if router.answering else self.router_silent + 1
        if self.router_silent < self.settings.unhealthy_checks:
            return []
        found = (
            f"the router runs but its runtime API did not answer {self.router_silent} times: {router.detail}"
        )
        repairs = self._budgeted(self.router_budget, "router", found, RepairKind.RESTART_ROUTER, now)
        if repairs and repairs[0].kind is RepairKind.RESTART_ROUTER:
            self.router_silent = 0
        return repairs

    def _unhealthy_repairs(self, observed: LiveState, now: float) -> list[Repair]:
        router = observed.router
        if router is None or not router.answering:
            return []
        repairs: list[Repair] = []
        for replica in observed.replicas:
            streak = self.unhealthy.get(replica.index, 0) + 1 if replica.healthy is False else 0
            self.unhealthy[replica.index] = streak
            if not replica.alive or streak < self.settings.unhealthy_checks:
                continue
            found = f"replica {replica.index} ({replica.address}) failed {streak} health checks of the router"
            decided = self._budgeted(
                self.replica_budget, f"replica {replica.index}", found, RepairKind.RESTART_REPLICA, now
            )
            repairs += [Repair(r.kind, r.subject, r.found, replica.index, r.restarts) for r in decided]
            if decided and decided[0].kind is RepairKind.RESTART_REPLICA:
                self.unhealthy[replica.index] = 0
        return repairs

    def _budgeted(
        self, budget: RestartBudget, subject: str, found: str, kind: RepairKind, now: float
    ) -> list[Repair]:
        wait = budget.wait_s(now, self.settings)
        if wait is None:
            if budget.looping:
                return []
            budget.looping = True
            return [Repair(RepairKind.CRASH_LOOP, subject, found, restarts=len(budget.restarts))]
        return [Repair(kind, subject, found)] if wait == 0 else []

    def report(self, observed: LiveState) -> list[Repair]:
        """A platform that heals itself (Kubernetes): ready against desired, journaled when it changes."""
        desired, ready = observed.desired_replicas or 0, observed.ready_replicas or 0
        if desired == 0:
            return self._report_once(
                f"{self.live.revision} has no Deployment (or 0 replicas wanted) any more"
            )
        if ready >= desired:
            if self.reported is None:
                return []
            self.reported = None
            return [Repair(RepairKind.REPORT, "replicas", f"{ready}/{desired} ready again")]
        return self._report_once(f"{ready}/{desired} replicas ready")

    def unreachable(self, error: Exception) -> list[Repair]:
        return self._report_once(f"the platform does not answer: {error}")

    def _report_once(self, found: str) -> list[Repair]:
        if self.reported == found:
            return []
        self.reported = found
        return [Repair(RepairKind.REPORT, "revision", found)]

    # ---- actions ------------------------------------------------------------------------------
    def apply(
        self,
        repairs: list[Repair],
        adapter: PlatformAdapter | None,
        now: float,
        on_crash_loop: Callable[[CrashLoop], None],
    ) -> list[Drift]:
        """Carry the repairs out in order (replicas before the router, so that it has servers to serve).
        ``adapter`` is None when none could be made: then there are only reports."""
        order = list(RepairKind)
        return [
            self._carry_out(r, adapter, now, on_crash_loop)
            for r in sorted(repairs, key=lambda r: order.index(r.kind))
        ]

    def _carry_out(
        self,
        repair: Repair,
        adapter: PlatformAdapter | None,
        now: float,
        on_crash_loop: Callable[[CrashLoop], None],
    ) -> Drift:
        if repair.kind is RepairKind.CRASH_LOOP:
            on_crash_loop(self._crash_loop(repair))
            window = self.settings.crash_loop_window / 1000
            done = f"crash loop ({repair.restarts} restarts within {window:g}s): no restart until it slides"
            return Drift(repair.subject, repair.found, done, crash_loop=True)
        if repair.kind is RepairKind.REPORT or adapter is None:
            heals = adapter is not None and adapter.supervision is SupervisionMode.REPORT
            return Drift(
                repair.subject, repair.found, "nothing: the platform heals itself" if heals else "nothing"
            )
        return Drift(
            repair.subject, repair.found, self._repair(repair, cast(RepairablePlatform, adapter), now)
        )

    def _repair(self, repair: Repair, adapter: RepairablePlatform, now: float) -> str:
        live = self.live
        budget = self.router_budget if repair.subject == "router" else self.replica_budget
        budget.record(now)
        try:
            if repair.kind is RepairKind.REPLACE_REPLICAS:
                status = adapter.repair_replicas(live.spec())
                if status is None:
                    return REMOVED_MEANWHILE
                return f"started again: {status.running_replicas}/{status.desired_replicas} running"
            if repair.kind is RepairKind.RESTART_REPLICA:
                assert repair.index is not None
                status = adapter.restart_replica(live.spec(), repair.index)
                return (
                    f"stopped and started again: {status.running_replicas}/{status.desired_replicas} running"
                )
            restart = repair.kind is RepairKind.RESTART_ROUTER
            applied = adapter.repair_router(live.target, live.weights, restart=restart)
            if applied is None:
                return REMOVED_MEANWHILE
            how = "restarted" if restart else "started again"
            return f"router {how} with the journaled weights {applied.weights}"
        except (PlatformError, ValueError, OSError) as error:
            log.warning("%s: repair of %s failed: %s", live.target.key, repair.subject, error)
            return f"repair failed: {error}"

    def _crash_loop(self, repair: Repair) -> CrashLoop:
        return CrashLoop(
            deployment_id=self.live.deployment_id,
            target=self.live.target,
            revision=self.live.revision,
            platform=self.live.platform.type,
            subject=repair.subject,
            restarts=repair.restarts,
            window_s=self.settings.crash_loop_window / 1000,
        )


# --------------------------------------------------------------------------------------------
# Every live target (the *StateManager)
# --------------------------------------------------------------------------------------------
class SupervisorStateManager:
    """Rounds over every live target that no deployment owns; one target's trouble never stops the others."""

    def __init__(
        self,
        journal: Journal,
        adapter_factory: Callable[[PlatformConfig], PlatformAdapter],
        settings: SupervisionSettings | None = None,
        clock: Clock | None = None,
        actor: str = "supervision",
        on_crash_loop: Callable[[CrashLoop], None] = report_crash_loop,
    ) -> None:
        self.journal = journal
        self.settings = settings or SupervisionSettings()
        self.clock = clock or _SystemClock()
        self.actor = actor
        self.on_crash_loop = on_crash_loop
        self._factory = adapter_factory
        self._adapters: dict[str, PlatformAdapter] = {}
        self._targets: dict[str, TargetSupervisor] = {}
        self._live: list[LiveTarget] = []
        self._busy: set[str] = set()
        self._seen_seq = -1
        self._next_deep = 0.0

    def update(self) -> float:
        """One round; returns the seconds until the next one."""
        now = self.clock.now()
        self._refresh()
        deep = now >= self._next_deep
        if deep:
            self._next_deep = now + self.settings.health_interval / 1000
        for live in self._live:
            if live.target.key in self._busy:
                continue
            try:
                self._check(self._targets[live.target.key], deep, now)
            except Exception:  # a bug or a client library's own error: the other targets still get checked
                log.exception("supervision of %s failed", live.target.key)
        return self.settings.interval / 1000

    def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set (the DO-001 actor runs this in a thread of its own)."""
        delay = 0.0
        while not stop.wait(delay):
            try:
                delay = self.update()
            except Exception:  # the journal busy or unreadable for a moment: try again next round
                log.exception("supervision round failed")
                delay = self.settings.interval / 1000

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()

    def _refresh(self) -> None:
        """Desired state is read again only when the journal has changed."""
        seq = self.journal.last_seq()
        if seq == self._seen_seq:
            return
        self._live = [LiveTarget.of(state) for state in self.journal.live_deployments()]
        self._busy = self.journal.busy_targets()
        self._seen_seq = seq
        self._targets = {live.target.key: self._supervisor(live) for live in self._live}

    def _supervisor(self, live: LiveTarget) -> TargetSupervisor:
        """The target's supervisor, kept (with its restart budgets) while the same deployment is live."""
        current = self._targets.get(live.target.key)
        if current is None or current.live != live:  # a new deployment made another revision live
            return TargetSupervisor(live, self.settings)
        return current

    def _adapter(self, supervisor: TargetSupervisor) -> PlatformAdapter:
        """One adapter per platform configuration, kept (its caches are what make a check cheap)."""
        key = supervisor.platform_key
        if key not in self._adapters:
            self._adapters[key] = self._factory(supervisor.live.platform)
        return self._adapters[key]

    def _check(self, supervisor: TargetSupervisor, deep: bool, now: float) -> None:
        live = supervisor.live
        try:
            adapter = self._adapter(supervisor)
        except (PlatformError, ValueError) as error:  # its settings no longer make an adapter
            self._record(supervisor, supervisor.unreachable(error), None, now)
            return
        if adapter.supervision is SupervisionMode.NONE:
            return
        try:
            observed = adapter.live_state(live.target, live.revision, deep)
        except PlatformError as error:
            self._record(supervisor, supervisor.unreachable(error), adapter, now)
            return
        if adapter.supervision is SupervisionMode.REPORT:
            self._record(supervisor, supervisor.report(observed), adapter, now)
            return
        repairs = supervisor.decide(observed, deep, now)
        acting = [r for r in repairs if r.kind not in (RepairKind.REPORT, RepairKind.CRASH_LOOP)]
        if acting and self.journal.target_owner(live.target.key) != live.deployment_id:
            return  # a deployment started or ended meanwhile: its runner or its revision owns the target now
        self._record(supervisor, repairs, adapter, now)

    def _record(
        self, supervisor: TargetSupervisor, repairs: list[Repair], adapter: PlatformAdapter | None, now: float
    ) -> None:
        if not repairs:
            return
        live = supervisor.live
        for drift in supervisor.apply(repairs, adapter, now, self.on_crash_loop):
            data: dict[str, Any] = {
                "revision": live.revision,
                "platform": live.platform.type,
                "subject": drift.subject,
                "found": drift.found,
                "done": drift.done,
            }
            if drift.crash_loop:
                data["crash_loop"] = True
            log.warning("%s: drift of %s: %s; %s", live.target.key, drift.subject, drift.found, drift.done)
            self.journal.append(live.deployment_id, EventKind.DRIFT, data, actor=self.actor)


def restore_serving(
    adapter: RepairablePlatform,
    target: Target,
    artifacts: dict[str, Artifact],
    weights: dict[str, int],
    spec_for: Callable[[Artifact, int], RevisionSpec] | None = None,
) -> str:
    """Replicas of these revisions that died are started again (as many as there were, served as
    ``spec_for`` says: the environment's limits and TLS), then the router with ``weights`` when they are
    complete; returns what was done. The reconciler's way back from a platform fault."""
    done: list[str] = []
    hung = False
    for revision, artifact in artifacts.items():
        observed = adapter.live_state(target, revision, deep=True)
        router = observed.router
        hung = hung or (router is not None and router.running and router.answering is False)
        if observed.dead:
            replicas = len(observed.replicas)
            spec = (
                spec_for(artifact, replicas)
                if spec_for is not None
                else RevisionSpec(target=target, artifact=artifact, replicas=replicas)
            )
            status = adapter.ensure_revision(spec)
            done.append(f"{revision} started again ({status.running_replicas}/{status.desired_replicas})")
    if sum(weights.values()) == 100:
        applied = adapter.restore_router(target, weights, restart=hung)
        done.append(f"router {'restarted' if hung else 'serving'} with {applied.weights}")
    return "; ".join(done) or "nothing to restore"
