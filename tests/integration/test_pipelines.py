"""Pipelines (DO-006) end to end on the local platform: a real local Ray, real processes behind HAProxy, real
HTTP checks; the queen, DO-006 and the whole Ray killed mid-way."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from actors.common import QUEEN_NAME, worker_name
from adapters import create_platform
from engine.config import write_isolated_config
from engine.journal import Journal
from engine.models import Phase, PlatformConfig, Target
from engine.pipeline import read_pipeline
from engine.pipeline_state import PipelinePhase, PipelineState, StageStatus
from engine.state import EventKind
from tests.integration.conftest import REPO, orch_journal, sample_artifact

pytestmark = pytest.mark.integration
# Environments of their own, registered through DO-001, without approvals: these tests are about the graph,
# failures and crashes (test_three_environments_with_approvals is about approvals).
ENVS = ["pl-dev", "pl-stage", "pl-prod"]
QUICK_ROLLING = {"type": "rolling", "replicas": 1}
# Blue-green from a live revision: deploy, validate 2 s (health and smoke checks on the new replicas), switch,
# keep the old one 1 s: a few seconds per environment, long enough to be killed in the middle of.
SLOW_BLUE_GREEN = {
    "type": "blue_green",
    "replicas": 1,
    "blueGreen": {"validationDuration": 2000, "scaleDownDelay": 1000, "smokeRequests": 5},
}


def template(strategy: dict[str, Any], *extra_stages: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {
        **options,
        "stages": [
            {"name": "deploy", "kind": "deploy", "strategy": strategy},
            {"name": "health", "kind": "validate", "dependsOn": ["deploy"], "checks": [{"path": "/health"}]},
            *extra_stages,
        ],
    }


def revisions(platform: PlatformConfig, service: str, environment: str) -> dict[str, int]:
    adapter = create_platform(platform)
    try:
        target = Target(service=service, environment=environment)
        return {r.revision: r.running_replicas for r in adapter.list_revisions(target)}
    finally:
        adapter.close()


@pytest.fixture(scope="module", autouse=True)
def simple_environments(orchestrator: Any) -> None:
    for name in ENVS:
        orchestrator.register_environment({"name": name})


def first_revisions(orch: Any, services: list[str], environments: list[str] = ENVS) -> None:
    """Version 1.0.0 of each service live in each environment (through a pipeline too)."""
    artifacts = [sample_artifact(s, "1.0.0") for s in services]
    results = orch.deploy_pipeline(template(QUICK_ROLLING), artifacts, environments, timeout_s=300)
    assert results.success, results.pipeline.message


def submissions(journal: Journal, deployment_id: str) -> int:
    return [e.kind for e in journal.events(deployment_id)].count(EventKind.SUBMITTED)


RELEASE = ["development", "staging", "pl-production"]
# development as shipped (no approval); staging as shipped (qa approves, enhanced); a production of the
# test's own: strict (signed artifacts), two approver groups, the compliance gate and the vulnerability scan.
PL_PRODUCTION = {
    "name": "pl-production",
    "complianceLevel": "strict",
    "approvalWorkflow": {"required": True, "approvers": ["release-managers", "prod-team"], "expiry": "1h"},
    "security": {"complianceScanning": True, "vulnerabilityScanning": True, "allowedSources": ["file://*"]},
}
APPROVERS = {
    "staging": [("erin", "qa")],
    "pl-production": [("bob", "release-managers"), ("alice", "prod-team")],
}


def release_template() -> dict[str, Any]:
    """build once; in each environment: approve (where the environment requires it), the compliance gate
    before production, deploy, a health check and (after development) a smoke test."""
    return {
        "stages": [
            {"name": "build", "kind": "build", "command": [sys.executable, "-c", "print('built')"]},
            {"name": "approve", "kind": "approve", "dependsOn": ["build"]},
            {
                "name": "gate",
                "kind": "compliance",
                "environments": ["pl-production"],
                "dependsOn": ["approve"],
            },
            {
                "name": "deploy",
                "kind": "deploy",
                "dependsOn": ["build", "approve", "gate"],
                "strategy": QUICK_ROLLING,
            },
            {"name": "health", "kind": "validate", "dependsOn": ["deploy"], "checks": [{"path": "/health"}]},
            {
                "name": "smoke",
                "kind": "validate",
                "environments": ["staging", "pl-production"],
                "dependsOn": ["deploy"],
                "checks": [{"path": "/", "requests": 20, "contains": '"version": "1.0.0"'}],
            },
        ]
    }


def approve_when_asked(
    orch: Any, pipeline_id: str, people: dict[str, Any], timeout_s: float = 300
) -> dict[str, float]:
    """Each environment's groups approve the pipeline's stage once it asks them; returns when each did."""
    approved: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(approved) < len(APPROVERS) and time.monotonic() < deadline:
        for environment, deciders in APPROVERS.items():
            subject = f"{pipeline_id}.approve.{environment}"
            if environment in approved or not orch.approvals(environment=environment):
                time.sleep(0.3)
                continue
            if any(r.subject == subject for r in orch.approvals(environment=environment)):
                approved[environment] = time.time()  # before: the last approval admits at once
                for person, group in deciders:
                    people[person].approve(subject, None, group, f"{person} checked the release notes")
        assert orch.pipeline_status(pipeline_id).state is PipelinePhase.RUNNING
    assert len(approved) == len(APPROVERS), f"approvals not asked in time: {approved}"
    return approved


def test_three_environments_with_approvals_and_two_services_in_parallel(
    orchestrator: Any, governance_kit: Any, people: dict[str, Any]
) -> None:
    orchestrator.register_environment(PL_PRODUCTION)
    artifacts = [governance_kit.artifact(s, "1.0.0") for s in ("pipe-api", "pipe-web")]
    change = {"id": "CHG-7", "summary": "pipe-api and pipe-web 1.0.0"}
    pipeline_id = orchestrator.start_pipeline(
        release_template(), artifacts, RELEASE, pipeline_name="release", change_record=change
    )
    approved = approve_when_asked(orchestrator, pipeline_id, people)
    status = orchestrator.wait_pipeline(pipeline_id, 600)

    assert status.success, status.message
    assert [(r.environment, r.service, r.success) for r in status.results] == [
        (env, service, True) for env in RELEASE for service in ("pipe-api", "pipe-web")
    ]
    journal = orch_journal(orchestrator)
    by_target = {(r.environment, r.service): journal.state(r.deployment_id) for r in status.results}
    # The two services of an environment ran side by side ...
    for env in RELEASE:
        api, web = by_target[(env, "pipe-api")], by_target[(env, "pipe-web")]
        assert api.submitted_at < (web.finished_at or 0) and web.submitted_at < (api.finished_at or 0)
    # ... each environment after the one before it was deployed and checked, and after its approval.
    state = read_pipeline(journal, pipeline_id)
    for before, after in itertools.pairwise(RELEASE):
        for service in ("pipe-api", "pipe-web"):
            checked = state.stages[f"health.{before}.{service}"].finished_at or 0
            assert by_target[(after, service)].submitted_at >= checked
            assert by_target[(after, service)].admitted_at or approved[after] <= 0
    # One approval per environment, carried to its deployments (the groups were asked once).
    for service in ("pipe-api", "pipe-web"):
        [carried] = orchestrator.approvals(by_target[("pl-production", service)].deployment_id)
        assert {d.person for d in carried.decisions} == {"bob", "alice"}
        assert all(f"{pipeline_id}.approve.pl-production" in d.comment for d in carried.decisions)
    assert "approve.development" not in state.stages  # development requires none
    gate = state.stages["gate.pl-production"]
    assert gate.status is StageStatus.SUCCEEDED and gate.result["score"] >= 80
    report = orchestrator.report(pipeline_id)
    assert report.passed, report.markdown()
    assert {a.subject for a in report.approvals} == {f"{pipeline_id}.approve.{e}" for e in APPROVERS}
    assert "Pipeline approvals" in report.markdown()
    assert "built" in Path(state.stages["build"].result["log"]).read_text()


def test_a_pipeline_rejected_before_production_deploys_nothing_there(
    orchestrator: Any, governance_kit: Any, people: dict[str, Any]
) -> None:
    orchestrator.register_environment(PL_PRODUCTION)
    artifact = governance_kit.artifact("pipe-rejected", "1.0.0")
    pipeline_id = orchestrator.start_pipeline(release_template(), artifact, ["development", "pl-production"])
    subject = f"{pipeline_id}.approve.pl-production"
    deadline = time.monotonic() + 300
    while not [r for r in orchestrator.approvals(environment="pl-production") if r.subject == subject]:
        assert time.monotonic() < deadline, orchestrator.pipeline_status(pipeline_id)
        time.sleep(0.3)
    people["bob"].approve(subject, None, "release-managers")
    people["carol"].reject(subject, None, "prod-team", "the release notes are missing")
    status = orchestrator.wait_pipeline(pipeline_id, 120)

    assert status.state is PipelinePhase.FAILED
    assert status.failed_stage == "approve.pl-production"
    assert "rejected by carol for prod-team: the release notes are missing" in status.message
    assert [(r.environment, r.success) for r in status.results] == [
        ("development", True),
        ("pl-production", False),
    ]
    assert revisions(orchestrator.config.platform("local"), "pipe-rejected", "pl-production") == {}


def test_a_failed_staging_stage_stops_production_and_rolls_back_staging(orchestrator: Any) -> None:
    first_revisions(orchestrator, ["pipe-bad"])
    # 2.0.0 answers 10% of requests with 500 but its /health is fine: development (health checks only)
    # passes; staging's smoke test (30 requests, none may fail) catches it.
    smoke = {
        "name": "smoke",
        "kind": "validate",
        "environments": ["pl-stage", "pl-prod"],
        "dependsOn": ["health"],
        "attempts": 1,
        "checks": [{"path": "/", "requests": 30}],
    }
    results = orchestrator.deploy_pipeline(
        template(QUICK_ROLLING, smoke), sample_artifact("pipe-bad", "2.0.0", error_rate=0.1), ENVS
    )

    status = results.pipeline
    assert status.state is PipelinePhase.FAILED
    assert status.failed_stage == "smoke.pl-stage.pipe-bad"
    assert status.message.startswith("stage smoke.pl-stage.pipe-bad failed: GET /: ")
    assert "not run: deploy.pl-prod.pipe-bad" in status.message
    assert [(r.environment, r.success, r.rolled_back) for r in results] == [
        ("pl-dev", True, False),
        ("pl-stage", False, True),
        ("pl-prod", False, False),
    ]
    assert results[2].deployment_id is None and results[2].phase == "skipped"
    journal = orch_journal(orchestrator)
    ours = [s for s in journal.deployments() if s.deployment_id.startswith(status.pipeline_id)]
    assert {s.request.environment for s in ours} == {"pl-dev", "pl-stage"}
    rollback = journal.state(f"{results[1].deployment_id}-rollback")
    assert rollback.phase() is Phase.SUCCEEDED
    assert results[1].rollback_deployment_id == rollback.deployment_id
    platform = orchestrator.config.platform("local")
    assert revisions(platform, "pipe-bad", "pl-stage") == {"1-0-0": 1}
    assert revisions(platform, "pipe-bad", "pl-prod") == {"1-0-0": 1}
    assert revisions(platform, "pipe-bad", "pl-dev") == {"2-0-0": 1}


def _wait_for_stage(journal: Journal, pipeline_id: str, stage: str, timeout_s: float = 120) -> PipelineState:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_pipeline(journal, pipeline_id)
        if state.stages[stage].status is StageStatus.RUNNING:
            return state
        assert state.outcome is None, state.message
        time.sleep(0.2)
    raise AssertionError(f"{stage} did not start within {timeout_s}s")


def _each_deployment_once(journal: Journal, state: PipelineState) -> None:
    deployments = [s.result["deployment_id"] for s in state.stages.values() if "deployment_id" in s.result]
    assert len(deployments) == 3
    for deployment_id in deployments:
        assert submissions(journal, deployment_id) == 1
        kinds = [e.kind for e in journal.events(deployment_id)]
        assert kinds.count(EventKind.PLANNED) == 1 and kinds.count(EventKind.FINISHED) == 1
    assert not [s for s in journal.deployments(active_only=True) if state.pipeline_id in s.deployment_id]


def test_a_pipeline_survives_the_queen_and_do006_killed(orchestrator: Any) -> None:
    first_revisions(orchestrator, ["pipe-kill"])
    journal = orch_journal(orchestrator)
    pipeline_id = orchestrator.start_pipeline(
        template(SLOW_BLUE_GREEN), sample_artifact("pipe-kill", "2.0.0"), ENVS
    )
    _wait_for_stage(journal, pipeline_id, "deploy.pl-dev.pipe-kill")
    ray.kill(ray.get_actor(QUEEN_NAME, namespace=orchestrator.namespace), no_restart=False)
    _wait_for_stage(journal, pipeline_id, "deploy.pl-stage.pipe-kill")
    ray.kill(ray.get_actor(worker_name("DO-006"), namespace=orchestrator.namespace), no_restart=False)
    _wait_for_stage(journal, pipeline_id, "deploy.pl-prod.pipe-kill")
    # Both at once, this time for good: the queen comes back, and it recreates DO-006.
    ray.kill(ray.get_actor(worker_name("DO-006"), namespace=orchestrator.namespace), no_restart=True)
    ray.kill(ray.get_actor(QUEEN_NAME, namespace=orchestrator.namespace), no_restart=False)

    status = orchestrator.wait_pipeline(pipeline_id, 300)

    assert status.success, status.message
    _each_deployment_once(journal, read_pipeline(journal, pipeline_id))
    platform = orchestrator.config.platform("local")
    assert all(revisions(platform, "pipe-kill", env) == {"2-0-0": 1} for env in ENVS)


# --------------------------------------------------------------------------------------------
# The whole local Ray killed: a driver process whose embedded Ray dies with it, then a new driver
# --------------------------------------------------------------------------------------------
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from client.driver import DeploymentOrchestrator
    from examples.quickstart import sample_artifact
    config, template, mode, argument = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
    orch = DeploymentOrchestrator(config_path=config, num_cpus=2)
    environments = ["pl-dev", "pl-stage", "pl-prod"]
    if mode == "start":  # print the run's id, then stay (the embedded Ray lives as long as this process)
        for name in environments:
            orch.register_environment({"name": name})
        first = json.loads(sys.argv[5])  # 1.0.0 everywhere first, to the end
        v1 = sample_artifact("1.0.0", service="pipe-crash")
        done = orch.deploy_pipeline(first, v1, environments, timeout_s=300)
        assert done.success, done.pipeline.message
        artifact = sample_artifact(argument, service="pipe-crash")
        print(orch.start_pipeline(template, artifact, environments, pipeline_name="crash"), flush=True)
        time.sleep(600)
    else:
        print(orch.wait_pipeline(argument, 300).model_dump_json(), flush=True)
    """
)


@pytest.fixture
def own_home(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An orchestrator home of its own (journal, platform state, ports) for driver processes."""
    config = write_isolated_config(
        tmp_path, (19500, 19599), (45000, 45999), namespace=f"pipe-crash-{os.getpid()}"
    )
    env = {**os.environ, "ORCH_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    yield config, env
    platform = create_platform(PlatformConfig.model_validate(_local_platform(config)))
    for environment in ENVS:
        target = Target(service="pipe-crash", environment=environment)
        for revision in platform.list_revisions(target):
            platform.remove_revision(target, revision.revision)
        platform.router.remove_frontend(target)  # type: ignore[attr-defined]
    platform.close()


def _local_platform(config: Path) -> dict[str, Any]:
    from engine.config import load_config

    return load_config(config).platform("local").model_dump()


def _driver(
    config: Path, env: dict[str, str], pipeline: dict[str, Any], mode: str, argument: str, *more: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(config), json.dumps(pipeline), mode, argument, *more],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_pipeline_survives_the_whole_local_ray_killed(own_home: tuple[Path, dict[str, str]]) -> None:
    config, env = own_home
    marker = config.parent / "builds"
    build = {"name": "build", "kind": "build", "command": ["sh", "-c", f"echo built >> {marker}"]}
    pipeline = template(SLOW_BLUE_GREEN, build)
    pipeline["stages"][0]["dependsOn"] = ["build"]
    journal = Journal(config.parent / "journal.db")
    # 1.0.0 everywhere first (to the end), then the pipeline of 2.0.0 started: one driver, one Ray start.
    first = _driver(config, env, pipeline, "start", "2.0.0", json.dumps(template(QUICK_ROLLING)))
    pipeline_id = first.stdout.readline().strip() if first.stdout else ""
    assert pipeline_id.startswith("crash-"), first.stderr.read() if first.stderr else ""
    _wait_for_stage(journal, pipeline_id, "deploy.pl-stage.pipe-crash")
    first.send_signal(signal.SIGKILL)  # the driver, and with it the embedded Ray: queen, DO-006, runners
    first.wait(60)
    assert read_pipeline(journal, pipeline_id).outcome is None

    second = _driver(config, env, pipeline, "wait", pipeline_id)
    _out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    state = read_pipeline(journal, pipeline_id)
    assert state.outcome is PipelinePhase.SUCCEEDED, state.message
    assert marker.read_text() == "built\n"  # finished before the crash: not run again
    _each_deployment_once(journal, state)
