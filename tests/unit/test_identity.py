"""Personal tokens (issued, verified, revoked, stored hashed) and roles per environment, without Ray."""

from __future__ import annotations

import json
import sqlite3
import stat
import textwrap
from pathlib import Path

import pytest

from engine.config import ConfigError, EnterpriseConfig, load_config
from engine.identity import (
    AccessControl,
    AccessDenied,
    AccessRole,
    Policy,
    TokenStore,
    save_token,
)
from engine.journal import Journal
from engine.models import DeploymentRequest, PlatformConfig, Strategy
from engine.state import EventKind

CONFIG = {
    "roles": {"release-managers": ["alice", "bob"], "sre": ["carol"], "qa": ["erin"]},
    "environments": {
        "development": {},
        "staging": {"approvalWorkflow": {"required": True, "approverGroups": ["qa"]}},
        "production": {"approvalWorkflow": {"required": True, "approverGroups": ["release-managers", "sre"]}},
    },
    "access": {
        "*": {"viewer": ["*"], "admin": ["root"]},
        "development": {"deployer": ["*"]},
        "staging": {"deployer": ["@qa", "dave"]},
        "production": {"deployer": ["@release-managers"]},
        "prod-*": {"deployer": ["frank"]},
    },
}


def config(**changes: object) -> EnterpriseConfig:
    return EnterpriseConfig.from_mapping({**CONFIG, **changes})


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.db")


def refusals(journal: Journal) -> list[dict[str, object]]:
    return [
        {"actor": e.actor, **e.data}
        for e in journal.events()
        if e.kind is EventKind.AUDIT and e.data["action"] == "role_refused"
    ]


# --------------------------------------------------------------------------------------------- tokens
def test_a_token_is_verified_and_only_its_hash_is_stored(journal: Journal, tmp_path: Path) -> None:
    store = TokenStore(journal)
    issued = store.issue("alice", by="root")
    assert issued.token.startswith(f"orch_{issued.record.token_id}_")
    assert len(issued.token) > 50
    assert store.lookup(issued.token).person == "alice"
    journal.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("journal.db"))
    secret = issued.token.split("_", 2)[2]
    assert secret.encode() not in blob and issued.token.encode() not in blob
    assert issued.record.sha256.encode() in blob  # what is kept instead


def test_a_wrong_forged_or_revoked_token_is_refused(journal: Journal) -> None:
    store = TokenStore(journal)
    issued = store.issue("alice", by="root")
    token_id = issued.record.token_id
    for wrong in ("", "nonsense", f"orch_{token_id}_" + "A" * 43, issued.token[:-1] + "x"):
        with pytest.raises(AccessDenied, match="unknown token"):
            store.lookup(wrong)
    store.revoke("root", token_id=token_id)
    with pytest.raises(AccessDenied, match=f"token {token_id} of alice was revoked"):
        store.lookup(issued.token)
    with pytest.raises(ValueError, match="no active token"):
        store.revoke("root", token_id=token_id)


def test_revoking_a_person_revokes_all_their_tokens(journal: Journal) -> None:
    store = TokenStore(journal)
    first, second = store.issue("bob", by="root"), store.issue("bob", by="root")
    other = store.issue("carol", by="root")
    revoked = store.revoke("root", person="bob")
    assert {r.token_id for r in revoked} == {first.record.token_id, second.record.token_id}
    assert store.lookup(other.token).person == "carol"


def test_person_names_are_checked(journal: Journal) -> None:
    store = TokenStore(journal)
    for bad in ("", "*", "@qa", "has space", "orchestrator", "anonymous"):
        with pytest.raises(ValueError, match="person"):
            store.issue(bad, by="root")


def test_a_token_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "home" / "token"
    path.parent.mkdir()
    path.write_text("old")
    path.chmod(0o644)
    save_token(path, "orch_x")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == "orch_x"


# --------------------------------------------------------------------------------------------- roles
def test_roles_per_environment_with_wildcards_groups_and_patterns() -> None:
    policy = Policy.from_config(config())
    assert policy.roles("zoe", "development") == {AccessRole.VIEWER, AccessRole.DEPLOYER}
    assert policy.roles("zoe", "production") == {AccessRole.VIEWER}
    assert AccessRole.DEPLOYER in policy.roles("alice", "production")  # @release-managers
    assert AccessRole.DEPLOYER in policy.roles("erin", "staging")  # @qa
    assert AccessRole.DEPLOYER in policy.roles("dave", "staging")
    assert AccessRole.DEPLOYER not in policy.roles("dave", "production")
    assert AccessRole.DEPLOYER in policy.roles("frank", "prod-eu")  # pattern key
    assert AccessRole.DEPLOYER not in policy.roles("frank", "production")
    assert policy.roles("root", "production") == set(AccessRole)  # admin under "*" implies all
    assert policy.roles("root", None) == set(AccessRole)
    assert policy.roles("alice", None) == {AccessRole.VIEWER}  # only "*" grants count globally


def test_approver_groups_grant_the_approver_role_where_they_approve() -> None:
    policy = Policy.from_config(config())
    assert AccessRole.APPROVER in policy.roles("carol", "production")  # sre approves production
    assert AccessRole.APPROVER not in policy.roles("carol", "staging")
    assert AccessRole.APPROVER in policy.roles("erin", "staging")
    # Deploying and approving stay apart: erin approves staging but does not deploy to production.
    assert AccessRole.DEPLOYER not in policy.roles("carol", "production")


def test_without_an_access_section_only_admins_and_approvers_act() -> None:
    policy = Policy.from_config(config(access={}))
    assert policy.roles("zoe", "development") == set()
    assert policy.roles("carol", "production") == {AccessRole.APPROVER, AccessRole.VIEWER}


def _config_problems(tmp_path: Path, text: str) -> str:
    file = tmp_path / "enterprise_config.yaml"
    file.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    return str(caught.value)


def test_access_section_mistakes_are_reported_at_their_path(tmp_path: Path) -> None:
    keys = _config_problems(
        tmp_path,
        """
        access:
          staging: {approvers: [erin]}
          "*": {viewer: ["has space"]}
        """,
    )
    assert "access.staging.approvers: unknown key; did you mean 'approver'?" in keys
    assert "access.*.viewer: person: 'has space' is not a valid name" in keys
    references = _config_problems(
        tmp_path,
        """
        roles: {qa: [erin]}
        environments: {staging: {}}
        access:
          stagging: {deployer: [erin]}
          staging: {deployer: ["@nobody"]}
          "prod-*": {deployer: ["@qa"]}
        """,
    )
    assert "access.stagging: unknown environment 'stagging'" in references
    assert "access.staging.deployer[0]: group 'nobody' is not defined under 'roles'" in references
    assert "access.prod-*" not in references  # a pattern may match environments registered later


def test_the_shipped_configuration_grants_what_its_comments_say() -> None:
    policy = Policy.from_config(load_config())
    assert AccessRole.DEPLOYER in policy.roles("anyone", "development")
    assert policy.roles("anyone", "production") == {AccessRole.VIEWER}
    assert AccessRole.DEPLOYER in policy.roles("alice", "production")
    assert AccessRole.APPROVER in policy.roles("carol", "production")


# --------------------------------------------------------------------------------------------- checks
def request(environment: str, requested_by: str = "someone-else") -> DeploymentRequest:
    return DeploymentRequest(
        artifact={"name": "web", "version": "1.0.0"},
        strategy=Strategy(type="rolling"),
        environment=environment,
        platform=PlatformConfig(type="local"),
        requested_by=requested_by,
    )


def test_refusals_are_audited_with_who_what_and_why_but_never_the_token(journal: Journal) -> None:
    access = AccessControl(config(), journal)
    alice = access.tokens.issue("alice", by="root")
    zoe = access.tokens.issue("zoe", by="root")
    access.tokens.revoke("root", token_id=zoe.record.token_id)
    bogus = "orch_deadbeef_" + "B" * 43
    for token in (None, bogus, zoe.token):
        with pytest.raises(AccessDenied, match="submit refused"):
            access.checked_request(token, request("development"), action="submit")
    with pytest.raises(AccessDenied, match="alice lacks the admin role in every environment"):
        access.issue_token(alice.token, "mallory")
    seen = refusals(journal)
    assert [(r["actor"], r["attempted"]) for r in seen] == [
        ("anonymous", "submit"),
        ("anonymous", "submit"),
        ("zoe", "submit"),  # a revoked token still names its holder
        ("alice", "token issue"),
    ]
    assert "no token" in str(seen[0]["reason"]) and "unknown token" in str(seen[1]["reason"])
    assert "revoked" in str(seen[2]["reason"]) and seen[3]["role"] == "admin"
    text = json.dumps([e.data for e in journal.events()])
    assert all(t.split("_", 2)[2] not in text for t in (alice.token, zoe.token, bogus))


def test_a_request_is_recorded_as_requested_by_the_tokens_person(journal: Journal) -> None:
    access = AccessControl(config(), journal, service_secret="s" * 43)
    alice = access.tokens.issue("alice", by="root")
    checked = access.checked_request(alice.token, request("production", "mallory"), action="submit")
    assert checked.requested_by == "alice"
    relayed = access.checked_request("s" * 43, request("production", "alice"), action="submit")
    assert relayed.requested_by == "alice"  # the orchestrator's own actors relay the person they checked


def test_deployment_scoped_checks_use_the_deployments_environment(journal: Journal) -> None:
    access = AccessControl(config(), journal)
    journal.submit("web-1", request("production"), actor="alice")
    erin = access.tokens.issue("erin", by="root")  # deployer in staging only
    assert access.require(erin.token, AccessRole.VIEWER, deployment="web-1", action="status").person == "erin"
    with pytest.raises(AccessDenied, match="erin lacks the deployer role in environment 'production'"):
        access.require(erin.token, AccessRole.DEPLOYER, deployment="web-1", action="rollback")
    assert refusals(journal)[-1]["environment"] == "production"
    assert [e.kind for e in journal.events("web-1")][-1] is EventKind.AUDIT  # shown with the deployment


def test_only_the_orchestrators_own_actors_pass_require_system(journal: Journal) -> None:
    access = AccessControl(config(), journal, service_secret="s" * 43)
    root = access.tokens.issue("root", by="root")
    assert access.require_system("s" * 43, action="on_unhealthy").system
    with pytest.raises(AccessDenied, match="only its own actors"):
        access.require_system(root.token, action="on_unhealthy")
    with pytest.raises(AccessDenied):
        AccessControl(config(), journal).require_system("s" * 43, action="on_unhealthy")


def test_bootstrap_makes_the_first_admin_and_is_refused_once_one_exists(journal: Journal) -> None:
    access = AccessControl(config(access={}), journal)
    assert not access.admin_exists()
    first = access.bootstrap("ops", by="ops")
    assert first.record.bootstrap and access.admin_exists()
    assert access.require(first.token, AccessRole.ADMIN, action="token issue").person == "ops"
    with pytest.raises(AccessDenied, match="an admin already holds a token"):
        access.bootstrap("mallory", by="mallory")
    issued = access.issue_token(first.token, "alice")
    assert access.tokens.lookup(issued.token).person == "alice"
    listing = access.list_tokens(first.token)
    assert {row["person"] for row in listing} == {"ops", "alice"}
    assert all("sha256" not in row for row in listing)
    access.revoke_token(first.token, token_id=first.record.token_id)
    assert not access.admin_exists()  # the only admin revoked: bootstrap is possible again
    actions = [e.data["action"] for e in journal.events() if e.kind is EventKind.AUDIT]
    assert actions == ["token_issued", "role_refused", "token_issued", "token_revoked"]


def test_an_admin_by_configuration_counts_as_an_existing_admin(journal: Journal) -> None:
    access = AccessControl(config(), journal)
    access.tokens.issue("root", by="someone")  # root is admin under "*"
    assert access.admin_exists()


def test_records_in_the_journal_hold_no_secret(journal: Journal, tmp_path: Path) -> None:
    access = AccessControl(config(), journal)
    issued = access.bootstrap("ops", by="ops")
    rows = sqlite3.connect(tmp_path / "journal.db").execute("SELECT data FROM records").fetchall()
    assert rows and all(issued.token not in row[0] for row in rows)


# --------------------------------------------------------------------------------------------- client side
def test_the_caller_token_comes_from_the_argument_then_the_variable_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.local import find_token

    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    monkeypatch.delenv("ORCH_TOKEN", raising=False)
    assert find_token() is None
    save_token(tmp_path / "token", "from-file")
    assert find_token() == "from-file"
    monkeypatch.setenv("ORCH_TOKEN", "from-variable")
    assert find_token() == "from-variable"
    assert find_token("from-argument") == "from-argument"


def test_a_new_journal_gets_its_first_admin_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.local import bootstrap_if_new, local_person

    monkeypatch.setenv("ORCH_HOME", str(tmp_path))
    monkeypatch.setenv("USER", "ops")
    token = bootstrap_if_new(config(access={}), tmp_path / "journal.db")
    assert token is not None and (tmp_path / "token").read_text().strip() == token
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert bootstrap_if_new(config(access={}), tmp_path / "journal.db") is None  # an admin exists now
    assert TokenStore(Journal(tmp_path / "journal.db")).lookup(token).person == local_person() == "ops"
    monkeypatch.setenv("USER", "orchestrator")
    assert local_person() == "admin"  # a reserved name is not taken
