"""Helpers shared by the CPU benchmarks: CPU time, not wall time (the machine is shared), and their Ray."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from adapters.localhost import port_is_free

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


def start_local_ray(ray_defaults: bool, namespace: str | None = None, attempts: int = 10) -> None:
    """A local Ray as the orchestrator's embedded one (its settings, unless ``ray_defaults``).

    On a loaded machine the raylet gives up when Ray's agents take more than 15 s to publish their ports (a
    fixed timeout in Ray 2.60): the ports are chosen beforehand where Ray lets them be, and a failed start
    is tried again after removing what it left running (this process's own children)."""
    import ray

    from client.ray_settings import RAY_SYSTEM_CONFIG, code_on_workers_path

    _fixed_agent_ports()
    # The raylet also gives the runtime-env agent 30 s to answer: on a loaded machine that is too short.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    for attempt in range(attempts):
        starting = threading.Event()
        threading.Thread(target=_publish_listen_port, args=(starting,), daemon=True).start()
        try:
            with code_on_workers_path(REPO):  # as the driver starts it (client/driver.py)
                ray.init(
                    address="local",
                    _node_ip_address="127.0.0.1",
                    num_cpus=2,
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                    namespace=namespace,
                    _system_config=None if ray_defaults else dict(RAY_SYSTEM_CONFIG),
                )
            time.sleep(5)  # Ray's own start-up settles
            _check_alive()
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            ray.shutdown()
            _end_children()
            time.sleep(5)
        finally:
            starting.set()


def _check_alive(timeout_s: float = 300.0) -> None:
    """The raylet fate-shares with its agents, which can die after ``ray.init`` has returned (an agent that
    fails to bind its port): a task must run, within ``timeout_s``, for the start to count."""
    import ray

    @ray.remote(num_cpus=0)
    def alive() -> int:
        return os.getpid()

    if not isinstance(ray.get(alive.remote(), timeout=timeout_s), int):
        raise RuntimeError("Ray started but its probe task returned no process id")


FIXED_PORTS: dict[str, int] = {}


def _publish_listen_port(done: threading.Event) -> None:
    """The raylet waits 15 s at most for the dashboard agent to publish its HTTP port, which a loaded machine
    does not meet; the port is fixed beforehand (``_fixed_agent_ports``), so it is published for the agent
    (which publishes the same port again once its server is up)."""
    from ray._raylet import DASHBOARD_AGENT_LISTEN_PORT_NAME, persist_port  # type: ignore[attr-defined]

    while not done.wait(0.1):
        for process in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if "raylet" not in process.name():
                    continue
                flags = dict(a.split("=", 1) for a in process.cmdline() if a.startswith("--") and "=" in a)
                port = FIXED_PORTS.get("dashboard_agent_listen_port")
                if port and "--node_id" in flags and "--session_dir" in flags:
                    persist_port(
                        flags["--session_dir"], flags["--node_id"], DASHBOARD_AGENT_LISTEN_PORT_NAME, port
                    )
                    return


def _fixed_agent_ports() -> None:
    """The agents' ports chosen before Ray starts: the raylet then does not wait for the agents to publish
    theirs, which is what times out on a loaded machine (it still waits for the agents to register)."""
    from ray._private import parameter

    original = parameter.RayParams.__init__
    if getattr(original, "fixed_ports", False):
        return

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in (
            "metrics_agent_port",
            "metrics_export_port",
            "dashboard_agent_listen_port",
            "runtime_env_agent_port",
        ):
            if not getattr(self, name, None):
                setattr(self, name, _free_port())
            FIXED_PORTS[name] = getattr(self, name)

    init.fixed_ports = True  # type: ignore[attr-defined]
    parameter.RayParams.__init__ = init  # type: ignore[method-assign]


# Below the kernel's ephemeral range (32768-60999 here) and apart from the ports the benchmarks give HAProxy
# frontends (16000-16999) and replicas (50000-53999): a port checked free here is not handed to an outgoing
# connection before the agent binds it, which a port from ``bind(0)`` can be (seen: "Address already in use").
AGENT_PORTS = range(20000, 30000)


def _free_port() -> int:
    for port in random.sample(AGENT_PORTS, 200):
        if port_is_free("0.0.0.0", port) and port not in FIXED_PORTS.values():
            return port
    raise RuntimeError(f"no free port for Ray's agents in {AGENT_PORTS.start}-{AGENT_PORTS.stop - 1}")


def _end_children() -> None:
    children = psutil.Process().children(recursive=True)
    for process in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(children, timeout=10)
