"""Approvals: a subject waits until every approver group has approved it, each by a distinct person.

A subject is any string: a deployment id, or a pipeline stage id such as ``pipeline-1a2b/approve-prod``. Its
request lives in the journal's records (kind ``approval``), changed in one transaction per decision, so the
queen, DO-006 and the command line may decide on it at the same time. When the subject is a deployment, every
change is also appended to that deployment's hash-chained events (``approval_requested``, ``approved``,
``rejected``, ``approval_expired``) in the same transaction, and its phase shows ``awaiting_approval``.

Rules: a person approves for a group only when ``roles`` lists them in it; one person approves for one group
of a subject only; whoever requested it cannot approve it; a rejection by any member of a group ends it; a
request not approved by ``expires_at`` is expired (decisions after that are refused). Waiting costs nothing:
nothing here polls. The caller decides when to look again (the queen on an ``approve`` call and at its
supervision round).

    approvals = Approvals(journal, roles=config.roles)
    approvals.request("web-1a2b", "production", ["sre", "security"], expires_at=time.time() + 3600)
    approvals.approve("web-1a2b", person="carol", group="sre", comment="ok")
    approvals.status("web-1a2b").state  # ApprovalState.PENDING until every group approved
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any

from pydantic import Field

from engine.journal import Journal, RecordEvent, UnknownDeploymentError
from engine.models import Model
from engine.state import EventKind

APPROVAL_RECORD = "approval"


class ApprovalState(str, Enum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def decided(self) -> bool:
        return self is not ApprovalState.PENDING


class Verdict(str, Enum):
    APPROVE = "approve"
    REJECT = "reject"


class Decision(Model):
    person: str
    group: str
    verdict: Verdict
    comment: str = ""
    at: float


class ApprovalRequest(Model):
    """One subject's approval: the groups asked, the decisions so far and its state."""

    subject: str
    environment: str
    groups: list[str]
    requested_by: str
    requested_at: float
    expires_at: float
    decisions: list[Decision] = Field(default_factory=list)
    state: ApprovalState = ApprovalState.PENDING
    decided_at: float | None = None

    def at(self, now: float) -> ApprovalRequest:
        """This request as it stands at ``now``: a pending one past its expiry reads as expired."""
        if self.state is ApprovalState.PENDING and now >= self.expires_at:
            return self.model_copy(update={"state": ApprovalState.EXPIRED, "decided_at": self.expires_at})
        return self

    def approvals(self) -> dict[str, Decision]:
        """Group -> the approval given for it."""
        return {d.group: d for d in self.decisions if d.verdict is Verdict.APPROVE}

    def missing_groups(self) -> list[str]:
        given = self.approvals()
        return [group for group in self.groups if group not in given]

    def rejection(self) -> Decision | None:
        return next((d for d in self.decisions if d.verdict is Verdict.REJECT), None)

    def summary(self) -> str:
        """One line for people: who approved, who is still missing, or why it ended."""
        given = ", ".join(f"{d.group}: {d.person}" for d in self.approvals().values()) or "none yet"
        if self.state is ApprovalState.PENDING:
            return f"awaiting approval from {', '.join(self.missing_groups())} (approved: {given})"
        if self.state is ApprovalState.APPROVED:
            return f"approved by {given}"
        rejection = self.rejection()
        if self.state is ApprovalState.REJECTED and rejection is not None:
            comment = f": {rejection.comment}" if rejection.comment else ""
            return f"rejected by {rejection.person} for {rejection.group}{comment}"
        waited = _duration(self.expires_at - self.requested_at)
        return f"approval expired after {waited} without {', '.join(self.missing_groups())}"


class ApprovalRefused(ValueError):
    """The decision cannot be taken (not a member, already decided, expired ...); the message says why."""


class UnknownApproval(KeyError):
    def __init__(self, subject: str) -> None:
        super().__init__(f"no approval was requested for '{subject}'")

    def __str__(self) -> str:
        return str(self.args[0])


class Approvals:
    """Approval requests over the journal. ``roles``: group -> members (the configuration's ``roles``)."""

    def __init__(
        self,
        journal: Journal,
        roles: Mapping[str, Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.roles = {group: list(members) for group, members in (roles or {}).items()}
        self.clock = clock

    # ------------------------------------------------------------------------------ reading
    def status(self, subject: str) -> ApprovalRequest:
        """The request as it stands now (expired when its time has passed); UnknownApproval if none."""
        found = self.find(subject)
        if found is None:
            raise UnknownApproval(subject)
        return found

    def find(self, subject: str) -> ApprovalRequest | None:
        data = self.journal.record(APPROVAL_RECORD, subject)
        return ApprovalRequest.model_validate(data).at(self.clock()) if data else None

    def list(self, environment: str | None = None, pending_only: bool = False) -> list[ApprovalRequest]:
        """Requests, oldest first; ``pending_only`` leaves out the decided and the expired."""
        now = self.clock()
        found = [ApprovalRequest.model_validate(r).at(now) for r in self.journal.records(APPROVAL_RECORD)]
        chosen = [
            r
            for r in found
            if (environment is None or r.environment == environment)
            and (not pending_only or r.state is ApprovalState.PENDING)
        ]
        return sorted(chosen, key=lambda r: r.requested_at)

    # ------------------------------------------------------------------------------ writing
    def request(
        self,
        subject: str,
        environment: str,
        groups: Sequence[str],
        expires_at: float,
        requested_by: str = "system",
    ) -> ApprovalRequest:
        """Ask every group in ``groups`` to approve ``subject``; asking again returns the first request."""
        if not groups:
            raise ValueError(f"approval of {subject}: no approver groups given")
        now = self.clock()
        if expires_at <= now:
            raise ValueError(f"approval of {subject}: expires_at is not in the future")
        created = ApprovalRequest(
            subject=subject,
            environment=environment,
            groups=list(dict.fromkeys(groups)),
            requested_by=requested_by,
            requested_at=now,
            expires_at=expires_at,
        )

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            return current if current is not None else created.model_dump(mode="json")

        event = self._event(subject, EventKind.APPROVAL_REQUESTED, requested_by)
        stored = self.journal.update_record(APPROVAL_RECORD, subject, change, event)
        return ApprovalRequest.model_validate(stored).at(now)

    def approve(self, subject: str, person: str, group: str, comment: str = "") -> ApprovalRequest:
        """Record ``person``'s approval for ``group``; approving the same group again is a no-op."""
        return self._decide(subject, person, group, comment, Verdict.APPROVE)

    def reject(self, subject: str, person: str, group: str, comment: str = "") -> ApprovalRequest:
        """Record ``person``'s rejection for ``group``: the request ends, rejected."""
        return self._decide(subject, person, group, comment, Verdict.REJECT)

    def expire(self, subject: str) -> ApprovalRequest:
        """Record that a request's time has passed (once; the supervision round calls it)."""

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            request = _existing(subject, current).at(self.clock())
            return request.model_dump(mode="json")

        event = self._event(subject, EventKind.APPROVAL_EXPIRED, "system")
        return ApprovalRequest.model_validate(
            self.journal.update_record(APPROVAL_RECORD, subject, change, event)
        )

    def _decide(
        self, subject: str, person: str, group: str, comment: str, verdict: Verdict
    ) -> ApprovalRequest:
        person, group = person.strip(), group.strip()

        def change(current: dict[str, Any] | None) -> dict[str, Any]:
            request = _existing(subject, current)
            now = self.clock()
            if request.at(now).state is ApprovalState.EXPIRED and request.state is ApprovalState.PENDING:
                raise ApprovalRefused(f"the approval of {subject} expired at {_when(request.expires_at)}")
            if _repeated(request, person, group, verdict):
                return request.model_dump(mode="json")
            self._check(request, person, group)
            decision = Decision(person=person, group=group, verdict=verdict, comment=comment, at=now)
            request.decisions.append(decision)
            request.state = _state_after(request)
            request.decided_at = now if request.state.decided else None
            return request.model_dump(mode="json")

        kind = EventKind.REJECTED if verdict is Verdict.REJECT else EventKind.APPROVED
        event = self._event(subject, kind, person, decision=(person, group, comment))
        return ApprovalRequest.model_validate(
            self.journal.update_record(APPROVAL_RECORD, subject, change, event)
        )

    def _check(self, request: ApprovalRequest, person: str, group: str) -> None:
        subject = request.subject
        if request.state.decided:
            raise ApprovalRefused(f"the approval of {subject} is already {request.state.value}")
        if not person:
            raise ApprovalRefused("person: say who decides")
        if group not in request.groups:
            raise ApprovalRefused(
                f"group: '{group}' is not asked to approve {subject}; asked: {', '.join(request.groups)}"
            )
        members = self.roles.get(group)
        if not members:
            raise ApprovalRefused(f"group: '{group}' has no members (define it under 'roles')")
        if person not in members:
            raise ApprovalRefused(f"person: {person} is not a member of {group} ({', '.join(members)})")
        if person == request.requested_by:
            raise ApprovalRefused(f"person: {person} requested {subject} and cannot approve it too")
        given = request.approvals()
        if group in given:
            raise ApprovalRefused(f"group: {group} already approved {subject} (by {given[group].person})")
        other = next((d.group for d in given.values() if d.person == person), None)
        if other is not None:
            raise ApprovalRefused(
                f"person: {person} already approved {subject} for {other}; one person approves for one group"
            )

    def _event(
        self,
        subject: str,
        kind: EventKind,
        actor: str,
        decision: tuple[str, str, str] | None = None,
    ) -> RecordEvent | None:
        """The deployment event that goes with a change, when the subject is a deployment (none when the
        change changed nothing: a retried call)."""
        try:
            self.journal.state(subject)
        except UnknownDeploymentError:
            return None

        def data(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any] | None:
            if before == after:
                return None
            request = ApprovalRequest.model_validate(after)
            facts: dict[str, Any] = {
                "state": request.state.value,
                "message": request.summary(),
                "groups": request.groups,
                "missing": request.missing_groups(),
                "expires_at": request.expires_at,
            }
            if decision is not None:
                facts |= dict(zip(("person", "group", "comment"), decision, strict=True))
            return facts

        return RecordEvent(deployment_id=subject, kind=kind, actor=actor, data=data)


def _existing(subject: str, current: dict[str, Any] | None) -> ApprovalRequest:
    if current is None:
        raise UnknownApproval(subject)
    return ApprovalRequest.model_validate(current)


def _repeated(request: ApprovalRequest, person: str, group: str, verdict: Verdict) -> bool:
    """The same person giving the same verdict for the same group again (a retried call)."""
    return any(d.person == person and d.group == group and d.verdict is verdict for d in request.decisions)


def _state_after(request: ApprovalRequest) -> ApprovalState:
    if request.rejection() is not None:
        return ApprovalState.REJECTED
    return ApprovalState.APPROVED if not request.missing_groups() else ApprovalState.PENDING


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g}{unit}"
    return f"{seconds:.3g}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
