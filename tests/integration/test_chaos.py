"""The chaos matrix, CI-sized: every fault once, strategies and moments rotated across the faults, good and
bad candidates, short steps. The same case runner as benchmarks/chaos.py (chaoskit/run.py), which checks:
exactly one terminal event per deployment, the right outcome and live revision, no platform object
duplicated or left behind, no traffic left on a revision judged bad, failed requests within the fault's
bound. The full matrix (every strategy x fault x moment) is the benchmark's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chaoskit.cases import FAULTS, Case, Outcome
from chaoskit.faults import Bench
from chaoskit.raystart import start_ray
from chaoskit.run import run_case
from harness.environments import docker_engine_started

pytestmark = pytest.mark.integration
STEP_MS = 2000

# Each fault once on the local platform, strategy and moment rotated; the domain worker that owns a
# strategy is killed while that strategy runs; bad candidates where the fault meets a rollback.
LOCAL_SLICE = [
    Case("canary", "queen", "boundary"),
    Case("blue_green", "runner", "mid_step", bad=True),
    Case("rolling", "DO-001", "boundary"),
    Case("blue_green", "DO-002", "mid_step"),
    Case("canary", "DO-003", "mid_step"),
    Case("canary", "DO-004", "mid_step", bad=True),
    Case("rolling", "DO-005", "mid_step"),
    Case("rolling", "DO-006", "boundary"),
    Case("canary", "router", "mid_step"),
    Case("rolling", "stable_replica", "mid_step", bad=True),
    # A good candidate losing a replica: started again, then promoted (engine/reconciler.py
    # CANDIDATE_RESTARTS); blue-green's switch waits for every green server, so it is the harder case.
    Case("blue_green", "candidate_replica", "mid_step"),
    # A canary losing its only candidate replica mid-analysis: the requests the router sent the dead
    # replica are no verdict (the full matrix rolled this one back on them before the fresh window).
    Case("canary", "candidate_replica", "mid_step"),
    Case("canary", "ray", "boundary"),
]
DOCKER_SLICE = [
    Case("blue_green", "router", "mid_step", platform="docker"),
    Case("rolling", "candidate_replica", "boundary", bad=True, platform="docker"),
]


def test_the_local_slice_covers_every_fault() -> None:
    assert {c.fault for c in LOCAL_SLICE} == set(FAULTS)


@pytest.fixture(scope="session", autouse=True)
def ray_on_a_loaded_machine() -> None:
    """When this module starts the session's Ray, it is started as chaoskit starts its own (agents' ports
    chosen, tried again): a plain start times out on a machine that others keep busy. The orchestrator
    fixture (conftest.py, its namespace) then finds it running and uses it."""
    import os

    import ray

    if not ray.is_initialized():
        start_ray(f"orch-test-{os.getpid()}")


@pytest.fixture(scope="module")
def bench(orchestrator: Any, tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return Bench(orchestrator, tmp_path_factory.mktemp("chaos"))


@pytest.fixture(scope="module")
def docker_bench(bench: Bench) -> Iterator[Bench]:
    with docker_engine_started():
        yield bench


def held(outcome: Outcome) -> None:
    """The fault was injected, and every property held."""
    assert "missed" not in outcome.injected, outcome
    assert not outcome.violations, outcome


@pytest.mark.parametrize("case", LOCAL_SLICE, ids=lambda c: c.name)
def test_local(bench: Bench, case: Case) -> None:
    held(run_case(bench, case, STEP_MS, tag="t"))


@pytest.mark.parametrize("case", DOCKER_SLICE, ids=lambda c: c.name)
def test_docker(docker_bench: Bench, case: Case) -> None:
    held(run_case(docker_bench, case, STEP_MS, tag="t"))
