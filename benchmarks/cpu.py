"""Helpers shared by the CPU benchmarks: CPU time, not wall time (the machine is shared), and their Ray."""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
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
    """A local Ray as the orchestrator's embedded one (its settings, unless ``ray_defaults``).

    On a loaded machine the raylet gives up when Ray's dashboard agent takes more than 15 s to start (a fixed
    timeout in Ray 2.60): while Ray starts, the agent runs before Ray's other new processes (priorities set
    back to normal for every process once Ray is up; CPU time, which is what is measured, does not depend on
    them), and a failed start is tried again after removing what it left running (this process's children)."""
    import ray

    from client.ray_settings import RAY_SYSTEM_CONFIG

    for attempt in range(attempts):
        starting = threading.Event()
        threading.Thread(target=_agent_first, args=(starting,), daemon=True).start()
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
                _metrics_export_port=_free_port(),  # fixed: the raylet need not wait for one
            )
            break
        except Exception:
            if attempt == attempts - 1:
                raise
            ray.shutdown()
            _end_children()
            time.sleep(5)
        finally:
            starting.set()
            _normal_priority()
    time.sleep(5)  # Ray's own start-up settles


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _agent_first(done: threading.Event) -> None:
    while not done.wait(0.05):
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                process.nice(-10 if "dashboard/agent.py" in " ".join(process.cmdline()) else 10)


def _normal_priority() -> None:
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process.nice(0)


def _end_children() -> None:
    children = psutil.Process().children(recursive=True)
    for process in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(children, timeout=10)
