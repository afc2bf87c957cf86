"""What people read, derived from journal facts: judgements as (metric, value, thresholds) checks, revisions
named by the version people gave them, one-line event summaries. Shared by the CLI, the console and the
metrics (no Ray here)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from engine.models import DeploymentStatus, Model, Strategy

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


def event_summary(
    data: Mapping[str, Any], versions: Mapping[str, str] | None = None, width: int = 160
) -> str:
    """An event's data in one line, without the bulky parts (the request, the plan, baselines); revision
    names in weights are shown as versions."""
    shown = {k: v for k, v in data.items() if k not in HIDDEN_EVENT_KEYS}
    if versions and isinstance(shown.get("weights"), Mapping):
        shown["weights"] = {versions.get(r, r): w for r, w in shown["weights"].items()}
    return json.dumps(shown, default=str)[:width]
