"""A pipeline run's spec: a template expanded over its environments and services, every stage's settings
resolved (deployment requests built and validated, approver groups and compliance levels taken from the
environments), before anything is journaled. The spec is journaled whole: a resumed run needs nothing else,
whatever the configuration file says by then."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.config import EnterpriseConfig
from engine.models import Artifact, ChangeRecord, DeploymentRequest, Environment
from engine.pipeline_model import (
    ENVIRONMENT,
    GraphNode,
    PipelineTemplate,
    StageKind,
    StageTemplate,
    expand_graph,
    find_cycle,
)
from engine.pipeline_state import PipelineSpec, StageSpec
from engine.requests import build_request

# An approve stage's deadline is its approval's expiry plus this: the approval expires (and says so) first.
APPROVAL_GRACE_MS = 60_000


def new_pipeline_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class RunInput:
    """What a caller gives for one run, besides the template."""

    name: str
    artifacts: Sequence[Artifact]
    environments: Sequence[str] | None = None
    requested_by: str = "unknown"
    change_record: ChangeRecord | None = None
    pipeline_id: str | None = None


def build_spec(
    config: EnterpriseConfig,
    template: PipelineTemplate,
    run: RunInput,
    known: Mapping[str, Environment] | None = None,
) -> PipelineSpec:
    """Everything a run needs, validated before anything is journaled; ValueError names what is wrong.
    ``known``: the environments a run may name (the configuration's, plus registered ones)."""
    environments = dict(known if known is not None else config.environments)
    envs = list(run.environments or template.environments)
    _check_environments(envs, template, environments)
    by_service = _artifacts_by_service(template, run.artifacts)
    expansion = _Expansion(config, environments, by_service, run)
    nodes = expand_graph(template, envs, list(by_service), expansion.applies)
    cycle = find_cycle(nodes)
    if cycle:
        raise ValueError(f"pipeline {run.name}: the stages form a cycle: {' -> '.join(cycle)}")
    stages = [expansion.stage_spec(template.stage(n.stage), n) for n in nodes]
    stages = _with_approval_stages(stages)
    return PipelineSpec(
        pipeline_id=run.pipeline_id or new_pipeline_id(run.name),
        name=run.name,
        environments=envs,
        services=list(by_service),
        artifacts=list(by_service.values()),
        stages=stages,
        fail_fast=template.fail_fast,
        rollback=template.rollback,
        max_parallel_stages=template.max_parallel_stages,
        timeout_ms=template.timeout,
        requested_by=run.requested_by,
        change_record=run.change_record,
    )


def _check_environments(
    envs: list[str], template: PipelineTemplate, known: Mapping[str, Environment]
) -> None:
    needs = any(ENVIRONMENT in s.axes() for s in template.stages)
    if needs and not envs:
        raise ValueError("environments: name the environments to deploy to (the template gives none)")
    for env in envs:
        if env not in known:
            raise ValueError(f"environments: unknown environment '{env}'; known: {', '.join(sorted(known))}")
    repeated = sorted({e for e in envs if envs.count(e) > 1})
    if repeated:
        raise ValueError(f"environments: {', '.join(repeated)} listed more than once")


def _artifacts_by_service(template: PipelineTemplate, artifacts: Sequence[Artifact]) -> dict[str, Artifact]:
    """One artifact per service: a single artifact is deployed as each of the template's services (the same
    build under several names); several artifacts are their own services."""
    if not artifacts:
        raise ValueError("artifact: a pipeline needs at least one artifact")
    if not template.services:
        named = {a.name: a for a in artifacts}
        if len(named) != len(artifacts):
            raise ValueError("artifact: two artifacts have the same name (one artifact per service)")
        return named
    if len(artifacts) == 1:
        return {s: artifacts[0].model_copy(update={"name": s}) for s in template.services}
    named = {a.name: a for a in artifacts}
    missing = [s for s in template.services if s not in named]
    if missing:
        raise ValueError(f"artifact: no artifact for the template's service(s) {', '.join(missing)}")
    return {s: named[s] for s in template.services}


def _with_approval_stages(stages: list[StageSpec]) -> list[StageSpec]:
    """Each deploy stage names the approve stage of its environment it waits for (directly or through other
    stages): its deployment carries that approval instead of asking the same groups again."""
    by_id = {s.id: s for s in stages}
    result = []
    for stage in stages:
        if stage.kind is StageKind.DEPLOY:
            approve = next(
                (
                    a
                    for a in _ancestors(stage, by_id)
                    if a.kind is StageKind.APPROVE and a.environment == stage.environment
                ),
                None,
            )
            stage = stage.model_copy(update={"approval_stage": approve.id if approve else None})
        result.append(stage)
    return result


def _ancestors(stage: StageSpec, by_id: Mapping[str, StageSpec]) -> list[StageSpec]:
    seen: dict[str, StageSpec] = {}
    todo = list(stage.depends_on)
    while todo:
        current = todo.pop()
        if current not in seen:
            seen[current] = by_id[current]
            todo.extend(by_id[current].depends_on)
    return list(seen.values())


@dataclass(frozen=True)
class _Expansion:
    config: EnterpriseConfig
    environments: Mapping[str, Environment]
    by_service: dict[str, Artifact]
    run: RunInput

    def applies(self, stage: StageTemplate, environment: str) -> bool:
        """An approve stage without its own approvers applies where the environment requires approval."""
        if stage.kind is not StageKind.APPROVE or stage.approvers:
            return True
        return self.environments[environment].approval_workflow.required

    def stage_spec(self, stage: StageTemplate, node: GraphNode) -> StageSpec:
        only = next(iter(self.by_service)) if len(self.by_service) == 1 else None
        spec = StageSpec(
            id=node.id,
            stage=stage.name,
            kind=stage.kind,
            environment=node.environment,
            service=node.service or only,
            depends_on=node.depends_on,
            timeout_ms=stage.timeout_ms(),
        )
        try:
            return self._settings(stage, spec)
        except ValueError as error:
            raise ValueError(f"stage {node.id}: {error}") from None

    def _settings(self, stage: StageTemplate, spec: StageSpec) -> StageSpec:
        kind = stage.kind
        if kind in (StageKind.BUILD, StageKind.TEST):
            source = self.config.source
            folder = stage.working_dir or (str(source.parent) if source else None)
            return spec.model_copy(
                update={"command": stage.command or [], "working_dir": folder, "env": stage.env}
            )
        if spec.environment is None:
            raise ValueError(f"a {kind.value} stage needs an environment (check its matrix)")
        if kind in (StageKind.DEPLOY, StageKind.VALIDATE) and spec.service is None:
            raise ValueError(f"a {kind.value} stage needs a service (check its matrix)")
        if kind is StageKind.DEPLOY:
            return spec.model_copy(update={"request": self._request(stage, spec.environment, spec.service)})
        if kind is StageKind.VALIDATE:
            update = {"checks": stage.checks, "attempts": stage.attempts, "interval_ms": stage.interval}
            return spec.model_copy(update=update)
        environment = self.environments[spec.environment]
        if kind is StageKind.APPROVE:
            workflow = environment.approval_workflow
            groups = stage.approvers or workflow.approver_groups
            if not groups:
                raise ValueError("no approver groups: set approvers, or the environment's approvalWorkflow")
            expiry = stage.timeout or workflow.expiry
            return spec.model_copy(update={"approvers": groups, "timeout_ms": expiry + APPROVAL_GRACE_MS})
        return spec.model_copy(update={"compliance_level": stage.level or environment.compliance_level})

    def _request(self, stage: StageTemplate, environment: str, service: str | None) -> DeploymentRequest:
        assert service is not None
        return build_request(
            self.config,
            self.by_service[service],
            stage.strategy,
            environment,
            stage.platform,
            self.run.requested_by,
            change_record=self.run.change_record,
            **stage.settings,
        )
