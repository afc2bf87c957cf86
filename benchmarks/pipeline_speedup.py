"""How much faster a pipeline's parallel stages deliver than the same stages one after another.

A pipeline deploys --services services (5) to --environments environments (3): in each environment, for each
service, a canary (one analysis step of --step-seconds under live traffic) and then a validate stage (an HTTP
health check and a smoke test of --smoke-requests requests through the service's router). Environments are
promoted in order per service (staging's web waits for development's web to be deployed and checked).

Each repetition runs it twice on the same orchestrator (the embedded local Ray, the local platform: real
processes behind a real HAProxy), with new revisions each time:
- pipeline: the template as it is: DO-006 starts every ready stage at once (at most 10 deployments run, the
  queen's limit);
- sequential: the same template with ``maxParallelStages: 1``: the same stages, deployments, checks and code
  path, one stage at a time (the honest baseline: not a slower strawman).
The order alternates between repetitions, so that neither always runs on a warmer machine.

Reported, per repetition and as median with spread:
- speedup: sequential wall time / pipeline wall time (creation to outcome, from the journal);
- ideal_speedup: what the graph allows given the concurrency limit: the sequential run's stage durations
  summed, over the larger of the critical path through the graph (with the same durations) and the
  deployments' total duration over the limit of 10 running deployments;
- where the time goes in each run: stage durations by kind, the gap between a stage's last dependency ending
  and the stage starting (DO-006's own latency), each deployment's wait for admission, its steps, and the
  machine's CPU use and load during the run (the machine is shared: a busy one slows parallel stages more);
- how fast the machine is, before and after: the CPU milliseconds to start ``python3 -c pass`` (40 on a quiet
  day of these machines, 70 on a slow one; replica starts are the bulk of each level's CPU).

Goal: median speedup at least 4.4x (the top of the seed's 2.8-4.4x) and within 10% of the median ideal.

    python3 benchmarks/pipeline_speedup.py                       # 3 repetitions, about 5 minutes
    python3 benchmarks/pipeline_speedup.py --repetitions 5 --step-seconds 2

Writes benchmarks/results/pipeline_speedup.json (commit, arguments, time, figures); exits 1 below the goal
or when a run did not succeed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform as host_platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters import remove_targets  # noqa: E402
from engine.config import write_isolated_config  # noqa: E402
from engine.journal import Journal  # noqa: E402
from engine.models import Artifact, Target  # noqa: E402
from engine.pipeline import read_pipeline  # noqa: E402
from engine.pipeline_model import PipelineTemplate, StageKind  # noqa: E402
from engine.pipeline_state import PipelinePhase, PipelineState  # noqa: E402
from engine.state import EventKind  # noqa: E402
from examples.quickstart import sample_artifact  # noqa: E402
from examples.traffic import TrafficGenerator  # noqa: E402

CONCURRENCY_LIMIT = 10
GOAL_SPEEDUP = 4.4
GOAL_OF_IDEAL = 0.9


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
def template(args: argparse.Namespace, one_at_a_time: bool) -> PipelineTemplate:
    canary = {
        "type": "canary",
        "replicas": 1,
        "canary": {
            "initialTrafficPercentage": 50,
            "stepPercentage": 50,
            "stepDuration": int(args.step_seconds * 1000),
            "maxSteps": 2,
            "analysisInterval": 500,
            "minRequestCount": 3,
            "successThreshold": {"errorRate": 1},
            "failureThreshold": {"errorRate": 5},
        },
    }
    checks = [{"path": "/health"}, {"path": "/", "requests": args.smoke_requests}]
    return PipelineTemplate.model_validate(
        {
            "maxParallelStages": 1 if one_at_a_time else 0,
            "stages": [
                {"name": "deploy", "kind": "deploy", "strategy": canary},
                {"name": "validate", "kind": "validate", "dependsOn": ["deploy"], "checks": checks},
            ],
        }
    )


def artifacts(services: list[str], version: str) -> list[Artifact]:
    return [sample_artifact(version, service=s) for s in services]


def environments(args: argparse.Namespace) -> list[str]:
    return [f"bench-{i}" for i in range(args.environments)]


# --------------------------------------------------------------------------------------------
# Measuring one run
# --------------------------------------------------------------------------------------------
class CpuSampler:
    """The machine's CPU use over a window (all processes: the machine is shared), and our own processes'
    CPU by kind: the orchestrator's actors, Ray's own processes, HAProxy, the service replicas, and this
    process (which sends the live traffic)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.start = self._read()
        self.load = os.getloadavg()[0]
        self.own_start = self.own()

    @staticmethod
    def _read() -> tuple[float, float]:
        fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    def busy_cores(self) -> float:
        total, idle = self._read()
        dt, di = total - self.start[0], idle - self.start[1]
        return (os.cpu_count() or 1) * (1 - di / dt) if dt else 0.0

    def own(self) -> dict[int, tuple[str, float]]:
        """pid -> (kind, CPU seconds so far) of every process of this benchmark's orchestrator."""
        me = psutil.Process()
        found: dict[int, tuple[str, float]] = {}
        candidates = [(me, "benchmark (traffic)"), *((p, "") for p in me.children(recursive=True))]
        candidates += [(p, "") for p in psutil.process_iter() if p.pid not in {c.pid for c, _ in candidates}]
        for process, kind in candidates:
            with contextlib.suppress(psutil.Error):
                kind = kind or self._kind(process, me.pid)
                if kind:
                    times = process.cpu_times()
                    found[process.pid] = (kind, times.user + times.system)
        return found

    def _kind(self, process: psutil.Process, me: int) -> str:
        command = " ".join(process.cmdline())
        if str(self.folder) in command:  # HAProxy's configuration lives in the benchmark's own folder
            return "haproxy" if "haproxy" in command else "other"
        if str(REPO / "examples" / "sample_service.py") in command:
            return "replicas (still running at the end)"
        if not any(parent.pid == me for parent in process.parents()):
            return ""
        title = re.match(r"ray::(\w+)", command)
        return f"actor {title.group(1)}" if title else "ray (raylet, gcs, workers starting)"

    def own_cpu(self) -> dict[str, float]:
        """CPU seconds used during the window by kind (processes that ended within it are not counted)."""
        by_kind: dict[str, float] = {}
        for pid, (kind, cpu) in self.own().items():
            before = self.own_start.get(pid, (kind, 0.0))[1]
            by_kind[kind] = round(by_kind.get(kind, 0.0) + cpu - before, 3)
        return dict(sorted(by_kind.items(), key=lambda item: -item[1]))


def stage_durations(state: PipelineState) -> dict[str, float]:
    return {
        stage_id: (stage.finished_at or 0.0) - (stage.started_at or 0.0)
        for stage_id, stage in state.stages.items()
        if stage.started_at is not None
    }


def start_gaps(state: PipelineState) -> list[float]:
    """For each stage, from its last dependency's end (or the run's creation) to its start: DO-006's latency
    plus, with maxParallelStages, the wait for a free slot."""
    gaps = []
    for spec in state.spec.stages:
        stage = state.stages[spec.id]
        ready = max([state.stages[d].finished_at or 0.0 for d in spec.depends_on] or [state.created_at])
        if stage.started_at is not None:
            gaps.append(stage.started_at - ready)
    return gaps


def deployment_breakdown(journal: Journal, state: PipelineState) -> dict[str, Any]:
    """Where each deployment's time goes: admission wait, its steps, and the rest (the runner's own work)."""
    queued: list[float] = []
    elapsed: list[float] = []
    runs: list[str] = []
    steps_s: dict[str, list[float]] = {}
    for stage in state.stages.values():
        deployment_id = stage.result.get("deployment_id")
        if not deployment_id:
            continue
        deployment = journal.state(deployment_id)
        queued.append((deployment.admitted_at or 0.0) - deployment.submitted_at)
        elapsed.append((deployment.finished_at or 0.0) - deployment.submitted_at)
        for event in journal.events(deployment_id):
            if event.kind is EventKind.STEP_COMPLETED:
                name = str(event.data["step"]).split(" ")[0]
                steps_s.setdefault(name, []).append(float(event.data.get("elapsed_s", 0.0)))
        runs.append(deployment_id)
    return {
        "deployments": len(runs),
        "mean_admission_wait_s": _mean(queued),
        "max_admission_wait_s": max(queued, default=0.0),
        "mean_deployment_s": _mean(elapsed),
        "mean_step_s": {name: _mean(values) for name, values in sorted(steps_s.items())},
    }


def _mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4) if values else 0.0


def critical_path(state: PipelineState, durations: dict[str, float]) -> float:
    """The longest chain of dependent stages, with the given durations."""
    finish: dict[str, float] = {}
    specs = {spec.id: spec for spec in state.spec.stages}

    def end(stage_id: str) -> float:
        if stage_id not in finish:
            start = max([end(d) for d in specs[stage_id].depends_on] or [0.0])
            finish[stage_id] = start + durations[stage_id]
        return finish[stage_id]

    return max(end(stage_id) for stage_id in specs)


def ideal_speedup(state: PipelineState, durations: dict[str, float]) -> dict[str, float]:
    deploys = [durations[s.id] for s in state.spec.stages if s.kind is StageKind.DEPLOY]
    path = critical_path(state, durations)
    capacity = sum(deploys) / CONCURRENCY_LIMIT
    total = sum(durations.values())
    return {
        "stages_total_s": total,
        "critical_path_s": path,
        "capacity_bound_s": capacity,
        "ideal_speedup": total / max(path, capacity),
    }


def measure(
    orch: Any, journal: Journal, args: argparse.Namespace, version: str, one_at_a_time: bool
) -> dict[str, Any]:
    services = [f"svc-{i + 1}" for i in range(args.services)]
    cpu = CpuSampler(Path(os.environ["ORCH_HOME"]))
    name = "sequential" if one_at_a_time else "pipeline"
    pipeline_id = orch.start_pipeline(
        template(args, one_at_a_time), artifacts(services, version), environments(args), pipeline_name=name
    )
    status = orch.wait_pipeline(pipeline_id, 1800)
    state = read_pipeline(journal, pipeline_id)
    durations = stage_durations(state)
    by_kind: dict[str, list[float]] = {}
    for spec in state.spec.stages:
        by_kind.setdefault(spec.kind.value, []).append(durations.get(spec.id, 0.0))
    gaps = start_gaps(state)
    return {
        "pipeline_id": pipeline_id,
        "version": version,
        "succeeded": status.state is PipelinePhase.SUCCEEDED and not status.rolled_back,
        "message": status.message,
        "wall_s": (state.finished_at or time.time()) - state.created_at,
        "durations": durations,
        "mean_stage_s": {kind: _mean(values) for kind, values in by_kind.items()},
        "mean_start_gap_s": _mean(gaps),
        "max_start_gap_s": max(gaps, default=0.0),
        "deployments": deployment_breakdown(journal, state),
        "machine_busy_cores": round(cpu.busy_cores(), 3),
        "own_cpu_s": cpu.own_cpu(),
        "load_average_at_start": cpu.load,
        "state": state,
    }


# --------------------------------------------------------------------------------------------
# The whole run
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def live_traffic(
    orch: Any, services: list[str], envs: list[str], rps: float
) -> Iterator[list[TrafficGenerator]]:
    journal = Journal(orch.journal_path)
    generators = []
    for env in envs:
        for service in services:
            live = [s.address for s in journal.deployments(target_key=f"{service}.{env}") if s.address]
            generators.append(TrafficGenerator(f"{live[-1]}/", rps=rps, threads=1, max_seconds=3600).start())
    try:
        yield generators
    finally:
        for generator in generators:
            generator.stop()


def repetition(orch: Any, journal: Journal, args: argparse.Namespace, index: int) -> dict[str, Any]:
    order = [False, True] if index % 2 == 0 else [True, False]
    runs = {}
    for number, one_at_a_time in enumerate(order):
        version = f"{index + 2}.{number}.0"
        run = measure(orch, journal, args, version, one_at_a_time)
        runs["sequential" if one_at_a_time else "pipeline"] = run
        print(
            f"  {'sequential' if one_at_a_time else 'pipeline  '} {run['wall_s']:7.2f}s {run['message']}",
            flush=True,
        )
    sequential, parallel = runs["sequential"], runs["pipeline"]
    ideal = ideal_speedup(sequential["state"], sequential["durations"])
    for run in runs.values():
        del run["state"], run["durations"]
    return {
        "order": ["sequential" if o else "pipeline" for o in order],
        "speedup": sequential["wall_s"] / parallel["wall_s"],
        **ideal,
        "of_ideal": sequential["wall_s"] / parallel["wall_s"] / ideal["ideal_speedup"],
        "sequential": sequential,
        "pipeline": parallel,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator import DeploymentOrchestrator

    folder = Path(tempfile.mkdtemp(prefix="orch-pipeline-bench-"))
    os.environ["ORCH_HOME"] = str(folder)
    concurrency = {"maxConcurrentDeployments": CONCURRENCY_LIMIT, "warmRunners": args.warm_runners}
    config = write_isolated_config(
        folder,
        (19900, 19999),
        (46000, 47999),
        namespace=f"pipeline-bench-{os.getpid()}",
        concurrency=concurrency,
    )
    orch = DeploymentOrchestrator(config_path=config, num_cpus=os.cpu_count() or 2)
    services = [f"svc-{i + 1}" for i in range(args.services)]
    envs = environments(args)
    try:
        for env in envs:
            orch.register_environment({"name": env})
        orch.warm_up()
        first = orch.deploy_pipeline(template(args, False), artifacts(services, "1.0.0"), envs, timeout_s=900)
        if not first.success:
            raise RuntimeError(f"the first revisions did not deploy: {first.pipeline.message}")
        journal = Journal(orch.journal_path)
        repetitions = []
        with live_traffic(orch, services, envs, args.rps) as traffic:
            for index in range(args.repetitions):
                print(f"repetition {index + 1}/{args.repetitions}", flush=True)
                repetitions.append(repetition(orch, journal, args, index))
            failed = sum(TrafficGenerator.failed(g.snapshot()) for g in traffic)
    finally:
        orch.shutdown()  # first: its supervisor would otherwise start again what the clean-up removes
        cleanup(orch, services, envs)
    return summarise(repetitions, failed)


def summarise(repetitions: list[dict[str, Any]], failed_requests: int) -> dict[str, Any]:
    speedups = [r["speedup"] for r in repetitions]
    ideals = [r["ideal_speedup"] for r in repetitions]
    speedup, ideal = statistics.median(speedups), statistics.median(ideals)
    succeeded = all(r[k]["succeeded"] for r in repetitions for k in ("pipeline", "sequential"))
    return {
        "speedup": round(speedup, 3),
        "ideal_speedup": round(ideal, 3),
        "of_ideal": round(speedup / ideal, 3),
        "spread": {
            "speedup_min": round(min(speedups), 3),
            "speedup_max": round(max(speedups), 3),
            "speedup_stdev": round(statistics.stdev(speedups), 3) if len(speedups) > 1 else 0.0,
            "ideal_min": round(min(ideals), 3),
            "ideal_max": round(max(ideals), 3),
        },
        "goal": {"speedup_at_least": GOAL_SPEEDUP, "of_ideal_at_least": GOAL_OF_IDEAL},
        "met": succeeded and speedup >= GOAL_SPEEDUP and speedup >= GOAL_OF_IDEAL * ideal,
        "all_runs_succeeded": succeeded,
        "failed_requests": failed_requests,
        "repetitions": repetitions,
    }


def cleanup(orch: Any, services: list[str], envs: list[str]) -> None:
    targets = [Target(service=service, environment=env) for env in envs for service in services]
    remove_targets(orch.config.platform("local"), targets)


def python_start_cpu_ms(runs: int = 20) -> float:
    """CPU milliseconds to start and end ``python3 -c pass``: how fast this machine is at the moment (the
    shared machines vary by half or more within a day; a process start is what the pipeline does most)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for _ in range(runs):
        subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return round(used / runs * 1000, 1)


def commit() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    return git("rev-parse", "HEAD") + (
        "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=5)
    parser.add_argument("--environments", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=2.0, help="the canary's analysis step")
    parser.add_argument("--smoke-requests", type=int, default=10)
    parser.add_argument("--rps", type=float, default=8.0, help="live requests per second per service")
    parser.add_argument(
        "--warm-runners",
        type=int,
        default=-1,
        help="standby runners (default: one per service, as many as run at once; idle ones cost CPU)",
    )
    args = parser.parse_args()
    if args.repetitions < 3:
        parser.error("--repetitions: at least 3, so that the spread means something")
    if args.warm_runners < 0:
        args.warm_runners = min(args.services, CONCURRENCY_LIMIT)
    started = time.time()
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "python": host_platform.python_version()}
    machine["python_start_cpu_ms_before"] = python_start_cpu_ms()
    result = {
        "commit": commit(),
        "arguments": vars(args),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine,
        **run(args),
    }
    machine["python_start_cpu_ms_after"] = python_start_cpu_ms()
    result["duration_s"] = round(time.time() - started, 1)
    out = REPO / "benchmarks" / "results" / "pipeline_speedup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    shown = {
        k: result[k]
        for k in ("speedup", "ideal_speedup", "of_ideal", "spread", "met", "failed_requests", "machine")
    }
    print(json.dumps(shown, indent=2))
    print(f"written to {out}")
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
