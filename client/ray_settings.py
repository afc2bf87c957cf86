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

import json

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
