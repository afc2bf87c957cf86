"""The chaos matrix on the local platform (and the router and replica faults on Docker).

For every strategy (canary, blue-green, rolling) x fault (the queen, the runner, each domain worker DO-001 ..
DO-006, the service's HAProxy, one stable replica, one candidate replica, the whole Ray: the driver and its
embedded cluster, after which a new driver resumes from the journal) x moment (at a step boundary, in the
middle of a step), with a good candidate and, for the platform faults and the whole Ray (or every case with
``--bad all``), a bad one: a deployment under 40 requests/s of outside traffic, one SIGKILL, then the
properties of chaoskit/checks.py (one terminal event, the right outcome, no platform object duplicated or
left behind, no traffic left on a revision judged bad, failed requests within the fault's bound).

Writes benchmarks/results/chaos.json (commit, arguments, each case, totals); exit status 1 when any case
violates a property.
    python3 benchmarks/chaos.py                                   # the full matrix (about 150 cases)
    python3 benchmarks/chaos.py --strategies canary --faults router queen --timings mid_step --no-docker
    python3 benchmarks/chaos.py --repeat 3 --faults ray
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chaoskit.cases import FAILED_BOUND_S, FAULTS, STRATEGIES, TIMINGS, Case, Outcome, matrix  # noqa: E402
from chaoskit.faults import Bench, embedded  # noqa: E402
from chaoskit.run import run_case  # noqa: E402
from engine.config import write_isolated_config  # noqa: E402
from harness.environments import docker_engine_started  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "chaos.json"
COMMIT = subprocess.run(
    ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False
).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def totals(outcomes: list[Outcome]) -> dict[str, Any]:
    by_fault: dict[str, dict[str, int]] = {}
    for outcome in outcomes:
        row = by_fault.setdefault(outcome.case.fault, Counter())  # type: ignore[arg-type]
        row["cases"] += 1
        row["violating"] += bool(outcome.violations)
        row["failed_requests"] += outcome.failed_outside_bad
        row["requests"] += outcome.requests
    failed = [o.failed_outside_bad for o in outcomes]
    return {
        "cases": len(outcomes),
        "violating": sum(bool(o.violations) for o in outcomes),
        "fault_missed": sum("missed" in o.injected for o in outcomes),
        "fault_after_end": sum(not o.landed.get("reached", True) for o in outcomes),
        "requests": sum(o.requests for o in outcomes),
        "failed_requests_outside_bad": sum(failed),
        "max_failed_in_a_case": max(failed, default=0),
        "by_fault": {fault: dict(row) for fault, row in by_fault.items()},
        "seconds": round(sum(o.seconds for o in outcomes), 1),
    }


def write(args: argparse.Namespace, started: float, outcomes: list[Outcome], planned: int) -> dict[str, Any]:
    """The result so far, written after every case: a run cut short keeps what it has (``complete`` says)."""
    result: dict[str, Any] = {
        "commit": COMMIT,  # the code measured: the commit the run started on
        "arguments": vars(args),
        "started_at": started,
        "planned_cases": planned,
        "complete": len(outcomes) == planned,
        "failed_request_bounds_s": FAILED_BOUND_S,
        "totals": totals(outcomes),
        "cases": [o.as_json() for o in outcomes],
    }
    out = Path(args.output) if args.output else OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    return result


def run(args: argparse.Namespace, cases: list[Case], started: float) -> list[Outcome]:
    from orchestrator import DeploymentOrchestrator

    folder = Path(tempfile.mkdtemp(prefix="orch-chaos-"))
    os.environ["ORCH_HOME"] = str(folder)
    config = write_isolated_config(
        folder, (16000, 16499), (50000, 53999), namespace="orch-chaos-bench", prometheus_port=free_port()
    )
    orch = embedded(DeploymentOrchestrator, config)
    bench = Bench(orch, folder)
    outcomes: list[Outcome] = []
    try:
        for number, case in enumerate(cases):
            outcome = run_case(bench, case, args.step_ms, tag=f"{number % 1000}")
            outcomes.append(outcome)
            verdict = "ok" if not outcome.violations else f"VIOLATED: {outcome.violations}"
            seen = f"{outcome.phase} in {outcome.seconds:.0f}s"
            print(f"[{number + 1}/{len(cases)}] {case.name}: {seen}, {verdict}")
            sys.stdout.flush()
            write(args, started, outcomes, len(cases))
    finally:
        orch.shutdown()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--timings", nargs="+", choices=TIMINGS, default=list(TIMINGS))
    parser.add_argument("--bad", choices=("subset", "all", "none"), default="subset")
    parser.add_argument("--no-docker", action="store_true", help="skip the Docker cases")
    parser.add_argument("--repeat", type=int, default=1, help="run the whole selection this many times")
    parser.add_argument("--step-ms", type=int, default=3000, help="stepDuration (and the other step lengths)")
    parser.add_argument("--output", default=None, help="default: benchmarks/results/chaos.json")
    args = parser.parse_args()
    cases = args.repeat * matrix(
        tuple(args.strategies), tuple(args.faults), tuple(args.timings), args.bad, not args.no_docker
    )
    started = time.time()
    if any(c.platform == "docker" for c in cases):
        with docker_engine_started():  # the engine and the sample image (cluster/start_docker.sh)
            outcomes = run(args, cases, started)
    else:
        outcomes = run(args, cases, started)
    result = write(args, started, outcomes, len(cases))
    print(json.dumps(result["totals"], indent=2))
    print(f"written to {args.output or OUT}")
    return 1 if result["totals"]["violating"] else 0


if __name__ == "__main__":
    sys.exit(main())
