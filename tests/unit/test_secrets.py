"""Secrets reach replicas by reference; their values never enter the models, and so never the journal."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.models import Artifact
from engine.secrets import runtime_env


def test_a_plain_secret_in_env_is_refused_with_its_name() -> None:
    with pytest.raises(ValidationError, match=r"env.DB_PASSWORD looks like a secret"):
        Artifact(name="web", version="1", env={"DB_PASSWORD": "hunter2"})


def test_references_resolve_where_replicas_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    monkeypatch.setenv("ORCH_TEST_PASSWORD", "from-the-environment")
    artifact = Artifact(
        name="web",
        version="1",
        env={"MODE": "prod"},
        secret_env={"DB_PASSWORD": "env:ORCH_TEST_PASSWORD", "API_TOKEN": f"file:{token}"},
    )
    assert runtime_env(artifact) == {
        "MODE": "prod",
        "DB_PASSWORD": "from-the-environment",
        "API_TOKEN": "from-a-file",
    }
    assert "from-the-environment" not in artifact.model_dump_json()


def test_a_missing_secret_names_the_variable_not_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_TEST_MISSING", raising=False)
    artifact = Artifact(name="web", version="1", secret_env={"API_KEY": "env:ORCH_TEST_MISSING"})
    with pytest.raises(ValueError, match=r"secretEnv\.API_KEY: the environment variable ORCH_TEST_MISSING"):
        runtime_env(artifact)
    with pytest.raises(ValidationError, match="use a reference"):
        Artifact(name="web", version="1", secret_env={"API_KEY": "plain-value"})
