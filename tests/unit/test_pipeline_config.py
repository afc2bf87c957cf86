"""The ``pipelines:`` section: the shipped template loads; each mistake is named at its YAML path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.config import DEFAULT_CONFIG_FILE, ConfigError, load_config
from engine.models import Artifact
from engine.pipeline_model import StageKind
from engine.pipeline_spec import RunInput, build_spec

HEADER = """
roles:
  sre: [carol]
environments:
  development: {}
  staging: {}
  production:
    approvalWorkflow: {required: true, approverGroups: [sre]}
platforms:
  local: {type: local}
pipelines:
  p:
"""


def _problems(tmp_path: Path, pipeline: str) -> list[str]:
    file = tmp_path / "enterprise_config.yaml"
    file.write_text(textwrap.dedent(HEADER) + textwrap.indent(textwrap.dedent(pipeline), "    "))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    return [line.removeprefix(f"{file}: ") for line in caught.value.problems]


def test_the_shipped_pipeline_loads_and_expands() -> None:
    config = load_config(DEFAULT_CONFIG_FILE)
    template = config.pipelines["production-pipeline"]
    spec = build_spec(
        config, template, RunInput("production-pipeline", [Artifact(name="web", version="2.0.0")])
    )
    kinds = {s.id: s.kind for s in spec.stages}
    assert kinds["approve.production"] is StageKind.APPROVE
    assert "approve.staging" not in kinds
    assert spec.stage("approve.production").approvers == ["prod-team", "security-team", "compliance-team"]
    assert spec.stage("deploy.production.web").depends_on == ["test", "approve.production"]
    assert spec.stage("approve.production").depends_on == ["test", "validate.staging.web"]
    request = spec.stage("deploy.staging.web").request
    assert request is not None and request.strategy.canary is not None
    assert request.strategy.canary.step_duration == 30_000


def test_unknown_and_duplicate_stages_are_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: deploy, kind: deploy}
          - {name: validate, kind: validate, dependsOn: [deplyo]}
          - {name: deploy, kind: deploy}
        """,
    )
    assert problems == [
        "pipelines.p.stages[2].name: stage 'deploy' is defined twice (first at stages[0])",
        "pipelines.p.stages[1].dependsOn[0]: unknown stage 'deplyo'; the stages are deploy, validate",
    ]


def test_a_dependency_cycle_is_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: build, kind: build, command: make, dependsOn: [test]}
          - {name: test, kind: test, command: make test, dependsOn: [build]}
        """,
    )
    assert problems == ["pipelines.p.stages[0].dependsOn: dependency cycle: build -> test -> build"]


def test_a_cycle_through_promotion_is_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: deploy, kind: deploy}
          - {name: report, kind: build, command: make, dependsOn: [deploy]}
          - {name: validate, kind: validate, dependsOn: [report]}
        """,
    )
    assert len(problems) == 1
    assert problems[0].startswith("pipelines.p.stages: the stages form a cycle once promoted")


def test_settings_of_another_kind_and_missing_commands_are_refused(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: build, kind: build, command: make, checks: [{path: /}]}
          - {name: test, kind: test}
          - {name: check, kind: validate, checks: [{path: /, requests: 2, maxFailures: 2}]}
        """,
    )
    assert problems == [
        "pipelines.p.stages[0].checks: not a setting of a build stage (it takes command, env, workingDir)",
        "pipelines.p.stages[1].command: a test stage needs a command",
        "pipelines.p.stages[2].checks[0].maxFailures: 2 must be below requests (2): otherwise the check "
        "could never fail",
    ]


def test_a_deploy_stage_takes_its_platform_and_strategy_as_a_deployment_would(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: deploy, kind: deploy, strategy: canary, settings: {stepPercentage: 0}, platform: mars}
        """,
    )
    assert len(problems) == 2, problems
    assert problems[0].startswith("pipelines.p.stages[0].platform: unknown platform 'mars'")
    assert (
        problems[1]
        == "pipelines.p.stages[0].settings.stepPercentage: a step of 0% would never finish; use 1-100"
    )


def test_unknown_environments_and_kinds_are_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        environments: [development, moon]
        stages:
          - {name: approve, kind: approve, environments: [mars]}
          - {name: ship, kind: teleport}
        """,
    )
    assert any(p.startswith("pipelines.p.stages[1].kind: ") and "teleport" in p for p in problems), problems


def test_unknown_environments_are_named(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        environments: [development, moon]
        stages:
          - {name: approve, kind: approve, environments: [mars]}
        """,
    )
    known = "configured environments are development, production, staging"
    assert problems == [
        f"pipelines.p.stages[0].environments[0]: unknown environment 'mars'; {known}",
        f"pipelines.p.environments[1]: unknown environment 'moon'; {known}",
    ]


def test_a_secret_in_a_commands_environment_is_refused(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        """
        stages:
          - {name: build, kind: build, command: make, env: {REGISTRY_TOKEN: abc}}
        """,
    )
    assert len(problems) == 1
    assert problems[0].startswith("pipelines.p.stages[0].env: ")
    assert "REGISTRY_TOKEN looks like a secret" in problems[0]
    assert "abc" not in problems[0]
