"""Helpers shared by the CPU benchmarks: CPU time, not wall time (the machine is shared), and their Ray."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def process_cpu(pid: int) -> float:
    """CPU seconds of one process with its reaped children (e.g. a launcher); 0 once it is gone."""
    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system + times.children_user + times.children_system
    return 0.0


def git_commit() -> str:
    """The commit measured, with ``+dirty`` when the work tree has changes."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def start_local_ray(ray_defaults: bool, namespace: str | None = None, attempts: int = 5) -> None:
    """A local Ray as the orchestrator's embedded one (its settings, unless ``ray_defaults``); a loaded
    machine can time Ray's start-up out (its agents start late), so it is tried again."""
    import ray

    from client.ray_settings import RAY_SYSTEM_CONFIG

    for attempt in range(attempts):
        try:
            ray.init(
                address="local",
                _node_ip_address="127.0.0.1",
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                namespace=namespace,
                runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
                _system_config=None if ray_defaults else dict(RAY_SYSTEM_CONFIG),
            )
            break
        except Exception:
            if attempt == attempts - 1:
                raise
            ray.shutdown()
            time.sleep(10)
    time.sleep(5)  # Ray's own start-up settles
