"""Where the orchestrator keeps its state on a machine (journal, platform state files)."""

from __future__ import annotations

import os
from pathlib import Path


def orchestrator_home() -> Path:
    """``$ORCH_HOME`` or ``~/.deploy-orchestrator``; created on first use."""
    home = Path(os.environ.get("ORCH_HOME") or Path.home() / ".deploy-orchestrator").expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home
