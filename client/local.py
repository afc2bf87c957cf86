"""The journal on this machine, for what needs no cluster: tokens, the audit trail, and the CLI's reads.

Part of the driver API (the CLI uses it as it uses ``client.driver``). These commands act on the journal file
and the audit key directly, so they run where those live (the head node, or through ``ray job submit``).
Whoever can write the journal file can do anything these commands do: the checks here keep the CLI's local
path consistent with the actors', they do not replace protecting the file.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
from pathlib import Path
from typing import Any, TextIO

from engine.audit import (
    Checkpoint,
    Checkpointer,
    PruneResult,
    Verification,
    export_jsonl,
    prune_expired,
    retention_days,
    verify_configured,
)
from engine.config import EnterpriseConfig, load_config
from engine.identity import (
    RESERVED_PEOPLE,
    TOKEN_ENV_VAR,
    TOKEN_FILE_NAME,
    AccessControl,
    AccessRole,
    Principal,
    TokenRecord,
    read_token_file,
    save_token,
)
from engine.journal import Journal
from engine.lint import Finding, lint_file
from engine.paths import orchestrator_home

log = logging.getLogger("orchestrator")


def token_path() -> Path:
    """Where a person's token is kept on this machine: ``$ORCH_HOME/token``."""
    return orchestrator_home() / TOKEN_FILE_NAME


def find_token(explicit: str | None = None) -> str | None:
    """The caller's token: the argument, else ``$ORCH_TOKEN``, else the token file."""
    return explicit or os.environ.get(TOKEN_ENV_VAR) or read_token_file(token_path())


def local_person() -> str:
    """The login name, made a valid person name (``admin`` when there is none)."""
    try:
        name = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        name = ""
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]", "-", name).lstrip("._@+-")[:64]
    return cleaned if cleaned and cleaned not in RESERVED_PEOPLE else "admin"


def bootstrap_if_new(config: EnterpriseConfig, journal_path: str | Path) -> str | None:
    """On a journal without any admin yet, make the first admin token and keep it in the token file
    (0600); returns it, or None when the journal already has an admin."""
    access = AccessControl(config, Journal(journal_path))
    if access.admin_exists():
        return None
    person = local_person()
    issued = access.bootstrap(person, by=person)
    path = save_token(token_path(), issued.token)
    log.warning("created the first admin token (for %s) in %s, readable by you only", person, path)
    return issued.token


class LocalJournal:
    """Token administration, audit commands and journal reads on the local journal file."""

    def __init__(self, config_path: str | None = None, token: str | None = None) -> None:
        self.config = load_config(config_path)
        self.journal = Journal(self.config.journal_location())
        self.access = AccessControl(self.config, self.journal)
        self.token = find_token(token)

    def require(
        self,
        role: AccessRole | None,
        action: str,
        environment: str | None = None,
        deployment: str | None = None,
    ) -> Principal:
        """The caller holding ``role`` (a refusal is audited)."""
        return self.access.require(self._token(), role, environment, action=action, deployment=deployment)

    def _token(self) -> str | None:
        """The caller's token; on a new journal the first admin token is made, as the embedded driver does."""
        if self.token is None:
            self.token = bootstrap_if_new(self.config, self.config.journal_location())
        return self.token

    # ------------------------------------------------------------------------------ tokens
    def bootstrap(self, person: str | None = None) -> tuple[TokenRecord, Path]:
        """The first admin token, kept in the token file; refused once an admin holds a token."""
        who = local_person()
        issued = self.access.bootstrap(person or who, by=who)
        return issued.record, save_token(token_path(), issued.token)

    def issue_token(self, person: str) -> str:
        """A new token for ``person`` (admin): returned once, only its hash is kept."""
        return self.access.issue_token(self._token(), person).token

    def revoke_token(self, token_id: str | None = None, person: str | None = None) -> list[dict[str, Any]]:
        return [r.public() for r in self.access.revoke_token(self._token(), token_id, person)]

    def tokens(self) -> list[dict[str, Any]]:
        return self.access.list_tokens(self._token())

    # ------------------------------------------------------------------------------ audit
    def checkpointer(self) -> Checkpointer:
        return Checkpointer.from_config(self.config, self.journal)

    def verify(self, public_key: str | Path | None = None) -> Verification:
        """Verify the trail with the public key given, else the one beside the configured signing key.
        Needs no token: an auditor may run it on a copy, and it shows no content."""
        return verify_configured(self.config, self.journal, Path(public_key) if public_key else None)

    def export(self, out: TextIO, after_seq: int = 0) -> int:
        self.require(AccessRole.VIEWER, "audit export")
        return export_jsonl(self.journal, out, after_seq)

    def checkpoint(self) -> Checkpoint | None:
        who = self.require(AccessRole.ADMIN, "audit checkpoint")
        return self.checkpointer().checkpoint("manual", who.person)

    def prune(self, dry_run: bool = False) -> PruneResult:
        who = self.require(AccessRole.ADMIN, "audit prune")
        keep = retention_days(self.config, self.journal)
        return prune_expired(self.journal, self.checkpointer(), keep, who.person, dry_run)


def lint_configuration(path: str | None = None) -> tuple[str, list[Finding]]:
    """Every problem of a configuration file with its YAML path: what loading it refuses, and what loads but
    will not work as meant (engine/lint.py), the platforms' settings and the alert channels' URLs included."""
    from adapters import settings_problems
    from adapters.notifications import check_url

    return lint_file(path, settings_problems, check_url)
