"""A secret given by reference reaches the replica process; the journal and the platform state keep only the
reference."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from adapters import create_platform
from engine.journal import Journal
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy, Target
from engine.platform import RevisionSpec

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample_service.py"


def test_secret_reaches_the_replica_but_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-" + str(time.time_ns())
    monkeypatch.setenv("ORCH_TEST_DB_PASSWORD", secret)
    seen = tmp_path / "seen"
    artifact = Artifact(
        name="secretive",
        version="1.0.0",
        command=["sh", "-c", f'printf %s "$DB_PASSWORD" > {seen}; exec {sys.executable} {SAMPLE}'],
        secret_env={"DB_PASSWORD": "env:ORCH_TEST_DB_PASSWORD"},
    )
    config = PlatformConfig(
        type="local",
        settings={
            "stateDir": str(tmp_path / "state"),
            "frontendPortRange": [19900, 19949],
            "replicaPortRange": [39000, 39499],
        },
    )
    journal = Journal(tmp_path / "journal.db")
    request = DeploymentRequest(
        artifact=artifact,
        strategy=Strategy(type="rolling", replicas=1),
        environment="development",
        platform=config,
    )
    journal.submit("secretive-1", request, actor="test")
    platform = create_platform(config)
    target = Target(service="secretive", environment="development")
    try:
        platform.ensure_revision(RevisionSpec(target=target, artifact=artifact, replicas=1))
        deadline = time.monotonic() + 20
        while not (seen.exists() and seen.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen.read_text() == secret
        stored = [p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()]
        stored.append((tmp_path / "journal.db").read_bytes())
        assert not any(secret.encode() in blob for blob in stored)
    finally:
        platform.remove_revision(target, artifact.revision)
        platform.router.remove_frontend(target)  # type: ignore[attr-defined]
        platform.close()
