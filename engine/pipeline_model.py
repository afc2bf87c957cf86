"""Pipeline templates (the ``pipelines:`` section of ``enterprise_config.yaml``) and their stage graph.

A template lists stages of six kinds; ``dependsOn`` between them forms a graph. A template is expanded over
the environments of a run (in order: development, staging, production) and over its services (a matrix), so
that "five services to three environments" is one short template:

- a stage's ``matrix`` says which axes it is repeated over: ``[]`` (once per pipeline: build, test),
  ``[environment]`` (approve, compliance), ``[environment, service]`` (deploy, validate);
- an instance depends on the instances of each stage in its ``dependsOn`` that agree with it on the axes they
  share (validate.staging.web on deploy.staging.web; deploy.staging.web on the single build);
- with ``promotion: sequential`` (the default) an environment follows the one before it: a stage that has no
  dependency inside its own environment waits for the last stages of the previous environment that concern
  its service (all of them for a stage without a service). ``promotion: parallel`` runs environments (e.g.
  regions) side by side.

Nothing here knows about Ray or the journal; ``engine.pipeline`` runs the graph.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from engine.models import ComplianceLevel, DurationMs, Model, Name, without_secrets


class StageKind(str, Enum):
    BUILD = "build"
    TEST = "test"
    DEPLOY = "deploy"
    VALIDATE = "validate"
    APPROVE = "approve"
    COMPLIANCE = "compliance"


Axis = Literal["environment", "service"]
ENVIRONMENT: Axis = "environment"
SERVICE: Axis = "service"

DEFAULT_MATRIX: dict[StageKind, list[Axis]] = {
    StageKind.BUILD: [],
    StageKind.TEST: [],
    StageKind.DEPLOY: [ENVIRONMENT, SERVICE],
    StageKind.VALIDATE: [ENVIRONMENT, SERVICE],
    StageKind.APPROVE: [ENVIRONMENT],
    StageKind.COMPLIANCE: [ENVIRONMENT],
}
DEFAULT_TIMEOUT_MS: dict[StageKind, int] = {
    StageKind.BUILD: 600_000,
    StageKind.TEST: 600_000,
    StageKind.DEPLOY: 3_600_000,
    StageKind.VALIDATE: 300_000,
    StageKind.APPROVE: 86_400_000,
    StageKind.COMPLIANCE: 300_000,
}
# The settings each kind reads (besides name, kind, dependsOn, matrix, environments, timeout).
_SETTINGS: dict[StageKind, frozenset[str]] = {
    StageKind.BUILD: frozenset({"command", "working_dir", "env"}),
    StageKind.TEST: frozenset({"command", "working_dir", "env"}),
    StageKind.DEPLOY: frozenset({"strategy", "settings", "platform"}),
    StageKind.VALIDATE: frozenset({"checks", "attempts", "interval"}),
    StageKind.APPROVE: frozenset({"approvers"}),
    StageKind.COMPLIANCE: frozenset({"level"}),
}
_COMMON = frozenset({"name", "kind", "depends_on", "matrix", "environments", "timeout"})


class HttpCheck(Model):
    """One HTTP check against the deployed service's address (through its router, as users reach it)."""

    path: str = Field(default="/health", pattern=r"^/")
    expect_status: int = Field(default=200, ge=100, le=599)
    contains: str | None = Field(default=None, description="Text the body must contain")
    requests: int = Field(default=1, ge=1, le=10_000)
    max_failures: int = Field(default=0, ge=0)
    timeout: Annotated[DurationMs, Field(gt=0)] = 2_000

    @model_validator(mode="after")
    def _failures_below_requests(self) -> HttpCheck:
        if self.max_failures >= self.requests:
            raise ValueError(
                f"maxFailures ({self.max_failures}) must be below requests ({self.requests}): "
                "otherwise the check could never fail"
            )
        return self


class StageTemplate(Model):
    """One stage of a template; the settings used depend on its ``kind``."""

    name: Name
    kind: StageKind
    depends_on: list[str] = Field(default_factory=list)
    matrix: list[Axis] | None = Field(default=None, description="None: the kind's default axes")
    environments: list[Name] | None = Field(default=None, description="Only in these environments")
    timeout: Annotated[DurationMs, Field(gt=0)] | None = None
    # build, test
    command: list[str] | None = None
    working_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    # deploy
    strategy: str | dict[str, Any] = "rolling"
    settings: dict[str, Any] = Field(default_factory=dict, description="Strategy overrides (seed keys)")
    platform: str = "local"
    # validate
    checks: list[HttpCheck] = Field(default_factory=lambda: [HttpCheck()])
    attempts: int = Field(default=3, ge=1, le=100)
    interval: DurationMs = 2_000
    # approve
    approvers: list[str] | None = Field(default=None, description="None: the environment's approver groups")
    # compliance
    level: ComplianceLevel | None = Field(default=None, description="None: the environment's level")

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value

    @field_validator("env")
    @classmethod
    def _no_plain_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        advice = (
            "a command's environment is journaled; pass secrets through the orchestrator's own environment"
        )
        return without_secrets(env, "env.", advice)

    @model_validator(mode="after")
    def _settings_of_its_kind(self) -> StageTemplate:
        allowed = _COMMON | _SETTINGS[self.kind]
        for field in sorted(self.model_fields_set - allowed):
            alias = type(self).model_fields[field].alias or field
            uses = ", ".join(sorted(type(self).model_fields[f].alias or f for f in _SETTINGS[self.kind]))
            raise ValueError(f"{alias}: not a setting of a {self.kind.value} stage (it takes {uses})")
        if self.kind in (StageKind.BUILD, StageKind.TEST) and not self.command:
            raise ValueError(f"command: a {self.kind.value} stage needs a command")
        if self.matrix is not None and len(set(self.matrix)) != len(self.matrix):
            raise ValueError(f"matrix: an axis is listed twice in {self.matrix}")
        return self

    def axes(self) -> list[Axis]:
        return list(self.matrix if self.matrix is not None else DEFAULT_MATRIX[self.kind])

    def timeout_ms(self) -> int:
        return self.timeout if self.timeout is not None else DEFAULT_TIMEOUT_MS[self.kind]


RollbackScope = Literal["environment", "pipeline", "none"]


class PipelineTemplate(Model):
    """A reusable pipeline: its stages, the environments it promotes through and what a failure undoes."""

    description: str = ""
    environments: list[Name] = Field(default_factory=list, description="Default order; a run may override")
    services: list[Name] = Field(default_factory=list, description="Default: the artifacts' own names")
    promotion: Literal["sequential", "parallel"] = "sequential"
    fail_fast: bool = Field(default=True, description="A failure stops every stage not started yet")
    rollback: RollbackScope = Field(
        default="environment",
        description="On failure, roll back the deployments of the failed stage's environment, all of the "
        "pipeline's, or none",
    )
    max_parallel_stages: int = Field(default=0, ge=0, description="0: no limit beyond the graph's")
    timeout: Annotated[DurationMs, Field(gt=0)] = 21_600_000
    stages: list[StageTemplate] = Field(min_length=1)

    def stage(self, name: str) -> StageTemplate:
        return next(s for s in self.stages if s.name == name)


# --------------------------------------------------------------------------------------------
# The graph
# --------------------------------------------------------------------------------------------
class GraphNode(Model):
    """One stage instance: a template stage in one environment for one service (where it has those axes)."""

    id: str
    stage: str
    environment: str | None = None
    service: str | None = None
    depends_on: list[str] = Field(default_factory=list)


def node_id(stage: str, environment: str | None, service: str | None) -> str:
    return ".".join(part for part in (stage, environment, service) if part)


def expand_graph(
    template: PipelineTemplate,
    environments: Sequence[str],
    services: Sequence[str],
    applies: Callable[[StageTemplate, str], bool] = lambda stage, environment: True,
) -> list[GraphNode]:
    """The stage instances of one run, in template order, with their dependencies (promotion included).
    ``applies(stage, environment)``: whether a stage has an instance in an environment (beyond its own
    ``environments`` list)."""
    by_stage: dict[str, list[GraphNode]] = {}
    for stage in template.stages:
        axes = stage.axes()
        envs: list[str | None] = [None]
        if ENVIRONMENT in axes:
            wanted = [e for e in environments if stage.environments is None or e in stage.environments]
            envs = [e for e in wanted if applies(stage, e)]
        svcs: list[str | None] = list(services) if SERVICE in axes else [None]
        by_stage[stage.name] = [
            GraphNode(id=node_id(stage.name, e, s), stage=stage.name, environment=e, service=s)
            for e in envs
            for s in svcs
        ]
    for stage in template.stages:
        for node in by_stage[stage.name]:
            for dependency in stage.depends_on:
                node.depends_on += [o.id for o in by_stage.get(dependency, []) if _agree(node, o)]
    nodes = [node for stage in template.stages for node in by_stage[stage.name]]
    if template.promotion == "sequential":
        _add_promotion(nodes, list(environments))
    return nodes


def _agree(node: GraphNode, other: GraphNode) -> bool:
    """Two instances agree when they are equal on every axis both have."""
    same_env = node.environment is None or other.environment is None or node.environment == other.environment
    return same_env and _same_service(node, other)


def _same_service(node: GraphNode, other: GraphNode) -> bool:
    return node.service is None or other.service is None or node.service == other.service


def _add_promotion(nodes: list[GraphNode], environments: list[str]) -> None:
    """Each environment's first stages wait for the previous environment's last stages (of their service)."""
    by_id = {n.id: n for n in nodes}
    in_env = {e: [n for n in nodes if n.environment == e] for e in environments}
    has_dependant_in_env = {
        dep
        for n in nodes
        for dep in n.depends_on
        if n.environment and by_id[dep].environment == n.environment
    }
    previous: list[GraphNode] = []
    for environment in environments:
        current = in_env[environment]
        if not current:
            continue
        sinks = [n for n in previous if n.id not in has_dependant_in_env]
        for node in current:
            if any(by_id[d].environment == environment for d in node.depends_on):
                continue  # it already waits for a stage of its environment, which waits for the previous one
            node.depends_on += [s.id for s in sinks if _same_service(node, s) and s.id not in node.depends_on]
        previous = current


def find_cycle(nodes: Iterable[GraphNode]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, or None (depth-first search, iterative)."""
    graph = {n.id: list(n.depends_on) for n in nodes}
    colour: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if colour.get(root):
            continue
        path, stack = [root], [iter(graph[root])]
        colour[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(child) == 1:
                return [*path[path.index(child) :], child]
            elif not colour.get(child) and child in graph:
                colour[child] = 1
                path.append(child)
                stack.append(iter(graph[child]))
    return None


# --------------------------------------------------------------------------------------------
# Checks of a template (each problem at its YAML path, like the rest of the configuration)
# --------------------------------------------------------------------------------------------
def template_problems(
    path: str, template: PipelineTemplate, environments: Mapping[str, Any]
) -> list[tuple[str, str]]:
    """Duplicate and unknown stages, cycles, unknown environments: ``(yaml.path, message)`` pairs."""
    problems: list[tuple[str, str]] = []
    first: dict[str, int] = {}
    for index, stage in enumerate(template.stages):
        if stage.name in first:
            problems.append(
                (
                    f"{path}.stages[{index}].name",
                    f"stage '{stage.name}' is defined twice (first at stages[{first[stage.name]}])",
                )
            )
        first.setdefault(stage.name, index)
    names = ", ".join(first)
    for index, stage in enumerate(template.stages):
        for position, dependency in enumerate(stage.depends_on):
            if dependency not in first:
                problems.append(
                    (
                        f"{path}.stages[{index}].dependsOn[{position}]",
                        f"unknown stage '{dependency}'; the stages are {names}",
                    )
                )
        problems += _unknown(f"{path}.stages[{index}].environments", stage.environments or [], environments)
    problems += _unknown(f"{path}.environments", template.environments, environments)
    if problems:
        return problems
    return _cycles(path, template, list(environments))


def _unknown(path: str, names: Sequence[str], environments: Mapping[str, Any]) -> list[tuple[str, str]]:
    known = ", ".join(sorted(environments)) or "none"
    return [
        (f"{path}[{i}]", f"unknown environment '{name}'; configured environments are {known}")
        for i, name in enumerate(names)
        if name not in environments
    ]


def _cycles(path: str, template: PipelineTemplate, configured: list[str]) -> list[tuple[str, str]]:
    stages = [GraphNode(id=s.name, stage=s.name, depends_on=s.depends_on) for s in template.stages]
    cycle = find_cycle(stages)
    if cycle:
        index = next(i for i, s in enumerate(template.stages) if s.name == cycle[0])
        return [(f"{path}.stages[{index}].dependsOn", f"dependency cycle: {' -> '.join(cycle)}")]
    cycle = find_cycle(expand_graph(template, template.environments or configured, ["service"]))
    if cycle:
        message = "the stages form a cycle once promoted through the environments: " + " -> ".join(cycle)
        return [(f"{path}.stages", message)]
    return []
