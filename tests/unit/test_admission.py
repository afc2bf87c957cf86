"""The queen's admission and runner pool without Ray: fake runners at the ``Runners`` seam, a real journal."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.admission import RUNNER_ASSIGNMENT, Admission, DeploymentRefused, NoPlaceToRun, RunnerLost
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, Phase, PlatformConfig, Strategy
from engine.state import DeploymentState, EventKind


@dataclass
class FakeRunner:
    name: str
    alive: bool = True
    drives: list[str] = field(default_factory=list)


class FakeRunners:
    """Runner actors in memory. A drive lasts until the test ends it (``finish``) or kills the runner
    (``lose``); ``lose_always`` makes every drive of a deployment lose its runner at once."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.actors: dict[str, FakeRunner] = {}
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.lose_always: set[str] = set()
        self._outcomes: dict[str, asyncio.Future[str]] = {}
        self._count = 0
        self.nodes: dict[str, str] = {}  # runner -> its node
        self.platform_node: dict[str, str | None] = {}  # service -> the node its platform needs
        self.gone: set[str] = set()  # nodes that left the cluster
        self.placed: list[tuple[str, str | None]] = []  # (runner, deployment) of each start

    def new_name(self) -> str:
        self._count += 1
        return f"runner-{self._count}"

    def start(self, name: str, deployment_id: str | None = None) -> FakeRunner:
        self.started.append(name)
        self.placed.append((name, deployment_id))
        if deployment_id is not None:
            node = self.place(self.journal.state(deployment_id))
            if node is not None:
                self.nodes[name] = node
        runner = self.actors.get(name)
        if runner is None or not runner.alive:
            runner = self.actors[name] = FakeRunner(name, drives=runner.drives if runner else [])
        return runner

    def place(self, state: DeploymentState) -> str | None:
        node = self.platform_node.get(state.request.artifact.name)
        if node in self.gone:
            raise NoPlaceToRun(f"the node {node} that holds the platform's state left the cluster")
        return node

    def node_of(self, name: str) -> str | None:
        return self.nodes.get(name)

    def find(self, name: str) -> FakeRunner | None:
        runner = self.actors.get(name)
        return runner if runner is not None and runner.alive else None

    def live_names(self) -> list[str]:
        return [name for name, runner in self.actors.items() if runner.alive]

    def stop(self, handle: FakeRunner) -> None:
        handle.alive = False
        self.stopped.append(handle.name)

    async def drive(self, handle: FakeRunner, deployment_id: str) -> None:
        handle.drives.append(deployment_id)
        if deployment_id in self.lose_always:
            handle.alive = False
            raise RunnerLost(f"{handle.name} died")
        outcome = asyncio.get_running_loop().create_future()
        self._outcomes[deployment_id] = outcome
        if await outcome == "lost":
            handle.alive = False
            raise RunnerLost(f"{handle.name} died")
        self.journal.append(deployment_id, EventKind.FINISHED, {"outcome": "succeeded"}, actor=handle.name)

    def driving(self) -> set[str]:
        return {d for d, outcome in self._outcomes.items() if not outcome.done()}

    def finish(self, deployment_id: str) -> None:
        self._outcomes[deployment_id].set_result("succeeded")

    def lose(self, deployment_id: str) -> None:
        self._outcomes[deployment_id].set_result("lost")


class FakeClock:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class World:
    def __init__(self, tmp_path: Path, limit: int = 10, max_queued: int = 100, warm: int = 2) -> None:
        self.journal = Journal(tmp_path / "journal.db")
        self.runners = FakeRunners(self.journal)
        self.clock = FakeClock()
        self.settings = {"limit": limit, "max_queued": max_queued, "warm_runners": warm}
        self.admission = self.new_admission()
        self.count = 0

    def new_admission(self) -> Admission:
        """A queen's admission as it is after a (re)start: nothing in memory but what it is given."""
        return Admission(self.journal, self.runners, clock=self.clock, **self.settings)  # type: ignore[arg-type]

    def submit(self, service: str, version: str = "1.0.0") -> str:
        self.admission.check_room()
        self.count += 1
        deployment_id = f"{service}-{self.count}"
        request = DeploymentRequest(
            artifact=Artifact(name=service, version=version, command=["true"]),
            strategy=Strategy.model_validate({"type": "rolling"}),
            environment="staging",
            platform=PlatformConfig(type="local"),
        )
        self.journal.submit(deployment_id, request, actor="test")
        self.admission.submitted(deployment_id)
        return deployment_id

    def admitted(self) -> list[str]:
        return [e.deployment_id for e in self.journal.events() if e.kind is EventKind.ADMITTED]

    def phase(self, deployment_id: str) -> Phase:
        return self.journal.state(deployment_id).phase()


async def settle() -> None:
    """Let every task that can run, run (everything here is in-loop: no I/O to wait for)."""
    for _ in range(20):
        await asyncio.sleep(0)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


def test_one_active_deployment_per_target_in_fifo_order(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        a1, a2, b1, a3 = (world.submit(s) for s in ("a", "a", "b", "a"))
        await settle()
        assert world.admitted() == [a1, b1]
        assert world.phase(a2) is Phase.QUEUED and world.phase(a3) is Phase.QUEUED
        world.runners.finish(a1)
        await settle()
        assert world.admitted() == [a1, b1, a2]  # a2 before a3: submission order within the target
        world.runners.finish(a2)
        await settle()
        assert world.admitted() == [a1, b1, a2, a3]
        world.runners.finish(a3)
        world.runners.finish(b1)
        await settle()
        assert all(world.phase(d) is Phase.SUCCEEDED for d in (a1, a2, a3, b1))

    run(scenario)


def test_at_most_limit_run_and_the_next_in_line_takes_a_freed_place(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, limit=2)
        ids = [world.submit(f"svc{i}") for i in range(5)]
        await settle()
        assert world.admitted() == ids[:2]
        assert world.runners.driving() == set(ids[:2])
        world.runners.finish(ids[1])
        await settle()
        assert world.admitted() == [*ids[:2], ids[2]]
        assert len(world.runners.driving()) == 2
        for deployment_id in ids:
            if deployment_id in world.runners.driving():
                world.runners.finish(deployment_id)
                await settle()
        assert world.admitted() == ids
        assert all(world.phase(d) is Phase.SUCCEEDED for d in ids)

    run(scenario)


def test_a_full_queue_refuses_a_submission(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, limit=1, max_queued=1)
        world.submit("a")
        world.submit("b")
        with pytest.raises(DeploymentRefused, match=r"the queue is full \(2 deployments"):
            world.submit("c")
        assert [s.deployment_id for s in world.journal.deployments()] == ["a-1", "b-2"]

    run(scenario)


def test_runners_are_kept_warm_and_reused(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, warm=2)
        world.admission.recover()
        assert world.runners.started == ["runner-1", "runner-2"]  # started ahead of need
        first = world.submit("a")
        await settle()
        assert world.journal.state(first).runner == "runner-1"
        world.runners.finish(first)
        await settle()
        second = world.submit("a", "2.0.0")
        await settle()
        assert world.journal.state(second).runner in ("runner-1", "runner-2")
        assert world.runners.started == ["runner-1", "runner-2"]  # no process started for either
        assert world.runners.stopped == []

    run(scenario)


def test_a_restarted_queen_resumes_admitted_runs_and_adopts_idle_runners(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, limit=1, warm=2)
        running = world.submit("a")
        queued = world.submit("b")
        await settle()
        runner = world.journal.state(running).runner
        assert runner is not None
        world.journal.put_record(RUNNER_ASSIGNMENT, runner, {"runner": runner, "deployment_id": running})
        for extra in ("runner-x", "runner-y"):  # more idle runners the previous queen started
            world.runners.start(extra)
        idle = set(world.runners.live_names()) - {runner}
        assert len(idle) == 3  # with the previous queen's own standby
        started_before = len(world.runners.started)

        world.admission = world.new_admission()  # the queen restarted: nothing in memory
        world.admission.recover()
        await settle()
        # The admitted deployment is driven again by the same live runner: no new actor, no new admission.
        assert world.runners.actors[runner].drives == [running, running]
        assert world.admitted() == [running]
        # One idle runner fills the pool (warm 2 = 1 busy + 1 standby); the others stop, none is leaked.
        adopted = {handle.name for handle in world.admission.pool.handles()}
        assert len(adopted) == 1 and adopted <= idle
        assert set(world.runners.stopped) == idle - adopted
        assert len(world.runners.started) == started_before
        world.runners.finish(running)
        await settle()
        assert world.admitted() == [running, queued]  # the queue went on from the journal
        assert world.phase(running) is Phase.SUCCEEDED

    run(scenario)


def test_a_lost_runner_is_started_again_and_the_deployment_resumes(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path)
        deployment_id = world.submit("a")
        await settle()
        name = world.journal.state(deployment_id).runner
        assert name is not None
        world.runners.lose(deployment_id)
        await settle()
        assert world.runners.find(name) is not None  # started again under the same name
        assert world.runners.started.count(name) == 2
        world.runners.finish(deployment_id)
        await settle()
        assert world.phase(deployment_id) is Phase.SUCCEEDED
        assert world.clock.slept == [0.5]

    run(scenario)


def test_a_runner_lost_every_time_fails_the_deployment_and_the_queue_goes_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, limit=1)
        world.runners.lose_always.add("doomed-1")
        doomed = world.submit("doomed")
        waiting = world.submit("next")
        await settle()
        state = world.journal.state(doomed)
        assert state.phase() is Phase.FAILED
        assert state.message == "its runner was lost 6 times"
        assert world.clock.slept == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]  # bounded back-off between attempts
        assert world.runners.actors[str(state.runner)].drives == [doomed] * 6
        assert str(state.runner) in world.runners.stopped  # a dead runner does not go back to the pool
        assert world.admitted() == [doomed, waiting]

    run(scenario)


def test_waiting_returns_when_the_deployment_ends_or_at_the_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, limit=1)
        first = world.submit("a")
        queued = world.submit("b")
        await settle()
        await world.admission.wait(queued, 0.01)  # bounded: returns while it is still queued
        assert world.phase(queued) is Phase.QUEUED
        waiter = asyncio.ensure_future(world.admission.wait(first, 60))
        await settle()
        assert not waiter.done()
        world.runners.finish(first)
        await asyncio.wait_for(waiter, 5)
        assert world.phase(first) is Phase.SUCCEEDED

    run(scenario)


def test_ended_while_queued_admits_the_next(tmp_path: Path) -> None:
    """The queen ends a queued deployment itself (abort while queued): the waiters and the queue learn it."""

    async def scenario() -> None:
        world = World(tmp_path, limit=1)
        first = world.submit("a")
        queued = world.submit("b")
        third = world.submit("c")
        await settle()
        world.journal.append(queued, EventKind.FINISHED, {"outcome": "aborted"}, actor="test")
        world.admission.ended(queued)
        world.runners.finish(first)
        await settle()
        assert world.admitted() == [first, third]
        assert world.phase(queued) is Phase.ABORTED

    run(scenario)


def test_a_deployment_takes_a_standby_runner_on_its_platform_node_or_starts_one_there(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, warm=2)
        world.admission.recover()
        world.runners.nodes = {"runner-1": "node-a", "runner-2": "node-b"}
        world.runners.platform_node = {"pinned": "node-b", "elsewhere": "node-c"}
        pinned = world.submit("pinned")
        await settle()
        assert world.journal.state(pinned).runner == "runner-2"  # not the first standby: the one on node-b
        other = world.submit("elsewhere")
        await settle()
        cold = world.journal.state(other).runner
        assert cold not in ("runner-1", "runner-2")  # no standby on node-c: a new runner...
        assert (cold, other) in world.runners.placed and world.runners.nodes[
            cold
        ] == "node-c"  # ...placed there

    run(scenario)


def test_a_deployment_whose_platform_node_is_gone_fails_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        world = World(tmp_path, warm=1)
        world.runners.platform_node = {"stranded": "node-x"}
        world.runners.gone = {"node-x"}
        stranded = world.submit("stranded")
        free = world.submit("free")
        await settle()
        state = world.journal.state(stranded)
        assert state.phase() is Phase.FAILED and "node-x" in state.message and state.runner is None
        assert world.journal.state(free).runner is not None  # the queue goes on

    run(scenario)
