"""A strategy compiled into an ordered list of idempotent steps (Argo Rollouts' canary steps, generalised)."""

from __future__ import annotations

from typing import Protocol

from engine.models import Strategy, StrategyType
from engine.state import Role, Step, StepKind


class Planner(Protocol):
    """The seam the reconciler plans through: the strategy's domain worker, or ``build_plan`` here."""

    def plan(self, strategy: Strategy, has_stable: bool) -> list[Step]: ...


class LocalPlanner:
    def plan(self, strategy: Strategy, has_stable: bool) -> list[Step]:
        return build_plan(strategy, has_stable)


def build_plan(strategy: Strategy, has_stable: bool) -> list[Step]:
    """The steps that take a target from its stable revision to the candidate.

    A target with nothing running yet gets the candidate at full size and all traffic: there is nothing to
    compare against or to fall back to.
    """
    replicas = strategy.replicas
    if not has_stable:
        return [
            Step(kind=StepKind.DEPLOY, replicas=replicas),
            Step(kind=StepKind.SET_WEIGHT, weight=100),
            Step(kind=StepKind.REMOVE_STABLE),
        ]
    if strategy.type is StrategyType.CANARY:
        return _canary(strategy)
    if strategy.type is StrategyType.BLUE_GREEN:
        return _blue_green(strategy)
    return _rolling(strategy)


def _canary(strategy: Strategy) -> list[Step]:
    config = strategy.canary
    assert config is not None
    steps = [Step(kind=StepKind.DEPLOY, replicas=min(config.canary_replicas, strategy.replicas))]
    for weight in config.weights():
        if weight >= 100:
            break
        steps.append(Step(kind=StepKind.SET_WEIGHT, weight=weight))
        steps.append(Step(kind=StepKind.ANALYZE, duration_ms=config.step_duration))
    return steps + _promotion(strategy.replicas)


def _promotion(replicas: int) -> list[Step]:
    return [
        Step(kind=StepKind.DEPLOY, replicas=replicas),
        Step(kind=StepKind.SET_WEIGHT, weight=100),
        Step(kind=StepKind.REMOVE_STABLE),
    ]


def _blue_green(strategy: Strategy) -> list[Step]:
    config = strategy.blue_green
    assert config is not None
    steps = [
        Step(kind=StepKind.DEPLOY, replicas=strategy.replicas),
        Step(
            kind=StepKind.VALIDATE,
            duration_ms=config.validation_duration,
            smoke=config.smoke_tested(),
        ),
    ]
    if config.manual_switch():
        steps.append(Step(kind=StepKind.AWAIT_PROMOTION))
    for weight in config.switch_weights():
        steps.append(Step(kind=StepKind.SET_WEIGHT, weight=weight))
        if weight < 100:
            steps.append(Step(kind=StepKind.ANALYZE, duration_ms=config.switch_step_duration))
    steps.append(Step(kind=StepKind.HOLD, duration_ms=config.scale_down_delay))
    steps.append(Step(kind=StepKind.REMOVE_STABLE))
    return steps


def _rolling(strategy: Strategy) -> list[Step]:
    """Batches bounded by max surge (replicas above the desired count) and max unavailable (below it).

    Each batch first takes down up to ``maxUnavailable`` old replicas, brings up that many plus ``maxSurge``
    new ones (health-gated: DEPLOY waits until they are ready), moves traffic in proportion to replicas, then
    takes the surplus old replicas down.
    """
    config = strategy.rolling
    assert config is not None
    total = strategy.replicas
    steps: list[Step] = []
    new, old = 0, total
    while new < total:
        down_first = min(config.max_unavailable, old)
        if down_first:
            old -= down_first
            steps.append(Step(kind=StepKind.DEPLOY, role=Role.STABLE, replicas=old))
        new = min(total, new + config.max_surge + down_first)
        steps.append(Step(kind=StepKind.DEPLOY, replicas=new))
        steps.append(_proportional_weight(new, old))
        if old > total - new:
            old = total - new
            if old > 0:  # the last old replicas go with REMOVE_STABLE, after traffic has left them
                steps.append(Step(kind=StepKind.DEPLOY, role=Role.STABLE, replicas=old))
            steps.append(_proportional_weight(new, old))
        if old > 0 and config.batch_pause > 0:
            steps.append(Step(kind=StepKind.ANALYZE, duration_ms=config.batch_pause))
    steps.append(Step(kind=StepKind.REMOVE_STABLE))
    return steps


def _proportional_weight(new: int, old: int) -> Step:
    return Step(kind=StepKind.SET_WEIGHT, weight=round(100 * new / (new + old)))
