"""The six long-lived domain workers (DO-001..DO-006), named and detached; the queen recreates a dead one."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from typing import Any

import ray
from ray.exceptions import ActorUnschedulableError, RayActorError

from actors.common import QUEEN_NAME, call, find_actor, freeze_startup_heap, kill_quietly, worker_name
from actors.health import HealthMonitor, HealthReport
from actors.pipelines import PipelineRuns
from actors.placement import PlatformNodeGone, alive_nodes, on_platform_node, spread_over_nodes
from adapters import create_platform
from engine.config import load_config
from engine.identity import AccessControl, AccessRole
from engine.journal import Journal
from engine.judge import Judgement, TriggerResult, WindowInput, evaluate_triggers, judge_window
from engine.models import (
    SUPPORTED_PLATFORMS,
    Environment,
    Model,
    Phase,
    PlatformConfig,
    RollbackTrigger,
    Strategy,
    StrategyType,
    SwitchTrigger,
)
from engine.pipeline_model import PipelineTemplate
from engine.pipeline_spec import RunInput
from engine.pipeline_state import PipelineStatus
from engine.plans import build_plan
from engine.platform import PlatformError
from engine.readiness import (
    EnvironmentStatus,
    EnvironmentStatusChange,
    ReadinessReport,
    assess,
    environment_status,
    record_environment_status,
)
from engine.rollback_decision import record_rollback_decision
from engine.state import Step
from engine.supervision import SupervisorStateManager

log = logging.getLogger(__name__)
MONITOR_CALL_TIMEOUT_S = 10.0
MONITOR_START_TIMEOUT_S = 60.0
MONITORED = "health-monitors"  # journal records: an environment's monitors, kept across DO-001's restarts


class EnvironmentHealth(Model):
    environment: str
    healthy: bool
    monitors: list[HealthReport]
    checked_at: float


class PlatformCheck(Model):
    platform: str
    ok: bool
    error: str | None = None


class _Worker:
    def __init__(
        self,
        config_path: str | None,
        journal_path: str,
        service_secret: str | None = None,
        namespace: str | None = None,
    ) -> None:
        self.config = load_config(config_path)
        self.journal = Journal(journal_path)
        # The namespace it was created in (the job's, in the runtime context, may be another orchestrator's).
        self.namespace = namespace or ray.get_runtime_context().namespace
        self.service_secret = service_secret  # how this worker's own calls to the queen identify themselves
        self.access = AccessControl(self.config, self.journal, service_secret)
        self.journal_path = journal_path
        self._start()
        freeze_startup_heap()

    def _start(self) -> None:
        """What a worker sets up beyond the common part (its own state, threads, tasks)."""

    async def ping(self) -> str:
        return type(self).__name__

    async def pid(self) -> int:
        return os.getpid()

    async def _queen_control(
        self, deployment_id: str, action: str, by: str, reason: str, token: str | None
    ) -> Any:
        queen = find_actor(QUEEN_NAME, self.namespace)
        if queen is None:
            raise RuntimeError("the queen is not running")
        return await call(queen.control.remote(deployment_id, action, by, reason, token=token), 30)


async def _started(monitors: list[Any]) -> None:
    """Return once every monitor answers (so it is probing); if one does not in time, none is kept."""
    try:
        await asyncio.gather(*(call(m.report.remote(), MONITOR_START_TIMEOUT_S) for m in monitors))
    except Exception:
        for monitor in monitors:
            kill_quietly(monitor)
        raise


def _monitor_chunks(targets: list[str], per_monitor: int) -> list[list[str]]:
    """At most ``per_monitor`` URLs per monitor, and as many monitors as there are nodes (up to one per URL):
    an environment's monitors run on several nodes, so losing one node leaves the others probing."""
    count = max(-(-len(targets) // per_monitor), min(len(targets), len(alive_nodes())))
    return [targets[i::count] for i in range(count)]


# ---------------------------------------------------------------------------------------- DO-001
class EnvironmentCoordinatorImpl(_Worker):
    """DO-001: the environment registry, readiness, parallel health monitoring, and the supervision of
    every live revision (engine/supervision.py) in a thread of its own: its rounds block on files and
    platform calls, never on this actor's event loop."""

    def _start(self) -> None:
        self.monitors: dict[str, list[Any]] = {}
        self._stop_supervision = threading.Event()
        if self.config.supervision.enabled:
            supervisor = SupervisorStateManager(
                Journal(self.journal_path),  # its own connection: the thread never waits on the actor's
                create_platform,
                self.config.supervision,
                actor=worker_name("DO-001"),
            )
            threading.Thread(
                target=supervisor.run, args=(self._stop_supervision,), name="supervision", daemon=True
            ).start()
        self.monitor_health: dict[str, dict[str, bool]] = {}
        self.monitored: dict[str, tuple[Environment, list[list[str]]]] = {}  # what each monitor probes
        self._adopt_monitors()

    def _adopt_monitors(self) -> None:
        """After a restart (its node died, say): the monitors it started, from the journal; the ones still
        alive are used, a lost one is started again when next read (``_report``)."""
        for record in self.journal.records(MONITORED):
            name, chunks = str(record["environment"]["name"]), list(record["chunks"])
            self.monitored[name] = (Environment.model_validate(record["environment"]), chunks)
            self.monitors[name] = [
                find_actor(f"health:{name}:{index}", self.namespace) for index in range(len(chunks))
            ]

    async def environments(self, token: str | None = None) -> list[Environment]:
        self.access.require(token, AccessRole.VIEWER, action="environments")
        return self._environments()

    def _environments(self) -> list[Environment]:
        registered = [Environment.model_validate(r) for r in self.journal.records("environment")]
        known = dict(self.config.environments)
        known.update({e.name: e for e in registered})
        return list(known.values())

    async def register_environment(self, environment: Environment, token: str | None = None) -> Environment:
        who = self.access.require(token, AccessRole.ADMIN, environment.name, action="register_environment")
        self.journal.put_record("environment", environment.name, environment.model_dump(mode="json"))
        self.access.trail.record("environment_registered", who.person, environment=environment.name)
        return environment

    async def _environment(self, name: str) -> Environment:
        for environment in self._environments():
            if environment.name == name:
                return environment
        known = ", ".join(sorted(e.name for e in self._environments()))
        raise ValueError(f"environment: unknown environment '{name}'; known: {known}")

    def _service_urls(self, name: str) -> list[str]:
        """The live services of an environment: the newest successful deployment of each target."""
        latest: dict[str, str] = {}
        for state in self.journal.deployments(limit=100_000):
            if state.request.environment == name and state.address and state.outcome is Phase.SUCCEEDED:
                latest[state.request.target.key] = (
                    state.address.rstrip("/") + state.request.artifact.health_path
                )
        return list(latest.values())

    async def monitor_environment_health(
        self, name: str, urls: list[str] | None = None, per_monitor: int = 8, token: str | None = None
    ) -> list[str]:
        self.access.require(token, AccessRole.DEPLOYER, name, action="monitor_environment_health")
        environment = await self._environment(name)
        targets = list(urls or [*environment.endpoints, *self._service_urls(name)])
        if not targets:
            raise ValueError(f"environment '{name}' has no endpoints and no live services to monitor")
        self._stop_monitors(name)
        chunks = _monitor_chunks(targets, per_monitor)
        self.monitored[name] = (environment, chunks)
        strategies = spread_over_nodes(len(chunks))
        monitors = [self._start_monitor(name, index, strategy) for index, strategy in enumerate(strategies)]
        await _started(monitors)
        self.monitors[name] = monitors
        record = {"environment": environment.model_dump(mode="json"), "chunks": chunks}
        self.journal.put_record(MONITORED, name, record)
        return [f"health:{name}:{i}" for i in range(len(monitors))]

    def _start_monitor(self, name: str, index: int, strategy: Any) -> Any:
        environment, chunks = self.monitored[name]
        return HealthMonitor.options(
            name=f"health:{name}:{index}", namespace=self.namespace, scheduling_strategy=strategy
        ).remote(
            f"{name}:{index}",
            chunks[index],
            environment.health_check_interval / 1000,
            environment.health_check_timeout / 1000,
            environment.unhealthy_threshold,
            notify_token=self.service_secret,  # identifies the monitor's calls to on_health_change
            ca_file=environment.security.tls.ca,
            watcher=find_actor(ray.get_runtime_context().get_actor_name() or "", self.namespace),
        )

    async def _report(self, name: str, index: int) -> HealthReport:
        """A monitor's report; a monitor lost with its node is started again on an alive node first."""
        monitor = self.monitors[name][index]
        try:
            if monitor is not None:
                report: HealthReport = await call(monitor.report.remote(), MONITOR_CALL_TIMEOUT_S)
                return report
        except (RayActorError, ActorUnschedulableError) as error:
            log.warning("health monitor %s:%d lost (%s): starting it on another node", name, index, error)
        replacement = self._start_monitor(name, index, spread_over_nodes(1)[0])
        self.monitors[name][index] = replacement
        await _started([replacement])
        replaced: HealthReport = await call(replacement.report.remote(), MONITOR_CALL_TIMEOUT_S)
        return replaced

    async def get_environment_health(self, name: str, token: str | None = None) -> EnvironmentHealth:
        self.access.require(token, AccessRole.VIEWER, name, action="get_environment_health")
        monitors = self.monitors.get(name)
        if not monitors:
            raise ValueError(f"environment '{name}' is not monitored: call monitor_environment_health first")
        reports = await asyncio.gather(*(self._report(name, index) for index in range(len(monitors))))
        checked = all(r.checked_at is not None for r in reports)
        return EnvironmentHealth(
            environment=name,
            healthy=checked and all(r.healthy for r in reports),
            monitors=list(reports),
            checked_at=time.time(),
        )

    async def stop_monitoring(self, name: str, token: str | None = None) -> None:
        self.access.require(token, AccessRole.DEPLOYER, name, action="stop_monitoring")
        self._stop_monitors(name)

    def _stop_monitors(self, name: str) -> None:
        self.monitor_health.pop(name, None)
        for monitor in self.monitors.pop(name, []):
            if monitor is not None:
                kill_quietly(monitor)
        if self.monitored.pop(name, None) is not None:
            self.journal.delete_record(MONITORED, name)

    async def on_health_change(
        self, monitor: str, healthy: bool, reason: str, token: str | None = None
    ) -> None:
        """A monitor's endpoints flipped: the environment is ready when every monitor's are healthy; a change
        of that is journaled (and handed to alerting). Only our own monitors call it."""
        self.access.require_system(token, action="on_health_change")
        name = monitor.rsplit(":", 1)[0]
        flags = self.monitor_health.setdefault(name, {})
        flags[monitor] = healthy
        status = EnvironmentStatus.READY if all(flags.values()) else EnvironmentStatus.NOT_READY
        await asyncio.to_thread(
            record_environment_status, self.journal, name, status, reason, worker_name("DO-001")
        )

    async def environment_readiness(
        self, name: str, platform: PlatformConfig, replicas: int = 1, token: str | None = None
    ) -> ReadinessReport:
        """Would ``replicas`` new replicas go to the environment on this platform now? TLS, NetworkPolicy and
        replica limits against what the platform declares, then its room (free memory, disk, quota) for
        them. A change of the environment's status (ready, capacity short) is journaled."""
        self.access.require(token, AccessRole.DEPLOYER, name, action="environment_readiness")
        environment = await self._environment(name)
        adapter = await asyncio.to_thread(create_platform, platform)
        try:
            report = await asyncio.to_thread(assess, environment, adapter, replicas)
        finally:
            await asyncio.to_thread(adapter.close)
        if report.room_checked:
            status = EnvironmentStatus.READY if report.ready else EnvironmentStatus.CAPACITY_SHORT
            reason = "; ".join(report.problems) or f"room for {replicas} replica(s) on {platform.type}"
            await asyncio.to_thread(
                record_environment_status, self.journal, name, status, reason, worker_name("DO-001")
            )
        return report

    async def environment_status(self, name: str, token: str | None = None) -> EnvironmentStatusChange | None:
        """The environment's last recorded status (ready, not ready, capacity short), or None."""
        self.access.require(token, AccessRole.VIEWER, name, action="environment_status")
        await self._environment(name)
        return environment_status(self.journal, name)


# ---------------------------------------------------------------------------------------- DO-002
class BlueGreenEngineImpl(_Worker):
    """DO-002: blue-green plans, the judgement of the switch steps' windows and of the switch triggers at the
    end of validation (runners call these), and the instant switch back to blue while it is kept."""

    async def plan(self, strategy: Strategy, has_stable: bool = True) -> list[Step]:
        if strategy.type is not StrategyType.BLUE_GREEN:
            raise ValueError(f"strategy.type: blue-green engine got '{strategy.type.value}'")
        return build_plan(strategy, has_stable)

    async def judge(self, window: WindowInput) -> Judgement:
        return _judged_by(judge_window(window), "DO-002")

    async def switch(
        self, triggers: list[SwitchTrigger], figures: dict[str, float | str | None]
    ) -> list[TriggerResult]:
        return evaluate_triggers(triggers, figures)

    async def switch_back(
        self, deployment_id: str, by: str, reason: str = "switch back to blue", token: str | None = None
    ) -> Any:
        self.access.require(token, AccessRole.DEPLOYER, deployment=deployment_id, action="switch_back")
        state = self.journal.find(deployment_id)
        if state.request.strategy.type is not StrategyType.BLUE_GREEN:
            raise ValueError(f"deployment {deployment_id} is not blue-green")
        return await self._queen_control(state.deployment_id, "rollback", by, reason, token)


# ---------------------------------------------------------------------------------------- DO-003
class CanaryControllerImpl(_Worker):
    """DO-003: canary plans, analysis on live metrics, pause/resume/promote."""

    async def plan(self, strategy: Strategy, has_stable: bool = True) -> list[Step]:
        if strategy.type is not StrategyType.CANARY:
            raise ValueError(f"strategy.type: canary controller got '{strategy.type.value}'")
        return build_plan(strategy, has_stable)

    async def judge(self, window: WindowInput) -> Judgement:
        """An analysis window's end: thresholds and the comparison with the stable revision."""
        return _judged_by(judge_window(window), "DO-003")

    async def control(
        self, deployment_id: str, action: str, by: str, reason: str = "", token: str | None = None
    ) -> Any:
        self.access.require(token, AccessRole.DEPLOYER, deployment=deployment_id, action=action)
        if action not in ("pause", "resume", "promote", "promote_full", "abort"):
            raise ValueError(f"unknown canary action '{action}'")
        return await self._queen_control(deployment_id, action, by, reason, token)


def _judged_by(judgement: Judgement, code: str) -> Judgement:
    judgement.judged_by = code
    return judgement


# ---------------------------------------------------------------------------------------- DO-004
class RollbackSystemImpl(_Worker):
    """DO-004: manual rollback, health watching of deployments, rollback history."""

    def _start(self) -> None:
        self.monitors: dict[str, Any] = {}

    async def trigger_rollback(
        self, deployment_id: str, reason: str, by: str = "unknown", token: str | None = None
    ) -> Any:
        self.access.require(token, AccessRole.DEPLOYER, deployment=deployment_id, action="trigger_rollback")
        return await self._queen_control(deployment_id, "rollback", by, reason, token)

    async def decide_rollback(
        self, deployment_id: str, trigger: str, reason: str, proposed_by: str, token: str | None = None
    ) -> bool:
        """A runner proposes an automated rollback; the decision is recorded here, as DO-004. Returns False
        when there was nothing to decide (the deployment ended, or its rollback was already recorded)."""
        self.access.require_system(token, action="decide_rollback")
        return record_rollback_decision(
            self.journal, deployment_id, RollbackTrigger(trigger), reason, proposed_by
        )

    async def monitor_deployment(
        self,
        deployment_id: str,
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        unhealthy_threshold: int = 3,
        token: str | None = None,
    ) -> str:
        """Watch the candidate's replicas directly; N failed probes in a row roll the deployment back."""
        self.access.require(token, AccessRole.DEPLOYER, deployment=deployment_id, action="monitor_deployment")
        state = self.journal.find(deployment_id)
        revision = state.candidate_revision or state.request.artifact.revision
        target, platform = state.request.target, state.request.platform
        status = await on_platform_node(platform, "revision_status", target, revision)
        if status is None or not status.endpoints:
            raise ValueError(f"deployment {deployment_id}: revision {revision} has no endpoints to probe yet")
        urls = [f"http://{e}{state.request.artifact.health_path}" for e in status.endpoints]
        me = find_actor(self._own_name(), self.namespace)
        monitor = HealthMonitor.options(namespace=self.namespace).remote(
            f"deployment:{deployment_id}",
            urls,
            interval_s,
            timeout_s,
            unhealthy_threshold,
            me,
            deployment_id,
            self.service_secret,
        )
        await _started([monitor])
        self.monitors[state.deployment_id] = monitor
        return state.deployment_id

    def _own_name(self) -> str:
        return ray.get_runtime_context().get_actor_name() or ""

    async def on_unhealthy(self, deployment_id: str, reason: str, token: str | None = None) -> None:
        """The rollback first, then the monitor goes: when the queen does not take the rollback (restarting),
        this call fails and the monitor, still probing, makes it again after its next probe."""
        self.access.require_system(token, action="on_unhealthy")
        if self.journal.state(deployment_id).active:
            await self._queen_control(
                deployment_id, "rollback_health", "health-monitor", reason, self.service_secret
            )
        monitor = self.monitors.pop(deployment_id, None)
        if monitor is not None:
            kill_quietly(monitor)

    async def rollbacks(self, limit: int = 100, token: str | None = None) -> list[dict[str, Any]]:
        self.access.require(token, AccessRole.VIEWER, action="rollbacks")
        return [
            {
                "deployment_id": s.deployment_id,
                "target": s.request.target.key,
                "phase": s.phase().value,
                **(s.rollback.model_dump(mode="json") if s.rollback else {}),
            }
            for s in self.journal.deployments(limit=100_000)
            if s.rollback is not None
        ][-limit:]


# ---------------------------------------------------------------------------------------- DO-005
class PlatformRegistryImpl(_Worker):
    """DO-005: the adapter registry; connectivity, credentials and features checked before any change."""

    async def supported(self) -> list[str]:
        return list(SUPPORTED_PLATFORMS)

    async def validate_platform(self, config: PlatformConfig, token: str | None = None) -> PlatformCheck:
        self.access.require(token, AccessRole.VIEWER, action="validate_platform")
        try:
            await on_platform_node(config, "validate")
        except (PlatformError, ValueError, OSError, PlatformNodeGone) as error:
            return PlatformCheck(platform=config.type, ok=False, error=str(error))
        return PlatformCheck(platform=config.type, ok=True)


# ---------------------------------------------------------------------------------------- DO-006
class PipelineOrchestratorImpl(_Worker):
    """DO-006: pipeline runs (a graph of build, test, deploy, validate, approve and compliance stages),
    journaled and continued after any restart; the logic is ``engine.pipeline``."""

    def _start(self) -> None:
        self.runs = PipelineRuns(self.config, self.journal, self.namespace, self.service_secret)
        self.started = asyncio.Event()
        asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        try:
            self.runs.resume_all()
        finally:
            self.started.set()

    async def start_pipeline(
        self, run: RunInput, template: PipelineTemplate | None = None, token: str | None = None
    ) -> str:
        """A deployer in every environment of the run starts it; it is recorded as theirs."""
        await asyncio.wait_for(self.started.wait(), timeout=60)
        chosen = template or self.runs.template(run.name)
        environments = list(run.environments or chosen.environments)
        who = self.access.require_each(token, AccessRole.DEPLOYER, environments, "start_pipeline")
        run = dataclasses.replace(run, requested_by=who.acting_as(run.requested_by))
        return self.runs.start(run, chosen)

    async def approval_decided(self, subject: str, token: str | None = None) -> None:
        """The queen recorded a decision on ``subject``: an approve stage waiting for it looks now."""
        self.access.require_system(token, action="approval_decided")
        self.runs.approve.decided(subject)

    async def pipeline_status(self, pipeline_id: str, token: str | None = None) -> PipelineStatus:
        self.access.require(token, AccessRole.VIEWER, action="pipeline_status")
        return self.runs.status(pipeline_id)

    async def wait_pipeline(
        self, pipeline_id: str, timeout_s: float, token: str | None = None
    ) -> PipelineStatus:
        self.access.require(token, AccessRole.VIEWER, action="wait_pipeline")
        await asyncio.wait_for(self.started.wait(), timeout=60)
        return await self.runs.wait(pipeline_id, timeout_s)


_OPTIONS: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1}
EnvironmentCoordinator = ray.remote(**_OPTIONS)(EnvironmentCoordinatorImpl)
BlueGreenEngine = ray.remote(**_OPTIONS)(BlueGreenEngineImpl)
CanaryController = ray.remote(**_OPTIONS)(CanaryControllerImpl)
RollbackSystem = ray.remote(**_OPTIONS)(RollbackSystemImpl)
PlatformRegistry = ray.remote(**_OPTIONS)(PlatformRegistryImpl)
PipelineOrchestrator = ray.remote(**_OPTIONS)(PipelineOrchestratorImpl)

WORKER_CLASSES: dict[str, Any] = {
    "DO-001": EnvironmentCoordinator,
    "DO-002": BlueGreenEngine,
    "DO-003": CanaryController,
    "DO-004": RollbackSystem,
    "DO-005": PlatformRegistry,
    "DO-006": PipelineOrchestrator,
}
