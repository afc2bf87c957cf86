"""The orchestrator's Ray settings: the same for the embedded cluster and for `ray start`, and none that the
issue warns against."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

import client.driver as driver
from client.ray_settings import RAY_SYSTEM_CONFIG, system_config_json

REPO = Path(__file__).resolve().parents[2]


def test_the_settings_lower_timers_and_keep_metrics_on() -> None:
    assert json.loads(system_config_json()) == RAY_SYSTEM_CONFIG
    assert RAY_SYSTEM_CONFIG["event_stats"] is False
    assert RAY_SYSTEM_CONFIG["task_events_report_interval_ms"] == 0
    for timer in (
        "raylet_report_resources_period_milliseconds",
        "raylet_check_gc_period_milliseconds",
        "object_manager_timer_freq_ms",
        "kill_idle_workers_interval_ms",
        "local_fs_monitor_interval_ms",
    ):
        assert RAY_SYSTEM_CONFIG[timer] == 1000
    # The dashboard needs metrics; -1 here makes the GCS log in a loop.
    assert not {"enable_metrics_collection", "event_stats_print_interval_ms"} & set(RAY_SYSTEM_CONFIG)


def test_start_head_passes_the_same_settings_to_ray_start(tmp_path: Path) -> None:
    script = (REPO / "cluster" / "start_head.sh").read_text()
    assert '--system-config "$system_config"' in script
    line = next(x for x in script.splitlines() if x.startswith("system_config="))
    command = re.sub(r"^system_config=\$\((.*)\)$", r"\1", line).replace('"$(dirname "$0")/.."', str(REPO))
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == RAY_SYSTEM_CONFIG


def test_the_embedded_cluster_starts_with_them(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Started(Exception):
        pass

    def init(**options: Any) -> None:
        seen.update(options)
        raise Started

    monkeypatch.setattr(driver.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(driver.ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    orchestrator = object.__new__(driver.DeploymentOrchestrator)
    orchestrator.namespace = "test"
    with pytest.raises(Started):
        orchestrator._connect(None, None)
    assert seen["address"] == "local"
    assert seen["_system_config"] == RAY_SYSTEM_CONFIG
