"""Control requests (pause, resume, promote, abort, rollback) as journal events, one meaning for all."""

from __future__ import annotations

from typing import Any

from engine.models import RollbackTrigger
from engine.state import EventKind

CONTROL_ACTIONS = ("pause", "resume", "promote", "promote_full", "abort", "rollback", "rollback_health")


class ControlRefused(ValueError):
    """The control request cannot be applied; the message says why."""


def control_event(action: str, reason: str, by: str) -> tuple[EventKind, dict[str, Any]]:
    """The journal event that records ``action``; refuses an unknown action by name."""
    if action == "pause":
        return EventKind.PAUSED, {"reason": reason}
    if action == "resume":
        return EventKind.RESUMED, {}
    if action in ("promote", "promote_full"):
        return EventKind.PROMOTE_REQUESTED, {"full": action == "promote_full"}
    if action in ("abort", "rollback", "rollback_health"):
        trigger = {"abort": RollbackTrigger.ABORT, "rollback": RollbackTrigger.MANUAL}.get(
            action, RollbackTrigger.HEALTH
        )
        return EventKind.ROLLBACK_REQUESTED, {"trigger": trigger.value, "reason": reason or action, "by": by}
    raise ControlRefused(
        f"unknown action '{action}': use pause, resume, promote, promote_full, abort, rollback"
    )
