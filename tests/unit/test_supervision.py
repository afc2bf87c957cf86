"""Supervision of live revisions (engine/supervision.py): the fake platform, a real journal, a fake clock."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from engine.config import ConfigError, EnterpriseConfig
from engine.models import Phase
from engine.platform import SupervisionMode
from engine.state import EventKind
from engine.supervision import REMOVED_MEANWHILE, CrashLoop, SupervisionSettings, SupervisorStateManager
from tests.unit.test_reconciler import CANARY, World

FAST = SupervisionSettings(
    interval=1000,
    health_interval=5000,
    unhealthy_checks=3,
    restart_backoff=1000,
    max_backoff=8000,
    crash_loop_restarts=3,
    crash_loop_window=60_000,
)


class Supervised:
    """A world with one live revision (1-0-0, 3 replicas) and the supervisor over it."""

    def __init__(self, tmp_path: Path, settings: SupervisionSettings = FAST, **platform: Any) -> None:
        self.world = World(str(tmp_path / "journal.db"), **platform)
        self.world.deploy_stable()
        self.live = self.world.journal.deployments()[-1].deployment_id
        self.crash_loops: list[CrashLoop] = []
        self.manager = SupervisorStateManager(
            self.world.journal,
            lambda config: self.world.platform,
            settings,
            clock=self.world.clock,
            on_crash_loop=self.crash_loops.append,
        )

    @property
    def platform(self) -> Any:
        return self.world.platform

    def rounds(self, count: int) -> None:
        for _ in range(count):
            self.world.clock.sleep(self.manager.update())

    def drifts(self) -> list[dict[str, Any]]:
        return [e.data for e in self.world.journal.events(self.live) if e.kind is EventKind.DRIFT]

    def ensures(self) -> list[str]:
        return [c for c in self.platform.calls if c.startswith(("ensure", "restore", "restart"))]


def test_a_dead_router_at_rest_is_started_again_with_the_journaled_weights(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.rounds(3)
    assert sup.drifts() == []
    sup.platform.calls.clear()
    sup.platform.kill_router()
    sup.rounds(1)
    assert sup.platform.router_up and sup.platform.weights == {"1-0-0": 100}
    assert sup.ensures() == ["restore router [('1-0-0', 100)]"]
    [drift] = sup.drifts()
    assert drift["subject"] == "router" and drift["revision"] == "1-0-0"
    assert "started again with the journaled weights {'1-0-0': 100}" in drift["done"]
    state = sup.world.journal.state(sup.live)
    assert state.phase() is Phase.SUCCEEDED and state.message == "1-0-0 is live"  # no fact changed


def test_dead_replicas_are_replaced_before_the_router_comes_back(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.calls.clear()
    sup.platform.kill("1-0-0", 0, 2)
    sup.platform.kill_router()
    sup.rounds(1)
    assert sup.ensures() == ["ensure 1-0-0 x3", "restore router [('1-0-0', 100)]"]
    assert sup.platform.revisions["1-0-0"].alive == 3
    replicas, router = sup.drifts()
    assert replicas["subject"] == "replicas"
    assert "replica 0" in replicas["found"] and "replica 2" in replicas["found"]
    assert replicas["done"] == "started again: 3/3 running"
    assert router["subject"] == "router"


def test_a_removal_between_the_observation_and_the_repair_is_not_undone(tmp_path: Path) -> None:
    """The target's router and replicas were found dead, and removed (their records taken away, by another
    process) before the repair ran: nothing is started again (the full chaos matrix met this on Docker,
    where the repair's containers take seconds to start)."""
    sup = Supervised(tmp_path)
    sup.platform.calls.clear()
    sup.platform.kill("1-0-0", 0, 1, 2)
    sup.platform.kill_router()
    sup.platform.removed = True
    sup.rounds(1)
    assert sup.ensures() == [] and not sup.platform.router_up
    assert sup.platform.revisions["1-0-0"].alive == 0
    replicas, router = sup.drifts()
    assert replicas["done"] == router["done"] == REMOVED_MEANWHILE


def test_a_missing_replica_is_started_again(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.revisions["1-0-0"].replicas = 2  # one of three removed by hand
    sup.rounds(1)
    assert sup.platform.revisions["1-0-0"].replicas == 3
    assert "replica 2 is missing" in sup.drifts()[0]["found"]


def test_a_target_with_a_running_deployment_belongs_to_its_runner(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    running = sup.world.submit("2.0.0", CANARY)  # admitted, not ended
    sup.platform.calls.clear()
    sup.platform.kill_router()
    sup.rounds(5)
    assert sup.ensures() == [] and sup.drifts() == []
    sup.world.journal.append(running, EventKind.FINISHED, {"outcome": "aborted", "message": "stop"})
    sup.rounds(1)
    assert sup.ensures() == ["restore router [('1-0-0', 100)]"]


def test_a_deployment_that_ended_between_the_read_and_the_repair_is_not_undone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """The supervisor read 1-0-0 as live; 2.0.0 was admitted and promoted (its runner removing 1-0-0) while
    the supervisor looked at the platform: 1-0-0's missing replicas are not started again (the full chaos
    matrix met this with a rolling deployment that ended a moment before the repair)."""
    sup = Supervised(tmp_path)
    sup.rounds(1)
    observe = sup.platform.live_state
    promoted: list[Phase] = []

    def promote_first(*args: Any) -> Any:
        if not promoted:
            promoted.append(Phase.QUEUED)  # the runner's own reads of the platform pass through
            promoted[0] = sup.world.run(sup.world.submit("2.0.0", CANARY))
            sup.platform.calls.clear()  # what the runner did is not the supervisor's
        return observe(*args)

    monkeypatch.setattr(sup.platform, "live_state", promote_first)
    sup.world.clock.sleep(1.0)
    sup.manager.update()
    assert promoted == [Phase.SUCCEEDED]
    assert sup.ensures() == [] and sup.drifts() == []
    assert "1-0-0" not in sup.platform.revisions or sup.platform.revisions["1-0-0"].alive == 0
    sup.rounds(2)  # the next rounds read the journal again and supervise 2-0-0
    assert sup.ensures() == [] and sup.platform.revisions["2-0-0"].alive == 3


def test_a_queued_deployment_does_not_stop_supervision(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    request = sup.world.journal.state(sup.live).request
    sup.world.journal.submit("queued", request, actor="test")  # submitted, not admitted
    sup.platform.kill_router()
    sup.rounds(1)
    assert sup.platform.router_up


def test_restarts_back_off_and_a_crash_loop_is_reported_once_then_restarts_stop(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.restart_fails.add("1-0-0")  # every process started dies at once
    sup.platform.calls.clear()
    sup.platform.kill("1-0-0", 1)
    restarts_at: list[float] = []
    for _ in range(40):
        before = len(sup.ensures())
        sup.rounds(1)
        if len(sup.ensures()) > before:
            restarts_at.append(sup.world.clock.now())
    assert len(restarts_at) == FAST.crash_loop_restarts  # bounded: 3 within the window
    gaps = [b - a for a, b in itertools.pairwise(restarts_at)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0  # 1 s, then 2 s: exponential back-off
    loops = [d for d in sup.drifts() if d.get("crash_loop")]
    assert len(loops) == 1 and "3 restarts within 60s" in loops[0]["done"]
    assert [c.subject for c in sup.crash_loops] == ["replicas"]
    assert sup.crash_loops[0].revision == "1-0-0" and sup.crash_loops[0].deployment_id == sup.live
    sup.world.clock.sleep(60)  # the window slides past the restarts: they may start again
    sup.platform.restart_fails.clear()
    sup.rounds(1)
    assert sup.platform.revisions["1-0-0"].alive == 3


def test_a_replica_failing_the_routers_health_checks_is_restarted_after_n_deep_checks(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.revisions["1-0-0"].unhealthy.add(1)
    sup.platform.calls.clear()
    sup.rounds(5 * (FAST.unhealthy_checks - 1))  # one deep check every 5 rounds (5 s)
    assert sup.ensures() == []
    sup.rounds(5)
    assert sup.ensures() == ["restart 1-0-0#1", "ensure 1-0-0 x3"]
    assert "replica 1 (127.0.0.1:9001) failed 3 health checks" in sup.drifts()[0]["found"]


def test_a_router_that_runs_but_does_not_answer_is_restarted(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.router_answers = False
    sup.platform.calls.clear()
    sup.rounds(5 * FAST.unhealthy_checks)
    assert sup.ensures() == ["restart router [('1-0-0', 100)]"]
    assert sup.platform.router_answers


def test_a_removed_revision_is_reported_once_and_not_recreated(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)

    def no_router(target: Any, revision: str, deep: bool = False) -> Any:
        state = type(sup.platform).live_state(sup.platform, target, revision, deep)
        return state.model_copy(update={"router": None})

    sup.platform.live_state = no_router
    sup.platform.kill("1-0-0")
    sup.platform.calls.clear()
    sup.rounds(5)
    assert sup.ensures() == []
    [drift] = sup.drifts()
    assert "was removed" in drift["found"] and drift["done"] == "nothing"


def test_a_self_healing_platform_is_reported_on_change_only(tmp_path: Path) -> None:
    sup = Supervised(tmp_path, supervision=SupervisionMode.REPORT)
    sup.rounds(2)
    sup.platform.kill("1-0-0", 0)
    sup.rounds(5)
    sup.platform.revisions["1-0-0"].dead.clear()
    sup.rounds(5)
    assert [(d["found"], d["done"]) for d in sup.drifts()] == [
        ("2/3 replicas ready", "nothing: the platform heals itself"),
        ("3/3 ready again", "nothing: the platform heals itself"),
    ]
    assert sup.ensures() == ["ensure 1-0-0 x3"]  # only the first deployment's


def test_nothing_is_asked_of_a_platform_with_nothing_to_supervise(tmp_path: Path) -> None:
    sup = Supervised(tmp_path, supervision=SupervisionMode.NONE)
    sup.platform.unreachable = "would fail if asked"
    sup.rounds(10)
    assert sup.drifts() == []


def test_an_unreachable_platform_is_reported_once(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)
    sup.platform.unreachable = "connection refused"
    sup.rounds(5)
    [drift] = sup.drifts()
    assert "does not answer" in drift["found"] and "connection refused" in drift["found"]


def test_the_live_revision_is_the_newest_that_succeeded(tmp_path: Path) -> None:
    sup = Supervised(tmp_path, error_rates={"3-0-0": 0.5})
    assert sup.world.run(sup.world.submit("2.0.0", CANARY)) is Phase.SUCCEEDED
    promoted = sup.world.journal.deployments()[-1].deployment_id
    assert sup.world.run(sup.world.submit("3.0.0", CANARY)) is Phase.ROLLED_BACK
    sup.platform.kill("2-0-0", 0)
    sup.rounds(1)
    assert sup.platform.revisions["2-0-0"].alive == 3
    assert [e.kind for e in sup.world.journal.events(promoted)][-1] is EventKind.DRIFT


def test_the_journal_is_read_again_only_when_it_changed(tmp_path: Path, monkeypatch: Any) -> None:
    sup = Supervised(tmp_path)
    reads: list[int] = []
    original = sup.world.journal.live_deployments
    monkeypatch.setattr(sup.world.journal, "live_deployments", lambda: reads.append(1) or original())
    sup.rounds(10)
    assert len(reads) == 1
    sup.platform.kill_router()
    sup.rounds(3)  # the drift event changed the journal once
    assert len(reads) == 2


def test_settings_come_from_the_configuration_with_clear_errors() -> None:
    config = EnterpriseConfig.from_mapping({"supervision": {"interval": "500ms", "crashLoopWindow": "2m"}})
    assert config.supervision.interval == 500 and config.supervision.crash_loop_window == 120_000
    assert EnterpriseConfig.from_mapping({}).supervision.interval == 1000
    with pytest.raises(ConfigError, match=r"supervision\.healthInterval: 500 ms is shorter than interval"):
        EnterpriseConfig.from_mapping({"supervision": {"interval": "1s", "healthInterval": 500}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"supervision\.unhealthyChecks: must be at least 1, got 0"):
        EnterpriseConfig.from_mapping({"supervision": {"unhealthyChecks": 0}}, "x.yaml")


def test_a_platform_whose_settings_make_no_adapter_is_reported_once(tmp_path: Path) -> None:
    sup = Supervised(tmp_path)

    def refuse(config: Any) -> Any:
        raise ValueError("settings.baseUrl: not a URL")

    sup.manager._factory = refuse
    sup.rounds(5)
    [drift] = sup.drifts()
    assert "settings.baseUrl: not a URL" in drift["found"] and drift["done"] == "nothing"
