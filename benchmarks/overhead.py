"""The orchestrator's overhead budget in full (issue 10 item 4), with a peer baseline (item 6), in one run.

Each repetition (a subprocess of its own, with its own Ray) measures CPU time, not wall time (the machine is
shared), and keeps every figure a ratio within that repetition:

1. Ray alone: the Ray session (GCS, raylet, agents, prestarted workers) at rest, before anything of ours
   starts, with the same Ray settings as the product (client/ray_settings.py): ``ray_floor_cores``.
2. The orchestrator starts (queen, six domain workers, the product's default ``warmRunners``); its start is
   reported (``startup``) but is once per cluster, not per deployment. At rest after it: ``resident_cores``
   (the session above Ray alone) and ``resident_pss_mb`` (the largest PSS of our processes).
3. The window: first revisions of every service, then one canary per service at once under live traffic, and
   meanwhile ``--trials`` canaries of another service that go bad while serving (rollback latency at the
   default analysis interval: from the first failing response the client sees until 100% of traffic is on
   the stable revision, read from HAProxy).
   ``full_cpu_overhead_fraction``: nothing subtracted but Ray alone: every process of the session (our actors
   with their idle cost, runners started and stopped in the window: a dead worker's CPU is in the raylet's
   reaped-children time), the extra CPU of Ray's own processes, the driver (this process above its own rate
   at step 1: an upper bound, it also does the sampling), and the HAProxy CPU our runtime API queries cause
   (connections counted from HAProxy's ``CumConns`` less its frontend's sessions, times the CPU per query
   calibrated on the same HAProxy), per managed deployment-second. Goal <= 0.005.
   ``above_floor_cpu_overhead_fraction``: the same less the idle floor of the processes the design requires
   at each moment (queen and six domain workers for the whole window, one runner per running deployment for
   its duration), priced by idle actors beside them (``--probes``). Goal <= 0.002.
   ``previous_cpu_overhead_fraction``: the figure the earlier benchmark reported (every process of ours above
   an idle actor each), for comparison.
4. The peer: benchmarks/peer_controller.py drives the same canaries (a new version) against the same HAProxy;
   ``peer_cpu_ratio`` = the orchestrator's full CPU per managed deployment-second of its canary phase over the
   peer's (its process and its HAProxy queries), per managed deployment-second.

Five repetitions; each figure is the worst of them, with min/max beside. Writes
benchmarks/results/overhead.json (commit, arguments, time); exits 1 when a deployment fails, a request fails
outside the bad revision, or a goal is missed.
    python3 benchmarks/overhead.py             # 10 services, 4 steps of 30 s, 10 trials, 5 repetitions
    python3 benchmarks/overhead.py --quick     # 3 services, 2 steps of 5 s, 2 trials, 1 repetition
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters import create_platform, remove_targets  # noqa: E402
from benchmarks.cpu import git_commit, process_cpu, start_local_ray  # noqa: E402
from engine.config import write_isolated_config  # noqa: E402
from engine.journal import Journal  # noqa: E402
from engine.models import DEFAULT_ANALYSIS_INTERVAL_MS, Artifact, Phase, Target  # noqa: E402
from engine.state import EventKind, StepKind  # noqa: E402

SAMPLE = REPO / "examples" / "sample_service.py"
ENV = "development"
PROBE_SERVICE = "rollback-probe"
DOMAIN_WORKERS = 6
GOALS = {
    "full_cpu_overhead_fraction": 0.005,
    "above_floor_cpu_overhead_fraction": 0.002,
    "resident_pss_mb": 60.0,
}
# Processes that are not the orchestrator's: the managed replicas, the routers, and this benchmark's clients.
FOREIGN_MARKERS = ("sample_service.py", "haproxy", "examples.traffic", "--prober", "peer_controller.py")
EXCLUDED: set[int] = set()  # the idle probes (priced separately)
RAY_OWN: set[int] = set()  # Ray's own worker processes before the orchestrator started


# ------------------------------------------------------------------------------------------ CPU accounting
def _foreign(process: psutil.Process) -> bool:
    try:
        line = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True
    return any(marker in line for marker in FOREIGN_MARKERS)


def session_cpu() -> float:
    """CPU seconds of the Ray session under this process (and the reaped children of each), but foreign
    processes and the probes."""
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        if process.pid in EXCLUDED or _foreign(process):
            continue
        total += process_cpu(process.pid)
    return total


def driver_cpu() -> float:
    """This process alone (its reaped children are the benchmark's own clients)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


def ray_actor_pids() -> set[int]:
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::"):
                found.add(process.pid)
        except psutil.NoSuchProcess:
            continue
    return found


class Sample:
    """The session, the driver and the probes at one moment."""

    def __init__(self, probes: set[int]) -> None:
        self.at = time.time()
        self.session = session_cpu()
        self.driver = driver_cpu()
        self.probes = sum(process_cpu(pid) for pid in probes) / max(1, len(probes))
        self.ours = {pid: process_cpu(pid) for pid in ray_actor_pids() - probes - RAY_OWN}


def rest(seconds: float, probes: set[int]) -> dict[str, float]:
    """Rates at rest: the session, the driver, one idle probe."""
    start = Sample(probes)
    time.sleep(seconds)
    end = Sample(probes)
    window = end.at - start.at
    return {
        "session_cores": (end.session - start.session) / window,
        "driver_cores": (end.driver - start.driver) / window,
        "idle_actor_cores": (end.probes - start.probes) / window,
    }


def settle(window_s: float, most_s: float = 300.0) -> None:
    """Waits until Ray's own start-up is over (its agents keep loading for a while on a loaded machine): the
    session's rate over two windows in a row agrees within 25%, or ``most_s`` passed. Ray alone measured
    earlier counts start-up work as its floor (a sanity run gave a negative overhead so)."""
    deadline = time.monotonic() + most_s
    previous = rest(window_s / 2, set())["session_cores"]
    while time.monotonic() < deadline:
        now = rest(window_s / 2, set())["session_cores"]
        if abs(now - previous) <= 0.25 * max(now, previous, 1e-3):
            return
        previous = now


def pss_mb(pids: set[int]) -> dict[str, float]:
    found = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            found[f"{process.cmdline()[0]}:{pid}"] = process.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
            continue
    return found


class IdleProbes:
    """Idle Ray actors beside ours for the whole repetition: the price of a process the design requires."""

    def __init__(self, count: int) -> None:
        import ray

        class Probe:
            def ready(self) -> int:
                return os.getpid()

        actor: Any = ray.remote(num_cpus=0)(Probe)
        self.handles = [actor.remote() for _ in range(count)]
        self.pids = set(ray.get([h.ready.remote() for h in self.handles], timeout=300))
        EXCLUDED.update(self.pids)


# ------------------------------------------------------------------------------------------ HAProxy
def _cli(socket_path: str, command: str) -> str:
    from adapters.haproxy import run_cli

    return run_cli(socket_path, command)


def cli_connections(socket_path: str) -> int:
    """Runtime API connections HAProxy accepted so far: all its connections less its frontend's sessions
    (this reading is one of them)."""
    text = _cli(socket_path, "show info;show stat fe 1 -1")
    cum = next(int(line.split(":")[1]) for line in text.splitlines() if line.startswith("CumConns:"))
    rows = [line for line in text.splitlines() if line.startswith("fe,FRONTEND,")]
    header = next(line for line in text.splitlines() if line.startswith("# pxname")).lstrip("# ").split(",")
    sessions = int(dict(zip(header, rows[0].split(","), strict=False))["stot"]) if rows else 0
    return cum - sessions


class Routers:
    """The services' HAProxy processes: their sockets and pids, and how many queries they answered."""

    def __init__(self, orch: Any, services: list[str]) -> None:
        platform: Any = create_platform(orch.config.platform("local"))
        router = platform.router
        self.states = {s: router._read(Target(service=s, environment=ENV)) for s in services}
        self.readings = 0

    def connections(self) -> int:
        self.readings += 1
        return sum(cli_connections(state.socket) for state in self.states.values() if state)

    def socket(self, service: str) -> str:
        state = self.states[service]
        if state is None:
            raise RuntimeError(f"no router for {service}")
        return str(state.socket)

    def calibrate(self, service: str, queries: int) -> float:
        """CPU seconds HAProxy spends per runtime API query like the runners' (statistics of the servers in
        use, or their state), on one of these HAProxy processes, above its rate just before."""
        state = self.states[service]
        assert state is not None
        pid, path = state.pid, str(state.socket)
        quiet_start, cpu0 = time.time(), process_cpu(pid)
        time.sleep(3.0)
        rate = (process_cpu(pid) - cpu0) / (time.time() - quiet_start)
        started, cpu1 = time.time(), process_cpu(pid)
        for index in range(queries):
            command = "show servers state be" if index % 2 else "show stat be 4 1;show stat be 4 2"
            _cli(path, command)
        elapsed = time.time() - started
        return max(0.0, process_cpu(pid) - cpu1 - rate * elapsed) / queries


# ------------------------------------------------------------------------------------------ deployments
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


def wall_overhead(journal: Journal, deployment_ids: list[str]) -> float:
    """The earlier benchmark's wall figure: each canary's wall time less its configured waits (analysis
    windows) and the platform's own work (platform calls, start-up until ready), over the wall time."""
    walls = overheads = 0.0
    for deployment_id in deployment_ids:
        state = journal.state(deployment_id)
        waits = platform = 0.0
        for event in journal.events(deployment_id):
            if event.kind is EventKind.PLANNED:
                platform += float(event.data.get("platform_s", 0.0))
            if event.kind is not EventKind.STEP_COMPLETED:
                continue
            step = state.plan[int(event.data["index"])]
            if step.kind in (StepKind.ANALYZE, StepKind.HOLD, StepKind.VALIDATE):
                waits += step.duration_ms / 1000
            elif step.kind is StepKind.DEPLOY:
                platform += float(event.data["elapsed_s"])
            else:
                platform += float(event.data["platform_s"])
        wall = (state.finished_at or time.time()) - state.submitted_at
        walls, overheads = walls + wall, overheads + wall - waits - platform
    return overheads / walls


def duration(journal: Journal, deployment_id: str) -> float:
    state = journal.state(deployment_id)
    return (state.finished_at or time.time()) - state.submitted_at


def start_client(extra: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)


def stop_client(process: subprocess.Popen[str]) -> dict[str, Any]:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {}


def failed_outside(counts: dict[str, dict[str, int]], bad_versions: set[str]) -> int:
    """Failed requests (5xx or no answer) not answered by a revision that was made bad on purpose."""
    failed = 0
    for per_url in counts.values():
        for key, n in per_url.items():
            version, code = key.rsplit(":", 1)
            if (int(code) == 0 or int(code) >= 500) and version not in bad_versions:
                failed += n
    return failed


# ------------------------------------------------------------------------------------------ rollback trials
def prober(url: str, folder: str, rps: float) -> int:
    """A client of the probe service (a subprocess: not the orchestrator): for each trial armed in
    ``folder/armed`` it records the first failing answer it sees and when HAProxy has 100% on stable."""
    from examples.traffic import TrafficGenerator

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    generator = TrafficGenerator(url, rps=rps, threads=2, max_seconds=3600)
    recorded: set[str] = set()
    sent = generator.snapshot()
    generator.start()
    armed_file, results = Path(folder) / "armed", Path(folder) / "trials.jsonl"
    while not stop.wait(0.005):
        trial = armed_file.read_text().strip() if armed_file.exists() else ""
        if not trial or trial in recorded:
            continue
        now = generator.snapshot()
        if TrafficGenerator.failed(now) > TrafficGenerator.failed(sent):
            first_fail = time.time()
            switched, queries = _until_stable(Path(folder) / "stable-socket", stop)
            row = {"trial": trial, "first_fail": first_fail, "switched": switched, "queries": queries}
            with results.open("a") as out:
                out.write(json.dumps(row) + "\n")
            recorded.add(trial)
        sent = now
    counts = generator.stop()
    print(json.dumps({url: {f"{v}:{s}": n for (v, s), n in counts.items()}}), flush=True)
    return 0


def _until_stable(socket_file: Path, stop: threading.Event) -> tuple[float | None, int]:
    """The moment every server in rotation is the stable revision's (read from the runtime API), and how
    many queries that took (they are the benchmark's, not the orchestrator's)."""
    from adapters.haproxy import parse_servers_state

    socket_path, stable_port = socket_file.read_text().split()
    deadline, queries = time.monotonic() + 120, 0
    while time.monotonic() < deadline and not stop.is_set():
        queries += 1
        servers = parse_servers_state(_cli(socket_path, "show servers state be"))
        live = [r for r in servers.values() if not int(r.get("srv_admin_state", "0")) & 1]
        weighted = [r for r in live if int(r.get("srv_uweight", "0")) > 0]
        if weighted and all(r.get("srv_port") in stable_port.split(",") for r in weighted):
            return time.time(), queries
        time.sleep(0.02)
    return None, queries


def rollback_trials(
    orch: Any, journal: Journal, folder: Path, count: int, step_s: float
) -> list[dict[str, Any]]:
    """``count`` canaries of the probe service that serve well, then fail every request, one after another."""
    outcomes = []
    for index in range(count):
        error_file = folder / f"trial-{index}.fail"
        candidate = f"2.0.{index}"
        bad = artifact(PROBE_SERVICE, candidate, str(error_file))
        deployment_id = orch.submit(bad, canary(4, step_s), ENV)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = journal.state(deployment_id)
            if not state.active or state.status().weights.get(candidate.replace(".", "-"), 0) > 0:
                break
            time.sleep(0.25)
        time.sleep(2.0)  # the candidate serves well for a while first
        (folder / "armed").write_text(str(index))
        error_file.write_text("fail")
        result = orch.wait(deployment_id, 180)
        outcomes.append({"deployment_id": deployment_id, "phase": result.status.phase.value, "trial": index})
    return outcomes


def trial_latencies(folder: Path, outcomes: list[dict[str, Any]]) -> list[float | None]:
    path = folder / "trials.jsonl"
    seen = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            seen[int(row["trial"])] = row
    latencies: list[float | None] = []
    for outcome in outcomes:
        row = seen.get(outcome["trial"])
        if row is None or row["switched"] is None:
            latencies.append(None)
        else:
            latencies.append(row["switched"] - row["first_fail"])
    return latencies


# ------------------------------------------------------------------------------------------ one repetition
def repetition(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator import DeploymentOrchestrator

    folder = Path(tempfile.mkdtemp(prefix="orch-overhead-"))
    os.environ["ORCH_HOME"] = str(folder)
    config = write_isolated_config(folder, (19600, 19799), (48000, 49999), namespace="orch-bench")
    start_local_ray(args.ray_defaults, namespace="orch-bench")
    settle(args.idle_seconds)
    bare = rest(args.idle_seconds, set())  # Ray alone
    probes = IdleProbes(args.probes)
    RAY_OWN.update(ray_actor_pids() - probes.pids)
    started = Sample(probes.pids)
    orch = DeploymentOrchestrator(config_path=config)
    orch.warm_up()
    time.sleep(5)  # every actor's start-up settles
    up = Sample(probes.pids)
    at_rest = rest(args.idle_seconds, probes.pids)
    resident = ray_actor_pids() - RAY_OWN - probes.pids
    result: dict[str, Any] = {
        "ray_floor_cores": bare["session_cores"],
        "resident_cores": at_rest["session_cores"] - bare["session_cores"],
        "resident_processes": len(resident),
        "resident_pss_mb_each": pss_mb(resident),
        "idle_actor_cores": at_rest["idle_actor_cores"],
        "startup": {"cpu_s": up.session - started.session, "s": up.at - started.at},
        "bare": bare,
        "at_rest": at_rest,
    }
    try:
        result |= measured_window(orch, folder, args, bare, probes)
    finally:
        orch.shutdown()  # first: its supervisor would otherwise restart what the clean-up removes
        cleanup_repetition(orch, folder, args)
    return result


def measured_window(
    orch: Any, folder: Path, args: argparse.Namespace, bare: dict[str, float], probes: IdleProbes
) -> dict[str, Any]:
    journal = Journal(orch.journal_path)
    services = [f"svc-{i:02d}" for i in range(args.services)]
    everyone = [*services, PROBE_SERVICE]
    start = Sample(probes.pids)
    firsts = [orch.submit(artifact(s, "1.0.0"), {"type": "rolling", "replicas": 2}, ENV) for s in everyone]
    first_results = [orch.wait(d, 600) for d in firsts]
    addresses = {s: r.status.address for s, r in zip(everyone, first_results, strict=True)}
    routers = Routers(orch, everyone)
    connections0 = routers.connections()
    (folder / "stable-socket").write_text(
        f"{routers.socket(PROBE_SERVICE)} {stable_ports(orch, PROBE_SERVICE, '1-0-0')}"
    )
    urls = [f"{addresses[s]}/" for s in services]
    traffic = start_client(["-m", "examples.traffic", *urls, "--rps", str(args.rps), "--seconds", "3600"])
    probe = start_client([__file__, "--prober", f"{addresses[PROBE_SERVICE]}/", str(folder), "--rps", "40"])
    time.sleep(2)
    canary_start = Sample(probes.pids)
    connections1 = routers.connections()
    wave = canary_wave(orch, journal, folder, args, services, probes)
    end = Sample(probes.pids)
    connections2 = routers.connections()
    prober_counts = stop_client(probe)
    peer = peer_phase(folder, args, routers, services)
    per_query = routers.calibrate(services[0], args.calibration_queries)
    traffic_counts = stop_client(traffic)
    # Our queries: the connections HAProxy accepted less the benchmark's readings (one per router each) and
    # the prober's.
    prober_queries = prober_query_count(folder)
    ours = (connections2 - connections0) - 2 * len(everyone) - prober_queries
    canary_ours = (connections2 - connections1) - len(everyone) - prober_queries
    managed = {
        "first_revisions": sum(duration(journal, d) for d in firsts),
        "canaries": sum(duration(journal, d) for d in wave["canaries"]),
        "trials": sum(duration(journal, t["deployment_id"]) for t in wave["trials"]),
    }
    figures = {
        "window": window_cpu(bare, start, end, per_query, ours),
        "canary_phase": window_cpu(bare, canary_start, end, per_query, canary_ours),
        "managed_deployment_s": managed,
    }
    bad_versions = {f"2.0.{i}" for i in range(args.trials)}
    facts = {
        "haproxy_cpu_per_query_s": per_query,
        "succeeded_first": sum(r.status.phase is Phase.SUCCEEDED for r in first_results),
        "failed_requests_outside_bad_revision": failed_outside(traffic_counts, set())
        + failed_outside(prober_counts, bad_versions),
        "peer": peer,
        **{k: v for k, v in wave.items() if k != "canaries"},
    }
    return finish(figures, facts)


def canary_wave(
    orch: Any,
    journal: Journal,
    folder: Path,
    args: argparse.Namespace,
    services: list[str],
    probes: IdleProbes,
) -> dict[str, Any]:
    """One canary per service at once, and the rollback trials meanwhile; our processes' PSS half-way."""
    total_s = args.step_seconds * args.steps
    canaries = [
        orch.submit(artifact(s, "2.0.0"), canary(args.steps, args.step_seconds), ENV) for s in services
    ]
    pss_busy: dict[str, float] = {}
    sampler = threading.Timer(
        total_s / 2, lambda: pss_busy.update(pss_mb(ray_actor_pids() - probes.pids - RAY_OWN))
    )
    sampler.start()
    trials = rollback_trials(orch, journal, folder, args.trials, min(args.step_seconds, 30.0))
    results = [orch.wait(d, total_s * 3 + 600) for d in canaries]
    sampler.cancel()
    return {
        "canaries": canaries,
        "succeeded_canaries": sum(r.status.phase is Phase.SUCCEEDED for r in results),
        "previous_wall_overhead_fraction": wall_overhead(journal, canaries),
        "trials": trials,
        "rollback_latencies_s": trial_latencies(folder, trials),
        "resident_pss_mb_each_busy": pss_busy,
    }


def prober_query_count(folder: Path) -> int:
    """The runtime API queries the prober made while waiting for each switch (not the orchestrator's)."""
    path = folder / "trials.jsonl"
    if not path.exists():
        return 0
    return sum(int(json.loads(line)["queries"]) for line in path.read_text().splitlines())


def stable_ports(orch: Any, service: str, revision: str) -> str:
    platform: Any = create_platform(orch.config.platform("local"))
    target = Target(service=service, environment=ENV)
    ports = [r.address.rsplit(":", 1)[1] for r in platform.backend.list_replicas(target, revision)]
    platform.close()
    return ",".join(ports)


def window_cpu(
    bare: dict[str, float], start: Sample, end: Sample, per_query: float, queries: int
) -> dict[str, float]:
    """Everything the orchestrator caused between two samples, nothing subtracted but Ray alone; and the idle
    price of one actor process over the same window."""
    window = end.at - start.at
    session = end.session - start.session
    driver = max(0.0, end.driver - start.driver - bare["driver_cores"] * window)
    ray_alone = bare["session_cores"] * window
    haproxy = per_query * max(0, queries)
    previous = sum(cpu - start.ours.get(pid, 0.0) for pid, cpu in end.ours.items())
    previous -= (end.probes - start.probes) * len(start.ours)
    return {
        "window_s": window,
        "session_cpu_s": session,
        "ray_alone_cpu_s": ray_alone,
        "driver_cpu_s": driver,
        "haproxy_queries": queries,
        "haproxy_cpu_s": haproxy,
        "full_cpu_s": session - ray_alone + driver + haproxy,
        "idle_actor_cpu_s": end.probes - start.probes,
        "previous_method_cpu_s": previous,
    }


def finish(figures: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    window, phase, managed = figures["window"], figures["canary_phase"], figures["managed_deployment_s"]
    managed_s = sum(managed.values())
    # The design's floor: queen and domain workers all along, one runner per running deployment.
    floor = window["idle_actor_cpu_s"] * (1 + DOMAIN_WORKERS + managed_s / window["window_s"])
    phase_managed = managed["canaries"] + managed["trials"]
    orch_rate = phase["full_cpu_s"] / phase_managed
    peer = facts["peer"]
    peer_cpu = peer["cpu_s"] + facts["haproxy_cpu_per_query_s"] * peer["cli_connections"]
    peer_managed = sum(c["duration_s"] for c in peer["canaries"])
    latencies = [x for x in facts["rollback_latencies_s"] if x is not None]
    return {
        "full_cpu_overhead_fraction": window["full_cpu_s"] / managed_s,
        "above_floor_cpu_overhead_fraction": (window["full_cpu_s"] - floor) / managed_s,
        "previous_cpu_overhead_fraction": window["previous_method_cpu_s"] / managed_s,
        "peer_cpu_ratio": orch_rate / (peer_cpu / peer_managed),
        "rollback_latency_p50_s": statistics.median(latencies) if latencies else None,
        "rollback_latency_p95_s": _p95(latencies) if latencies else None,
        "design_floor_cpu_s": floor,
        "figures": figures,
        "peer_cpu_s_with_haproxy": peer_cpu,
        "peer_managed_deployment_s": peer_managed,
        **facts,
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def peer_phase(
    folder: Path, args: argparse.Namespace, routers: Routers, services: list[str]
) -> dict[str, Any]:
    """The same canaries (a new version) driven by the peer controller against the same HAProxy."""
    plan = {
        "services": [{"service": s, "socket": routers.socket(s)} for s in services],
        "canary": canary(args.steps, args.step_seconds)["canary"],
        "replicas": 2,
        "version": "3.0.0",
        "sample": str(SAMPLE),
        "timeout_s": args.step_seconds * args.steps * 3 + 300,
    }
    plan_file = folder / "peer-plan.json"
    plan_file.write_text(json.dumps(plan))
    command = [sys.executable, str(REPO / "benchmarks" / "peer_controller.py"), str(plan_file)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=plan["timeout_s"] + 120)
    if out.returncode != 0:
        raise RuntimeError(f"the peer controller failed: {out.stderr[-2000:]}")
    peer: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    (folder / "peer.json").write_text(json.dumps(peer))
    return peer


def cleanup_repetition(orch: Any, folder: Path, args: argparse.Namespace) -> None:
    """The peer's replicas, then every service's revisions and router."""
    peer_file = folder / "peer.json"
    if peer_file.exists():
        for pid in json.loads(peer_file.read_text())["replica_pids"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    cleanup(orch, [*(f"svc-{i:02d}" for i in range(args.services)), PROBE_SERVICE])


def cleanup(orch: Any, services: list[str]) -> None:
    """Every revision and router of ``services`` (also used by benchmarks/self_heal.py and fleet.py)."""
    remove_targets(orch.config.platform("local"), [Target(service=s, environment=ENV) for s in services])


def cpu_by_pid(pids: set[int]) -> dict[int, float]:
    """CPU seconds of each process with its reaped children; 0 once gone (benchmarks/self_heal.py)."""
    return {pid: process_cpu(pid) for pid in pids}


# ------------------------------------------------------------------------------------------ the run
HEADLINE = (
    "full_cpu_overhead_fraction",
    "above_floor_cpu_overhead_fraction",
    "previous_cpu_overhead_fraction",
    "ray_floor_cores",
    "resident_cores",
    "resident_pss_mb",
    "rollback_latency_p50_s",
    "rollback_latency_p95_s",
    "peer_cpu_ratio",
    "previous_wall_overhead_fraction",
)


def problems_of(rep: dict[str, Any], args: argparse.Namespace) -> list[str]:
    found = []
    expected = args.services + 1
    if rep["succeeded_first"] != expected:
        found.append(f"{expected - rep['succeeded_first']} first revision(s) failed")
    if rep["succeeded_canaries"] != args.services:
        found.append(f"{args.services - rep['succeeded_canaries']} canary(ies) failed")
    bad = [t for t in rep["trials"] if t["phase"] != Phase.ROLLED_BACK.value]
    if bad:
        found.append(f"{len(bad)} bad canary(ies) not rolled back: {bad}")
    if None in rep["rollback_latencies_s"]:
        found.append("a trial's switch to stable was not seen")
    if rep["failed_requests_outside_bad_revision"]:
        failed = rep["failed_requests_outside_bad_revision"]
        found.append(f"{failed} request(s) failed outside the bad revision")
    peer_bad = [c for c in rep["peer"]["canaries"] if c["outcome"] != "succeeded"]
    if peer_bad:
        found.append(f"the peer's canaries did not all succeed: {peer_bad}")
    return found


def aggregate(reps: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    for rep in reps:
        busy = rep.get("resident_pss_mb_each_busy") or {}
        rep["resident_pss_mb"] = max([*rep["resident_pss_mb_each"].values(), *busy.values()])
    figures: dict[str, Any] = {}
    spread: dict[str, Any] = {}
    for key in HEADLINE:
        values = [rep[key] for rep in reps if rep.get(key) is not None]
        figures[key] = max(values) if values else None  # the worst repetition
        spread[key] = {"min": min(values), "max": max(values), "all": values} if values else None
    misses = [f"{k} {figures[k]:.4g} > goal {goal}" for k, goal in GOALS.items() if figures[k] > goal]
    failures = [p for rep in reps for p in problems_of(rep, args)]
    return {
        **figures,
        "goals": GOALS,
        "goals_missed": misses,
        "failures": failures,
        "spread": spread,
        "repetitions": reps,
    }


def one_repetition(args: argparse.Namespace) -> int:
    result = repetition(args)
    print(json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=10, help="rollback trials per repetition")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--rps", type=float, default=8.0, help="requests per second per service")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--probes", type=int, default=4, help="idle Ray actors pricing a required process")
    parser.add_argument("--calibration-queries", type=int, default=2000)
    parser.add_argument("--ray-defaults", action="store_true", help="Ray without the orchestrator's settings")
    parser.add_argument("--quick", action="store_true", help="a sanity run, not the budget")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prober", nargs=2, metavar=("URL", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prober:
        return prober(args.prober[0], args.prober[1], args.rps)
    if args.quick:
        args.services, args.steps, args.step_seconds, args.idle_seconds = 3, 2, 5.0, 8.0
        args.trials, args.repetitions, args.calibration_queries = 2, 1, 500
    if args.one:
        return one_repetition(args)
    name = "overhead-quick" if args.quick else ("overhead-ray-defaults" if args.ray_defaults else "overhead")
    out_path = REPO / "benchmarks" / "results" / f"{name}.json"
    reps: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    measured = git_commit()  # at the start: the code measured, whatever is committed during the run
    for index in range(args.repetitions):
        command = [sys.executable, __file__, "--one", *sys.argv[1:]]
        out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            print(f"repetition {index} failed:\n{out.stderr[-4000:]}", file=sys.stderr)
            return 1
        reps.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"repetition {index}: " + json.dumps({k: reps[-1].get(k) for k in HEADLINE}), flush=True)
        result = {"commit": measured, "args": vars(args), "time": time.time(), **aggregate(reps, args)}
        result["repetitions_done"] = len(reps)  # written after each one: a cut-short run keeps what it has
        out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in (*HEADLINE, "goals_missed", "failures")}, indent=2))
    print(f"written to {out_path}")
    return 1 if result["goals_missed"] or result["failures"] or len(reps) < args.repetitions else 0


if __name__ == "__main__":
    sys.exit(main())
