"""Two configurations on one Ray cluster: a driver never attaches silently to a queen using another journal or
another configuration (issue 8, finding 3); with a namespace of its own it gets its own queen and journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.config import write_isolated_config
from engine.journal import Journal
from tests.integration.conftest import orch_journal, sample_artifact

pytestmark = pytest.mark.integration


def _config(folder: Path, namespace: str, **changes: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_isolated_config(folder, (19700, 19749), (45000, 45499), namespace=namespace)
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        data.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_driver_with_another_journal_is_refused_naming_both(orchestrator: Any, tmp_path: Path) -> None:
    from orchestrator import DeploymentOrchestrator

    other = _config(tmp_path / "b", orchestrator.namespace)
    before = len(orch_journal(orchestrator).deployments())
    with pytest.raises(RuntimeError) as refused:
        DeploymentOrchestrator(config_path=other)
    message = str(refused.value)
    assert str(Path(orchestrator.journal_path).resolve()) in message
    assert str(tmp_path / "b" / "journal.db") in message
    assert "`namespace:` key of enterprise_config.yaml" in message
    assert len(orch_journal(orchestrator).deployments()) == before


def test_a_driver_with_another_configuration_on_the_same_journal_is_refused(
    orchestrator: Any, tmp_path: Path
) -> None:
    from orchestrator import DeploymentOrchestrator

    data = yaml.safe_load(Path(orchestrator.config_path).read_text())
    data.setdefault("concurrency", {})["maxQueued"] = 3
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    with pytest.raises(RuntimeError, match="uses another configuration: its journal is") as refused:
        DeploymentOrchestrator(config_path=changed)
    assert str(changed) in str(refused.value) and str(orchestrator.config_path) in str(refused.value)


def test_a_namespace_of_its_own_gives_its_own_queen_and_journal(orchestrator: Any, tmp_path: Path) -> None:
    from engine.config import load_config
    from engine.identity import AccessControl
    from orchestrator import DeploymentOrchestrator

    namespace = f"{orchestrator.namespace}-b"
    own = _config(tmp_path / "own", namespace, concurrency={"warmRunners": 0})
    # Its own journal has its own people: its first admin token (the session's file stays the session's).
    journal = Journal(tmp_path / "own" / "journal.db")
    token = AccessControl(load_config(own), journal).bootstrap("second-admin", by="second-admin").token
    second = DeploymentOrchestrator(config_path=own, token=token)
    try:
        assert second.namespace == namespace
        rolling = {"type": "rolling", "replicas": 1}
        result = second.deploy(sample_artifact("own-ns", "1.0.0"), rolling, "development", timeout_s=180)
        assert result.success, result.status
        assert [s.deployment_id for s in journal.deployments()] == [result.deployment_id]
        assert all(s.request.artifact.name != "own-ns" for s in orch_journal(orchestrator).deployments())
    finally:
        _remove(second, "own-ns")
        second.shutdown(stop_ray=False)


def _remove(orch: Any, service: str) -> None:
    from adapters import create_platform
    from engine.models import Target

    platform = create_platform(orch.config.platform("local"))
    target = Target(service=service, environment="development")
    for revision in platform.list_revisions(target):
        platform.remove_revision(target, revision.revision)
    platform.router.remove_frontend(target)  # type: ignore[attr-defined]
    platform.close()
