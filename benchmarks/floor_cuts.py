"""The idle floor of a Ray actor process, and what each cut of issue 10 item 5 saves: before/after in one run.

Each round starts its own Ray (a subprocess), once with Ray's defaults and once with the orchestrator's
settings (client/ray_settings.py), alternating so that the machine's load drifts over both
alike. In each it measures, as CPU time (not wall time) over the same window:
- ``idle_actor_mc``: an idle actor process (its core worker's main thread wakes every 10 ms to check signals);
- ``parked_actor_mc``: an actor whose main thread is blocked in a long synchronous call (how a runner now
  waits: the 10 ms check does not run while the main thread is busy);
- ``ray_daemons_mc``: Ray's own processes (GCS, raylet, agents) with those actors alive;
- ``start_cpu_s``: CPU of one actor process from its start until it answers, bare and importing the runner
  module (what a cold runner start costs, imports included).
mc = millicores (CPU-ms per second). Writes benchmarks/results/floor_cuts.json.
    python3 benchmarks/floor_cuts.py [--rounds 2] [--seconds 20] [--actors 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cpu import git_commit, process_cpu, start_local_ray  # noqa: E402


def measure(settings: bool, seconds: float, actors: int) -> dict[str, Any]:
    """One Ray session: runs in a subprocess of its own (see ``main``)."""
    import psutil
    import ray

    start_local_ray(ray_defaults=not settings)

    class Idle:
        def pid(self) -> int:
            return os.getpid()

    class Parked(Idle):
        def park(self, seconds: float) -> None:
            threading.Event().wait(seconds)

    class RunnerImports(Idle):
        def __init__(self) -> None:
            import actors.runner  # noqa: F401

    def started(cls: type) -> tuple[Any, int, float]:
        handle: Any = ray.remote(num_cpus=0)(cls).remote()
        pid = ray.get(handle.pid.remote(), timeout=120)
        return handle, pid, process_cpu(pid)

    bare = [started(Idle) for _ in range(2)]
    runner = [started(RunnerImports) for _ in range(2)]
    idle = [started(Idle)[:2] for _ in range(actors)]
    parked = [started(Parked)[:2] for _ in range(actors)]
    for handle, _ in parked:
        handle.park.remote(seconds * 4 + 60)
    time.sleep(3)
    actor_pids = {pid for _, pid in idle + parked} | {pid for _, pid, _ in bare + runner}
    daemons = [p.pid for p in psutil.Process().children(recursive=True) if p.pid not in actor_pids]
    watched = {"idle": [p for _, p in idle], "parked": [p for _, p in parked], "daemons": daemons}
    before = {k: sum(process_cpu(p) for p in pids) for k, pids in watched.items()}
    time.sleep(seconds)
    used = {k: sum(process_cpu(p) for p in pids) - before[k] for k, pids in watched.items()}
    ray.shutdown()
    return {
        "settings": settings,
        "idle_actor_mc": used["idle"] / actors / seconds * 1000,
        "parked_actor_mc": used["parked"] / actors / seconds * 1000,
        "ray_daemons_mc": used["daemons"] / seconds * 1000,
        "start_cpu_s": {
            "bare_actor": statistics.mean(c for _, _, c in bare),
            "runner_imports": statistics.mean(c for _, _, c in runner),
        },
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(settings: bool, key: str, sub: str | None = None) -> float:
        rows = [r for r in rounds if r["settings"] is settings]
        return statistics.mean(r[key][sub] if sub else r[key] for r in rows)

    cuts: dict[str, Any] = {}
    for key in ("idle_actor_mc", "parked_actor_mc", "ray_daemons_mc"):
        before, after = mean(False, key), mean(True, key)
        cuts[f"ray_settings:{key}"] = {"before": before, "after": after, "saved_fraction": 1 - after / before}
    for settings in (False, True):
        idle, parked = mean(settings, "idle_actor_mc"), mean(settings, "parked_actor_mc")
        name = "parked_main_thread" + (":with_settings" if settings else ":ray_defaults")
        cuts[name] = {"before": idle, "after": parked, "saved_fraction": 1 - parked / idle}
    start = {k: mean(True, "start_cpu_s", k) for k in ("bare_actor", "runner_imports")}
    return {"cuts": cuts, "start_cpu_s_with_settings": start}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="pairs of sessions (defaults, settings)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--actors", type=int, default=4)
    parser.add_argument("--one", choices=["defaults", "settings"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one == "settings", args.seconds, args.actors)))
        return 0
    rounds = []
    for _ in range(args.rounds):
        for one in ("defaults", "settings"):
            command = [sys.executable, __file__, "--one", one, "--seconds", str(args.seconds)]
            out = subprocess.run(
                [*command, "--actors", str(args.actors)], capture_output=True, text=True, timeout=600
            )
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            rounds.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"commit": git_commit(), "args": vars(args), "time": time.time(), "rounds": rounds}
    result |= summary(rounds)
    out_path = REPO / "benchmarks" / "results" / "floor_cuts.json"
    out_path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["cuts"], indent=2))
    print(json.dumps(result["start_cpu_s_with_settings"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
