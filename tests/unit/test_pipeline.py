"""The pipeline graph engine with a fake queen, fake HTTP checks and a fake clock: parallelism, dependency
order, a failure stopping what depends on it and rolling back, cycles refused, resuming from the journal."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.commands import SubprocessRunner
from engine.config import EnterpriseConfig
from engine.journal import Journal
from engine.models import Artifact, Phase
from engine.pipeline import CommandStage, DeployStage, PipelineEngine, ValidateStage
from engine.pipeline_model import PipelineTemplate, StageKind, expand_graph
from engine.pipeline_spec import RunInput, build_spec
from engine.pipeline_state import (
    PipelineEventKind,
    PipelinePhase,
    PipelineState,
    StageStatus,
    status_of,
)
from tests.unit.fakes import FakeClock
from tests.unit.pipeline_fakes import FakeChecker, FakeQueen

ENVS = ["development", "staging", "production"]
CONFIG = EnterpriseConfig.from_mapping(
    {
        "roles": {"sre": ["carol"]},
        "environments": {e: {} for e in ENVS},
        "platforms": {"local": {"type": "local"}},
    }
)
DEPLOY_AND_VALIDATE = [
    {"name": "deploy", "kind": "deploy", "strategy": {"type": "rolling", "replicas": 1}},
    {"name": "validate", "kind": "validate", "dependsOn": ["deploy"], "attempts": 1},
]


class World:
    """A journal, a fake queen and checker, and an engine over them (a new engine = DO-006 restarted)."""

    def __init__(self, tmp_path: Path, **queen: Any) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock()
        self.journal = Journal(tmp_path / "journal.db", clock=self.clock.now)
        self.queen = FakeQueen(clock=self.clock, **queen)
        self.checker = FakeChecker()
        self.engine = self.new_engine()

    def new_engine(self) -> PipelineEngine:
        executors = {
            StageKind.DEPLOY: DeployStage(self.queen),
            StageKind.VALIDATE: ValidateStage(self.checker, self.queen),
            StageKind.BUILD: CommandStage(SubprocessRunner(), self.tmp_path / "logs"),
            StageKind.TEST: CommandStage(SubprocessRunner(), self.tmp_path / "logs"),
        }
        return PipelineEngine(self.journal, executors, self.queen, clock=self.clock)

    def start(
        self, template: dict[str, Any], services: list[str] | None = None, envs: list[str] | None = None
    ) -> str:
        artifacts = [Artifact(name=s, version="2.0.0", command=["true"]) for s in services or ["web"]]
        run = RunInput("test-pipeline", artifacts, envs or ENVS)
        spec = build_spec(CONFIG, PipelineTemplate.model_validate(template), run)
        return self.engine.create(spec).pipeline_id

    def run(self, pipeline_id: str, timeout_s: float = 30) -> PipelineState:
        return asyncio.run(asyncio.wait_for(self.engine.run(pipeline_id), timeout_s))

    def order(self, pipeline_id: str) -> list[tuple[str, str]]:
        """(kind, stage) of every stage event, in journal order."""
        return [
            (e.kind.value, str(e.data["stage"]))
            for e in self.journal.pipeline_events(pipeline_id)
            if "stage" in e.data
        ]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.journal.close()


def _position(order: list[tuple[str, str]], kind: str, stage: str) -> int:
    return order.index((kind, stage))


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------
def test_five_services_to_three_environments_is_one_short_template() -> None:
    template = PipelineTemplate.model_validate({"stages": DEPLOY_AND_VALIDATE})
    services = ["a", "b", "c", "d", "e"]
    nodes = {n.id: n for n in expand_graph(template, ENVS, services)}
    assert len(nodes) == 30
    assert nodes["validate.staging.c"].depends_on == ["deploy.staging.c"]
    # Each service is promoted on its own: staging's c waits for development's c only.
    assert nodes["deploy.staging.c"].depends_on == ["validate.development.c"]
    assert nodes["deploy.development.c"].depends_on == []


def test_an_environment_wide_stage_waits_for_every_service_before_it() -> None:
    template = PipelineTemplate.model_validate(
        {
            "stages": [
                {"name": "build", "kind": "build", "command": "true"},
                {"name": "approve", "kind": "approve", "environments": ["production"], "approvers": ["sre"]},
                {"name": "deploy", "kind": "deploy", "dependsOn": ["build", "approve"]},
            ]
        }
    )
    nodes = {n.id: n for n in expand_graph(template, ENVS, ["a", "b"])}
    assert sorted(nodes["approve.production"].depends_on) == ["deploy.staging.a", "deploy.staging.b"]
    assert nodes["deploy.production.a"].depends_on == ["build", "approve.production"]
    assert nodes["deploy.development.a"].depends_on == ["build"]
    assert nodes["deploy.staging.b"].depends_on == ["build", "deploy.development.b"]


def test_parallel_promotion_runs_environments_side_by_side() -> None:
    template = PipelineTemplate.model_validate({"promotion": "parallel", "stages": DEPLOY_AND_VALIDATE})
    nodes = {n.id: n for n in expand_graph(template, ["eu", "us"], ["web"])}
    assert nodes["deploy.us.web"].depends_on == []


def test_a_cycle_found_at_run_time_is_refused_naming_it() -> None:
    template = PipelineTemplate.model_validate(
        {
            "stages": [
                {"name": "deploy", "kind": "deploy"},
                {"name": "report", "kind": "build", "command": "true", "dependsOn": ["deploy"]},
                {"name": "validate", "kind": "validate", "dependsOn": ["report"]},
            ]
        }
    )
    # report (once) waits for every deploy, deploy.staging waits for development's last stage: validate,
    # which waits for report.
    cycle = "deploy.staging.web -> validate.development.web -> report -> deploy.staging.web"
    with pytest.raises(ValueError, match=f"the stages form a cycle: {cycle}"):
        build_spec(CONFIG, template, RunInput("p", [Artifact(name="web", version="1")], ENVS))


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------
def test_independent_stages_run_in_parallel(world: World) -> None:
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE}, ["a", "b", "c", "d", "e"], ["development"])
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.SUCCEEDED, state.message
    assert world.queen.peak == 5
    assert len(world.queen.created) == 5


def test_max_parallel_stages_one_runs_them_one_after_another(world: World) -> None:
    template = {"maxParallelStages": 1, "stages": DEPLOY_AND_VALIDATE}
    pipeline_id = world.start(template, ["a", "b", "c"], ["development"])
    assert world.run(pipeline_id).outcome is PipelinePhase.SUCCEEDED
    assert world.queen.peak == 1
    order = world.order(pipeline_id)
    starts = [s for kind, s in order if kind == "stage_started"]
    assert starts == [
        "deploy.development.a",
        "deploy.development.b",
        "deploy.development.c",
        "validate.development.a",
        "validate.development.b",
        "validate.development.c",
    ]
    running = 0
    for kind, _ in order:
        running += {"stage_started": 1, "stage_finished": -1}[kind]
        assert running <= 1


def test_dependent_stages_wait_for_their_dependencies(world: World) -> None:
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE})
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.SUCCEEDED
    order = world.order(pipeline_id)
    chain = [f"{kind}.{env}.web" for env in ENVS for kind in ("deploy", "validate")]
    for before, after in itertools.pairwise(chain):
        assert _position(order, "stage_finished", before) < _position(order, "stage_started", after)
    # Each validate checked the address its own deploy stage reported.
    assert world.checker.calls == [f"http://fake/web.{env}/health" for env in ENVS]
    results = status_of(state).results
    assert [(r.environment, r.success, r.deploymentId) for r in results] == [
        (env, True, f"{pipeline_id}.deploy.{env}.web") for env in ENVS
    ]


def test_a_failed_stage_stops_its_dependants_and_rolls_back_its_environment(world: World) -> None:
    world.checker.failing["web.staging"] = "HTTP 500, expected 200"
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE})
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.FAILED
    stages = {k: v.status for k, v in state.stages.items()}
    assert stages["validate.staging.web"] is StageStatus.FAILED
    assert stages["deploy.production.web"] is StageStatus.SKIPPED
    assert stages["validate.production.web"] is StageStatus.SKIPPED
    assert f"{pipeline_id}.deploy.production.web" not in world.queen.created
    # Staging's deployment is rolled back (through the queen), development's is kept.
    assert world.queen.rollbacks == [f"{pipeline_id}.deploy.staging.web"]
    assert state.message.startswith("stage validate.staging.web failed: GET /health: 1 of 1 failed (HTTP 500")
    assert "not run: deploy.production.web, validate.production.web" in state.message
    assert f"rolled back: {pipeline_id}.deploy.staging.web ({pipeline_id}.deploy.staging.web-rollback" in (
        state.message
    )
    status = status_of(state)
    assert status.failed_stage == "validate.staging.web"
    assert status.rolled_back == [f"{pipeline_id}.deploy.staging.web"]
    assert [r.success for r in status.results] == [True, False, False]


def test_a_deployment_that_rolled_itself_back_fails_its_stage(world: World) -> None:
    world.queen.outcomes["web.staging"] = Phase.ROLLED_BACK
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE})
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.FAILED
    reason = state.stages["deploy.staging.web"].reason
    assert reason == f"deployment {pipeline_id}.deploy.staging.web rolled_back: error rate 0.5 above 0.05"
    assert world.queen.rollbacks == []  # it undid itself; nothing else in staging was deployed
    results = status_of(state).results
    assert [(r.phase, r.rolled_back) for r in results] == [
        ("succeeded", False),
        ("rolled_back", True),
        ("skipped", False),
    ]


def test_without_fail_fast_independent_branches_go_on(world: World) -> None:
    world.queen.outcomes["a.development"] = Phase.FAILED
    template = {"failFast": False, "rollback": "none", "stages": DEPLOY_AND_VALIDATE}
    pipeline_id = world.start(template, ["a", "b"], ["development", "staging"])
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.FAILED
    assert state.stages["validate.staging.b"].status is StageStatus.SUCCEEDED
    assert state.stages["deploy.staging.a"].status is StageStatus.SKIPPED
    assert state.stages["deploy.staging.a"].reason == "blocked: validate.development.a skipped"


def test_fail_fast_starts_nothing_after_a_failure(world: World) -> None:
    world.queen.outcomes["a.development"] = Phase.FAILED
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE}, ["a", "b"], ["development", "staging"])
    state = world.run(pipeline_id)
    assert state.stages["deploy.staging.b"].status is StageStatus.SKIPPED
    assert state.stages["deploy.staging.b"].reason == "stopped: deploy.development.a failed"
    # b's development deployment ran beside a's and succeeded; the failed environment is rolled back.
    assert world.queen.rollbacks == [f"{pipeline_id}.deploy.development.b"]


def test_a_refused_rollback_is_reported_not_hidden(world: World) -> None:
    world.checker.failing["web.development"] = "HTTP 503, expected 200"
    world.queen.refuse_rollback.add("web.development")
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE})
    state = world.run(pipeline_id)
    rollback = state.stages["deploy.development.web"].rollback
    assert rollback is not None and rollback.phase == "refused"
    assert "replaced nothing that can be restored" in state.message


def test_a_stage_that_outlives_its_timeout_fails_and_its_deployment_is_aborted(world: World) -> None:
    world.queen.held.add("web.development")
    template = {"stages": [{**DEPLOY_AND_VALIDATE[0], "timeout": 200}]}
    pipeline_id = world.start(template, envs=["development"])
    state = world.run(pipeline_id)
    assert state.outcome is PipelinePhase.FAILED
    assert "within the stage's 0.2s" in state.stages["deploy.development.web"].reason or (
        state.stages["deploy.development.web"].reason == "timed out after 0.2s"
    )
    assert world.queen.aborted == [f"{pipeline_id}.deploy.development.web"]


def test_build_and_test_commands_gate_on_their_exit_status(world: World, tmp_path: Path) -> None:
    template = {
        "stages": [
            {"name": "build", "kind": "build", "command": [sys.executable, "-c", "print('built', 42)"]},
            {
                "name": "test",
                "kind": "test",
                "command": [sys.executable, "-c", "import sys; print('2 failed'); sys.exit(3)"],
                "dependsOn": ["build"],
            },
            {**DEPLOY_AND_VALIDATE[0], "dependsOn": ["test"]},
        ]
    }
    pipeline_id = world.start(template, envs=["development"])
    state = world.run(pipeline_id)
    assert state.stages["build"].status is StageStatus.SUCCEEDED
    assert "built 42" in Path(state.stages["build"].result["log"]).read_text()
    assert state.stages["test"].reason.endswith("exited with status 3: 2 failed")
    assert state.stages["deploy.development.web"].status is StageStatus.SKIPPED
    assert world.queen.created == []


def test_a_command_is_killed_at_its_timeout(world: World) -> None:
    template = {"stages": [{"name": "build", "kind": "build", "command": "sleep 30", "timeout": 300}]}
    state = world.run(world.start(template, envs=["development"]), timeout_s=20)
    assert state.stages["build"].status is StageStatus.FAILED
    assert "timed out" in state.stages["build"].reason


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------
async def _interrupt(world: World, pipeline_id: str, when: Any) -> None:
    """Run until ``when()`` holds, then cancel the run as if its actor had died."""
    task = asyncio.ensure_future(world.engine.run(pipeline_id))
    while not when():
        assert not task.done(), "the run ended before the interruption"
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def test_an_interrupted_run_resumes_from_the_journal_without_deploying_twice(world: World) -> None:
    world.queen.held.add("web.staging")
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE})
    staging = f"{pipeline_id}.deploy.staging.web"

    async def scenario() -> tuple[PipelineState, PipelineState, int]:
        await _interrupt(world, pipeline_id, lambda: staging in world.queen.created)  # DO-006 killed
        before = world.engine.state(pipeline_id)
        checks_before = len(world.checker.calls)
        world.engine = world.new_engine()  # a new DO-006; the queen survived
        assert world.engine.unfinished() == [pipeline_id]
        task = asyncio.ensure_future(world.engine.run(pipeline_id))
        await asyncio.sleep(0.05)
        world.queen.release("web.staging")
        return before, await asyncio.wait_for(task, 30), checks_before

    before, state, checks_before = asyncio.run(scenario())
    assert before.stages["deploy.staging.web"].status is StageStatus.RUNNING
    assert state.outcome is PipelinePhase.SUCCEEDED, state.message
    assert world.queen.created == [f"{pipeline_id}.deploy.{env}.web" for env in ENVS]
    assert world.queen.submissions.count(staging) == 2  # submitted, then joined again by the resumed run
    assert len(world.checker.calls) == checks_before + 2  # development's validate was not run again
    started = [s for kind, s in world.order(pipeline_id) if kind == "stage_started"]
    assert started.count("deploy.staging.web") == 1  # resumed, not started anew
    finished = [s for kind, s in world.order(pipeline_id) if kind == "stage_finished"]
    assert sorted(finished) == sorted(set(finished))  # the interrupted run's stages did not go on
    assert world.engine.unfinished() == []


def test_a_rollback_interrupted_after_its_intent_resumes_once(world: World) -> None:
    world.checker.failing["web.development"] = "HTTP 500, expected 200"
    world.queen.rollback_delay_s = 0.2  # interrupted while the queen has not answered yet
    pipeline_id = world.start({"stages": DEPLOY_AND_VALIDATE}, envs=["development"])

    def rollback_started() -> bool:
        events = world.journal.pipeline_events(pipeline_id)
        return any(e.kind is PipelineEventKind.ROLLBACK_STARTED for e in events)

    async def scenario() -> PipelineState:
        await _interrupt(world, pipeline_id, rollback_started)
        world.engine = world.new_engine()
        return await asyncio.wait_for(world.engine.run(pipeline_id), 30)

    state = asyncio.run(scenario())
    assert state.outcome is PipelinePhase.FAILED
    assert world.queen.rollbacks == [f"{pipeline_id}.deploy.development.web"]
    kinds = [e.kind for e in world.journal.pipeline_events(pipeline_id)]
    assert kinds.count(PipelineEventKind.ROLLBACK_STARTED) == 1
    assert kinds.count(PipelineEventKind.ROLLBACK_SUBMITTED) == 1
    assert kinds.count(PipelineEventKind.ROLLBACK_FINISHED) == 1
    assert status_of(state).rolled_back == [f"{pipeline_id}.deploy.development.web"]


def test_creating_the_same_run_twice_records_it_once(world: World) -> None:
    template = PipelineTemplate.model_validate({"stages": DEPLOY_AND_VALIDATE})
    run = RunInput("p", [Artifact(name="web", version="1")], ["development"], pipeline_id="p-fixed")
    spec = build_spec(CONFIG, template, run)
    world.engine.create(spec)
    world.engine.create(spec)
    assert [e.kind for e in world.journal.pipeline_events("p-fixed")] == [PipelineEventKind.CREATED]
    ok, bad = world.journal.verify_chain(("pipeline_events", "pipeline_id"))
    assert ok and bad is None


# --------------------------------------------------------------------------------------------
# Run-time input
# --------------------------------------------------------------------------------------------
def test_one_artifact_becomes_each_of_the_templates_services() -> None:
    template = PipelineTemplate.model_validate({"services": ["a", "b"], "stages": DEPLOY_AND_VALIDATE})
    spec = build_spec(CONFIG, template, RunInput("p", [Artifact(name="web", version="3.1.0")], ["staging"]))
    requests = [s.request for s in spec.stages if s.request]
    assert [(r.artifact.name, r.artifact.version, r.environment) for r in requests] == [
        ("a", "3.1.0", "staging"),
        ("b", "3.1.0", "staging"),
    ]


@pytest.mark.parametrize(
    ("environments", "message"),
    [
        (["development", "moon"], "environments: unknown environment 'moon'"),
        (["staging", "staging"], "environments: staging listed more than once"),
        ([], "environments: name the environments"),
    ],
)
def test_bad_environments_are_refused_before_anything_is_journaled(
    environments: list[str], message: str
) -> None:
    template = PipelineTemplate.model_validate({"stages": DEPLOY_AND_VALIDATE})
    with pytest.raises(ValueError, match=message):
        build_spec(CONFIG, template, RunInput("p", [Artifact(name="web", version="1")], environments))


def test_an_approve_stage_applies_where_the_environment_requires_approval() -> None:
    config = EnterpriseConfig.from_mapping(
        {
            "roles": {"sre": ["carol"], "qa": ["erin"]},
            "environments": {
                "development": {},
                "production": {"approvalWorkflow": {"required": True, "approvers": ["sre"], "expiry": "2h"}},
            },
        }
    )
    stages = [
        {"name": "approve", "kind": "approve"},
        {"name": "deploy", "kind": "deploy", "dependsOn": ["approve"]},
        {"name": "smoke", "kind": "validate", "dependsOn": ["deploy"]},
    ]
    run = RunInput("p", [Artifact(name="web", version="1")], ["development", "production"])
    spec = build_spec(config, PipelineTemplate.model_validate({"stages": stages}), run)
    ids = [s.id for s in spec.stages]
    assert "approve.development" not in ids
    approve = spec.stage("approve.production")
    assert approve.approvers == ["sre"]
    assert approve.timeout_ms == 2 * 3600_000 + 60_000  # the expiry, then a minute to say it expired
    # Production's deployment carries the stage's approval; development's has none to carry.
    assert spec.stage("deploy.production.web").approval_stage == "approve.production"
    assert spec.stage("deploy.development.web").approval_stage is None
    # The approval waits for development: promotion goes through it.
    assert approve.depends_on == ["smoke.development.web"]
    # Explicit approvers make it apply everywhere.
    stages[0]["approvers"] = ["qa"]
    spec = build_spec(config, PipelineTemplate.model_validate({"stages": stages}), run)
    assert spec.stage("approve.development").approvers == ["qa"]
