"""The cost of the queen's observer (notification hooks, alerts, metrics from the journal), in one run.

The observer runs a round every second inside the queen. Measured here on a real journal holding
``--deployments`` finished deployments (made by the reconciler on a fake platform), with Ray's metrics on
(a local Ray, as in the queen) and Prometheus' collection through the exporter's collector:

- ``at_rest_fraction``: CPU seconds of the observer per second at rest (rounds with no new event), i.e. the
  fraction of one core it takes while nothing happens: the head read of every round, the stuck check of
  every tenth and the metrics' refresh of every sixtieth, each measured and weighted;
- ``per_event_ms``: CPU milliseconds per journal event folded and dispatched (rounds that each find one new
  event of a running canary), without the push of the figures to Ray's gauges;
- ``push_ms``: CPU milliseconds of one refresh that computes every family and pushes them to Ray's gauges;
  the queen does it at most every ``RAY_PUSH_S`` (10 s) while events come, and every ``REFRESH_AT_REST_S``
  at rest;
- ``busy_fraction``: the fraction of one core at ``--events-per-second`` (a busy orchestrator: ten canaries
  write about one event per second between them): the events' rounds, plus a push per event or per
  ``RAY_PUSH_S``, whichever is rarer (the benchmark's rounds come faster than that, so the push is priced
  at the rate it would have at ``--events-per-second``, not the rate of this loop);
- ``scrape_ms``: CPU milliseconds of one Prometheus scrape of every family.

Budget: ``busy_fraction`` at most ``--budget`` (0.0002, a tenth of the orchestrator's 0.2% overhead
budget). Writes benchmarks/results/observer.json (with the commit and the arguments); exits 1 over budget.
    python3 benchmarks/observer.py [--deployments 500] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.config import load_config, write_isolated_config  # noqa: E402
from engine.journal import Journal  # noqa: E402
from engine.reconciler import DeploymentReconciler  # noqa: E402
from engine.state import EventKind  # noqa: E402
from harness.fakes import FakeClock, FakePlatform, FakeSmoke, drive, submit_admitted  # noqa: E402

CANARY = {
    "type": "canary",
    "replicas": 2,
    "canary": {"initialTrafficPercentage": 20, "stepPercentage": 30, "stepDuration": 10_000, "maxSteps": 3},
}


def fill(journal: Journal, clock: FakeClock, count: int) -> None:
    platform = FakePlatform(clock=clock)
    for index in range(count):
        deployment = submit_admitted(journal, f"web-{index}", f"1.0.{index}", CANARY, "development")
        reconciler = DeploymentReconciler(
            journal, deployment, lambda cfg: platform, clock=clock, smoke=FakeSmoke()
        )
        drive(reconciler, clock, journal, deployment)


def cpu_per_round(round_: Any, rounds: int, between: Any = None) -> float:
    """CPU seconds of ``round_`` alone, per call (``between`` runs outside the measurement)."""
    spent = 0.0
    for _ in range(rounds):
        if between is not None:
            between()
        started = time.process_time()
        round_()
        spent += time.process_time() - started
    return spent / rounds


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from actors.telemetry import RAY_PUSH_S, REFRESH_AT_REST_S, STUCK_CHECK_S, Observer, Telemetry

    folder = Path(tempfile.mkdtemp(prefix="orch-observer-"))
    config_path = write_isolated_config(folder, namespace="orch-observer-bench")
    config = load_config(config_path)
    clock = FakeClock(start=time.time() - 3600)
    journal = Journal(config.journal_path(), clock=clock.now)
    fill(journal, clock, args.deployments)
    ray.init(
        address="local", num_cpus=1, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False
    )
    try:
        telemetry = Telemetry(config, str(config.journal_path()))
        observer = Observer(config, str(config.journal_path()), telemetry)
        observer.round()  # the first round folds the whole journal
        # At rest a round reads the journal's head; every STUCK_CHECK_S it also looks for stuck deployments
        # and every REFRESH_AT_REST_S it refreshes the metrics: each part weighted by how often it runs.
        head_only = cpu_per_round(observer.round, args.rounds)
        stuck = cpu_per_round(lambda: observer.dispatcher.round(stuck=True), 200)
        telemetry.push_interval_s = 0.0  # every refresh computes and pushes: the cost of one push
        push = cpu_per_round(lambda: telemetry.refresh(force=True), 100)
        at_rest = head_only + stuck / STUCK_CHECK_S + push / REFRESH_AT_REST_S
        running = submit_admitted(journal, "web-live", "2.0.0", CANARY, "development")
        telemetry.push_interval_s = float("inf")  # the events' own cost; their pushes are priced apart
        per_event = cpu_per_round(
            observer.round,
            args.events,
            lambda: journal.append(running, EventKind.NOTE, {"message": "a step"}),
        )
        telemetry.push_interval_s = RAY_PUSH_S
        scrape = cpu_per_round(lambda: list(telemetry.collect()), 50)
    finally:
        ray.shutdown()
    pushes_per_second = min(args.events_per_second, 1 / RAY_PUSH_S)
    busy = (
        max(0.0, 1 - args.events_per_second) * at_rest
        + args.events_per_second * per_event
        + pushes_per_second * push
    )
    return {
        "at_rest_fraction": round(at_rest, 8),
        "parts_ms": {"head": head_only * 1000, "stuck_check": stuck * 1000, "push": push * 1000},
        "per_event_ms": round(per_event * 1000, 4),
        "push_ms": round(push * 1000, 4),
        "pushes_per_second": pushes_per_second,
        "busy_fraction": round(busy, 8),
        "scrape_ms": round(scrape * 1000, 3),
        "journal_events": telemetry.metrics.seq,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deployments", type=int, default=500, help="finished deployments in the journal")
    parser.add_argument("--rounds", type=int, default=2000, help="head-only rounds measured")
    parser.add_argument("--events", type=int, default=300, help="rounds with one new event measured")
    parser.add_argument("--events-per-second", type=float, default=1.0)
    parser.add_argument("--budget", type=float, default=0.0002)
    args = parser.parse_args()
    result = run(args)
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    result |= {"budget": args.budget, "within_budget": result["busy_fraction"] <= args.budget}
    result |= {"commit": commit, "arguments": vars(args)}
    out = REPO / "benchmarks" / "results" / "observer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
