"""The platform scenarios on the local platform: processes behind a real HAProxy, live HTTP traffic."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters import create_platform
from adapters.http_probe import HttpSmokeTester
from engine.models import Artifact, PlatformConfig, Target
from engine.platform import PlatformAdapter
from examples.traffic import TrafficGenerator
from tests.integration.scenarios import PlatformScenarios, ScenarioEnv

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_service.py"


def sample(service: str, version: str, faulty: bool) -> Artifact:
    return Artifact(
        name=service,
        version=version,
        command=[sys.executable, str(SAMPLE)],
        env={"VERSION": version, "ERROR_RATE": "0.5" if faulty else "0"},
    )


@contextmanager
def live_traffic(adapter: PlatformAdapter, target: Target) -> Iterator[TrafficGenerator]:
    address = adapter.traffic(target).address
    adapter.close()
    traffic = TrafficGenerator(address + "/", rps=40, threads=4, max_seconds=300).start()
    try:
        yield traffic
    finally:
        counts = traffic.stop()
        assert TrafficGenerator.total(counts) > 0


class TestLocalScenarios(PlatformScenarios):
    @pytest.fixture
    def scenario_env(self, tmp_path: Path) -> Iterator[ScenarioEnv]:
        config = PlatformConfig(
            type="local",
            settings={
                "stateDir": str(tmp_path / "state"),
                "frontendPortRange": [19500, 19999],
                "replicaPortRange": [45000, 47999],
            },
        )
        env = ScenarioEnv(
            make_adapter=lambda: create_platform(config),
            platform=config,
            artifact=sample,
            traffic=live_traffic,
            journal_dir=tmp_path,
            smoke=HttpSmokeTester(),
        )
        yield env
        _teardown(config)


def _teardown(config: PlatformConfig) -> None:
    platform: Any = create_platform(config)
    for service in ("sc-good", "sc-bad", "sc-bg", "sc-roll", "sc-crash"):
        target = Target(service=service, environment="staging")
        for revision in platform.list_revisions(target):
            platform.remove_revision(target, revision.revision)
        platform.router.remove_frontend(target)
    platform.close()
