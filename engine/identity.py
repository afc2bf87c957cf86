"""Who may do what: personal tokens, stored hashed, and roles granted per environment (no Ray here).

A token is ``orch_<id>_<secret>``: the id is public (listed, recorded in the audit trail, used to revoke), the
secret is 256 random bits shown once when the token is issued. The journal keeps the SHA-256 of the whole
token, never the token: a slow password hash is not needed for a value of that entropy.

Roles come from ``access:`` in ``enterprise_config.yaml``: environment (or a glob such as ``"*"``) -> role ->
members, where a member is a person, ``"*"`` (every person with a valid token) or ``"@group"`` (the members of
a group under ``roles:``). ``admin`` implies every other role, ``deployer`` and ``approver`` imply ``viewer``;
deployer and approver stay apart (who ships a change does not approve it). The members of an environment's
approver groups (``approvalWorkflow.approverGroups``) hold ``approver`` there, so the two never disagree.
A check without an environment (token administration, history of every environment) is satisfied only by
grants under ``"*"``.

Every refusal is appended to the audit trail with the person (when the token is known), the action, the role
and the reason, never with the token. The orchestrator's own actors call each other with a service secret
that lives only in their memory and in Ray's actor arguments; it acts on behalf of the person recorded in the
request it carries, whom the actor that received the person's call has already checked.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import Field, field_validator

from engine.audit import AuditTrail
from engine.journal import Journal
from engine.models import DeploymentRequest, Model

if TYPE_CHECKING:
    from engine.config import EnterpriseConfig

TOKEN_ENV_VAR = "ORCH_TOKEN"
TOKEN_FILE_NAME = "token"
TOKEN_RECORD = "token"
SERVICE_PERSON = "orchestrator"
ANONYMOUS = "anonymous"
RESERVED_PEOPLE = frozenset({SERVICE_PERSON, ANONYMOUS, "system", "queen", "health-monitor"})
_TOKEN = re.compile(r"^orch_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_PERSON = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


class AccessRole(str, Enum):
    VIEWER = "viewer"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    ADMIN = "admin"


IMPLIED: dict[AccessRole, frozenset[AccessRole]] = {
    AccessRole.VIEWER: frozenset({AccessRole.VIEWER}),
    AccessRole.DEPLOYER: frozenset({AccessRole.DEPLOYER, AccessRole.VIEWER}),
    AccessRole.APPROVER: frozenset({AccessRole.APPROVER, AccessRole.VIEWER}),
    AccessRole.ADMIN: frozenset(AccessRole),
}


class AccessDenied(PermissionError):
    """The caller is not identified or lacks the role; the message says which, never the token."""

    def __init__(self, message: str, holder: Principal | None = None) -> None:
        super().__init__(message)
        self.holder = holder  # whose token it was, when known (a revoked one): for the audit trail

    def __reduce__(self) -> Any:  # crosses Ray's process boundary with its message only
        return (AccessDenied, (str(self),))


def check_person(name: str) -> str:
    if not _PERSON.match(name):
        raise ValueError(
            f"person: '{name}' is not a valid name: letters, digits and . _ @ + -, at most 64 characters"
        )
    if name in RESERVED_PEOPLE:
        raise ValueError(f"person: '{name}' is reserved for the orchestrator's own actors")
    return name


# --------------------------------------------------------------------------------------------
# The ``access:`` section
# --------------------------------------------------------------------------------------------
class AccessGrants(Model):
    """Role -> members in one environment (or every environment a glob key matches)."""

    viewer: list[str] = Field(default_factory=list)
    deployer: list[str] = Field(default_factory=list)
    approver: list[str] = Field(default_factory=list)
    admin: list[str] = Field(default_factory=list)

    @field_validator("viewer", "deployer", "approver", "admin")
    @classmethod
    def _members(cls, members: list[str]) -> list[str]:
        for member in members:
            if member != "*" and not member.startswith("@"):
                check_person(member)
        return members

    def members(self, role: AccessRole) -> list[str]:
        return list(getattr(self, role.value))


def access_problems(
    access: Mapping[str, AccessGrants], environments: Iterable[str], groups: Mapping[str, list[str]]
) -> Iterable[tuple[str, str]]:
    """(yaml path, problem) for keys naming no configured environment and groups not under ``roles:``."""
    known = set(environments)
    for key, grants in access.items():
        if not _is_glob(key) and key not in known:
            yield (
                f"access.{key}",
                f"unknown environment '{key}' (configured: {', '.join(sorted(known)) or 'none'}); "
                'a pattern such as "*" or "prod-*" matches environments registered later',
            )
        for role in AccessRole:
            for index, member in enumerate(grants.members(role)):
                if member.startswith("@") and member[1:] not in groups:
                    yield (
                        f"access.{key}.{role.value}[{index}]",
                        f"group '{member[1:]}' is not defined under 'roles'",
                    )


def _is_glob(key: str) -> bool:
    return any(char in key for char in "*?[")


class Principal(Model):
    """An authenticated caller."""

    person: str
    token_id: str | None = None
    system: bool = False
    bootstrap: bool = False

    def acting_as(self, claimed: str) -> str:
        """The person an action is recorded for: the token's, or (for the orchestrator's own actors) the
        person named in the request they relay."""
        return claimed if self.system and claimed else self.person


class Policy:
    """Roles per environment from the configuration (pure: no journal, no clock)."""

    def __init__(
        self,
        access: Mapping[str, AccessGrants],
        groups: Mapping[str, list[str]],
        approver_groups: Mapping[str, list[str]],
    ) -> None:
        self.access = dict(access)
        self.groups = {name: list(members) for name, members in groups.items()}
        self.approver_groups = {env: list(names) for env, names in approver_groups.items()}

    @classmethod
    def from_config(cls, config: EnterpriseConfig) -> Policy:
        approver_groups = {
            name: env.approval_workflow.approver_groups for name, env in config.environments.items()
        }
        return cls(config.access, config.roles, approver_groups)

    def roles(self, person: str, environment: str | None) -> set[AccessRole]:
        """The roles ``person`` holds in ``environment`` (None: in every environment, from "*" only)."""
        held: set[AccessRole] = set()
        for key, grants in self.access.items():
            if key != "*" and (environment is None or not fnmatch.fnmatchcase(environment, key)):
                continue
            for role in AccessRole:
                if self._listed(person, grants.members(role)):
                    held |= IMPLIED[role]
        if environment is not None:
            for group in self.approver_groups.get(environment, []):
                if person in self.groups.get(group, []):
                    held |= IMPLIED[AccessRole.APPROVER]
        return held

    def _listed(self, person: str, members: list[str]) -> bool:
        for member in members:
            if member == "*" or member == person:
                return True
            if member.startswith("@") and person in self.groups.get(member[1:], []):
                return True
        return False

    def allows(self, principal: Principal, role: AccessRole, environment: str | None) -> bool:
        if principal.system or principal.bootstrap:
            return True
        return role in self.roles(principal.person, environment)


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------
class TokenRecord(Model):
    token_id: str
    person: str
    sha256: str
    issued_at: float
    issued_by: str
    bootstrap: bool = False
    revoked_at: float | None = None
    revoked_by: str | None = None

    def public(self) -> dict[str, object]:
        """What listings show: everything but the hash."""
        return self.model_dump(mode="json", exclude={"sha256"})


class IssuedToken(NamedTuple):
    token: str  # shown once; never stored
    record: TokenRecord


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Token records in the journal's records table, keyed by token id; only hashes are kept."""

    def __init__(self, journal: Journal, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.clock = clock

    def issue(self, person: str, by: str, bootstrap: bool = False) -> IssuedToken:
        check_person(person)
        token_id = secrets.token_hex(4)
        while any(r.token_id == token_id for r in self.records()):
            token_id = secrets.token_hex(4)
        token = f"orch_{token_id}_{secrets.token_urlsafe(32)}"
        record = TokenRecord(
            token_id=token_id,
            person=person,
            sha256=_digest(token),
            issued_at=self.clock(),
            issued_by=by,
            bootstrap=bootstrap,
        )
        self.journal.put_record(TOKEN_RECORD, token_id, record.model_dump(mode="json"))
        return IssuedToken(token, record)

    def records(self) -> list[TokenRecord]:
        return [TokenRecord.model_validate(r) for r in self.journal.records(TOKEN_RECORD)]

    def revoke(self, by: str, token_id: str | None = None, person: str | None = None) -> list[TokenRecord]:
        """Revoke one token (by id) or every token of a person; returns what was revoked."""
        if (token_id is None) == (person is None):
            raise ValueError("revoke: give either a token id or a person")
        chosen = [
            r
            for r in self.records()
            if r.revoked_at is None
            and (r.token_id == token_id or (person is not None and r.person == person))
        ]
        if not chosen:
            what = f"token '{token_id}'" if token_id else f"person '{person}'"
            raise ValueError(f"revoke: no active token for {what}")
        now = self.clock()
        for record in chosen:
            record.revoked_at, record.revoked_by = now, by
            self.journal.put_record(TOKEN_RECORD, record.token_id, record.model_dump(mode="json"))
        return chosen

    def lookup(self, token: str) -> TokenRecord:
        """The record of a valid token; AccessDenied (naming the token id only when it is ours) if not."""
        match = _TOKEN.match(token)
        record = None
        if match is not None:
            record = next((r for r in self.records() if r.token_id == match.group(1)), None)
        if record is None or not hmac.compare_digest(record.sha256, _digest(token)):
            raise AccessDenied("unknown token")
        if record.revoked_at is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.revoked_at))
            holder = Principal(person=record.person, token_id=record.token_id)
            raise AccessDenied(
                f"token {record.token_id} of {record.person} was revoked at {stamp} UTC", holder
            )
        return record


def save_token(path: Path, token: str) -> Path:
    """Write a token file readable by its owner only (0600, also when it already existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write(token + "\n")
    return path


def read_token_file(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


# --------------------------------------------------------------------------------------------
# Checks, with refusals audited
# --------------------------------------------------------------------------------------------
class AccessControl:
    """Authentication and authorisation as the actors (and the CLI's local commands) apply them."""

    def __init__(
        self,
        config: EnterpriseConfig,
        journal: Journal,
        service_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.journal = journal
        self.policy = Policy.from_config(config)
        self.tokens = TokenStore(journal, clock)
        self.trail = AuditTrail(journal)
        self._service_secret = service_secret

    def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise AccessDenied("no token: pass one (token=..., ORCH_TOKEN or a token file in ORCH_HOME)")
        if self._service_secret and hmac.compare_digest(token.encode(), self._service_secret.encode()):
            return Principal(person=SERVICE_PERSON, system=True)
        record = self.tokens.lookup(token)
        return Principal(person=record.person, token_id=record.token_id, bootstrap=record.bootstrap)

    def require(
        self,
        token: str | None,
        role: AccessRole | None,
        environment: str | None = None,
        *,
        action: str,
        deployment: str | None = None,
    ) -> Principal:
        """The caller, once identified and holding ``role`` in ``environment`` (or in the environment of
        ``deployment``); ``role`` None asks for a valid token only. A refusal is audited, then raised."""
        principal: Principal | None = None
        subject = (deployment or "audit")[:80]
        try:
            principal = self.authenticate(token)
            if deployment is not None:  # an unknown id raises UnknownDeploymentError (not a refusal)
                state = self.journal.find(deployment)
                environment, subject = state.request.environment, state.deployment_id
            if role is not None and not self.policy.allows(principal, role, environment):
                where = f"environment '{environment}'" if environment else "every environment ('*')"
                raise AccessDenied(f"{principal.person} lacks the {role.value} role in {where}")
        except AccessDenied as refusal:
            self.refused(principal or refusal.holder, action, role, environment, subject, str(refusal))
            raise AccessDenied(f"{action} refused: {refusal}") from None
        return principal

    def checked_request(
        self, token: str | None, request: DeploymentRequest, action: str
    ) -> DeploymentRequest:
        """A deployment request from a caller allowed to deploy to its environment, recorded as requested by
        the token's person (or, relayed by the orchestrator's own actors, by the person it names)."""
        principal = self.require(token, AccessRole.DEPLOYER, request.environment, action=action)
        return request.model_copy(update={"requested_by": principal.acting_as(request.requested_by)})

    def require_each(
        self, token: str | None, role: AccessRole, environments: Iterable[str], action: str
    ) -> Principal:
        """The caller, holding ``role`` in every one of ``environments`` (e.g. each stage of a pipeline)."""
        principal = self.require(token, None, action=action)
        for environment in environments:
            self.require(token, role, environment, action=action)
        return principal

    def require_system(self, token: str | None, action: str) -> Principal:
        """Calls only the orchestrator's own actors make (a health monitor's report)."""
        principal = self.require(token, None, action=action)
        if not principal.system:
            reason = f"{principal.person} is not the orchestrator: only its own actors call {action}"
            self.refused(principal, action, None, None, "audit", reason)
            raise AccessDenied(f"{action} refused: {reason}")
        return principal

    def refused(
        self,
        principal: Principal | None,
        action: str,
        role: AccessRole | None,
        environment: str | None,
        subject: str,
        reason: str,
    ) -> None:
        self.trail.record(
            "role_refused",
            principal.person if principal else ANONYMOUS,
            subject=subject,
            reason=reason,
            attempted=action,
            role=role.value if role else None,
            environment=environment,
            token_id=principal.token_id if principal else None,
        )

    # ------------------------------------------------------------------------------ token administration
    def admin_exists(self) -> bool:
        return any(
            r.revoked_at is None and (r.bootstrap or AccessRole.ADMIN in self.policy.roles(r.person, None))
            for r in self.tokens.records()
        )

    def bootstrap(self, person: str, by: str) -> IssuedToken:
        """The first admin token, for whoever can write the journal; refused once an admin holds a token."""
        if self.admin_exists():
            reason = "an admin already holds a token"
            self.refused(Principal(person=by), "token bootstrap", AccessRole.ADMIN, None, "audit", reason)
            raise AccessDenied(
                f"token bootstrap refused: {reason}; ask them for one (python orchestrator.py token issue "
                "--person NAME)"
            )
        issued = self.tokens.issue(person, by=by, bootstrap=True)
        self.trail.record(
            "token_issued",
            by,
            reason="bootstrap: first admin",
            person=person,
            token_id=issued.record.token_id,
        )
        return issued

    def issue_token(self, token: str | None, person: str) -> IssuedToken:
        admin = self.require(token, AccessRole.ADMIN, action="token issue")
        issued = self.tokens.issue(person, by=admin.person)
        self.trail.record("token_issued", admin.person, person=person, token_id=issued.record.token_id)
        return issued

    def revoke_token(
        self, token: str | None, token_id: str | None = None, person: str | None = None
    ) -> list[TokenRecord]:
        admin = self.require(token, AccessRole.ADMIN, action="token revoke")
        revoked = self.tokens.revoke(admin.person, token_id=token_id, person=person)
        for record in revoked:
            self.trail.record("token_revoked", admin.person, person=record.person, token_id=record.token_id)
        return revoked

    def list_tokens(self, token: str | None) -> list[dict[str, object]]:
        self.require(token, AccessRole.ADMIN, action="token list")
        return [r.public() for r in self.tokens.records()]
