"""Orchestrator overhead under 10 concurrent canary deployments with live traffic.

Measured inside one run (the machine is shared and noisy), all as ratios:

(a) cpu_overhead_fraction: the CPU time of the orchestrator's own processes (the queen, the domain workers,
    the runners, any monitor; with their children, e.g. the replica launcher) while the deployments run
    (first revisions, then the canaries), above Ray's idle baseline, divided by the managed deployment time
    (the sum of every deployment's duration). Ray's idle baseline is what an idle Ray actor process costs
    (its core worker wakes every 10 ms), measured in the same run and window by probe actors that do nothing.
    An actor started during the deployments counts whole, start included.
    Reported beside it:
    - session_cpu_overhead_fraction: every process of the Ray session (GCS, raylet, agents too) over the same
      window, above the session at rest with the orchestrator started (measured just before, and checked
      against the probes); noisier, and it includes the work Ray's own daemons do for the orchestrator.
    - cpu_overhead_fraction_with_startup: also counts the orchestrator's own start (queen, six domain
      workers, the runner pool: once per cluster, not per deployment) and the idle cost of its processes,
      against Ray alone before anything was started.
(b) wall_overhead_fraction: for each canary, its wall time minus its configured waits (analysis windows)
    minus the platform's own work (time inside platform calls, and process start-up until ready), divided by
    its wall time; summed over the canaries. Queueing, actor start-up, journaling and the loop all count.
(c) rollback_latency_s: a running canary starts failing (its error file appears); time until 100% of
    traffic is on the stable revision, read back from HAProxy. Split into detection and switch.

Budget: (a) and (b) at most 0.002 each. Writes benchmarks/results/overhead.json; exits 1 over budget.
The canaries check at the product's default analysisInterval (2 s); with --interval-ms N the figures go to
overhead-interval-Nms.json instead.
    python3 benchmarks/overhead.py            # 10 services, 4 steps of 30 s (about 5 minutes)
    python3 benchmarks/overhead.py --quick    # 3 services, 2 steps of 5 s (a smoke run; not the budget)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters import create_platform  # noqa: E402
from engine.config import write_isolated_config  # noqa: E402
from engine.journal import Journal  # noqa: E402
from engine.models import DEFAULT_ANALYSIS_INTERVAL_MS, Artifact, Phase, Target  # noqa: E402
from engine.state import EventKind, StepKind  # noqa: E402

SAMPLE = REPO / "examples" / "sample_service.py"
WINDOW_STEPS = {StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE}
ENV = "development"


EXCLUDED: set[int] = set()  # never counted: the traffic generator, the idle probes


def tree_cpu(root: int) -> float:
    """CPU seconds of every live descendant of ``root`` (and their reaped children), but ``EXCLUDED``."""
    total = 0.0
    for process in psutil.Process(root).children(recursive=True):
        if process.pid in EXCLUDED:
            continue
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def artifact(service: str, version: str, error_file: str | None = None) -> Artifact:
    env = {"VERSION": version}
    if error_file:
        env["ERROR_FILE"] = error_file
    return Artifact(name=service, version=version, command=[sys.executable, str(SAMPLE)], env=env)


def canary(steps: int, step_s: float, interval_ms: int = DEFAULT_ANALYSIS_INTERVAL_MS) -> dict[str, Any]:
    return {
        "type": "canary",
        "replicas": 2,
        "canary": {
            "initialTrafficPercentage": 10,
            "stepPercentage": 20,
            "maxSteps": steps,
            "stepDuration": int(step_s * 1000),
            "analysisInterval": interval_ms,
            "minRequestCount": 5,
            "successThreshold": {"errorRate": 1},  # percent
            "failureThreshold": {"errorRate": 5, "consecutiveFailures": 3},
        },
    }


def wall_breakdown(journal: Journal, deployment_id: str) -> dict[str, float]:
    state = journal.state(deployment_id)
    waits = platform = 0.0
    for event in journal.events(deployment_id):
        if event.kind is EventKind.PLANNED:
            platform += float(event.data.get("platform_s", 0.0))
        if event.kind is not EventKind.STEP_COMPLETED:
            continue
        step = state.plan[int(event.data["index"])]
        if step.kind in WINDOW_STEPS:
            waits += step.duration_ms / 1000
        elif step.kind is StepKind.DEPLOY:
            platform += float(event.data["elapsed_s"])  # start-up until ready is the platform's own work
        else:
            platform += float(event.data["platform_s"])
    wall = (state.finished_at or time.time()) - state.submitted_at
    return {
        "wall_s": wall,
        "configured_waits_s": waits,
        "platform_s": platform,
        "overhead_s": wall - waits - platform,
    }


def duration(journal: Journal, deployment_id: str) -> float:
    state = journal.state(deployment_id)
    return (state.finished_at or time.time()) - state.submitted_at


def steady_rate(total_s: float) -> float:
    """Cores used while the canaries sit in their analysis windows (after start-up, before the end)."""
    time.sleep(total_s * 0.25)
    before, started = tree_cpu(os.getpid()), time.time()
    time.sleep(total_s * 0.5)
    return (tree_cpu(os.getpid()) - before) / (time.time() - started)


def idle_rate(seconds: float) -> float:
    before = tree_cpu(os.getpid())
    time.sleep(seconds)
    return (tree_cpu(os.getpid()) - before) / seconds


def ray_processes() -> set[int]:
    """Ray worker processes (actors) under this driver, by pid."""
    found = set()
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::"):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            continue
    return found


class IdleProbes:
    """Ray actor processes that do nothing, alive for the whole run beside the orchestrator: what Ray itself
    costs per worker process (its core worker wakes every 10 ms), measured under the same load."""

    def __init__(self, count: int) -> None:
        import ray

        class Probe:
            def ready(self) -> int:
                return os.getpid()

        actor: Any = ray.remote(num_cpus=0)(Probe)
        self.handles = [actor.remote() for _ in range(count)]
        self.pids = set(ray.get([h.ready.remote() for h in self.handles], timeout=120))
        EXCLUDED.update(self.pids)


def cpu_by_pid(pids: set[int]) -> dict[int, float]:
    """CPU seconds of each process with its reaped children (e.g. the replica launcher); 0 once gone."""
    found: dict[int, float] = {}
    for pid in pids:
        found[pid] = 0.0
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system + times.children_user + times.children_system
    return found


def pids_cpu(pids: set[int]) -> float:
    return sum(cpu_by_pid(pids).values())


def _actor_class(pid: int) -> str:
    try:
        title = psutil.Process(pid).cmdline()[0]
    except (psutil.NoSuchProcess, IndexError):
        return "gone"
    return title.removeprefix("ray::").split(".")[0].split()[0]


class OwnProcesses:
    """The orchestrator's own processes (queen, domain workers, runners, monitors) against idle Ray processes
    (the probes) over the same window: Ray's idle baseline, measured beside them under the same load."""

    def __init__(self, ray_own: set[int], probes: IdleProbes) -> None:
        self.ray_own, self.probes = ray_own, probes
        self.mine = ray_processes() - ray_own
        self.t0, self.cpu0_of, self.probes0 = time.time(), cpu_by_pid(self.mine), pids_cpu(probes.pids)

    def above_idle(self) -> dict[str, Any]:
        """Started before the window: CPU above an idle Ray process. Started in it: all of their CPU."""
        window = time.time() - self.t0
        idle_each = (pids_cpu(self.probes.pids) - self.probes0) / len(self.probes.pids)
        started = ray_processes() - self.ray_own - self.mine
        used = {pid: cpu - self.cpu0_of[pid] for pid, cpu in cpu_by_pid(self.mine).items()}
        own = sum(used.values()) + pids_cpu(started)
        by_kind: dict[str, float] = {}
        for pid, cpu in used.items():
            kind = _actor_class(pid)
            by_kind[kind] = by_kind.get(kind, 0.0) + cpu - idle_each
        return {
            "above_idle_cpu_s_by_kind": by_kind,
            "window_s": window,
            "own_processes_cpu_s": own,
            "idle_ray_process_cores": idle_each / window,
            "processes_at_start": len(self.mine),
            "processes_started_in_window": len(started),
            "above_idle_cpu_s": own - idle_each * len(self.mine),
        }


def at_rest(seconds: float, ray_own: set[int], probes: IdleProbes) -> dict[str, float]:
    """The whole session's rate with the orchestrator started and no deployment, and how its own processes
    compare with idle Ray processes (the probes) meanwhile: any difference is orchestrator work."""
    session0, own = tree_cpu(os.getpid()), OwnProcesses(ray_own, probes)
    time.sleep(seconds)
    total = (tree_cpu(os.getpid()) - session0) / seconds
    measured = own.above_idle()
    own_work = measured["above_idle_cpu_s"] / measured["window_s"]
    return {
        "session_cores": total,
        "orchestrator_processes_cores": measured["own_processes_cpu_s"] / measured["window_s"],
        "idle_ray_process_cores": measured["idle_ray_process_cores"],
        "orchestrator_idle_work_cores": own_work,
        # Ray's idle baseline: the session at rest without whatever the orchestrator did beyond idling.
        "ray_idle_baseline_cores": total - max(0.0, own_work),
    }


def start_traffic(urls: list[str], rps: float, seconds: float) -> subprocess.Popen[str]:
    """The traffic generator: a client, not the orchestrator (``EXCLUDED`` from every CPU figure)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.traffic", *urls, "--rps", str(rps), "--seconds", str(seconds)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    EXCLUDED.add(process.pid)
    return process


def stop_traffic(process: subprocess.Popen[str]) -> dict[str, Any]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def rollback_latency(orch: Any, journal: Journal, folder: Path, step_s: float) -> dict[str, Any]:
    """A canary that goes bad while serving: from the first failing answer to 100% on stable."""
    service = "rollback-probe"
    first = orch.deploy(artifact(service, "1.0.0"), {"type": "rolling", "replicas": 2}, ENV, timeout_s=120)
    error_file = folder / "rollback-probe.fail"
    traffic = start_traffic([first.status.address + "/"], rps=40, seconds=300)
    deployment_id = orch.submit(artifact(service, "2.0.0", str(error_file)), canary(4, step_s * 4, 250), ENV)
    platform = create_platform(orch.config.platform("local"))
    target = Target(service=service, environment=ENV)
    deadline = time.monotonic() + 120
    while platform.traffic(target).weights.get("2-0-0", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(step_s)  # the canary serves well for a while first
    error_file.write_text("fail")
    broke_at = time.time()
    while platform.traffic(target).weights.get("1-0-0") != 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    switched_at = time.time()
    platform.close()
    orch.wait(deployment_id, 60)
    stop_traffic(traffic)
    state = journal.state(deployment_id)
    requested = next(e.at for e in journal.events(deployment_id) if e.kind is EventKind.ROLLBACK_REQUESTED)
    return {
        "rollback_latency_s": switched_at - broke_at,
        "detection_s": requested - broke_at,
        "switch_s": switched_at - requested,
        "phase": state.phase().value,
    }


def start_ray() -> None:
    import ray

    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        namespace="orch-bench",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
    )
    time.sleep(5)  # Ray's own start-up settles


def canary_wave(
    orch: Any, journal: Journal, args: argparse.Namespace, services: list[str], own: OwnProcesses
) -> dict[str, Any]:
    """First revisions, then one canary per service at once under live traffic; what the budget is about."""
    firsts = [orch.submit(artifact(s, "1.0.0"), {"type": "rolling", "replicas": 2}, ENV) for s in services]
    addresses = [orch.wait(d, 300).status.address for d in firsts]
    after_firsts = own.above_idle()
    total_s = args.step_seconds * args.steps
    traffic = start_traffic([f"{a}/" for a in addresses if a], args.rps, total_s * 3 + 120)
    canaries = [
        orch.submit(artifact(s, "2.0.0"), canary(args.steps, args.step_seconds, args.interval_ms), ENV)
        for s in services
    ]
    steady = steady_rate(total_s)
    results = [orch.wait(d, total_s * 3 + 300) for d in canaries]
    cpu_end = tree_cpu(os.getpid())
    own_above_idle = own.above_idle()
    counts = stop_traffic(traffic)
    return {
        "cpu_end": cpu_end,
        "own": {**own_above_idle, "after_first_revisions": after_firsts},
        "t_end": time.time(),
        "steady": steady,
        "succeeded": sum(r.status.phase is Phase.SUCCEEDED for r in results),
        "managed": sum(duration(journal, d) for d in [*firsts, *canaries]),
        "walls": [wall_breakdown(journal, d) for d in canaries],
        "failed_requests": sum(
            n for per_url in counts.values() for key, n in per_url.items() if _failed(key)
        ),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator import DeploymentOrchestrator

    folder = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    os.environ["ORCH_HOME"] = str(folder)
    warm = args.warm_runners if args.warm_runners >= 0 else args.services
    config = write_isolated_config(
        folder, (19600, 19799), (48000, 49999), namespace="orch-bench", concurrency={"warmRunners": warm}
    )
    start_ray()
    bare = idle_rate(args.idle_seconds)
    probes = IdleProbes(args.probes)
    ray_own = ray_processes()
    t_start, cpu_start = time.time(), tree_cpu(os.getpid())
    orch = DeploymentOrchestrator(config_path=config)
    orch.warm_up()
    time.sleep(5)  # every actor's start-up settles
    startup = (time.time() - t_start, tree_cpu(os.getpid()) - cpu_start)
    mine = ray_processes() - ray_own
    rest = at_rest(args.idle_seconds, ray_own, probes)
    baseline = rest["ray_idle_baseline_cores"]
    t0, cpu0 = time.time(), tree_cpu(os.getpid())
    own = OwnProcesses(ray_own, probes)
    journal = Journal(orch.journal_path)
    services = [f"svc-{i:02d}" for i in range(args.services)]
    wave = canary_wave(orch, journal, args, services, own)
    window = wave["t_end"] - t0
    cpu_used = wave["cpu_end"] - cpu0 - baseline * window
    with_startup = wave["cpu_end"] - cpu0 + startup[1] - bare * (window + startup[0])
    walls = wave["walls"]
    latency = rollback_latency(orch, journal, folder, min(args.step_seconds, 5.0))
    orch.shutdown()  # first: its supervisor would otherwise restart what the clean-up removes
    cleanup(orch, [*services, "rollback-probe"])
    return {
        "services": args.services,
        "warm_runners": warm,
        "steps": args.steps,
        "step_seconds": args.step_seconds,
        "analysis_interval_ms": args.interval_ms,
        "succeeded": wave["succeeded"],
        "cpu_overhead_fraction": wave["own"]["above_idle_cpu_s"] / wave["managed"],
        "session_cpu_overhead_fraction": cpu_used / wave["managed"],
        "cpu_overhead_fraction_with_startup": with_startup / wave["managed"],
        "wall_overhead_fraction": sum(w["overhead_s"] for w in walls) / sum(w["wall_s"] for w in walls),
        "rollback_latency_s": latency["rollback_latency_s"],
        "rollback": latency,
        "steady_state": {
            "cores_while_analysing": wave["steady"],
            "above_idle_per_deployment_second": (wave["steady"] - baseline) / args.services,
        },
        "own_processes": wave["own"],
        "cpu": {
            "window_s": window,
            "orchestrator_and_ray_cpu_s": wave["cpu_end"] - cpu0,
            "ray_alone_idle_cores": bare,
            "orchestrator_processes": len(mine),
            "at_rest": rest,
            "above_idle_cpu_s": cpu_used,
            "startup_cpu_s": startup[1],
            "startup_s": startup[0],
            "with_startup_above_ray_alone_cpu_s": with_startup,
            "managed_deployment_s": wave["managed"],
        },
        "wall": {"per_canary": walls, "mean_overhead_s": sum(w["overhead_s"] for w in walls) / len(walls)},
        "failed_requests": wave["failed_requests"],
    }


def _failed(key: str) -> bool:
    code = int(key.rsplit(":", 1)[1])
    return code == 0 or code >= 500


def cleanup(orch: Any, services: list[str]) -> None:
    platform: Any = create_platform(orch.config.platform("local"))
    for service in services:
        target = Target(service=service, environment=ENV)
        for revision in platform.list_revisions(target):
            platform.remove_revision(target, revision.revision)
        platform.router.remove_frontend(target)
    platform.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument(
        "--interval-ms",
        type=int,
        default=DEFAULT_ANALYSIS_INTERVAL_MS,
        help="the canaries' analysisInterval (default: the product's; each check costs CPU)",
    )
    parser.add_argument("--rps", type=float, default=8.0, help="requests per second per service")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--probes", type=int, default=4, help="idle Ray actors measuring Ray's own cost")
    parser.add_argument("--budget", type=float, default=0.002)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--warm-runners",
        type=int,
        default=-1,
        help="standby runners (default: one per service, so no admission waits; each idle one costs CPU)",
    )
    args = parser.parse_args()
    if args.quick:
        args.services, args.steps, args.step_seconds, args.idle_seconds, args.rps = 3, 2, 5.0, 5.0, 30.0
    result = run(args)
    result["budget"] = args.budget
    result["within_budget"] = (
        result["cpu_overhead_fraction"] <= args.budget and result["wall_overhead_fraction"] <= args.budget
    )
    name = "overhead-quick" if args.quick else "overhead"
    if args.interval_ms != DEFAULT_ANALYSIS_INTERVAL_MS:
        name += f"-interval-{args.interval_ms}ms"
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "cpu_overhead_fraction",
                    "session_cpu_overhead_fraction",
                    "cpu_overhead_fraction_with_startup",
                    "wall_overhead_fraction",
                    "rollback_latency_s",
                    "succeeded",
                    "within_budget",
                )
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
