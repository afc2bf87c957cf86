"""Unit tests: each runs with its own $ORCH_HOME, so that nothing one writes under the default home (the audit
trail's signed checkpoints, tokens) is read by another, whatever ran before in the same session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_orchestrator_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "orch-home"))
