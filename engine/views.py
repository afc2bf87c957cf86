"""What people read, derived from journal facts: judgements as (metric, value, thresholds) checks, revisions
named by the version people gave them, one-line event summaries. Shared by the CLI, the console and the
metrics (no Ray here)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from engine.models import DeploymentRequest, DeploymentStatus, Model, Strategy
from engine.state import Event, EventKind, Step

HIDDEN_EVENT_KEYS = frozenset({"request", "plan", "stable_artifact", "baseline"})


class Check(Model):
    """One figure of a judgement against its thresholds (None where a threshold is not set)."""

    metric: str
    value: float | None
    success: float | None = None
    failure: float | None = None
    outcome: str = Field(default="", description="pass, marginal, fail or not_available, when judged")


def judgement_checks(data: Mapping[str, Any], strategy: Strategy | None) -> list[Check]:
    """The figures of a MEASUREMENT event against their thresholds.

    A judgement that lists its own threshold checks (``thresholds``: metric, value, success, failure) is
    read as it is; an older one (error rate and response time only) against the strategy's thresholds."""
    listed = data.get("thresholds")
    if isinstance(listed, list):
        return [
            Check(
                metric=str(item.get("metric")),
                value=_number(item.get("value")),
                success=_number(item.get("success")),
                failure=_number(item.get("failure")),
                outcome=str(item.get("outcome") or ""),
            )
            for item in listed
            if isinstance(item, Mapping)
        ]
    config = _analysis_config(strategy)
    checks = []
    if "error_rate" in data:
        success = getattr(config.success_threshold, "error_rate", None) if config else None
        failure = getattr(config.failure_threshold, "error_rate", None) if config else None
        checks.append(
            Check(metric="errorRate", value=_number(data["error_rate"]), success=success, failure=failure)
        )
    if "response_time_ms" in data:
        success = getattr(config.success_threshold, "response_time", None) if config else None
        failure = getattr(config.failure_threshold, "response_time", None) if config else None
        checks.append(
            Check(
                metric="responseTime",
                value=_number(data["response_time_ms"]),
                success=success,
                failure=failure,
            )
        )
    return checks


def _analysis_config(strategy: Strategy | None) -> Any:
    if strategy is None:
        return None
    return strategy.canary or strategy.blue_green or strategy.rolling


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def weights_by_version(status: DeploymentStatus) -> dict[str, int]:
    """The traffic weights keyed by the versions people gave the revisions (2.0.0, not 2-0-0)."""
    return {status.version_of(revision): weight for revision, weight in status.weights.items()}


def weights_text(status: DeploymentStatus) -> str:
    shown = sorted(weights_by_version(status).items())
    return " ".join(f"{version}={weight}%" for version, weight in shown) or "-"


def readable(text: str, versions: Mapping[str, str]) -> str:
    """``text`` with each revision named by its version ("2-0-0 is live" -> "2.0.0 is live")."""
    for revision, version in versions.items():
        if revision != version:
            text = re.sub(rf"(?<![\w.-]){re.escape(revision)}(?![\w.-])", version, text)
    return text


def event_summary(
    data: Mapping[str, Any], versions: Mapping[str, str] | None = None, width: int = 160
) -> str:
    """An event's data in one line, without the bulky parts (the request, the plan, baselines); revision
    names in weights are shown as versions."""
    shown = {k: v for k, v in data.items() if k not in HIDDEN_EVENT_KEYS}
    if versions:
        if isinstance(shown.get("weights"), Mapping):
            shown["weights"] = {versions.get(r, r): w for r, w in shown["weights"].items()}
        for key, value in shown.items():
            if key.endswith("revision") and isinstance(value, str):
                shown[key] = versions.get(value, value)
    text = json.dumps(shown, default=str)
    return (readable(text, versions) if versions else text)[:width]


# --------------------------------------------------------------------------------------------
# The console's views of deployments (plain data, JSON-ready)
# --------------------------------------------------------------------------------------------
def status_view(status: DeploymentStatus) -> dict[str, Any]:
    """One deployment as the console's list shows it: revisions named by their versions."""
    step = ""
    if status.step_count:
        shown = min(status.step_index + 1, status.step_count)
        step = f"{shown}/{status.step_count} {status.step_name or ''}".strip()
    return {
        "id": status.deployment_id,
        "service": status.target.service,
        "environment": status.target.environment,
        "strategy": status.strategy.value,
        "phase": status.phase.value,
        "terminal": status.phase.terminal,
        "step": step,
        "stepIndex": status.step_index,
        "stepCount": status.step_count,
        "weights": weights_by_version(status),
        "candidate": status.version_of(status.candidate_revision) if status.candidate_revision else None,
        "stable": status.version_of(status.stable_revision) if status.stable_revision else None,
        "message": readable(status.message, status.versions),
        "rollback": None
        if status.rollback_reason is None
        else {
            "trigger": status.rollback_trigger.value if status.rollback_trigger else None,
            "reason": readable(status.rollback_reason, status.versions),
        },
        "submittedAt": status.submitted_at,
        "updatedAt": status.updated_at,
        "finishedAt": status.finished_at,
    }


def deployment_view(status: DeploymentStatus, events: list[Event]) -> dict[str, Any]:
    """One deployment in detail: its strategy's steps, every judgement with its figures against the
    thresholds, the gating hooks' answers and its events."""
    strategy = _strategy_of(events)
    plan: list[Step] = []
    for event in events:
        if event.kind is EventKind.PLANNED:
            plan = [Step.model_validate(step) for step in event.data.get("plan", [])]
    done = (
        status.step_count
        if status.phase.terminal and status.phase.value == "succeeded"
        else status.step_index
    )
    steps = [
        {"index": i, "label": s.label, "state": "done" if i < done else "current" if i == done else "todo"}
        for i, s in enumerate(plan)
    ]
    judgements = [
        {
            "seq": e.seq,
            "at": e.at,
            "verdict": e.data.get("verdict"),
            "reason": e.data.get("reason", ""),
            "checks": [c.model_dump() for c in judgement_checks(e.data, strategy)],
        }
        for e in events
        if e.kind is EventKind.MEASUREMENT and "verdict" in e.data
    ]
    return {
        **status_view(status),
        "steps": steps,
        "judgements": judgements,
        "hooks": [{"at": e.at, **e.data} for e in events if e.kind is EventKind.HOOK],
        "events": [
            {
                "seq": e.seq,
                "at": e.at,
                "actor": e.actor,
                "kind": e.kind.value,
                "summary": event_summary(e.data, status.versions),
            }
            for e in events[-200:]
        ],
    }


def _strategy_of(events: list[Event]) -> Strategy | None:
    for event in events:
        if event.kind is EventKind.SUBMITTED:
            try:
                return DeploymentRequest.model_validate(event.data["request"]).strategy
            except (KeyError, ValidationError):
                return None
    return None
