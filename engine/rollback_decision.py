"""Automated rollbacks: the reconciler proposes (trigger and reason), the rollback system (DO-004) decides and
records the decision in the journal.

The reconciler calls a ``RollbackDecider``. The runner injects one that asks the DO-004 actor with a short
deadline (``DelegatingDecider``); when DO-004 does not answer in time, the runner records the decision itself
and names the fallback in the event: a rollback never waits on a dead worker. Without a DO-004 to ask (unit
tests, benchmarks driving a reconciler in one process), ``JournalDecider`` records it in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from engine.models import RollbackTrigger
from engine.state import DeploymentState, EventKind

log = logging.getLogger(__name__)

ROLLBACK_SYSTEM = "DO-004"


class RollbackDecider(Protocol):
    def decide(self, deployment_id: str, trigger: RollbackTrigger, reason: str, proposed_by: str) -> None:
        """Decide on a proposed rollback and record the decision; returns once it is journaled."""
        ...


class DecisionJournal(Protocol):
    def state(self, deployment_id: str) -> DeploymentState: ...

    def append(
        self, deployment_id: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> DeploymentState: ...


def record_rollback_decision(
    journal: DecisionJournal,
    deployment_id: str,
    trigger: RollbackTrigger,
    reason: str,
    proposed_by: str,
    actor: str = ROLLBACK_SYSTEM,
    fallback: str | None = None,
) -> bool:
    """The decision: a deployment still running and not yet rolling back is rolled back, recorded with
    ``actor`` as its author. Returns False when there was nothing to decide (already ended or decided, e.g.
    by a late answer after the runner's fallback)."""
    state = journal.state(deployment_id)
    if not state.active or state.rollback is not None:
        return False
    data: dict[str, Any] = {
        "trigger": trigger.value,
        "reason": reason,
        "by": actor,
        "proposed_by": proposed_by,
    }
    if fallback is not None:
        data["fallback"] = fallback
    journal.append(deployment_id, EventKind.ROLLBACK_REQUESTED, data, actor=actor)
    return True


class JournalDecider:
    """Records the decision in this process, as ``actor`` (no DO-004 to ask)."""

    def __init__(self, journal: DecisionJournal, actor: str) -> None:
        self.journal = journal
        self.actor = actor

    def decide(self, deployment_id: str, trigger: RollbackTrigger, reason: str, proposed_by: str) -> None:
        record_rollback_decision(self.journal, deployment_id, trigger, reason, proposed_by, actor=self.actor)


AskRollbackSystem = Callable[[str, RollbackTrigger, str, str], None]


class DelegatingDecider:
    """Asks the rollback system (``ask`` carries its own deadline and raises when it has no answer); if it
    does not answer, records the decision as ``actor`` and names the fallback and its cause in the event."""

    def __init__(self, ask: AskRollbackSystem, journal: DecisionJournal, actor: str) -> None:
        self.ask = ask
        self.journal = journal
        self.actor = actor

    def decide(self, deployment_id: str, trigger: RollbackTrigger, reason: str, proposed_by: str) -> None:
        try:
            self.ask(deployment_id, trigger, reason, proposed_by)
            return
        except Exception as error:  # whatever kept the answer away (deadline, dead actor): never wait on it
            cause = f"{type(error).__name__}: {error}"
        log.warning(
            "%s: %s did not decide (%s); %s records the rollback",
            deployment_id,
            ROLLBACK_SYSTEM,
            cause,
            self.actor,
        )
        fallback = f"{ROLLBACK_SYSTEM} did not answer ({cause}); recorded by {self.actor}"
        record_rollback_decision(
            self.journal, deployment_id, trigger, reason, proposed_by, actor=self.actor, fallback=fallback
        )
