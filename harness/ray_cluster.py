"""A Ray cluster of several nodes on this machine, with TLS on every gRPC link, for tests and benchmarks.

``ray start --head`` and ``ray start --address`` for each worker, each node with its own ``--temp-dir`` (short
paths: Ray's socket paths must fit in 107 bytes), its own ``--resources`` (``{"node-<name>": 1}``) and labels.
Certificates come from a CA made for the run (``scripts/tls.py``); ``RAY_AUTH_MODE`` is set explicitly with a
token file of the run's own. Every process a node starts inherits ``ORCH_TEST_CLUSTER=<folder>``, which is how
``stop`` finds this cluster's processes (and only them) even when a killed raylet left its workers behind.

    with ray_cluster(workers=2, node_env={"ORCH_JOURNAL_URL": url}) as cluster:
        subprocess.run([...], env=cluster.client_env())   # a driver: RAY_ADDRESS, TLS and auth settings
        cluster.kill_node("w1")                            # raylet, its workers and agents: SIGKILL
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from harness.ports import free_port
from scripts.tls import make_ca, make_cert

START_TIMEOUT_S = 240
MARKER = "ORCH_TEST_CLUSTER"
# Node loss noticed in seconds rather than the default ~30 s (the GCS pings each raylet).
FAST_FAILURE_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
# A raylet waits 15 s for its dashboard agent's port files (hard-coded), and `ray start` 30 s for the raylet
# to register (hard-coded in ray/_private/node.py); on a loaded 2-core machine the agents can take longer.
# So a `ray start` that gave up on a raylet still starting is not taken as a failure (the node counts as
# started once its raylet's log says so: RAYLET_STARTED), and a node whose raylet died is started again.
SLOW_MACHINE = {"RAY_agent_register_timeout_ms": "180000"}
GAVE_UP = "timed out during startup"
RAYLET_STARTED = re.compile(r"Raylet of id, \w+ started")
NODE_ID = re.compile(r"Setting node ID node_id=(\w+)")
START_ATTEMPTS = 3
# A node starts with a higher CPU priority (as root), so that its agents beat the raylet's 15 s on a machine
# others load; its processes get the normal priority back once it runs.
START_NICENESS = -20


def _node_ip() -> str:
    """The address Ray gives its nodes here (it prefers the machine's address over loopback)."""
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())


@dataclass
class RayNode:
    name: str
    temp_dir: Path
    resources: dict[str, float]
    labels: dict[str, str]
    head: bool = False

    def processes(self) -> list[psutil.Process]:
        """The node's raylet (and GCS, dashboard, monitors on the head) with every descendant: its workers,
        agents and the actors' children that did not detach themselves."""
        roots = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(self.temp_dir) in " ".join(p.info["cmdline"] or [])
        ]
        found: dict[int, psutil.Process] = {}
        for root in roots:
            found[root.pid] = root
            with contextlib.suppress(psutil.NoSuchProcess):
                found.update({child.pid: child for child in root.children(recursive=True)})
        return list(found.values())


@dataclass
class RayCluster:
    folder: Path
    gcs_address: str
    tls: bool
    node_ip: str
    nodes: dict[str, RayNode] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # what every node and client needs (auth, TLS)
    node_environment: dict[str, str] = field(default_factory=dict, repr=False)  # what the nodes started with

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a driver process that connects to this cluster."""
        base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return {**base, **self.env, "RAY_ADDRESS": self.gcs_address, **extra}

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL a node: its raylet, workers and agents (the whole tree is collected before any dies, so
        nothing escapes to PID 1 in between). Returns the pids killed."""
        victims = self.nodes[name].processes()
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        return [p.pid for p in victims]


def _tls_env(folder: Path, node_ip: str) -> dict[str, str]:
    ca = make_ca(folder / "ca")
    pair = make_cert(ca, folder / "tls", "node", ips=sorted({"127.0.0.1", node_ip}), dns=["localhost"])
    return {
        "RAY_USE_TLS": "1",
        "RAY_TLS_SERVER_CERT": str(pair.cert),
        "RAY_TLS_SERVER_KEY": str(pair.key),
        "RAY_TLS_CA_CERT": str(ca.cert),
    }


def _start_args(node: RayNode, head_address: str | None, port: int = 0, listen_port: int = 0) -> list[str]:
    args = ["ray", "start", f"--temp-dir={node.temp_dir}", "--num-cpus=1", "--object-store-memory=100000000",
            "--disable-usage-stats", f"--resources={json.dumps(node.resources)}"]  # fmt: skip
    # Agent ports chosen here: a raylet then registers without waiting for its agents to write theirs (they
    # take long to start on a loaded machine, past what `ray start` waits for the raylet).
    agents = ["--metrics-export-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    args += [f"{option}={free_port()}" for option in agents]
    args.append(f"--dashboard-agent-listen-port={listen_port or free_port()}")
    if node.labels:
        args.append("--labels=" + ",".join(f"{k}={v}" for k, v in node.labels.items()))
    if head_address is None:
        return [*args, "--head", f"--port={port}", "--include-dashboard=false"]
    # One log monitor per machine (Ray's advice): the head's reads every node's logs here.
    return [*args, f"--address={head_address}", "--include-log-monitor=false"]


def _start_node(node: RayNode, env: dict[str, str], head_address: str | None, gcs_port: int = 0) -> int:
    """``ray start`` for one node, again (after killing what the failed attempt left) when it times out.
    Returns the head's GCS port: ``gcs_port`` when given (a head started again), else a new one at each
    attempt."""
    output = ""
    for _ in range(START_ATTEMPTS):
        port, listen_port = (gcs_port or free_port() if head_address is None else 0), free_port()
        starting = subprocess.Popen(
            _start_args(node, head_address, port, listen_port), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=_higher_priority,
        )  # fmt: skip
        output, code = _while_starting(node, starting, listen_port)
        if (code == 0 or GAVE_UP in output) and _raylet_started(node):
            _normal_priority(node)
            return port
        output += "\n" + _raylet_log_tail(node)
        for process in node.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        shutil.rmtree(node.temp_dir, ignore_errors=True)
    raise RuntimeError(f"node {node.name}: `ray start` failed {START_ATTEMPTS} times: {output[-3000:]}")


def _while_starting(node: RayNode, starting: subprocess.Popen[str], port: int) -> tuple[str, int | None]:
    """Wait for `ray start` (bounded), writing the agent's listen-port file for the raylet meanwhile.

    Ray 2.60 does not pass ``--dashboard-agent-listen-port`` on to the raylet, which then waits (15 s,
    hard-coded) for the agent to write that port to a file, and aborts when the agent starts slower (a loaded
    machine). The port is ours (chosen above), so the file is written as soon as the raylet has its node id;
    the agent writes the same port when it gets there."""
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(starting.communicate()[0]), daemon=True)
    reader.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while reader.is_alive() and time.monotonic() < deadline:
        _persist_listen_port(node, port)
        reader.join(0.05)
    if reader.is_alive():
        starting.kill()
        reader.join(30)
    return "".join(output), starting.returncode


def _persist_listen_port(node: RayNode, port: int) -> None:
    with contextlib.suppress(OSError):
        persist_listen_port((node.temp_dir / "session_latest").resolve(strict=True), port)


def persist_listen_port(session: Path, port: int) -> None:
    """Write ``dashboard_agent_listen_port_<node id>`` into a Ray session once its raylet has logged its node
    id (the raylet then need not wait for the agent to publish the port); nothing yet when it has not."""
    with contextlib.suppress(OSError, StopIteration):
        log = (session / "logs" / "raylet.out").read_text(errors="replace")
        node_id = next(m.group(1) for m in NODE_ID.finditer(log))
        target = session / f"dashboard_agent_listen_port_{node_id}"
        if not target.exists():
            partial = target.with_name(target.name + ".tmp")
            partial.write_text(str(port))
            partial.rename(target)


def _raylet_log_tail(node: RayNode, lines: int = 8) -> str:
    """The end of the node's raylet log (why it did not start), without the periodic state dumps."""
    log = node.temp_dir / "session_latest" / "logs" / "raylet.out"
    with contextlib.suppress(OSError):
        kept = [line for line in log.read_text(errors="replace").splitlines() if "(raylet)" in line]
        return "raylet.out: " + "\n".join(line[:300] for line in kept[-lines:])
    return "raylet.out: (none)"


def _higher_priority() -> None:
    if os.geteuid() == 0:
        os.nice(START_NICENESS)


def _normal_priority(node: RayNode) -> None:
    for process in node.processes():
        with contextlib.suppress(psutil.Error):
            process.nice(0)


def _raylet_started(node: RayNode) -> bool:
    """Whether the node's raylet registered (its log says it started), waiting for it while it runs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    log = node.temp_dir / "session_latest" / "logs" / "raylet.out"
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if RAYLET_STARTED.search(log.read_text(errors="replace")):
                return True
        if not any(p.name() == "raylet" for p in node.processes()):
            return False
        time.sleep(0.5)
    return False


def start_cluster(
    workers: int = 2,
    tls: bool = True,
    node_env: dict[str, str] | None = None,
    head_labels: dict[str, str] | None = None,
    head_env: dict[str, str] | None = None,
) -> RayCluster:
    """Start a head and ``workers`` worker nodes (named ``head``, ``w1``, ``w2`` ...); ``stop_cluster`` it.
    Nodes start one after the other: in parallel they overload a 2-core machine past Ray's start-up limits.
    ``head_env`` goes to the head only (``RAY_REDIS_ADDRESS`` for GCS fault tolerance)."""
    folder = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: socket paths must fit in 107 bytes
    node_ip = _node_ip()
    token = folder / "token"
    token.write_text(secrets.token_hex(32))
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        **(_tls_env(folder, node_ip) if tls else {}),
    }
    cluster = RayCluster(folder, "", tls, node_ip, env=env)
    node_environment = {**os.environ, **env, **FAST_FAILURE_DETECTION, **SLOW_MACHINE, **(node_env or {})}
    node_environment[MARKER] = str(folder)
    node_environment.pop("RAY_ADDRESS", None)
    cluster.node_environment = {**node_environment, **(head_env or {})}
    try:
        head = RayNode("head", folder / "h", {"node-head": 1}, dict(head_labels or {}), head=True)
        cluster.nodes["head"] = head
        port = _start_node(head, cluster.node_environment, None)
        cluster.gcs_address = f"{node_ip}:{port}"
        for index in range(1, workers + 1):
            node = RayNode(f"w{index}", folder / f"w{index}", {f"node-w{index}": 1}, {})
            cluster.nodes[node.name] = node
            _start_node(node, node_environment, cluster.gcs_address)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def restart_head(cluster: RayCluster) -> None:
    """Start the killed head again on the same GCS address (a new session folder of its own): with GCS fault
    tolerance the new GCS loads the cluster's state from Redis and the worker nodes reconnect to it."""
    head = cluster.nodes["head"]
    for process in head.processes():  # what the kill left (none when kill_node ran)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGKILL)
    head.temp_dir = cluster.folder / f"h{secrets.token_hex(2)}"
    port = int(cluster.gcs_address.rsplit(":", 1)[1])
    _start_node(head, cluster.node_environment, None, gcs_port=port)


def own_processes(folder: Path) -> list[psutil.Process]:
    """Every process that inherited this cluster's marker (nodes, workers, and what actors started)."""
    mine = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.environ().get(MARKER) == str(folder):
                mine.append(process)
    return mine


def stop_cluster(cluster: RayCluster) -> None:
    """SIGKILL every process of this cluster (never another's) and remove its folder."""
    for _ in range(3):  # a raylet may start a worker while its siblings die
        victims = own_processes(cluster.folder)
        for node in cluster.nodes.values():
            victims += node.processes()
        if not victims:
            break
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        time.sleep(0.5)
    shutil.rmtree(cluster.folder, ignore_errors=True)


@contextmanager
def ray_cluster(
    workers: int = 2,
    tls: bool = True,
    node_env: dict[str, str] | None = None,
    head_labels: dict[str, str] | None = None,
    head_env: dict[str, str] | None = None,
) -> Iterator[RayCluster]:
    cluster = start_cluster(workers, tls, node_env, head_labels, head_env)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
