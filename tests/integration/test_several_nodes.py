"""The orchestrator on a Ray cluster of three nodes (a head and two workers on this machine, TLS on every gRPC
link) with its journal on PostgreSQL (over TLS, verify-full): runners and health monitors spread over the
nodes, and a worker node killed mid-canary (its raylet, workers and agents: SIGKILL) costs the deployments on
it a runner restart on another node, each still ending once.

The deployments run on the Kubernetes platform (the kmock API server, a controller played by the test, live
traffic counted in a real Prometheus): its state is the cluster's, so a runner restarted on any node finds
it. Ray calls go through driver processes of their own (``python -c``): this test process may already hold
the session's embedded Ray, and a driver of a TLS cluster needs the cluster's TLS settings.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from actors.placement import PLATFORM_NODE_LABEL
from adapters.kubernetes_platform import KubernetesPlatform
from engine.config import write_isolated_config
from engine.journal import Journal
from engine.models import Phase, Target
from engine.state import DeploymentState, EventKind
from harness.k8s_emulator import KubeEmulator
from harness.postgres import PostgresServer
from harness.ray_cluster import RayCluster, ray_cluster
from tests.integration.environments import (
    METRICS_SELECTOR,
    Cluster,
    Prometheus,
    image_artifact,
    kube_cluster,
    prometheus_server,
)
from tests.integration.scenarios import canary_strategy
from tests.integration.simulated_traffic import LiveTraffic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]  # a cluster start on a loaded machine
REPO = Path(__file__).resolve().parents[2]
SERVICES = ["mn-a", "mn-b", "mn-c"]
ENVIRONMENT = "development"
DEADLINE_S = 300.0
STEP_MS = 6000


@dataclass
class MultiNode:
    ray: RayCluster
    journal_url: str
    config: Path
    kube: Cluster
    prometheus: Prometheus
    settings: dict[str, Any]

    home: Path

    def driver_env(self) -> dict[str, str]:
        """A driver's environment: the cluster's, the configuration, and (for the CLI's own journal reads and
        the token file) the journal's URL and a home of its own."""
        return self.ray.client_env(
            ORCH_CONFIG=str(self.config),
            PYTHONPATH=str(REPO),
            ORCH_JOURNAL_URL=self.journal_url,
            ORCH_HOME=str(self.home),
        )

    def journal(self) -> Journal:
        return Journal(self.journal_url)


def cluster_config(folder: Path, platforms: dict[str, Any], warm_runners: int) -> Path:
    """An isolated configuration whose journal is the PostgreSQL in ``$ORCH_JOURNAL_URL`` (resolved on each
    node: the URL and its password are in the nodes' environment, not in the file)."""
    path = write_isolated_config(
        folder, namespace="orch-multinode", concurrency={"warmRunners": warm_runners}
    )
    data = yaml.safe_load(path.read_text())
    data["journal"] = {"backend": "postgresql", "url": "env:ORCH_JOURNAL_URL"}
    data["platforms"].update(platforms)
    path.write_text(yaml.safe_dump(data))
    return path


def driver(env: dict[str, str], code: str, timeout: float = 300) -> Any:
    """Run ``code`` in a driver process connected to the cluster; it prints its answer as JSON, last."""
    prelude = "import json, ray\nfrom orchestrator import DeploymentOrchestrator\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_multinode(
    stack: contextlib.ExitStack[Any], folder: Path, journal_url: str, prefix: str,
    node_env: dict[str, str] | None = None, **cluster_options: Any,
) -> MultiNode:  # fmt: skip
    """The Kubernetes emulator with its controller, Prometheus, a three-node TLS cluster whose journal is
    ``journal_url``, and the first admin token in the drivers' home; all stopped by ``stack``.
    ``cluster_options`` go to ``ray_cluster`` (head labels, the head's environment)."""
    emulator = stack.enter_context(KubeEmulator(gateway_api=False))
    labels = ["namespace", "service", "revision", "code"]
    (folder / "prometheus").mkdir()
    prometheus = stack.enter_context(prometheus_server(folder / "prometheus", labels))
    kube = stack.enter_context(kube_cluster(emulator, prefix))
    settings = {
        "host": emulator.url,
        "namespace": kube.namespace,
        "metricsUrl": prometheus.url,
        "metricsSelector": METRICS_SELECTOR,
        "splitReadyTimeout": 20,
        "retryBackoff": 0.05,
    }
    config = cluster_config(folder, {"kube": {"type": "kubernetes", "settings": settings}}, len(SERVICES))
    node_env = {
        "ORCH_JOURNAL_URL": journal_url, "ORCH_HOME": str(folder / "home"), "PYTHONPATH": str(REPO),
        **(node_env or {}),
    }  # fmt: skip
    cluster = stack.enter_context(ray_cluster(2, node_env=node_env, **cluster_options))
    running = MultiNode(cluster, journal_url, config, kube, prometheus, settings, folder / "driver-home")
    # The first admin token, in the drivers' $ORCH_HOME/token (the journal is the cluster's PostgreSQL).
    boot = subprocess.run(
        [sys.executable, "orchestrator.py", "token", "bootstrap"],
        cwd=REPO, env=running.driver_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert boot.returncode == 0, boot.stderr[-2000:]
    return running


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[MultiNode]:
    folder = tmp_path_factory.mktemp("multinode")
    url = postgres.create_database()
    with contextlib.ExitStack() as stack:
        running = start_multinode(stack, folder, url, "mn", head_labels={PLATFORM_NODE_LABEL: "true"})
        yield running
        assert not running.kube.controller.errors, running.kube.controller.errors


# ------------------------------------------------------------------------------------------------ TLS
def test_the_cluster_speaks_tls_only(multinode: MultiNode) -> None:
    """Every node process runs with RAY_USE_TLS=1, and the GCS refuses a plaintext gRPC client while a client
    with the cluster's certificate gets through."""
    for node in multinode.ray.nodes.values():
        raylets = [p for p in node.processes() if p.name() == "raylet"]
        assert raylets, f"no raylet for node {node.name}"
        assert all(p.environ().get("RAY_USE_TLS") == "1" for p in raylets)
    address = multinode.ray.gcs_address
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(plain).result(timeout=5)
    env = multinode.ray.env
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(env["RAY_TLS_CA_CERT"]).read_bytes(),
        private_key=Path(env["RAY_TLS_SERVER_KEY"]).read_bytes(),
        certificate_chain=Path(env["RAY_TLS_SERVER_CERT"]).read_bytes(),
    )
    with grpc.secure_channel(address, credentials) as encrypted:
        grpc.channel_ready_future(encrypted).result(timeout=30)


def test_the_journal_is_reached_over_tls(multinode: MultiNode, postgres: PostgresServer) -> None:
    """The actors' journal connections (application_name deploy-orchestrator) are all encrypted: the queen's
    and the six domain workers' at least (they connect as they start, after the queen answers)."""
    started = driver(
        multinode.driver_env(), "orch = DeploymentOrchestrator()\nprint(json.dumps(orch.journal_path))"
    )
    assert started == "env:ORCH_JOURNAL_URL"
    database = multinode.journal_url.split("?")[0].rsplit("/", 1)[1]
    query = (
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid "
        "WHERE a.application_name = 'deploy-orchestrator' AND a.datname = %s"
    )
    deadline, rows = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        with postgres.admin() as admin:
            rows = admin.execute(query, (database,)).fetchall()
        if len(rows) >= 7:
            break
        time.sleep(1)
    assert len(rows) >= 7 and all(row[0] for row in rows), rows


# ------------------------------------------------------------------------------------------------ nodes
def _node_names(env: dict[str, str]) -> dict[str, str]:
    code = (
        "ray.init()\n"
        "names = {n['NodeID']: next(r[5:] for r in n['Resources'] if r.startswith('node-') and r[5:] in "
        "('head', 'w1', 'w2')) for n in ray.nodes() if n['Alive']}\n"
        "print(json.dumps(names))"
    )
    return dict(driver(env, code))


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@contextlib.contextmanager
def health_endpoints(count: int) -> Iterator[list[str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield [f"http://127.0.0.1:{server.server_port}/health/{n}" for n in range(count)]
    finally:
        server.shutdown()
        thread.join(5)


def _monitor_nodes(env: dict[str, str], urls: list[str] | None) -> list[str]:
    """The nodes of the environment's health monitors, started anew when ``urls`` are given."""
    start = f"orch.monitor_environment_health({ENVIRONMENT!r}, {urls!r})\n" if urls else ""
    code = (
        "import time\norch = DeploymentOrchestrator()\n" + start + "deadline = time.monotonic() + 120\n"
        "while True:\n"
        "    try:\n"
        f"        health = orch.get_environment_health({ENVIRONMENT!r})\n"
        "        if health.healthy or time.monotonic() > deadline:\n"
        "            break\n"
        "    except Exception:\n"
        "        if time.monotonic() > deadline:\n"
        "            raise\n"
        "    time.sleep(1)\n"
        "print(json.dumps({'healthy': health.healthy, 'nodes': [m.node_id for m in health.monitors]}))"
    )
    answer = driver(env, code)
    assert answer["healthy"], answer
    return list(answer["nodes"])


# The domain worker killed as a node's loss would (Ray restarts it); its next answer comes from the new one.
_KILL_DO_001 = (
    "orch = DeploymentOrchestrator()\nworker = orch.worker('DO-001')\n"
    "ray.kill(worker, no_restart=False)\nray.get(worker.ping.remote(), timeout=180)\n"
)


def _submit(env: dict[str, str], version: str, strategy: dict[str, Any]) -> list[str]:
    artifacts = [image_artifact(s, version, False).model_dump(mode="json") for s in SERVICES]
    code = (
        "orch = DeploymentOrchestrator()\norch.warm_up(240)\n"
        f"ids = [orch.submit(a, {strategy!r}, {ENVIRONMENT!r}, 'kube') for a in {artifacts!r}]\n"
        "print(json.dumps(ids))"
    )
    return list(driver(env, code))


def _wait_all(journal: Journal, ids: list[str], during: Any = None) -> list[DeploymentState]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        states = [journal.state(i) for i in ids]
        if all(not s.active for s in states):
            return states
        if during is not None:
            during(states)
        time.sleep(0.5)
    raise AssertionError(f"not ended within {DEADLINE_S}s: {[journal.state(i).status() for i in ids]}")


def _runner_nodes(journal: Journal) -> dict[str, str]:
    """deployment id -> node of its runner, from the runners' assignment records."""
    return {r["deployment_id"]: r["node"] for r in journal.records("runner") if r.get("node")}


def _one_terminal_event_each(journal: Journal, ids: list[str]) -> None:
    for deployment_id in ids:
        finished = [e for e in journal.events(deployment_id) if e.kind is EventKind.FINISHED]
        assert len(finished) == 1, (deployment_id, finished)


@dataclass
class _Kill:
    """The worker node killed under a canary's runner, and the nodes seen running canaries before that."""

    node: str = ""
    deployment: str = ""
    at: float = 0.0
    runner_nodes: set[str] = field(default_factory=set)

    def __call__(
        self, journal: Journal, names: dict[str, str], cluster: RayCluster, states: list[Any]
    ) -> None:
        if self.node:
            return
        nodes = _runner_nodes(journal)
        self.runner_nodes |= {names.get(nodes.get(s.deployment_id, ""), "?") for s in states} - {"?"}
        for state in states:
            node = names.get(nodes.get(state.deployment_id, ""), "")
            weight = state.weights.get(state.candidate_revision or "", 0)
            if node in ("w1", "w2") and 0 < weight < 100 and state.step_started_at:
                self.node, self.deployment, self.at = node, state.deployment_id, time.time()
                assert cluster.kill_node(node), f"nothing to kill on {node}"
                return


def test_a_worker_node_killed_mid_canary_is_survived(multinode: MultiNode) -> None:
    env, journal = multinode.driver_env(), multinode.journal()
    names = _node_names(env)
    assert sorted(names.values()) == ["head", "w1", "w2"]
    first = _submit(env, "1.0.0", {"type": "rolling", "replicas": 2})
    assert [s.phase() for s in _wait_all(journal, first)] == [Phase.SUCCEEDED] * 3

    with health_endpoints(3) as urls:
        monitors = _monitor_nodes(env, urls)
        assert len(set(monitors)) >= 2, f"the health monitors share one node: {monitors}"
        # DO-001 restarted (as when its node dies) finds its monitors again through the journal.
        driver(env, f"{_KILL_DO_001}print(json.dumps(True))")
        assert _monitor_nodes(env, None) == monitors

        adapter = KubernetesPlatform(Path("/nonexistent"), multinode.settings)
        targets = [Target(service=s, environment=ENVIRONMENT) for s in SERVICES]
        with contextlib.ExitStack() as traffic:
            for target in targets:
                traffic.enter_context(
                    LiveTraffic(adapter, target, multinode.kube, multinode.prometheus.requests)
                )
            canaries = _submit(env, "2.0.0", {**canary_strategy(STEP_MS), "replicas": 2})
            kill = _Kill()
            ended = _wait_all(journal, canaries, lambda states: kill(journal, names, multinode.ray, states))
        adapter.close()
        assert kill.node, f"no canary's runner ran on a worker node: {kill.runner_nodes}"
        assert len(kill.runner_nodes) >= 2, f"the canaries' runners shared one node: {kill.runner_nodes}"
        assert [s.phase() for s in ended] == [Phase.SUCCEEDED] * 3, [s.status() for s in ended]
        _one_terminal_event_each(journal, first + canaries)
        restarts = [
            e
            for e in journal.events(kill.deployment)
            if e.kind is EventKind.NOTE and "runner_restarted" in e.data
        ]
        assert restarts and restarts[-1].at > kill.at, "the runner did not resume after the node was killed"
        assert names.get(restarts[-1].data["node"]) not in (None, kill.node), restarts[-1].data
        assert {d["metadata"]["name"] for d in multinode.kube.deployments()} == {
            f"{s}-{ENVIRONMENT}-2-0-0" for s in SERVICES
        }
        # The monitor that ran on the killed node was restarted on another one; all still answer.
        after = _monitor_nodes(env, None)
        assert len(after) == len(monitors) and not {names.get(n) for n in after} & {kill.node, None}, after
    assert journal.verify_chain() == (True, None)
