"""The drivers a chaos case deploys through, and the faults it injects.

Two drivers: the orchestrator embedded in this process (the queen, domain workers and runners of this
process's local Ray), and, for the whole-Ray fault, driver processes of their own (``driver.py``): the
first one starts an embedded Ray, deploys and submits; it is SIGKILLed with its raylet, GCS and workers
(every process of its Ray session); a second one starts a new Ray on the same journal, whose queen resumes
the deployment.

Faults are real crashes: SIGKILL to the actor's worker process (found by its pid), to the target's HAProxy,
to one replica process (a container killed through the engine on Docker), to a whole Ray session.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from chaoskit.cases import ENV, FIRST_STRATEGY, REPLICAS, WORKERS, Case
from chaoskit.machine import (
    case_artifact,
    docker_containers,
    recorded_router,
    router_processes,
)
from chaoskit.raystart import start_ray
from engine.config import write_isolated_config
from engine.journal import Journal
from engine.models import PlatformConfig, Target
from engine.state import EventKind

REPO = Path(__file__).resolve().parents[1]
DRIVER_START_S = 240.0  # a driver process starting Ray and deploying a first revision on a loaded machine
# The driver's protocol lines start with this: its stdout also carries what Ray forwards from its workers
# and prints itself (a "(raylet) ..." line is not the driver's answer).
PROTOCOL_MARK = "chaoskit-driver: "


class Driver(Protocol):
    def deploy_first(self, service: str, case: Case, platform: PlatformConfig) -> str: ...
    def submit(self, service: str, case: Case, platform: PlatformConfig, strategy: dict[str, Any]) -> str: ...
    def journal(self) -> Journal: ...
    def after_fault(self, deployment_id: str) -> None: ...
    def close(self) -> None: ...


def _platform_argument(platform: PlatformConfig) -> Any:
    return "local" if platform.type == "local" else platform.model_dump(by_alias=True)


class InProcessDriver:
    """The orchestrator embedded in this process."""

    def __init__(self, orch: Any) -> None:
        self.orch = orch

    def deploy_first(self, service: str, case: Case, platform: PlatformConfig) -> str:
        artifact = case_artifact(service, "1.0.0", False, platform)
        result = self.orch.deploy(
            artifact, FIRST_STRATEGY, ENV, _platform_argument(platform), timeout_s=DRIVER_START_S
        )
        if not result.success or not result.status.address:
            raise RuntimeError(f"the first revision of {service} did not go live: {result.status}")
        return str(result.status.address)

    def submit(self, service: str, case: Case, platform: PlatformConfig, strategy: dict[str, Any]) -> str:
        artifact = case_artifact(service, "2.0.0", case.bad, platform)
        return str(self.orch.submit(artifact, strategy, ENV, _platform_argument(platform)))

    def journal(self) -> Journal:
        return Journal(self.orch.journal_path)

    def after_fault(self, deployment_id: str) -> None:
        """Nothing to do: the embedded orchestrator goes on."""

    def close(self) -> None:
        """The embedded orchestrator outlives the case."""


class ProcessDriver:
    """Driver processes of their own (each with an embedded Ray) on an orchestrator home of their own."""

    def __init__(
        self, home: Path, number: int, frontend_ports: tuple[int, int], replica_ports: tuple[int, int]
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.config = write_isolated_config(
            home, frontend_ports, replica_ports, namespace=f"chaos-ray-{os.getpid()}-{number}"
        )
        self.env = {**os.environ, "ORCH_HOME": str(home), "PYTHONPATH": str(REPO)}
        for name in ("RAY_ADDRESS", "ORCH_TOKEN", "ORCH_CONFIG"):
            self.env.pop(name, None)
        self.processes: list[subprocess.Popen[str]] = []
        self.sessions: list[str] = []
        self.lines: dict[int, queue.Queue[str]] = {}

    def local_platform(self) -> PlatformConfig:
        from engine.config import load_config

        return load_config(self.config).platform("local")

    def _start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "chaoskit.driver", str(self.config), *args],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.home / f"driver-{len(self.processes)}.log", "w"),  # noqa: SIM115 (the child's)
            text=True,
        )
        self.processes.append(process)
        lines: queue.Queue[str] = queue.Queue()
        self.lines[process.pid] = lines
        other = self.home / f"driver-{len(self.processes) - 1}.stdout"
        threading.Thread(target=_read_lines, args=(process, lines, other), daemon=True).start()
        return process

    def _line(self, process: subprocess.Popen[str], what: str) -> dict[str, Any]:
        """The driver's next JSON line, within DRIVER_START_S."""
        try:
            line = self.lines[process.pid].get(timeout=DRIVER_START_S)
        except queue.Empty:
            line = ""
        if not line:
            if process.poll() is None:
                process.kill()
            process.wait(30)
            log = (self.home / f"driver-{self.processes.index(process)}.log").read_text()[-2000:]
            raise RuntimeError(f"no line from the driver before {what} (exit {process.returncode}): {log}")
        data: dict[str, Any] = json.loads(line)
        if "session" in data:
            self.sessions.append(str(data["session"]))
        return data

    def deploy_first(self, service: str, case: Case, platform: PlatformConfig) -> str:
        first = self._start("start", service, json.dumps({"bad": case.bad, "replicas": REPLICAS}))
        self._line(first, "its Ray started")
        return str(self._line(first, "the first revision went live")["address"])

    def submit(self, service: str, case: Case, platform: PlatformConfig, strategy: dict[str, Any]) -> str:
        first = self.processes[0]
        assert first.stdin is not None
        first.stdin.write(json.dumps(strategy) + "\n")
        first.stdin.flush()
        return str(self._line(first, "the candidate was submitted")["deployment_id"])

    def journal(self) -> Journal:
        return Journal(self.home / "journal.db")

    def kill_ray(self) -> dict[str, Any]:
        """SIGKILL the first driver and every process of its Ray session (raylet, GCS, workers) at once."""
        first = self.processes[0]
        victims = [*_session_processes(self.sessions[0]), psutil.Process(first.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            victims += psutil.Process(first.pid).children(recursive=True)
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        first.wait(30)
        names = sorted({_name(p) for p in victims})
        left = _kill_session(self.sessions[0])  # a worker the raylet started meanwhile
        return {"killed": len(victims), "names": names, "started_meanwhile": left}

    def after_fault(self, deployment_id: str) -> None:
        second = self._start("wait", deployment_id)
        self._line(second, "its Ray started")  # the new queen resumes the deployment from the journal

    def close(self) -> None:
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(60)
            if process.poll() is None:
                process.kill()
                process.wait(30)
        for session in self.sessions:
            _kill_session(session)


def _read_lines(process: subprocess.Popen[str], lines: queue.Queue[str], other: Path) -> None:
    """Every protocol line the driver prints (its mark taken off), then "" once it has closed its output;
    any other line of its stdout is kept in ``other``."""
    assert process.stdout is not None
    with other.open("w") as kept:
        for line in process.stdout:
            if line.startswith(PROTOCOL_MARK):
                lines.put(line.removeprefix(PROTOCOL_MARK))
            else:
                kept.write(line)
                kept.flush()
    lines.put("")


def _name(process: psutil.Process) -> str:
    try:
        return str(process.name())
    except psutil.NoSuchProcess:
        return "?"


def _session_processes(session: str) -> list[psutil.Process]:
    """Every process of one Ray session (its folder is on their command lines); never another's."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter(["cmdline"]):
        if session in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def _kill_session(session: str) -> int:
    left = _session_processes(session)
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    return len(left)


def embedded(factory: Any, config: Path) -> Any:
    """An embedded orchestrator (``factory`` is DeploymentOrchestrator) on a Ray started the way a loaded
    machine needs (chaoskit/raystart.py)."""
    from engine.config import load_config

    start_ray(load_config(config).namespace)
    return factory(config_path=config, num_cpus=2)


# --------------------------------------------------------------------------------------------
# Where the cases run
# --------------------------------------------------------------------------------------------
@dataclass
class Bench:
    """The embedded orchestrator of this process and a folder for everything else."""

    orch: Any
    home: Path
    ray_frontends: tuple[int, int] = (16500, 16599)
    ray_replicas: tuple[int, int] = (54000, 54999)
    _processes: int = 0

    @property
    def local(self) -> PlatformConfig:
        return self.orch.config.platform("local")  # type: ignore[no-any-return]

    def supervised(self, case: Case) -> bool:
        return case.fault != "ray"  # the embedded orchestrator's DO-001 keeps watching

    def driver_for(self, case: Case) -> Driver:
        if case.fault != "ray":
            return InProcessDriver(self.orch)
        self._processes += 1
        home = self.home / f"ray-{self._processes}"
        return ProcessDriver(home, self._processes, self.ray_frontends, self.ray_replicas)

    def platform_for(self, case: Case, driver: Driver) -> PlatformConfig:
        from chaoskit.machine import docker_platform

        if isinstance(driver, ProcessDriver):
            return driver.local_platform()
        return self.local if case.platform == "local" else docker_platform(self.home)


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------
def actor_process(title: str) -> int:
    """The pid of this process's own Ray worker whose title starts with ``title`` (e.g. ray::QueenImpl)."""
    for process in psutil.Process(os.getpid()).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, IndexError):
            if process.cmdline()[0].startswith(title):
                return int(process.pid)
    raise RuntimeError(f"no worker process of this driver's Ray is titled {title}")


def _actor_pid(handle: Any) -> int:
    import ray

    pid: Any = ray.get(handle.pid.remote(), timeout=60)
    return int(pid)


def _runner_pid(bench: Bench, journal: Journal, deployment_id: str) -> int:
    import ray

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        admitted = [e for e in journal.events(deployment_id) if e.kind is EventKind.ADMITTED]
        if admitted and admitted[0].data.get("runner"):
            runner = ray.get_actor(admitted[0].data["runner"], namespace=bench.orch.namespace)
            return _actor_pid(runner)
        time.sleep(0.05)
    raise TimeoutError(f"{deployment_id} was not admitted within 120 s")


def prepare_victim(bench: Bench, driver: Driver, case: Case, deployment_id: str) -> int | None:
    """The pid of the actor to kill, found before the moment (so that the kill lands on it)."""

    if case.fault == "queen":
        return actor_process("ray::QueenImpl")
    if case.fault == "runner":
        return _runner_pid(bench, driver.journal(), deployment_id)
    if case.fault in WORKERS:
        return _actor_pid(bench.orch.worker(case.fault))
    return None


def _kill_replica(platform: PlatformConfig, target: Target, revision: str) -> dict[str, Any]:
    if platform.type == "docker":
        for container in docker_containers(target):
            labels = container.labels
            if container.status == "running" and labels.get(_revision_label()) == revision:
                container.kill()
                return {"container": container.name, "revision": revision}
        return {"missed": f"no running container of {revision}"}
    from adapters import create_platform

    adapter: Any = create_platform(platform)
    try:
        alive = [r for r in adapter.backend.list_replicas(target, revision) if r.alive]
    finally:
        adapter.close()
    if not alive:
        return {"missed": f"no running replica of {revision}"}
    os.kill(int(alive[0].ident), signal.SIGKILL)
    return {"pid": int(alive[0].ident), "revision": revision, "index": alive[0].index}


def _revision_label() -> str:
    from adapters.docker_backend import LABEL_REVISION

    return LABEL_REVISION


def inject(
    driver: Driver, case: Case, target: Target, platform: PlatformConfig, victim: int | None
) -> dict[str, Any]:
    """The fault itself; says what was killed (or why nothing was)."""
    if case.fault == "ray":
        assert isinstance(driver, ProcessDriver)
        return driver.kill_ray()
    if case.fault == "router":
        pid = recorded_router(platform, target)
        if pid is None or pid not in router_processes(platform, target):
            return {"missed": f"no HAProxy recorded for {target.key}"}
        os.kill(pid, signal.SIGKILL)
        return {"pid": pid}
    if case.fault in ("stable_replica", "candidate_replica"):
        revision = "1-0-0" if case.fault == "stable_replica" else "2-0-0"
        return _kill_replica(platform, target, revision)
    assert victim is not None
    try:
        os.kill(victim, signal.SIGKILL)
    except ProcessLookupError:
        return {"missed": f"pid {victim} had already ended"}
    return {"pid": victim}
