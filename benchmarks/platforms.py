"""The orchestrator's own time per strategy step on each platform, beyond the platform calls it makes.

For each platform (local, docker, vm, kubernetes on the kmock emulator, lambda on a moto server) the real
engine (reconciler + journal) drives the real adapter through a first revision, then, each under the
platform's live traffic, a good canary (3 analysis steps of --step-seconds), a blue-green (validate 1 s,
switch, hold --step-seconds) and a rolling update. The environments are the integration tests' own (harness/).

Measured in the same run, for every completed step:
- platform time: inside platform calls, from the journal (``platform_s`` of STEP_COMPLETED, summed by the
  engine's TimedAdapter);
- orchestrator time: wall time of the ``reconcile()`` calls that worked on the step, minus the time inside
  the platform calls and smoke requests made during them (measured by wrappers around the adapter and the
  smoke tester). It is the engine's logic plus its journal (also reported alone); the clients' own Python
  work is inside the platform calls. The driver loops like actors/runner.py: reconcile, then sleep the
  delay it returns; those sleeps (the configured windows, readiness polling) are not orchestrator time;
- readiness (DEPLOY steps): the sleeps while waiting for processes / containers / pods to get ready, with
  the engine's polling granularity (20 ms, backing off by 1.5x up to the runner's 0.5 s tick), plus the
  emulated Deployment controller's work on Kubernetes. About elapsed - platform - orchestrator.

Not ``elapsed - platform - configured wait``: a window step's platform calls (metrics, health) happen inside
its window, so that formula subtracts them twice; it is kept as a cross-check (journal_formula_ms).

    python3 benchmarks/platforms.py                                  # all five, steps of 2 s (~2 minutes)
    python3 benchmarks/platforms.py --platforms local,docker --step-seconds 2 --budget-ms 50

Writes benchmarks/results/platforms.json; exits 1 when a deployment did not succeed, when something could
not be cleaned up, or when a platform's mean orchestrator time per step exceeds --budget-ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as host_platform
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.journal import Journal  # noqa: E402
from engine.models import Phase, PlatformConfig, Target  # noqa: E402
from engine.platform import PlatformAdapter  # noqa: E402
from engine.reconciler import DeploymentReconciler, SmokeTester  # noqa: E402
from engine.state import DeploymentState, Event, EventKind, Step, StepKind  # noqa: E402
from harness.environments import (  # noqa: E402
    HOSTS,
    RUN,
    Cluster,
    docker_engine_started,
    docker_scenario_config,
    dockerd_processes,
    kill_pids,
    kill_surviving,
    kube_cluster,
    kubernetes_scenario_env,
    labelled_containers,
    lambda_scenario_env,
    moto_server,
    processes_under,
    prometheus_server,
    recorded_processes,
    remove_containers,
    remove_through_adapter,
    routed_scenario_env,
    sample_container,
    sample_process,
    ssh_daemons,
    stop_docker,
)
from harness.k8s_emulator import KubeEmulator  # noqa: E402
from harness.scenarios import (  # noqa: E402
    FIRST,
    ROLLING,
    Harness,
    ScenarioEnv,
    blue_green_strategy,
    canary_strategy,
)

log = logging.getLogger("benchmarks.platforms")

PLATFORMS = ("local", "docker", "vm", "kubernetes", "lambda")
WINDOW_STEPS = {StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE}
RUNNER_TICK_S = 0.5  # actors/runner.py builds its reconciler with the default tick
SERVICE = "bench"
RESULTS = REPO / "benchmarks" / "results" / "platforms.json"
# Ports of their own: the tests use 18000-19999 (frontends), 9300-9399, 21000-32999, 41000-47999 (replicas).
LOCAL_PORTS = {"frontendPortRange": [17000, 17099], "replicaPortRange": [36000, 36999]}
DOCKER_FRONTEND_PORTS = [17100, 17199]
DOCKER_REPLICA_PORTS = [37000, 37999]
VM_FRONTEND_PORTS = [17200, 17299]
VM_REPLICA_PORT = 9500  # host a takes 9500-9549, host b 9550-9599
CLOCKS = ("call", "platform", "smoke", "journal")
MAIN_LABELS = ("first", "canary", "blue_green", "rolling")
# moto numbers a new version len(versions) + 1: once the old stable version is deleted, the third deployment
# on one function gets the number of a version that still exists (real Lambda never reuses one). There, each
# strategy starts from a first revision on a function of its own.
FRESH_SERVICE_PER_STRATEGY = {"lambda"}


# ------------------------------------------------------------------------------------------- instruments
class Meter:
    """Sums wall and thread-CPU seconds of measured calls; a call made inside another one counts once."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0
        self._depth = threading.local()

    @contextmanager
    def measure(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                self.wall_s += time.perf_counter() - wall
                self.cpu_s += time.thread_time() - cpu


class ClockedAdapter:
    """Forwards every call to the adapter, measured by ``meter`` (wall and thread CPU time)."""

    def __init__(self, adapter: PlatformAdapter, meter: Meter) -> None:
        self._adapter = adapter
        self._meter = meter

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._adapter, name)
        if not callable(attribute):
            return attribute

        def measured(*args: Any, **kwargs: Any) -> Any:
            with self._meter.measure():
                return attribute(*args, **kwargs)

        return measured


class ClockedSmoke:
    """Smoke requests go to the revision's replicas: client calls, not the orchestrator's own time."""

    def __init__(self, tester: SmokeTester, meter: Meter) -> None:
        self._tester = tester
        self._meter = meter

    def smoke(self, endpoints: list[str], path: str, count: int) -> tuple[int, int]:
        with self._meter.measure():
            return self._tester.smoke(endpoints, path, count)


class ClockedJournal(Journal):
    """The journal is part of the orchestrator's own time; measured on its own as well."""

    def __init__(self, path: Path, meter: Meter) -> None:
        super().__init__(path)
        self.meter = meter

    def append(self, *args: Any, **kwargs: Any) -> DeploymentState:
        with self.meter.measure():
            return super().append(*args, **kwargs)

    def state(self, *args: Any, **kwargs: Any) -> DeploymentState:
        with self.meter.measure():
            return super().state(*args, **kwargs)

    def events(self, *args: Any, **kwargs: Any) -> list[Event]:
        with self.meter.measure():
            return super().events(*args, **kwargs)

    def deployments(self, *args: Any, **kwargs: Any) -> list[DeploymentState]:
        with self.meter.measure():
            return super().deployments(*args, **kwargs)


@dataclass
class Slice:
    """What the driver measured for one part of a deployment: a step, the planning or the finish."""

    calls: int = 0
    slept_s: float = 0.0
    settle_s: float = 0.0
    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLOCKS, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLOCKS, 0.0))

    def add(self, wall: dict[str, float], cpu: dict[str, float]) -> None:
        self.calls += 1
        for clock in CLOCKS:
            self.wall[clock] += wall[clock]
            self.cpu[clock] += cpu[clock]

    def orchestrator_s(self, cpu: bool = False) -> float:
        times = self.cpu if cpu else self.wall
        return times["call"] - times["platform"] - times["smoke"]


@dataclass
class DeploymentRun:
    label: str
    strategy: str
    state: DeploymentState
    events: list[Event]
    slices: dict[str, Slice]


def slice_key(state: DeploymentState) -> str:
    """The part of the deployment that the next ``reconcile()`` call works on."""
    if not state.planned:
        return "plan"
    if state.rollback is not None or state.current_step() is None:
        return "finish"
    return str(state.step_index)


class MeasuredHarness(Harness):
    """The scenarios' harness with a driver loop that does what the runner actor does, and measures it."""

    def __init__(self, env: ScenarioEnv, service: str) -> None:
        super().__init__(env, service)
        self.journal.close()
        self.meters = {clock: Meter() for clock in CLOCKS}
        self.journal = ClockedJournal(env.journal_dir / f"{service}.db", self.meters["journal"])

    def _readings(self) -> tuple[dict[str, float], dict[str, float]]:
        return (
            {clock: meter.wall_s for clock, meter in self.meters.items()},
            {clock: meter.cpu_s for clock, meter in self.meters.items()},
        )

    def _measured_reconciler(self, deployment_id: str) -> DeploymentReconciler:
        adapter = cast(PlatformAdapter, ClockedAdapter(self.env.make_adapter(), self.meters["platform"]))
        smoke = ClockedSmoke(self.env.smoke, self.meters["smoke"]) if self.env.smoke else None
        return DeploymentReconciler(
            self.journal,
            deployment_id,
            lambda _: adapter,
            smoke=smoke,
            actor="benchmark",
            tick_s=RUNNER_TICK_S,
        )

    def run(self, label: str, version: str, strategy: dict[str, Any]) -> DeploymentRun:
        deployment_id = self._submit(version, strategy, faulty=False)
        reconciler = self._measured_reconciler(deployment_id)
        slices: dict[str, Slice] = defaultdict(Slice)
        end = time.monotonic() + self.env.deadline_s
        try:
            while time.monotonic() < end:
                settling = time.perf_counter()
                self.env.settle()  # the emulated controller's work (Kubernetes): the platform's readiness
                settled_s = time.perf_counter() - settling
                key = slice_key(self.journal.state(deployment_id))
                slices[key].settle_s += settled_s
                wall, cpu = self._readings()
                with self.meters["call"].measure():
                    delay = reconciler.reconcile()
                after_wall, after_cpu = self._readings()
                slices[key].add(
                    {c: after_wall[c] - wall[c] for c in CLOCKS}, {c: after_cpu[c] - cpu[c] for c in CLOCKS}
                )
                if delay is None:
                    break
                slept = time.perf_counter()
                time.sleep(delay)
                slices[key].slept_s += time.perf_counter() - slept
        finally:
            reconciler.close()
        state = self.journal.state(deployment_id)
        return DeploymentRun(label, str(strategy["type"]), state, self.journal.events(deployment_id), slices)


# ------------------------------------------------------------------------------------------- figures
class StepFigure(BaseModel):
    index: int
    kind: str
    elapsed_s: float  # journal: wall time of the step (of its last window, if a window restarted)
    platform_ms: float  # journal: inside platform calls
    platform_ms_measured: float  # the driver's wrapper, as a cross-check of the journal's figure
    smoke_ms: float
    orchestrator_ms: float
    orchestrator_cpu_ms: float  # thread CPU time of the same: not inflated by other threads holding the GIL
    journal_ms: float  # part of orchestrator_ms
    reconcile_calls: int
    slept_s: float
    configured_wait_s: float
    readiness_s: float | None  # DEPLOY only: sleeps waiting for readiness (+ emulated controller)
    journal_formula_ms: float | None  # elapsed - platform - configured wait (not for DEPLOY): cross-check


class DeploymentFigure(BaseModel):
    label: str
    deployment_id: str
    strategy: str
    phase: str
    message: str
    final_weights: dict[str, int]
    wall_s: float
    steps: list[StepFigure]
    outside_steps_orchestrator_ms: float  # planning and finishing
    outside_steps_platform_ms: float


class KindFigure(BaseModel):
    steps: int
    orchestrator_ms_mean: float
    platform_ms_mean: float


class PlatformFigures(BaseModel):
    ok: bool
    error: str | None = None
    cleanup_problems: list[str] = []
    setup_s: float = 0.0
    wall_s: dict[str, float] = {}
    steps: int = 0
    steps_by_kind: dict[str, int] = {}
    orchestrator_ms_total: float = 0.0
    orchestrator_ms_mean_per_step: float = 0.0
    orchestrator_ms_max_step: float = 0.0
    orchestrator_cpu_ms_mean_per_step: float = 0.0
    journal_ms_mean_per_step: float = 0.0
    platform_ms_total: float = 0.0
    platform_ms_mean_per_step: float = 0.0
    smoke_ms_total: float = 0.0
    readiness_s_total: float = 0.0
    readiness_ms_mean_per_deploy_step: float = 0.0
    ratio_orchestrator_to_platform: float | None = None
    outside_steps_orchestrator_ms_total: float = 0.0
    journal_formula_ms_mean: float | None = None
    platform_ms_journal_vs_measured_max_diff: float = 0.0
    by_kind: dict[str, KindFigure] = {}
    deployments: list[DeploymentFigure] = []


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def step_figure(index: int, step: Step, completed: Event, part: Slice) -> StepFigure:
    elapsed, platform = float(completed.data["elapsed_s"]), float(completed.data["platform_s"])
    orchestrator = part.orchestrator_s()
    wait = step.duration_ms / 1000 if step.kind in WINDOW_STEPS else 0.0
    deploy = step.kind is StepKind.DEPLOY
    return StepFigure(
        index=index,
        kind=step.kind.value,
        elapsed_s=round(elapsed, 4),
        platform_ms=ms(platform),
        platform_ms_measured=ms(part.wall["platform"]),
        smoke_ms=ms(part.wall["smoke"]),
        orchestrator_ms=ms(orchestrator),
        orchestrator_cpu_ms=ms(part.orchestrator_s(cpu=True)),
        journal_ms=ms(part.wall["journal"]),
        reconcile_calls=part.calls,
        slept_s=round(part.slept_s, 4),
        configured_wait_s=wait,
        readiness_s=round(part.slept_s + part.settle_s, 4) if deploy else None,
        journal_formula_ms=None if deploy else ms(elapsed - platform - wait),
    )


def deployment_figure(run: DeploymentRun) -> DeploymentFigure:
    state = run.state
    steps = [
        step_figure(
            int(e.data["index"]), state.plan[int(e.data["index"])], e, run.slices[str(e.data["index"])]
        )
        for e in run.events
        if e.kind is EventKind.STEP_COMPLETED
    ]
    outside = [run.slices[key] for key in ("plan", "finish") if key in run.slices]
    finished = next((e for e in reversed(run.events) if e.kind is EventKind.FINISHED), None)
    return DeploymentFigure(
        label=run.label,
        deployment_id=state.deployment_id,
        strategy=run.strategy,
        phase=state.phase().value,
        message=str(finished.data.get("message", "")) if finished else "did not finish in time",
        final_weights=dict(finished.data.get("weights", {})) if finished else {},
        wall_s=round((state.finished_at or time.time()) - state.submitted_at, 3),
        steps=steps,
        outside_steps_orchestrator_ms=ms(sum(part.orchestrator_s() for part in outside)),
        outside_steps_platform_ms=ms(sum(part.wall["platform"] for part in outside)),
    )


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 3) if values else 0.0


def by_kind(steps: list[StepFigure]) -> dict[str, KindFigure]:
    grouped: dict[str, list[StepFigure]] = defaultdict(list)
    for step in steps:
        grouped[step.kind].append(step)
    return {
        kind: KindFigure(
            steps=len(group),
            orchestrator_ms_mean=mean([s.orchestrator_ms for s in group]),
            platform_ms_mean=mean([s.platform_ms for s in group]),
        )
        for kind, group in grouped.items()
    }


def platform_figures(deployments: list[DeploymentFigure], setup_s: float) -> PlatformFigures:
    steps = [step for deployment in deployments for step in deployment.steps]
    orchestrator = [s.orchestrator_ms for s in steps]
    platform = [s.platform_ms for s in steps]
    readiness = [s.readiness_s for s in steps if s.readiness_s is not None]
    formula = [s.journal_formula_ms for s in steps if s.journal_formula_ms is not None]
    return PlatformFigures(
        ok=bool(deployments) and all(d.phase == Phase.SUCCEEDED.value for d in deployments),
        setup_s=round(setup_s, 2),
        wall_s={d.label: d.wall_s for d in deployments},
        steps=len(steps),
        steps_by_kind=dict(Counter(s.kind for s in steps)),
        orchestrator_ms_total=round(sum(orchestrator), 3),
        orchestrator_ms_mean_per_step=mean(orchestrator),
        orchestrator_ms_max_step=max(orchestrator, default=0.0),
        orchestrator_cpu_ms_mean_per_step=mean([s.orchestrator_cpu_ms for s in steps]),
        journal_ms_mean_per_step=mean([s.journal_ms for s in steps]),
        platform_ms_total=round(sum(platform), 3),
        platform_ms_mean_per_step=mean(platform),
        smoke_ms_total=round(sum(s.smoke_ms for s in steps), 3),
        readiness_s_total=round(sum(readiness), 3),
        readiness_ms_mean_per_deploy_step=round(1000 * sum(readiness) / len(readiness), 1)
        if readiness
        else 0.0,
        ratio_orchestrator_to_platform=round(sum(orchestrator) / sum(platform), 3) if sum(platform) else None,
        outside_steps_orchestrator_ms_total=round(
            sum(d.outside_steps_orchestrator_ms for d in deployments), 3
        ),
        journal_formula_ms_mean=mean(formula) if formula else None,
        platform_ms_journal_vs_measured_max_diff=max(
            (abs(s.platform_ms - s.platform_ms_measured) for s in steps), default=0.0
        ),
        by_kind=by_kind(steps),
        deployments=deployments,
    )


# ------------------------------------------------------------------------------------------- cleanup helpers
def best_effort(problems: list[str], what: str, action: Callable[[], None]) -> None:
    """Run one clean-up action; a failure is recorded and the next action still runs."""
    try:
        action()
    except Exception as error:
        log.error("clean-up: %s failed: %r", what, error)
        problems.append(f"{what}: {error!r}")


def note_killed(problems: list[str], what: str, pids: list[int]) -> None:
    if pids:
        problems.append(f"{what} left behind after the adapter's removal (killed): {pids}")


def tear_down_routed(config: PlatformConfig, target: Target, problems: list[str]) -> None:
    """Local, docker, vm: remove through the adapter, then kill any HAProxy it missed."""
    haproxy_dir = Path(config.settings["stateDir"]) / config.type / "haproxy"
    routers = recorded_processes(haproxy_dir)  # read before removal deletes the files
    best_effort(problems, "removal through the adapter", lambda: remove_through_adapter(config, [target]))
    note_killed(problems, "HAProxy", kill_surviving(routers))


# ------------------------------------------------------------------------------------------- environments
# The integration tests' own environments (harness/environments.py), with the benchmark's ports
# and a clean-up that records what it had to remove rather than failing.
Environment = Callable[[Path, list[str]], AbstractContextManager[ScenarioEnv]]


@contextmanager
def local_environment(folder: Path, problems: list[str]) -> Iterator[ScenarioEnv]:
    config = PlatformConfig(type="local", settings={"stateDir": str(folder / "state"), **LOCAL_PORTS})
    replicas_dir = folder / "state" / "local" / "processes"
    try:
        yield routed_scenario_env(config, sample_process, folder)
    finally:
        replicas = recorded_processes(replicas_dir, "replicas")
        tear_down_routed(config, Target(service=SERVICE, environment="staging"), problems)
        note_killed(problems, "replica processes", kill_surviving(replicas))


@contextmanager
def docker_environment(folder: Path, problems: list[str]) -> Iterator[ScenarioEnv]:
    engines_before = dockerd_processes()
    config = docker_scenario_config(folder / "state", DOCKER_FRONTEND_PORTS, DOCKER_REPLICA_PORTS)
    environment = f"bench-{uuid.uuid4().hex[:8]}"  # container names carry it: never another run's

    def remove_left_containers() -> None:
        left = [container.name for container in labelled_containers(SERVICE, environment)]
        remove_containers(left)
        if left:
            problems.append(f"containers left behind after the adapter's removal (removed): {left}")

    try:
        with docker_engine_started():
            try:
                yield routed_scenario_env(config, sample_container, folder, environment=environment)
            finally:
                tear_down_routed(config, Target(service=SERVICE, environment=environment), problems)
                best_effort(problems, "removing left containers", remove_left_containers)
    finally:
        ours = dockerd_processes() - engines_before
        if ours:  # started here (by start_docker.sh): stop it again
            best_effort(problems, "stopping the docker engine started here", lambda: stop_docker(ours))


@contextmanager
def vm_environment(folder: Path, problems: list[str]) -> Iterator[ScenarioEnv]:
    roots = folder / "hosts"
    with ssh_daemons(folder / "ssh") as hosts:
        config = hosts.scenario_config(roots, folder / "state", VM_REPLICA_PORT, VM_FRONTEND_PORTS)
        try:
            yield routed_scenario_env(config, sample_process, folder, replicas=len(HOSTS))
        finally:
            tear_down_routed(config, Target(service=SERVICE, environment="staging"), problems)
            left = processes_under(roots)
            kill_pids(left)
            note_killed(problems, "replica processes", left)


@contextmanager
def kubernetes_environment(folder: Path, problems: list[str]) -> Iterator[ScenarioEnv]:
    labels = ["namespace", "service", "revision", "code"]
    with KubeEmulator(gateway_api=False) as emulator, prometheus_server(folder, labels) as prometheus:
        clusters: list[Cluster] = []
        try:
            with kube_cluster(emulator, "bench") as cluster:
                clusters.append(cluster)
                yield kubernetes_scenario_env(cluster, prometheus, folder)
        finally:  # read once the controller has stopped
            problems += [f"emulated controller: {e}" for c in clusters for e in c.controller.errors]


@contextmanager
def lambda_environment(folder: Path, problems: list[str]) -> Iterator[ScenarioEnv]:
    with moto_server(folder, f"bench-{RUN}") as aws:
        yield lambda_scenario_env(aws, folder)


ENVIRONMENTS: dict[str, Environment] = {
    "local": local_environment,
    "docker": docker_environment,
    "vm": vm_environment,
    "kubernetes": kubernetes_environment,
    "lambda": lambda_environment,
}


# ------------------------------------------------------------------------------------------- the run
def deployments_under_traffic(step_ms: int) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("canary", "2.0.0", canary_strategy(step_ms)),
        ("blue_green", "3.0.0", blue_green_strategy(step_ms)),
        ("rolling", "4.0.0", ROLLING),
    ]


def succeeded(run: DeploymentRun) -> bool:
    return run.state.phase() is Phase.SUCCEEDED


def drive(env: ScenarioEnv, step_ms: int, fresh_service_each: bool) -> list[DeploymentRun]:
    """First revision, then canary, blue-green and rolling, each under live traffic; stops at a failure."""
    harness = MeasuredHarness(env, SERVICE)
    runs = [harness.run("first", "1.0.0", FIRST)]
    for number, (label, version, strategy) in enumerate(deployments_under_traffic(step_ms)):
        if not succeeded(runs[-1]):
            break
        if fresh_service_each and number > 0:
            harness = MeasuredHarness(env, f"{SERVICE}-{label.replace('_', '-')}")
            runs.append(harness.run(f"first:{label}", "1.0.0", FIRST))
            if not succeeded(runs[-1]):
                break
        with harness.live():
            runs.append(harness.run(label, version, strategy))
    return runs


def benchmark_platform(name: str, step_ms: int, folder: Path) -> PlatformFigures:
    problems: list[str] = []
    runs: list[DeploymentRun] = []
    error: str | None = None
    started = time.perf_counter()
    setup_s = 0.0
    try:
        with ENVIRONMENTS[name](folder, problems) as env:
            setup_s = time.perf_counter() - started
            runs = drive(env, step_ms, fresh_service_each=name in FRESH_SERVICE_PER_STRATEGY)
    except Exception as failure:
        log.exception("%s: the run failed", name)
        error = f"{type(failure).__name__}: {failure}"
    figures = platform_figures([deployment_figure(run) for run in runs], setup_s)
    figures.error = error
    figures.cleanup_problems = problems
    complete = set(MAIN_LABELS) <= {run.label for run in runs}
    figures.ok = figures.ok and complete and error is None and not problems
    return figures


# ------------------------------------------------------------------------------------------- report
NOTES = (
    "Per completed step: orchestrator time = wall time of the reconcile() calls that worked on the step "
    "minus the time inside the platform calls and smoke requests made during them; it includes the journal "
    "(journal_ms) and the engine's logic, while the clients' own Python work is inside the platform calls. "
    "The driver loops like actors/runner.py (reconcile, sleep the returned delay, tick "
    f"{RUNNER_TICK_S} s). platform_ms is the journal's platform_s (the engine's TimedAdapter); "
    "platform_ms_measured is the driver's wrapper (cross-check). readiness_s (DEPLOY steps) = the driver's "
    "sleeps while the step waited for replicas to get ready, with the engine's polling granularity (20 ms "
    f"backing off by 1.5x to the {RUNNER_TICK_S} s tick), plus the emulated controller's work on kubernetes; "
    "not orchestrator time. Local, docker and vm adapters wait for readiness inside ensure_revision, so "
    "there it is mostly platform time. journal_formula_ms = elapsed - platform - configured wait is only a "
    "cross-check: a window step's platform calls happen inside its window, so it subtracts them twice. "
    "orchestrator_cpu_ms is the thread CPU time of the same work: wall time can be inflated by the GIL, "
    "since live traffic, the Kubernetes emulator with its controller and traffic, and the moto server with "
    "its invocations run as threads of this process. Planning and finishing are outside the steps "
    "(outside_steps_orchestrator_ms). On lambda each strategy starts from a first revision on a function "
    "of its own (moto reuses a deleted version's number). The machine is shared: one run, not a distribution."
)


class Machine(BaseModel):
    cpus: int
    python: str
    system: str
    load_average_start: list[float]
    load_average_end: list[float] = []


class Report(BaseModel):
    platforms: dict[str, PlatformFigures]
    machine: Machine
    notes: str
    settings: dict[str, Any]


def table(report: Report) -> str:
    header = (
        f"{'platform':<11}{'ok':<4}{'steps':>6}{'orch ms/step':>13}{'max':>7}{'cpu ms':>8}{'journal':>8}"
        f"{'platf ms/step':>14}{'orch/platf':>11}{'ready s':>8}   wall s (first/canary/bg/rolling)"
    )
    lines = [header, "-" * len(header)]
    for name, f in report.platforms.items():
        ratio = (
            f"{f.ratio_orchestrator_to_platform:.3f}" if f.ratio_orchestrator_to_platform is not None else "-"
        )
        walls = "/".join(f"{f.wall_s[label]:.1f}" for label in MAIN_LABELS if label in f.wall_s)
        lines.append(
            f"{name:<11}{'yes' if f.ok else 'NO':<4}{f.steps:>6}{f.orchestrator_ms_mean_per_step:>13.2f}"
            f"{f.orchestrator_ms_max_step:>7.1f}{f.orchestrator_cpu_ms_mean_per_step:>8.2f}"
            f"{f.journal_ms_mean_per_step:>8.2f}{f.platform_ms_mean_per_step:>14.2f}{ratio:>11}"
            f"{f.readiness_s_total:>8.2f}   {walls}"
        )
        for problem in ([f.error] if f.error else []) + f.cleanup_problems:
            lines.append(f"    ! {problem}")
    return "\n".join(lines)


def verdict(report: Report, budget_ms: float) -> list[str]:
    failures = [f"{name}: the run failed" for name, f in report.platforms.items() if not f.ok]
    failures += [
        f"{name}: {f.orchestrator_ms_mean_per_step:.2f} ms of orchestrator time per step > {budget_ms:g} ms"
        for name, f in report.platforms.items()
        if f.orchestrator_ms_mean_per_step > budget_ms
    ]
    return failures


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--platforms", default=",".join(PLATFORMS), help="comma-separated, of: " + ", ".join(PLATFORMS)
    )
    parser.add_argument(
        "--step-seconds", type=float, default=2.0, help="canary analysis step and blue-green hold"
    )
    parser.add_argument(
        "--budget-ms", type=float, default=50.0, help="mean orchestrator time per step, at most"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args(argv)
    arguments.platforms = [name.strip() for name in arguments.platforms.split(",") if name.strip()]
    unknown = [name for name in arguments.platforms if name not in PLATFORMS]
    if unknown:
        parser.error(f"unknown platform(s): {', '.join(unknown)}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the moto server logs every request at INFO
    arguments = parse_arguments(argv)
    machine = Machine(
        cpus=os.cpu_count() or 0,
        python=sys.version.split()[0],
        system=f"{host_platform.system()} {host_platform.release()}",
        load_average_start=[round(x, 2) for x in os.getloadavg()],
    )
    started = time.monotonic()
    results: dict[str, PlatformFigures] = {}
    with tempfile.TemporaryDirectory(prefix="bench-platforms-") as scratch:
        for name in arguments.platforms:
            print(f"{name}: running ...", flush=True)
            folder = Path(scratch) / name
            folder.mkdir()
            results[name] = benchmark_platform(name, int(arguments.step_seconds * 1000), folder)
    machine.load_average_end = [round(x, 2) for x in os.getloadavg()]
    settings = {
        "step_seconds": arguments.step_seconds,
        "budget_ms": arguments.budget_ms,
        "run_s": round(time.monotonic() - started, 1),
    }
    report = Report(platforms=results, machine=machine, notes=NOTES, settings=settings)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(report.model_dump(mode="json"), indent=1) + "\n")
    print(table(report))
    failures = verdict(report, arguments.budget_ms)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"wrote {arguments.output} in {settings['run_s']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
