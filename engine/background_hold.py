"""How long a background driver may hold its embedded Ray for the deployments of its journal.

``deploy --no-wait`` without a cluster leaves a driver process in the background that keeps the embedded Ray
(and so the queen and the runners) alive until every deployment of the journal is terminal. It must never
become a zombie itself: each deployment bounds the hold by its own deadlines, counted from its last journaled
event (a deployment that makes progress journals it), plus a margin.
"""

from __future__ import annotations

import time

from engine.analysis import analysis_settings
from engine.models import DeploymentRequest
from engine.plans import build_plan
from engine.state import DeploymentState, StepKind

HOLD_MARGIN_S = 300.0


def deployment_time_bound(request: DeploymentRequest) -> float:
    """Seconds an unpaused deployment may take at most, from one journaled event to the end: every step to
    its own limit, each analysis window repeated up to ``consecutiveFailures`` times (each lengthened up to
    ``maxWindowExtensions`` times), then a rollback."""
    strategy = request.strategy
    progress = strategy.progress_deadline / 1000
    config = strategy.canary or strategy.blue_green or strategy.rolling
    windows = max(1, config.failure_threshold.consecutive_failures) if config is not None else 1
    windows *= 1 + analysis_settings(strategy).max_window_extensions  # too few requests lengthen each
    total = progress  # the rollback at the end
    for step in build_plan(strategy, has_stable=True):
        if step.kind is StepKind.ANALYZE:
            total += windows * step.duration_ms / 1000
        elif step.kind is StepKind.VALIDATE:  # unmet switch triggers keep it up to the progress deadline
            total += max(step.duration_ms / 1000, progress)
        elif step.kind is StepKind.HOLD:
            total += step.duration_ms / 1000
        elif step.kind is StepKind.AWAIT_PROMOTION:
            total += strategy.max_pause_duration / 1000
        else:  # deploy, set weight, remove: platform work, bounded by the progress deadline
            total += progress
    return total


def hold_deadline(state: DeploymentState, margin_s: float = HOLD_MARGIN_S) -> float:
    """The wall-clock time after which holding on for this deployment is pointless (it is stuck)."""
    since = state.updated_at
    if state.paused and state.paused_at is not None:
        since = max(since, state.paused_at + state.request.strategy.max_pause_duration / 1000)
    return since + deployment_time_bound(state.request) + margin_s


def hold_remaining(active: list[DeploymentState], now: float | None = None) -> float:
    """Seconds left to hold for these active deployments (0 when there is none, or all are past bound)."""
    if not active:
        return 0.0
    current = time.time() if now is None else now
    return max(0.0, max(hold_deadline(state) for state in active) - current)
