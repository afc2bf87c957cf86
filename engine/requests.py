"""Building a validated deployment request from the driver's or the CLI's loose arguments (no Ray here)."""

from __future__ import annotations

import os
from typing import Any

from engine.config import EnterpriseConfig
from engine.hooks import attach_configured
from engine.models import Artifact, ChangeRecord, DeploymentRequest, PlatformConfig, Strategy
from engine.schedules import strategy_for_schedule

SCHEDULE_PREFIXES = ("Canary", "Linear", "AllAtOnce", "CodeDeployDefault.")


def build_request(
    config: EnterpriseConfig,
    artifact: Artifact | dict[str, Any],
    strategy: Strategy | dict[str, Any] | str,
    environment: str,
    platform: PlatformConfig | dict[str, Any] | str = "local",
    requested_by: str | None = None,
    change_record: ChangeRecord | dict[str, Any] | None = None,
    **strategy_overrides: Any,
) -> DeploymentRequest:
    """A validated request, without any cluster: bad input fails here, before anything starts.

    A strategy name is canary, blue_green or rolling (with the config file's defaults, then the
    environment's strategyOverrides) or a CodeDeploy schedule name such as Canary10Percent5Minutes or
    Linear10PercentEvery1Minute. ``change_record`` (or ``changeRecord``): {id, summary} of the change. The
    configuration's hooks for the environment and strategy join the request's own (journaled with it: what
    it runs with)."""
    change_record = change_record or strategy_overrides.pop("changeRecord", None)
    if isinstance(strategy, str) and strategy.startswith(SCHEDULE_PREFIXES):
        strategy = Strategy.model_validate({**strategy_for_schedule(strategy), **strategy_overrides})
    elif isinstance(strategy, str):
        strategy = config.strategy_for(strategy, strategy_overrides or None, environment)
    elif isinstance(strategy, dict):
        strategy = Strategy.model_validate(strategy)
    if isinstance(platform, str):
        platform = config.platform(platform)
    request = DeploymentRequest(
        artifact=Artifact.model_validate(artifact) if isinstance(artifact, dict) else artifact,
        strategy=strategy,
        environment=environment,
        platform=PlatformConfig.model_validate(platform) if isinstance(platform, dict) else platform,
        requested_by=requested_by or os.environ.get("USER", "unknown"),
        change_record=ChangeRecord.model_validate(change_record)
        if isinstance(change_record, dict)
        else change_record,
    )
    return attach_configured(config.hooks, request)
