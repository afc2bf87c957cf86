"""The head node lost mid-canary and started again, with Ray's GCS fault tolerance (the GCS's tables in an
external Redis, Debian's ``redis-server``): the worker nodes and the orchestrator's actors on them wait for
the GCS, reconnect to the new head, and the canaries end once each.

The same three-node TLS cluster as tests/integration/test_several_nodes.py (journal on PostgreSQL over TLS,
Kubernetes on the API emulator, live traffic counted in Prometheus), with ``RAY_REDIS_ADDRESS`` on the head
and ``RAY_gcs_rpc_server_reconnect_timeout_s`` raised on every node (the time raylets and workers wait for a
lost GCS before they exit; Ray's default is 60 s, and the head's ``ray start`` alone takes about a minute on
this loaded machine). The head is killed (GCS, raylet, dashboard, its workers: SIGKILL) while a canary has
traffic on its candidate, left dead for a while, then started again on the same address.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.kubernetes_platform import KubernetesPlatform
from engine.models import Phase, Target
from engine.state import EventKind
from harness.postgres import PostgresServer
from harness.ray_cluster import RayCluster, restart_head
from harness.redis import redis_server
from tests.integration.scenarios import canary_strategy
from tests.integration.simulated_traffic import LiveTraffic
from tests.integration.test_several_nodes import (
    ENVIRONMENT,
    SERVICES,
    STEP_MS,
    MultiNode,
    _node_names,
    _one_terminal_event_each,
    _submit,
    _wait_all,
    driver,
    start_multinode,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]
HEAD_DOWN_S = 10.0  # how long the head stays dead before it is started again
RECONNECT_TIMEOUT_S = "600"


@pytest.fixture(scope="module")
def head_ft(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[MultiNode]:
    folder = tmp_path_factory.mktemp("headloss")
    url = postgres.create_database()
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        reconnect = {"RAY_gcs_rpc_server_reconnect_timeout_s": RECONNECT_TIMEOUT_S}
        head_env = {"RAY_REDIS_ADDRESS": redis.address}
        running = start_multinode(stack, folder, url, "hl", node_env=reconnect, head_env=head_env)
        yield running
        assert not running.kube.controller.errors, running.kube.controller.errors


@dataclass
class _HeadLoss:
    """Kills the head once a canary's candidate has traffic; starts it again HEAD_DOWN_S later."""

    cluster: RayCluster
    killed_at: float = 0.0
    restarted_at: float = 0.0
    seen_mid_canary: list[str] = field(default_factory=list)

    def __call__(self, states: list[Any]) -> None:
        if self.killed_at:
            if not self.restarted_at and time.time() - self.killed_at > HEAD_DOWN_S:
                restart_head(self.cluster)
                self.restarted_at = time.time()
            return
        for state in states:
            weight = state.weights.get(state.candidate_revision or "", 0)
            if 0 < weight < 100 and state.step_started_at:
                self.seen_mid_canary.append(state.deployment_id)
                assert self.cluster.kill_node("head"), "nothing to kill on the head"
                self.killed_at = time.time()
                return


def _queen_and_workers_answer(env: dict[str, str]) -> list[str]:
    code = (
        "orch = DeploymentOrchestrator()\n"
        "codes = ['DO-001', 'DO-002', 'DO-003', 'DO-004', 'DO-005', 'DO-006']\n"
        "answers = [ray.get(orch.worker(c).ping.remote(), timeout=180) for c in codes]\n"
        "print(json.dumps([s.phase.value for s in orch.history(20)]))"
    )
    return list(driver(env, code, timeout=600))


def test_the_head_node_lost_mid_canary_is_survived_with_gcs_fault_tolerance(head_ft: MultiNode) -> None:
    env, journal = head_ft.driver_env(), head_ft.journal()
    before = _node_names(env)
    assert sorted(before.values()) == ["head", "w1", "w2"]
    first = _submit(env, "1.0.0", {"type": "rolling", "replicas": 2})
    assert [s.phase() for s in _wait_all(journal, first)] == [Phase.SUCCEEDED] * 3

    adapter = KubernetesPlatform(Path("/nonexistent"), head_ft.settings)
    loss = _HeadLoss(head_ft.ray)
    with contextlib.ExitStack() as traffic:
        for service in SERVICES:
            target = Target(service=service, environment=ENVIRONMENT)
            traffic.enter_context(LiveTraffic(adapter, target, head_ft.kube, head_ft.prometheus.requests))
        canaries = _submit(env, "2.0.0", {**canary_strategy(STEP_MS), "replicas": 2})
        ended = _wait_all(journal, canaries, loss)
    adapter.close()
    assert loss.killed_at and loss.restarted_at, "the head was not killed mid-canary and started again"
    assert [s.phase() for s in ended] == [Phase.SUCCEEDED] * 3, [s.status() for s in ended]
    _one_terminal_event_each(journal, first + canaries)
    assert journal.verify_chain() == (True, None)

    # The worker nodes reconnected (the same node ids); the head came back as a new node on the same address.
    after = _node_names(env)
    workers = {node_id for node_id, name in before.items() if name != "head"}
    assert workers <= set(after), (before, after)
    assert sorted(after.values()) == ["head", "w1", "w2"] and set(after) - workers != set(before) - workers
    # A runner that was on the head resumed on a worker node, once, after the kill.
    head_id = next(node_id for node_id, name in before.items() if name == "head")
    for deployment_id in canaries:
        restarts = [
            e.data for e in journal.events(deployment_id)
            if e.kind is EventKind.NOTE and "runner_restarted" in e.data and e.at > loss.killed_at
        ]  # fmt: skip
        assert len(restarts) <= 1, restarts
        assert all(r["previous_node"] == head_id and r["node"] in workers for r in restarts), restarts
    # A new driver finds the queen and the six domain workers answering, and the history complete.
    assert _queen_and_workers_answer(env).count(Phase.SUCCEEDED.value) == 6
