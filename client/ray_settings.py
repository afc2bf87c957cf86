"""Ray's settings for the clusters the orchestrator runs on: fewer timer wake-ups in Ray's own processes.

An idle Ray actor process costs a few millicores, and the raylet wakes many times a second for bookkeeping
that an orchestrator's cluster (a few dozen long-lived actors, no object traffic) does not need that often.
What each setting saves is measured by benchmarks/floor_cuts.py (results/floor_cuts.json).

Kept on, on purpose: metrics collection (the Ray dashboard and our Prometheus metrics need it). Not set:
``event_stats_print_interval_ms=-1``, which makes the GCS log in a loop.

The embedded cluster (client/driver.py) starts with these; ``ray start`` takes the same as JSON
(``system_config_json()``; cluster/start_head.sh and the README pass it as ``--system-config``). With task
events off, the dashboard's task list and ``ray list tasks`` stay empty; actors, nodes, logs and metrics are
unaffected.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

RAY_SYSTEM_CONFIG: dict[str, bool | int] = {
    "event_stats": False,  # per-handler timing of every event loop: debug statistics only
    "task_events_report_interval_ms": 0,  # task events (the dashboard's task list) not reported
    "raylet_report_resources_period_milliseconds": 1000,  # default 100
    "raylet_check_gc_period_milliseconds": 1000,  # default 100
    "object_manager_timer_freq_ms": 1000,  # default 100
    "kill_idle_workers_interval_ms": 1000,  # default 200
    "local_fs_monitor_interval_ms": 1000,  # default 100
}


def system_config_json() -> str:
    """The settings as ``ray start --system-config`` takes them (compact JSON, stable key order)."""
    return json.dumps(RAY_SYSTEM_CONFIG, separators=(",", ":"), sort_keys=True)


@contextlib.contextmanager
def code_on_workers_path(repo: Path) -> Iterator[None]:
    """Within: a Ray started by this process (``ray.init`` without an address) finds this repository's code.

    The raylet inherits this process's environment and its workers inherit the raylet's, so ``PYTHONPATH`` set
    while it starts reaches every actor; it is restored afterwards (the caller's own subprocesses are left as
    they were). A job ``runtime_env`` with the same variable would do it too, but every actor's worker would
    then wait for the runtime-env agent, and the workers Ray starts in advance (which have no runtime env)
    would go unused: 9 actors were ready in 3.5-4.0 s this way against 8.5-8.8 s (2 cores, 2026-11-30)."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
