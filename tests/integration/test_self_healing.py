"""Faults in what we manage, on the local platform: real processes behind a real HAProxy.

Through the actors (the session's orchestrator; DO-001 supervises live revisions at its default interval):
a router killed mid-canary is restored by the runner and the good candidate promoted; a router and replicas
killed at rest, or one replica of two, are brought back by the supervisor. Through the engine alone (the
scenario harness, no supervisor that could repair first): "already live" only when it runs, a rollback onto a
stable whose replicas are gone, a rollback that cannot complete, and a crash-looping replica.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from engine.models import Artifact, Phase, PlatformConfig, Target
from engine.state import EventKind, StepKind
from engine.supervision import SupervisionSettings, SupervisorStateManager
from examples.traffic import TrafficGenerator
from tests.integration.conftest import canary, orch_journal, sample_artifact
from tests.integration.environments import (
    local_scenario_config,
    remove_through_adapter,
    routed_scenario_env,
    router_process,
    sample_process,
    serves,
    wait_for,
)
from tests.integration.scenarios import FIRST, Harness, ScenarioEnv, canary_strategy
from tests.integration.supervision_checks import replaced_and_up
from tests.integration.test_orchestrator import ENV, first_revision, live_traffic
from tests.integration.test_orchestrator import wait_for as wait_for_status

pytestmark = pytest.mark.integration
HEAL_DEADLINE_S = (
    60.0  # generous: only "never" fails; the benchmark measures how fast (benchmarks/self_heal.py)
)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def drifts(journal: Any, deployment_id: str) -> list[dict[str, Any]]:
    return [e.data for e in journal.events(deployment_id) if e.kind is EventKind.DRIFT]


def kill_replicas(
    config: PlatformConfig, target: Target, revision: str, indexes: set[int] | None = None
) -> list[str]:
    """SIGKILL replicas of a revision (all, or ``indexes``); returns the pids killed."""
    platform: Any = create_platform(config)
    try:
        victims = [
            r
            for r in platform.backend.list_replicas(target, revision)
            if indexes is None or r.index in indexes
        ]
    finally:
        platform.close()
    for replica in victims:
        os.kill(int(replica.ident), signal.SIGKILL)
    return [r.ident for r in victims]


def kill_router(config: PlatformConfig, target: Target) -> None:
    pid, _ = router_process(Path(config.settings["stateDir"]), config.type, target)
    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Through the actors
# --------------------------------------------------------------------------------------------
def test_a_router_killed_mid_canary_is_restored_and_the_good_candidate_promoted(orchestrator: Any) -> None:
    config = orchestrator.config.platform("local")
    target = Target(service="heal-canary", environment=ENV)
    first = first_revision(orchestrator, target.service)
    with live_traffic(first.status.address):
        deployment_id = orchestrator.submit(sample_artifact(target.service, "2.0.0"), canary(), ENV)
        wait_for_status(orchestrator, deployment_id, lambda s: s.weights.get("2-0-0") == 50)
        kill_router(config, target)
        result = orchestrator.wait(deployment_id, 120)
    assert result.success, result.status
    assert result.status.weights == {"2-0-0": 100}
    events = orch_journal(orchestrator).events(deployment_id)
    kinds = [e.kind for e in events]
    assert EventKind.ROLLBACK_REQUESTED not in kinds
    fault = next(e for e in events if e.kind is EventKind.PLATFORM_FAULT)
    restored = next(e for e in events if e.kind is EventKind.PLATFORM_RESTORED)
    assert "router" in fault.data["reason"] and fault.data["weights"]["2-0-0"] == 50
    assert restored.seq > fault.seq and restored.data["fresh_window"] is True


def test_a_router_and_replicas_killed_at_rest_serve_again_and_the_drift_is_journaled(
    orchestrator: Any,
) -> None:
    config = orchestrator.config.platform("local")
    target = Target(service="heal-rest", environment=ENV)
    first = first_revision(orchestrator, target.service)
    assert serves(first.status.address)
    kill_router(config, target)
    kill_replicas(config, target, "1-0-0")
    started = time.monotonic()
    wait_for("the service to serve again", lambda: serves(first.status.address), HEAL_DEADLINE_S)
    print(f"serving again {time.monotonic() - started:.2f}s after the kill")
    journal = orch_journal(orchestrator)
    wait_for("the drift in the journal", lambda: len(drifts(journal, first.deployment_id)) >= 2, 10)
    found = {d["subject"]: d for d in drifts(journal, first.deployment_id)}
    assert (
        "not running" in found["router"]["found"]
        and "journaled weights {'1-0-0': 100}" in found["router"]["done"]
    )
    assert (
        "replica 0" in found["replicas"]["found"]
        and found["replicas"]["done"] == "started again: 2/2 running"
    )
    assert journal.state(first.deployment_id).phase() is Phase.SUCCEEDED


def test_one_of_two_replicas_killed_at_rest_is_replaced_without_a_failed_request(orchestrator: Any) -> None:
    config = orchestrator.config.platform("local")
    target = Target(service="heal-replica", environment=ENV)
    first = first_revision(orchestrator, target.service)
    with live_traffic(first.status.address) as traffic:
        wait_for("traffic to flow", lambda: TrafficGenerator.total(traffic.snapshot()) >= 20)
        [victim] = kill_replicas(config, target, "1-0-0", {0})
        wait_for(
            "replica 0 replaced and up in the router",
            lambda: replaced_and_up(config, target, 0, victim),
            HEAL_DEADLINE_S,
        )
        after = TrafficGenerator.total(traffic.snapshot())
        wait_for(
            "traffic after the replacement", lambda: TrafficGenerator.total(traffic.snapshot()) >= after + 20
        )
    counts = traffic.snapshot()
    assert TrafficGenerator.failed(counts) == 0, (counts, traffic.failures)
    [drift] = drifts(orch_journal(orchestrator), first.deployment_id)
    assert (
        drift["subject"] == "replicas" and "replica 0" in drift["found"] and "replica 1" not in drift["found"]
    )


# --------------------------------------------------------------------------------------------
# Through the engine alone (no supervisor that could repair first)
# --------------------------------------------------------------------------------------------
SERVICES = ("again", "stable-gone", "stuck", "crashing")


@pytest.fixture
def local_config(tmp_path: Path) -> Iterator[PlatformConfig]:
    config = local_scenario_config(tmp_path / "state")
    yield config
    remove_through_adapter(config, [Target(service=service, environment="staging") for service in SERVICES])


def with_env(**extra: str) -> Callable[[str, str, bool], Artifact]:
    """The scenarios' sample process, its stable revision (1.0.0) with ``extra`` in its environment."""

    def artifact(service: str, version: str, faulty: bool) -> Artifact:
        base = sample_process(service, version, faulty)
        return base.model_copy(update={"env": {**base.env, **extra}}) if version == "1.0.0" else base

    return artifact


def harness(config: PlatformConfig, tmp_path: Path, service: str, **extra: str) -> Harness:
    env: ScenarioEnv = routed_scenario_env(config, with_env(**extra), tmp_path, deadline_s=120.0)
    scenario = Harness(env, service)
    first = scenario.deploy("1.0.0", FIRST)
    assert first.phase() is Phase.SUCCEEDED, first.status()
    return scenario


def analysing_at(weight: int, then: Callable[[], None]) -> Callable[[Any], None]:
    """An ``on_step`` hook that calls ``then`` once, when the canary analyses at ``weight`` percent."""
    done: list[bool] = []

    def on_step(state: Any) -> None:
        step = state.current_step()
        at_weight = state.weights.get("2-0-0") == weight and state.step_started_at is not None
        if not done and step is not None and step.kind is StepKind.ANALYZE and at_weight:
            done.append(True)
            then()

    return on_step


def test_redeploying_the_live_version_whose_processes_died_deploys_it_again(
    local_config: PlatformConfig, tmp_path: Path
) -> None:
    scenario = harness(local_config, tmp_path, "again")
    kill_replicas(local_config, scenario.target, "1-0-0")
    again = scenario.deploy("1.0.0", FIRST)
    assert again.phase() is Phase.SUCCEEDED, again.status()
    assert again.plan and again.plan[0].kind is StepKind.DEPLOY, "a no-op: the dead revision was called live"
    address = again.address or ""  # HAProxy's own checks find the restarted replicas up within a second or so
    wait_for("the service to serve again", lambda: serves(address), HEAL_DEADLINE_S)
    healthy = scenario.deploy("1.0.0", FIRST)
    assert healthy.plan == [] and healthy.message == "1-0-0 is live"


def test_a_canary_rolled_back_onto_a_stable_whose_replicas_are_gone_recreates_it(
    local_config: PlatformConfig, tmp_path: Path
) -> None:
    scenario = harness(local_config, tmp_path, "stable-gone")
    kill = analysing_at(25, lambda: kill_replicas(local_config, scenario.target, "1-0-0"))
    with scenario.live():  # the faulty candidate alone serves: it is rolled back on its metrics
        state = scenario.deploy(
            "2.0.0", {**canary_strategy(3000), "progressDeadline": 20_000}, True, on_step=kill
        )
    assert state.phase() is Phase.ROLLED_BACK, state.status()
    assert scenario.weights() == {"1-0-0": 100}
    assert scenario.revisions() == {"1-0-0"}
    address = state.address or ""
    wait_for("the recreated stable to serve", lambda: serves(address), HEAL_DEADLINE_S)


def test_a_rollback_that_cannot_complete_fails_by_its_deadline_saying_what_is_left(
    local_config: PlatformConfig, tmp_path: Path
) -> None:
    sick = tmp_path / "stable-sick"
    scenario = harness(local_config, tmp_path, "stuck", HEALTH_FAIL_FILE=str(sick))

    def stable_falls_sick_and_a_rollback_is_asked() -> None:
        sick.write_text("unhealthy")
        deployment_id = scenario.journal.deployments()[-1].deployment_id
        scenario.journal.append(
            deployment_id, EventKind.ROLLBACK_REQUESTED, {"trigger": "manual", "reason": "no", "by": "test"}
        )

    hook = analysing_at(25, stable_falls_sick_and_a_rollback_is_asked)
    state = scenario.deploy("2.0.0", {**canary_strategy(60_000), "progressDeadline": 8000}, on_step=hook)
    assert state.phase() is Phase.FAILED, state.status()
    assert "rollback to 1-0-0 did not complete within the progress deadline of 8s" in state.message
    assert "still running on local: 1-0-0 (0/2 ready), 2-0-0 (1/1 ready)" in state.message
    assert "traffic (in force): 2-0-0 25%, 1-0-0 75%" in state.message
    assert state.rollback is not None and (state.finished_at or 0) - state.rollback.at < HEAL_DEADLINE_S


def test_a_crash_looping_replica_is_restarted_a_bounded_number_of_times_and_reported(
    local_config: PlatformConfig, tmp_path: Path
) -> None:
    crash = tmp_path / "crash"
    scenario = harness(local_config, tmp_path, "crashing", CRASH_FILE=str(crash))
    live = scenario.journal.deployments()[-1].deployment_id
    settings = SupervisionSettings(
        interval=200, health_interval=1000, restart_backoff=200, max_backoff=1000, crash_loop_restarts=3
    )
    manager = SupervisorStateManager(scenario.journal, create_platform, settings, actor="test-supervisor")
    crash.write_text("every start crashes from now on")
    kill_replicas(local_config, scenario.target, "1-0-0")
    try:
        deadline = time.monotonic() + HEAL_DEADLINE_S
        while not any(d.get("crash_loop") for d in drifts(scenario.journal, live)):
            assert time.monotonic() < deadline, drifts(scenario.journal, live)
            time.sleep(manager.update())  # the supervisor's own pace, one round at a time
        for _ in range(10):  # two more seconds of rounds: the loop is not restarted again
            time.sleep(manager.update())
    finally:
        manager.close()
    found = drifts(scenario.journal, live)
    restarts = [d for d in found if d["subject"] == "replicas" and d["done"].startswith("started again")]
    loops = [d for d in found if d.get("crash_loop")]
    assert len(restarts) == settings.crash_loop_restarts, found
    assert len(loops) == 1 and "3 restarts within 300s" in loops[0]["done"]
    assert scenario.revisions() == {"1-0-0"}
