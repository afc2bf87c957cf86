"""Load: many deployments submitted at once through the driver API, checked from the journal.

``--deployments`` deployments over ``--services`` services (local platform, rolling updates of one small
replica each: examples/sample_service.py), submitted at once: round k submits the k-th revision of every
service concurrently (8 threads calling ``DeploymentOrchestrator.submit``), each round right after the one
before returns, so that the order within a service is the client's. Then every deployment is awaited
(``wait``) and the journal is read.

Checks (exit status 1 when one fails), all from the journal's ADMITTED and FINISHED events in its order:
- max_running_within_limit: never more than the product's limit (concurrency.maxConcurrentDeployments, 10)
  admitted and not finished at once;
- fifo_per_target: per service and environment, admission order = journal submission order = client order;
- one_active_per_target: a target's deployments never overlap;
- all_terminal: every deployment has exactly one FINISHED event; none_lost: every id the driver returned
  is in the journal (submitted = terminal); all_succeeded: every rolling update succeeded.

Figures: admission latency (journal SUBMITTED -> ADMITTED, queueing included) p50/p95; the queen's slot
reuse lag (ADMITTED after the later of its submission and the last FINISHED before it) p50/p95; total time
(first submit -> last FINISHED) and deployments per minute. With ``--repetitions N`` each repetition runs
on a fresh orchestrator (its own Ray, journal and ports) and the spread of each figure is reported.

Writes benchmarks/results/load.json (commit, arguments, time, figures, checks).
    python3 benchmarks/load.py                                  # 100 deployments over 50 services
    python3 benchmarks/load.py --deployments 20 --services 10   # the short form CI runs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

from fleet import (
    ENV,
    Timeline,
    percentile,
    port_range,
    start_orchestrator,
    stop_orchestrator,
    write_result,
)
from self_heal import spread

from engine.journal import Journal
from engine.models import Phase
from examples.quickstart import sample_artifact

STRATEGY = {"type": "rolling", "replicas": 1, "progressDeadline": "120s"}


@dataclass
class Submission:
    deployment_id: str
    service: str
    round: int
    asked_at: float  # wall clock when the client called submit


def plan(deployments: int, services: int, repetition: int) -> list[list[tuple[str, str]]]:
    """Rounds of (service, version): deployment i goes to service i % services, its (i // services)-th."""
    rounds: list[list[tuple[str, str]]] = []
    for i in range(deployments):
        index, turn = i % services, i // services
        if turn == len(rounds):
            rounds.append([])
        rounds[turn].append((f"load-r{repetition}-{index:03d}", f"1.{turn}.0"))
    return rounds


def submit_all(orch: Any, rounds: list[list[tuple[str, str]]]) -> list[Submission]:
    def one(turn: int, service: str, version: str) -> Submission:
        asked = time.time()
        deployment_id = orch.submit(sample_artifact(version, service=service), dict(STRATEGY), ENV)
        return Submission(deployment_id, service, turn, asked)

    submissions: list[Submission] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for turn, batch in enumerate(rounds):
            services, versions = zip(*batch, strict=True)
            submissions += list(pool.map(partial(one, turn), services, versions))
    return submissions


def await_all(orch: Any, submissions: list[Submission], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for submission in submissions:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        orch.wait(submission.deployment_id, remaining)


def checks(timeline: Timeline, submissions: list[Submission], limit: int) -> dict[str, Any]:
    ids = [s.deployment_id for s in submissions]
    by_target: dict[str, list[Submission]] = defaultdict(list)
    for submission in submissions:
        by_target[submission.service].append(submission)
    fifo_broken, overlapping = [], []
    for service, own in by_target.items():
        client = [s.deployment_id for s in sorted(own, key=lambda s: s.round)]
        journaled = sorted(client, key=lambda d: timeline.submitted[d].seq if d in timeline.submitted else 0)
        admitted = sorted(client, key=lambda d: _first_seq(timeline.admitted, d))
        if not client == journaled == admitted:
            fifo_broken.append({"service": service, "client": client, "admitted": admitted})
        if _overlaps(timeline, admitted):
            overlapping.append(service)
    unterminated = timeline.terminal_once(ids)
    lost = timeline.unrecorded(ids)
    outcomes = [str(timeline.finished[d][0].data.get("outcome")) for d in ids if d in timeline.finished]
    failed = [d for d in ids if d in timeline.finished and _outcome(timeline, d) != Phase.SUCCEEDED.value]
    max_running = timeline.max_running()
    return {
        "max_running": max_running,
        "limit": limit,
        "submitted": len(ids),
        "terminal": len(ids) - len(unterminated),
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "violations": {
            "fifo": fifo_broken,
            "overlapping_targets": overlapping,
            "not_terminal_once": unterminated,
            "lost": lost,
            "not_succeeded": failed,
        },
        "passed": {
            "max_running_within_limit": 0 < max_running <= limit,
            "fifo_per_target": not fifo_broken,
            "one_active_per_target": not overlapping,
            "all_terminal": not unterminated,
            "none_lost": not lost and len(ids) == len(set(ids)),
            "all_succeeded": not failed,
        },
    }


def _first_seq(events: dict[str, list[Any]], deployment_id: str) -> int:
    found = events.get(deployment_id)
    return found[0].seq if found else sys.maxsize


def _outcome(timeline: Timeline, deployment_id: str) -> str:
    return str(timeline.finished[deployment_id][0].data.get("outcome"))


def _overlaps(timeline: Timeline, ordered: list[str]) -> bool:
    """Whether one of the target's deployments (in admission order) was admitted before the one admitted
    before it had finished."""
    for before, after in itertools.pairwise(ordered):
        finished = timeline.finished.get(before)
        if finished and _first_seq(timeline.admitted, after) < finished[0].seq:
            return True
    return False


def figures(timeline: Timeline, submissions: list[Submission]) -> dict[str, Any]:
    admitted = [s for s in submissions if s.deployment_id in timeline.admitted]
    latency = [
        timeline.admitted[s.deployment_id][0].at - timeline.submitted[s.deployment_id].at for s in admitted
    ]
    finishes = sorted((e[0] for e in timeline.finished.values()), key=lambda e: e.seq)
    lags = []
    for s in admitted:
        admission = timeline.admitted[s.deployment_id][0]
        freed = [f.at for f in finishes if f.seq < admission.seq]
        ready = max([timeline.submitted[s.deployment_id].at, *freed])
        lags.append(admission.at - ready)
    started = min(s.asked_at for s in submissions)
    ended = max((f.at for f in finishes), default=time.time())
    total = ended - started
    return {
        "admission_latency_s": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
        "slot_reuse_lag_s": {"p50": percentile(lags, 50), "p95": percentile(lags, 95)},
        "submit_s": max(s.asked_at for s in submissions) - started,
        "total_s": total,
        "deployments_per_minute": len(finishes) / total * 60 if total > 0 else 0.0,
    }


def repetition(args: argparse.Namespace, index: int) -> dict[str, Any]:
    orch, folder = start_orchestrator("load", args.frontend_ports, args.replica_ports)
    rounds = plan(args.deployments, args.services, index)
    services = sorted({service for batch in rounds for service, _ in batch})
    try:
        limit = orch.config.concurrency.max_concurrent_deployments
        submissions = submit_all(orch, rounds)
        await_all(orch, submissions, args.timeout)
        journal = Journal(orch.journal_path)
        try:
            timeline = Timeline.read(journal, [s.deployment_id for s in submissions])
        finally:
            journal.close()
        result = {**figures(timeline, submissions), **checks(timeline, submissions, limit)}
    finally:
        stop_orchestrator(orch, services)
    result["orch_home"] = str(folder)
    return result


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def values(*path: str) -> list[float]:
        found = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            found.append(float(value))
        return found

    passed = {name: all(run["passed"][name] for run in runs) for name in runs[0]["passed"]}
    return {
        "admission_latency_p50_s": spread(values("admission_latency_s", "p50")),
        "admission_latency_p95_s": spread(values("admission_latency_s", "p95")),
        "slot_reuse_lag_p50_s": spread(values("slot_reuse_lag_s", "p50")),
        "slot_reuse_lag_p95_s": spread(values("slot_reuse_lag_s", "p95")),
        "total_s": spread(values("total_s")),
        "deployments_per_minute": spread(values("deployments_per_minute")),
        "max_running": max(values("max_running")),
        "checks": passed,
        "passed": all(passed.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=100)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--repetitions", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for every deployment to end")
    parser.add_argument("--frontend-ports", type=port_range, default=(16000, 16399))
    parser.add_argument("--replica-ports", type=port_range, default=(50000, 50999))
    parser.add_argument("--output", default=None, help="default: benchmarks/results/load.json")
    args = parser.parse_args()
    if args.deployments < 1 or not 1 <= args.services <= args.deployments:
        parser.error("need 1 <= --services <= --deployments")
    runs = [repetition(args, index) for index in range(args.repetitions)]
    result = {**summary(runs), "repetitions": runs}
    out = write_result("load", result, args)
    brief = {k: v for k, v in result.items() if k != "repetitions"}
    print(json.dumps(brief, indent=2))
    print(f"written to {out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
