"""Where actors run on a Ray cluster of several nodes.

- Runners and health monitors are spread over the alive nodes, round robin, each with a node affinity. The
  affinity is hard: Ray 2.60 placed actors with a soft one elsewhere more often than not (checked on a TLS
  cluster of three nodes). An actor whose node dies is therefore not restarted by Ray: the queen starts the
  runner again (same name, another node; it finds its deployment in the journal) and DO-001 a health monitor.
- A deployment on a platform that keeps state on its node (``adapters.keeps_node_state``: the HAProxy router
  of local, docker and vm, and the local platform's processes) runs on the platform node: the node labelled
  ``deploy-orchestrator/platform-node=true`` (``ray start --labels``), else the head node. Its runner is
  pinned there (hard affinity), and so are the platform calls of the domain workers (``on_platform_node``).
  When that node is gone, the platform's state is gone with it: its deployments fail with that reason rather
  than start over elsewhere on an empty state.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.common import call
from adapters import create_platform, keeps_node_state
from engine.admission import NoPlaceToRun
from engine.models import PlatformConfig

PLATFORM_NODE_LABEL = "deploy-orchestrator/platform-node"
HEAD_RESOURCE = "node:__internal_head__"
PLATFORM_CALL_TIMEOUT_S = 120.0
_next_node = itertools.count()


class PlatformNodeGone(NoPlaceToRun):
    """The node that holds a platform's state (router, processes) is no longer in the cluster."""


def alive_nodes() -> list[str]:
    """The ids of the alive nodes, in a stable order."""
    return sorted(str(n["NodeID"]) for n in ray.nodes() if n.get("Alive"))


def spread_over_nodes(count: int) -> list[NodeAffinitySchedulingStrategy]:
    """One scheduling strategy per actor, round robin over the alive nodes, continuing where the previous call
    of this process stopped (so that successive runners land on successive nodes)."""
    nodes = alive_nodes()
    return [
        NodeAffinitySchedulingStrategy(node_id=nodes[next(_next_node) % len(nodes)], soft=False)
        for _ in range(count)
    ]


def platform_node(config: PlatformConfig) -> str | None:
    """The node whose state the platform needs, or None when it needs none (or the cluster has one node).
    Raises PlatformNodeGone when that node has left the cluster."""
    if not keeps_node_state(config):
        return None
    nodes = ray.nodes()
    if sum(1 for n in nodes if n.get("Alive")) <= 1:
        return None
    labelled = [n for n in nodes if (n.get("Labels") or {}).get(PLATFORM_NODE_LABEL) == "true"]
    chosen = labelled or [n for n in nodes if HEAD_RESOURCE in (n.get("Resources") or {})]
    alive = sorted(str(n["NodeID"]) for n in chosen if n.get("Alive"))
    if not alive:
        where = f"labelled {PLATFORM_NODE_LABEL}=true" if labelled else "the head node"
        raise PlatformNodeGone(
            f"platform {config.type}: its node ({where}) left the cluster, and with it the state of its "
            "router and replicas"
        )
    return alive[0]


def platform_strategy(config: PlatformConfig) -> NodeAffinitySchedulingStrategy | None:
    """A hard affinity to the platform's node, or None when the platform may be reached from any node."""
    node = platform_node(config)
    return None if node is None else NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def _platform_call(config: PlatformConfig, method: str, *args: Any) -> Any:
    adapter = create_platform(config)
    try:
        return getattr(adapter, method)(*args)
    finally:
        adapter.close()


_remote_platform_call = ray.remote(num_cpus=0, max_retries=0)(_platform_call)


async def on_platform_node(config: PlatformConfig, method: str, *args: Any) -> Any:
    """``adapter.method(*args)`` on a fresh adapter, where the platform's state is: in this process when any
    node will do, else in a task on the platform's node."""
    strategy = platform_strategy(config)
    if strategy is None:
        return await asyncio.to_thread(_platform_call, config, method, *args)
    task = _remote_platform_call.options(scheduling_strategy=strategy)
    return await call(task.remote(config, method, *args), PLATFORM_CALL_TIMEOUT_S)
