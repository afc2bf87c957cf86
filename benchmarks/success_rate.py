"""Success rate: good and bad canaries under live traffic, with actors killed along the way.

``--count`` canaries (local platform, examples/sample_service.py) over ``--services`` services that each
run a first revision (set up before, not counted), all submitted at once through the driver API; each
service's deployments run one after the other (one active per target), up to 10 services at once. Of them,
``--bad`` are bad, of five kinds in turn: ``error_rate`` (ERROR_RATE=0.3), ``latency`` (LATENCY_MS, above
the failure threshold), ``crash`` (a command that exits at once), ``health`` (HEALTH_FAIL=1: /health answers
503) and ``slow_start`` (STARTUP_DELAY_MS beyond the progress deadline). During ``--kills`` of them an actor
is SIGKILLed, in turn the deployment's runner, the queen and a domain worker (DO-003 canary and DO-004
rollback alternately); its pid comes from Ray's actor table (the GCS state API). A kill lands while the
candidate has traffic, or (for a candidate that never becomes ready) a few seconds into its deploy step.

An outside client sends ``--rps`` requests per second to each service for the whole run and counts every
answer by the version that answered (the sample service's X-Version header) and its status.

Goals (exit status 1 when one is missed):
- correct_share >= 99%: a good candidate succeeded; a bad one was rolled back, or failed without ever
  getting traffic; in both cases no traffic is left on it;
- availability >= 99.9%: requests that did not fail, out of all but the bad revisions' own errors (a 5xx
  answered by a bad revision). A connection failure or a 5xx from the router (no version) or from a good
  revision counts against us;
- zombies == 0: deployments not terminal at the end, or whose admission-to-end time passed their bound (the
  strategy's windows and deadlines, plus two minutes for actor restarts);
- lost == 0: every id the driver returned is in the journal with exactly one terminal event.
Also checked: never more than the concurrency limit running; each service ends on its last good revision.

Writes benchmarks/results/success_rate.json (commit, arguments, time, figures, per-deployment rows).
    python3 benchmarks/success_rate.py                                   # 100 canaries, 30 bad, 20 kills
    python3 benchmarks/success_rate.py --count 10 --bad 3 --kills 2 --services 5   # the CI short form
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import (
    ENV,
    Timeline,
    port_range,
    start_orchestrator,
    stop_orchestrator,
    write_result,
)

from adapters import create_platform
from engine.journal import Journal
from engine.models import Artifact, Phase, Target
from engine.state import DeploymentState, EventKind, StepKind
from examples.quickstart import sample_artifact
from examples.traffic import TrafficGenerator

BAD_KINDS = ("error_rate", "latency", "crash", "health", "slow_start")
NEVER_READY = frozenset({"crash", "health", "slow_start"})
KILL_ROTATION = ("runner", "queen", "worker")
WORKERS = ("DO-003:canary", "DO-004:rollback")
GOALS = {"correct_share_min": 0.99, "availability_min": 0.999, "zombies_max": 0, "lost_max": 0}
LATENCY_MS = 3000  # bad latency; the failure threshold is 2000 ms at p95
RESTART_SLACK_S = 120.0
POLL_S = 0.25


@dataclass
class Planned:
    index: int
    service: str
    version: str
    kind: str  # "good" or one of BAD_KINDS
    kill: str | None  # "runner", "queen", "worker" or None
    deployment_id: str = ""
    killed: dict[str, Any] = field(default_factory=dict)


def layout(args: argparse.Namespace) -> list[Planned]:
    """Which deployments are bad (five kinds in turn) and which see a kill (three actors in turn)."""
    rng = random.Random(args.seed)
    bad = sorted(rng.sample(range(args.count), args.bad))
    kills = sorted(rng.sample(range(args.count), args.kills))
    kinds = {index: BAD_KINDS[n % len(BAD_KINDS)] for n, index in enumerate(bad)}
    victims = {index: KILL_ROTATION[n % len(KILL_ROTATION)] for n, index in enumerate(kills)}
    return [
        Planned(i, f"sr-{i % args.services:02d}", f"2.{i}.0", kinds.get(i, "good"), victims.get(i))
        for i in range(args.count)
    ]


def candidate(plan: Planned, args: argparse.Namespace) -> Artifact:
    if plan.kind == "crash":
        return Artifact(
            name=plan.service, version=plan.version, command=[sys.executable, "-c", "raise SystemExit(3)"]
        )
    settings = {
        "latency": {"LATENCY_MS": str(LATENCY_MS)},
        "health": {"HEALTH_FAIL": "1"},
        "slow_start": {"STARTUP_DELAY_MS": str(int((args.progress_deadline + 60) * 1000))},
    }.get(plan.kind, {})
    error_rate = 0.3 if plan.kind == "error_rate" else 0.0
    return sample_artifact(plan.version, error_rate, plan.service, **settings)


def canary(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "type": "canary",
        "replicas": 2,
        "progressDeadline": int(args.progress_deadline * 1000),
        "canary": {
            "initialTrafficPercentage": 20,
            "stepPercentage": 30,
            "maxSteps": 2,
            "stepDuration": int(args.step_seconds * 1000),
            "minRequestCount": 5,
            "onInconclusive": "fail",  # too little traffic ends the deployment rather than pausing it
            "successThreshold": {"errorRate": 1, "responseTime": 1000},
            "failureThreshold": {"errorRate": 5, "responseTime": 2000, "consecutiveFailures": 3},
        },
    }


def bound_s(args: argparse.Namespace) -> float:
    """The longest a deployment may take from admission to its end: every window extended and failed
    short of the limit, every deploy step and the rollback at their deadline, plus actor restarts."""
    windows = 2 * args.step_seconds * 3 * 3  # 2 steps, 1 + 2 extensions, 3 windows before a rollback
    deadlines = 3 * args.progress_deadline  # candidate, promotion, rollback
    return windows + deadlines + RESTART_SLACK_S


# ---------------------------------------------------------------------------------------------- kills
class Killer:
    """Fires each planned kill when its deployment gets there, by SIGKILL to the actor's process."""

    def __init__(self, orch: Any, plans: list[Planned]) -> None:
        self.orch = orch
        self.journal = Journal(orch.journal_path)  # its own connection: it reads from its own thread
        self.pending = [p for p in plans if p.kill]
        self.rotation = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._fire_all()
        except Exception as error:  # recorded: a kill that did not fire is reported, never silently lost
            for plan in self.pending:
                plan.killed = {"actor": plan.kill, "error": f"the killer stopped: {error!r}"}

    def _fire_all(self) -> None:
        while self.pending and not self.stop.is_set():
            for plan in list(self.pending):
                state = self.journal.state(plan.deployment_id)
                if not state.active:
                    plan.killed = {"missed": f"ended {state.phase().value} before its kill point"}
                    self.pending.remove(plan)
                elif _kill_point(state, plan):
                    plan.killed = self._kill(plan, state)
                    self.pending.remove(plan)
                    self.stop.wait(2.0)  # one actor restart at a time
            self.stop.wait(POLL_S)

    def _kill(self, plan: Planned, state: DeploymentState) -> dict[str, Any]:
        import ray

        name = state.runner if plan.kill == "runner" else None
        if plan.kill == "worker":
            name = WORKERS[self.rotation % len(WORKERS)]
            self.rotation += 1
        try:
            handle = ray.get_actor(name, namespace=self.orch.namespace) if name else self.orch.queen
            pid = actor_pid(handle._actor_id.hex())
            os.kill(pid, signal.SIGKILL)
        except (ValueError, ProcessLookupError, RuntimeError) as error:
            return {"actor": plan.kill, "name": name or "queen", "error": str(error)}
        step = state.current_step()
        return {
            "actor": plan.kill,
            "name": name or "queen",
            "pid": pid,
            "at": time.time(),
            "step": step.label if step else None,
            "weights": state.weights,
        }


def _kill_point(state: DeploymentState, plan: Planned) -> bool:
    if state.admitted_at is None or not state.planned or state.step_started_at is None:
        return False
    if plan.kind in NEVER_READY:
        return time.time() - state.admitted_at >= 3.0
    step = state.current_step()
    on_traffic = state.weights.get(state.candidate_revision or "", 0) > 0
    return on_traffic or (step is not None and step.kind is StepKind.ANALYZE)


def actor_pid(actor_id: str) -> int:
    """The pid of a live actor, from the GCS actor table; checked to be a Ray worker process."""
    from ray._private import state as ray_state

    info = ray_state.actors(actor_id=actor_id)
    pid = int(info.get("Pid") or 0) if info.get("State") == "ALIVE" else 0
    if pid <= 0:
        raise RuntimeError(f"actor {actor_id} is not alive ({info.get('State')})")
    title = " ".join(psutil.Process(pid).cmdline()[:1])
    if not title.startswith("ray::"):
        raise RuntimeError(f"pid {pid} of actor {actor_id} is not a Ray worker ({title!r})")
    return pid


# ---------------------------------------------------------------------------------------------- the run
def first_revisions(orch: Any, services: list[str], timeout_s: float) -> dict[str, str]:
    """Each service's stable revision 1.0.0 (not counted); returns its address."""
    ids = {
        s: orch.submit(sample_artifact("1.0.0", service=s), {"type": "rolling", "replicas": 2}, ENV)
        for s in services
    }
    addresses = {}
    for service, deployment_id in ids.items():
        result = orch.wait(deployment_id, timeout_s)
        if not result.success or not result.status.address:
            raise RuntimeError(f"the first revision of {service} did not go live: {result.status}")
        addresses[service] = result.status.address
    return addresses


def wait_terminal(journal: Journal, plans: list[Planned], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(not journal.state(p.deployment_id).active for p in plans):
            return
        time.sleep(1.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    plans = layout(args)
    services = sorted({p.service for p in plans})
    orch, folder = start_orchestrator("success", args.frontend_ports, args.replica_ports)
    journal = Journal(orch.journal_path)
    traffic: dict[str, TrafficGenerator] = {}
    killer: Killer | None = None
    try:
        addresses = first_revisions(orch, services, args.timeout)
        for service, address in addresses.items():
            traffic[service] = TrafficGenerator(
                address + "/", rps=args.rps, threads=4, max_seconds=args.timeout + 600
            ).start()
        started = time.time()
        strategy = canary(args)
        for plan in plans:
            plan.deployment_id = orch.submit(candidate(plan, args), dict(strategy), ENV)
        killer = Killer(orch, plans)
        killer.thread.start()
        wait_terminal(journal, plans, args.timeout)
        ended = time.time()
        killer.stop.set()
        killer.thread.join(timeout=30)
        time.sleep(2.0)  # the client keeps going a little after the last deployment ended
        counts = {service: generator.stop() for service, generator in traffic.items()}
        live = live_weights(orch, services)
        failures = {service: generator.failures for service, generator in traffic.items()}
        limit = orch.config.concurrency.max_concurrent_deployments
        result = evaluate(args, journal, plans, counts, live, limit, failures)
        result["duration_s"] = ended - started
    finally:
        for generator in traffic.values():
            generator.stop()
        if killer is not None:
            killer.stop.set()
            killer.journal.close()
        journal.close()
        stop_orchestrator(orch, services)
    result["orch_home"] = str(folder)
    return result


def live_weights(orch: Any, services: list[str]) -> dict[str, dict[str, int]]:
    """What each service's router sends where, at the end (read from the platform, not the journal)."""
    platform: Any = create_platform(orch.config.platform("local"))
    try:
        return {
            s: {
                r: w for r, w in platform.traffic(Target(service=s, environment=ENV)).weights.items() if w > 0
            }
            for s in services
        }
    finally:
        platform.close()


# ---------------------------------------------------------------------------------------------- judging
def row(plan: Planned, journal: Journal, timeline: Timeline, bound: float) -> dict[str, Any]:
    """One deployment's outcome and whether it is the right one."""
    state = journal.state(plan.deployment_id)
    revision = state.request.artifact.revision
    events = timeline.events.get(plan.deployment_id, [])
    had_traffic = any(
        e.kind is EventKind.WEIGHTS_SET and int(e.data.get("weights", {}).get(revision, 0)) > 0
        for e in events
    )
    left_on_it = state.weights.get(revision, 0)
    outcome = state.phase()
    if plan.kind == "good":
        correct = outcome is Phase.SUCCEEDED and left_on_it == 100
    else:
        ended_right = outcome is Phase.ROLLED_BACK or (outcome is Phase.FAILED and not had_traffic)
        correct = ended_right and left_on_it == 0
    took = (state.finished_at or time.time()) - (state.admitted_at or state.submitted_at)
    return {
        "index": plan.index,
        "deployment_id": plan.deployment_id,
        "service": plan.service,
        "version": plan.version,
        "kind": plan.kind,
        "outcome": outcome.value,
        "correct": correct,
        "had_traffic": had_traffic,
        "message": state.message[:300],
        "admitted_to_end_s": round(took, 3),
        "zombie": state.active or took > bound,
        "kill": plan.killed or None,
    }


def availability(
    plans: list[Planned],
    counts: dict[str, Counter[tuple[str, int]]],
    failures: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The outside client's view: failed requests against us, and what the first ones of each service were
    (``failures``: TrafficGenerator.failures by service)."""
    failures = failures or {}
    bad_versions = {p.version for p in plans if p.kind != "good"}
    merged: Counter[tuple[str, int]] = Counter()
    for service_counts in counts.values():
        merged.update(service_counts)
    total = sum(merged.values())
    bad_own = sum(n for (v, s), n in merged.items() if v in bad_versions and s >= 500)
    against_us = {
        f"{v}:{s}": n for (v, s), n in merged.items() if (s == 0 or s >= 500) and v not in bad_versions
    }
    judged = total - bad_own
    failed = sum(against_us.values())
    return {
        "requests": total,
        "bad_revisions_own_errors": bad_own,
        "judged_requests": judged,
        "failed_against_us": failed,
        "failures_by_version_status": against_us,
        "failures_by_service": {
            service: failures[service] for service in sorted(failures) if failures[service]
        },
        "availability": 1 - failed / judged if judged else 0.0,
    }


def expected_live(plans: list[Planned]) -> dict[str, str]:
    """Per service, the revision its last good candidate made live (or the first revision)."""
    expected = {p.service: Artifact(name=p.service, version="1.0.0", command=["x"]).revision for p in plans}
    for plan in plans:
        if plan.kind == "good":
            expected[plan.service] = Artifact(name=plan.service, version=plan.version, command=["x"]).revision
    return expected


def evaluate(
    args: argparse.Namespace,
    journal: Journal,
    plans: list[Planned],
    counts: dict[str, Counter[tuple[str, int]]],
    live: dict[str, dict[str, int]],
    limit: int,
    failures: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    ids = [p.deployment_id for p in plans]
    timeline = Timeline.read(journal, ids)
    bound = bound_s(args)
    rows = [row(p, journal, timeline, bound) for p in plans]
    seen = availability(plans, counts, failures)
    expected = expected_live(plans)
    wrong_live = {s: w for s, w in live.items() if w != {expected[s]: 100}}
    lost = timeline.unrecorded(ids)
    duplicated = [d for d in ids if len(timeline.finished.get(d, [])) > 1]
    by_kind: dict[str, Counter[str]] = {}
    for r in rows:
        by_kind.setdefault(r["kind"], Counter())[r["outcome"]] += 1
    figures = {
        "correct_share": sum(r["correct"] for r in rows) / len(rows),
        "availability": seen["availability"],
        "zombies": sum(r["zombie"] for r in rows),
        "lost": len(lost) + len(duplicated),
    }
    passed = {
        "correct_share": figures["correct_share"] >= GOALS["correct_share_min"],
        "availability": figures["availability"] >= GOALS["availability_min"],
        "zombies": figures["zombies"] <= GOALS["zombies_max"],
        "lost": figures["lost"] <= GOALS["lost_max"],
        "max_running_within_limit": timeline.max_running() <= limit,
        "final_revisions_right": not wrong_live,
    }
    kills = [r["kill"] for r in rows if r["kill"]]
    return {
        **figures,
        "goals": GOALS,
        "checks": passed,
        "passed": all(passed.values()),
        "traffic": seen,
        "outcomes_by_kind": {k: dict(v) for k, v in by_kind.items()},
        "wrong": [r for r in rows if not r["correct"]],
        "kills": {
            "planned": len(kills),
            "fired": sum(1 for k in kills if "pid" in k),
            "by_actor": dict(Counter(k["actor"] for k in kills if "pid" in k)),
            "missed_or_failed": [k for k in kills if "pid" not in k],
        },
        "max_running": timeline.max_running(),
        "limit": limit,
        "zombie_bound_s": bound,
        "lost_ids": lost,
        "duplicated_terminal": duplicated,
        "wrong_live_revisions": wrong_live,
        "deployments": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100, help="deployments judged")
    parser.add_argument("--bad", type=int, default=30, help="bad candidates among them (five kinds in turn)")
    parser.add_argument("--kills", type=int, default=20, help="deployments during which an actor is killed")
    parser.add_argument("--services", type=int, default=10)
    parser.add_argument("--rps", type=float, default=8.0, help="client requests per second per service")
    parser.add_argument("--step-seconds", type=float, default=6.0, help="each canary step's window")
    parser.add_argument("--progress-deadline", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds for every deployment to end")
    parser.add_argument("--frontend-ports", type=port_range, default=(16400, 16599))
    parser.add_argument("--replica-ports", type=port_range, default=(51000, 51999))
    parser.add_argument("--output", default=None, help="default: benchmarks/results/success_rate.json")
    args = parser.parse_args()
    if not (
        0 <= args.bad <= args.count and 0 <= args.kills <= args.count and 1 <= args.services <= args.count
    ):
        parser.error("need 0 <= --bad, --kills <= --count and 1 <= --services <= --count")
    result = run(args)
    out = write_result("success_rate", result, args)
    brief = {k: v for k, v in result.items() if k not in ("deployments",)}
    print(json.dumps(brief, indent=2, default=str))
    print(f"written to {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
