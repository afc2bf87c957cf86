"""DO-004's answer to a health monitor: the rollback is asked of the queen first, and only once the queen took
it does the monitor go. A queen that does not take it (restarting) leaves the monitor probing, and its next
call, after its next probe, asks again. The queen and the monitor are fakes at our own seams."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from actors import domain
from engine.config import load_config
from engine.journal import Journal
from engine.models import Phase
from engine.requests import build_request
from engine.state import EventKind

SECRET = "s" * 43
REQUEST = build_request(load_config(), {"name": "web", "version": "1.0.0"}, "canary", "development")


class FlakyQueen:
    """Refuses its first ``refusals`` control calls, then records them."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.taken: list[tuple[str, str, str]] = []

    async def control(self, deployment_id: str, action: str, by: str, reason: str, token: str | None) -> Any:
        assert token == SECRET
        if self.refusals > 0:
            self.refusals -= 1
            raise RuntimeError("the queen is not running")
        self.taken.append((deployment_id, action, reason))
        return {"accepted": True}


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    gone: list[Any] = []
    monkeypatch.setattr(domain, "kill_quietly", gone.append)
    monkeypatch.setattr(domain, "freeze_startup_heap", lambda: None)  # an actor's, not the test process's
    return gone


def _rollbacks(tmp_path: Path, queen: FlakyQueen) -> domain.RollbackSystemImpl:
    journal_path = str(tmp_path / "journal.db")
    journal = Journal(journal_path)
    journal.submit("web-1", REQUEST, actor="alice")
    journal.submit("web-2", REQUEST, actor="alice")
    journal.append("web-2", EventKind.FINISHED, {"outcome": Phase.SUCCEEDED.value})
    worker = domain.RollbackSystemImpl(None, journal_path, SECRET, namespace="test")
    worker._queen_control = queen.control  # type: ignore[method-assign]
    worker.monitors = {"web-1": "monitor-1", "web-2": "monitor-2"}
    return worker


def test_a_rollback_the_queen_did_not_take_keeps_the_monitor_for_the_next_call(
    tmp_path: Path, killed: list[Any]
) -> None:
    queen = FlakyQueen(refusals=1)
    worker = _rollbacks(tmp_path, queen)
    with pytest.raises(RuntimeError, match="the queen is not running"):
        asyncio.run(worker.on_unhealthy("web-1", "3 probes failed", token=SECRET))
    assert killed == [] and "web-1" in worker.monitors
    asyncio.run(worker.on_unhealthy("web-1", "4 probes failed", token=SECRET))
    assert queen.taken == [("web-1", "rollback_health", "4 probes failed")]
    assert killed == ["monitor-1"] and "web-1" not in worker.monitors


def test_a_finished_deployment_s_monitor_goes_without_a_rollback(tmp_path: Path, killed: list[Any]) -> None:
    queen = FlakyQueen(refusals=0)
    worker = _rollbacks(tmp_path, queen)
    asyncio.run(worker.on_unhealthy("web-2", "3 probes failed", token=SECRET))
    assert queen.taken == [] and killed == ["monitor-2"]
