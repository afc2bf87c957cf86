"""Starting the chaos matrix's embedded Rays on a machine that other loads keep busy.

Ray 2.60 gives a new raylet 30 s to register, and the raylet waits 15 s (hard-coded) for its dashboard agent
to write the ports it listens on; an agent that takes longer to import (seen here: 50 s with a load average
above 50 on 2 cores) makes ``ray.init`` fail with "timed out during startup". As tests/ray_cluster.py does
for ``ray start``: the agents' ports are chosen before the start (``ray.init`` has no arguments for them, so
the parameters it builds are completed here), and the HTTP listen port, which Ray 2.60 does not pass on to
the raylet, is written to the file the raylet waits for as soon as the raylet has its node id; the agent
writes the same port when it gets there. Used only around ``ray.init`` by chaoskit's drivers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from harness.ray_cluster import persist_listen_port

AGENT_PORTS = ("metrics_agent_port", "runtime_env_agent_port", "metrics_export_port")
RAY_TEMP = Path("/tmp/ray")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def agent_ports_chosen() -> Iterator[None]:
    """Within: a Ray started by this process has its agents' ports chosen in advance."""
    from ray._private import parameter

    original = parameter.RayParams.__init__
    listen_port = free_port()

    def chosen(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        for name in AGENT_PORTS:
            if not getattr(self, name, None):
                setattr(self, name, free_port())
        self.dashboard_agent_listen_port = listen_port

    stop = threading.Event()
    writer = threading.Thread(target=_write_listen_port, args=(listen_port, stop), daemon=True)
    parameter.RayParams.__init__ = chosen  # type: ignore[method-assign]
    writer.start()
    try:
        yield
    finally:
        parameter.RayParams.__init__ = original  # type: ignore[method-assign]
        stop.set()
        writer.join(5)


def _write_listen_port(port: int, stop: threading.Event) -> None:
    """Write ``dashboard_agent_listen_port_<node id>`` into this process's new session (its name ends with
    this pid) once the raylet has logged its node id."""
    started = {p.name for p in RAY_TEMP.glob(f"session_*_{os.getpid()}")}
    while not stop.wait(0.05):
        for session in RAY_TEMP.glob(f"session_*_{os.getpid()}"):
            if session.name not in started:
                persist_listen_port(session, port)


AGENT_TIMEOUT_MS = 180_000
START_NICENESS = -20  # as tests/ray_cluster.py: Ray's agents then beat the raylet's 15 s sooner


def start_ray(namespace: str, num_cpus: int = 2, attempts: int = 10) -> None:
    """This process's embedded Ray, started as the driver starts it (``DeploymentOrchestrator._connect``,
    so that a driver made afterwards finds it running and uses it), with the agents' ports chosen, a higher
    CPU priority while it starts (as root; its processes get this process's own back once it runs), and
    again when the start times out."""
    import ray

    from client.driver import DeploymentOrchestrator

    # The raylet exits when its runtime-env agent has not answered within 30 s (the default); seen here.
    os.environ.setdefault("RAY_agent_register_timeout_ms", str(AGENT_TIMEOUT_MS))
    driver = DeploymentOrchestrator.__new__(DeploymentOrchestrator)
    driver.namespace = namespace
    before = os.getpriority(os.PRIO_PROCESS, 0)
    for attempt in range(attempts):
        if os.geteuid() == 0:
            os.setpriority(os.PRIO_PROCESS, 0, START_NICENESS)
        try:
            with agent_ports_chosen():
                driver._connect(None, num_cpus)
            return
        except Exception as error:
            starting = any(m in str(error) for m in ("timed out during startup", "Raylet", "raylet"))
            if not starting or attempt == attempts - 1:
                raise
            print(f"Ray did not start ({error}); trying again", file=sys.stderr)
            ray.shutdown()
        finally:
            _set_priority(before)


def _set_priority(niceness: int) -> None:
    os.setpriority(os.PRIO_PROCESS, 0, niceness)
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            process.nice(niceness)
