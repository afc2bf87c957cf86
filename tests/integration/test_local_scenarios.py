"""The platform scenarios on the local platform: processes behind a real HAProxy, live HTTP traffic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import Target
from tests.integration.environments import (
    local_scenario_config,
    remove_through_adapter,
    routed_scenario_env,
    sample_process,
)
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv

SERVICES = ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash")


class TestLocalScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path) -> Iterator[ScenarioEnv]:
        config = local_scenario_config(tmp_path / "state")
        yield routed_scenario_env(config, sample_process, tmp_path)
        remove_through_adapter(
            config, [Target(service=service, environment="staging") for service in SERVICES]
        )
