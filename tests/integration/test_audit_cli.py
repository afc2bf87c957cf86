"""The audit trail and tokens as a user meets them on the command line: a new user's first deployment (the
embedded default makes the first admin token), ``audit verify`` confirming the trail up to the checkpoint
signed at shutdown, then catching an edited row and a cut tail made with sqlite3 on the file."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from client.local import local_person
from engine.config import write_isolated_config
from tests.integration.test_cli import _teardown as teardown
from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def new_user(tmp_path: Path) -> dict[str, str]:
    """A machine where nobody has a token yet."""
    config = write_isolated_config(tmp_path, (19700, 19749), (39500, 39999), namespace="orch-audit-cli")
    env = {**os.environ, "ORCH_HOME": str(tmp_path), "ORCH_CONFIG": str(config)}
    for name in ("RAY_ADDRESS", "ORCH_TOKEN"):
        env.pop(name, None)
    return env


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy (WAL included), made the way SQLite means it to be."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def test_a_new_users_trail_verifies_and_tampering_is_caught(new_user: dict[str, str], tmp_path: Path) -> None:
    deploy = cli(
        "deploy",
        "--service",
        "audited",
        "--version",
        "1.0.0",
        "--command",
        f"{sys.executable} examples/sample_service.py",
        "--workdir",
        str(REPO),
        "--strategy",
        "rolling",
        "--replicas",
        "1",
        "--json",
        env=new_user,
    )
    try:
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    finally:
        teardown(new_user, "audited")
    token_file = tmp_path / "token"
    assert "created the first admin token" in deploy.stderr
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert token not in deploy.stdout + deploy.stderr

    verified = cli("audit", "verify", "--json", env=new_user, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    intact = json.loads(verified.stdout)
    assert intact["ok"] and intact["signed_seq"] == intact["last_seq"]  # the queen signed at shutdown
    journal = tmp_path / "journal.db"
    pristine = tmp_path / "pristine.db"
    copy_db(journal, pristine)

    with sqlite3.connect(journal) as db:  # one row edited, as an attacker with the file would
        db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 3")
    edited = cli("audit", "verify", env=new_user, timeout=60)
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert "BROKEN: seq 3 was edited" in edited.stdout

    copy_db(pristine, journal)
    assert cli("audit", "verify", env=new_user, timeout=60).returncode == 0
    with sqlite3.connect(journal) as db:  # the last rows deleted
        db.execute("DELETE FROM events WHERE seq > ?", (intact["last_seq"] - 3,))
    cut = cli("audit", "verify", env=new_user, timeout=60)
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert "the tail was cut" in cut.stdout and f"covers seq {intact['last_seq']}" in cut.stdout


def test_token_commands_and_refusals_on_the_command_line(new_user: dict[str, str], tmp_path: Path) -> None:
    boot = cli("token", "bootstrap", "--person", "ops", env=new_user, timeout=60)
    assert boot.returncode == 0 and "for ops" in boot.stdout, boot.stderr
    again = cli("token", "bootstrap", env=new_user, timeout=60)
    assert again.returncode == 3 and "an admin already holds a token" in again.stderr
    alice_file = tmp_path / "alice.token"
    issued = cli("token", "issue", "--person", "alice", "--output", str(alice_file), env=new_user, timeout=60)
    assert issued.returncode == 0, issued.stderr
    alice = alice_file.read_text().strip()
    assert alice not in issued.stdout + issued.stderr and stat.S_IMODE(alice_file.stat().st_mode) == 0o600
    as_alice = ["--token-file", str(alice_file)]
    assert cli(*as_alice, "history", env=new_user, timeout=60).returncode == 0  # a viewer reads
    listing = cli(*as_alice, "token", "list", env=new_user, timeout=60)
    assert listing.returncode == 3 and "alice lacks the admin role" in listing.stderr
    assert cli("token", "revoke", "--person", "alice", env=new_user, timeout=60).returncode == 0
    refused = cli(*as_alice, "history", env=new_user, timeout=60)
    assert refused.returncode == 3 and "of alice was revoked" in refused.stderr
    listed = cli("token", "list", "--json", env=new_user, timeout=60)
    rows = json.loads(listed.stdout)
    assert {(r["person"], bool(r["revoked_at"])) for r in rows} == {("ops", False), ("alice", True)}
    exported = cli("audit", "export", env=new_user, timeout=60)
    entries = [json.loads(line) for line in exported.stdout.splitlines()]
    refusals = [(e["actor"], e["data"]["attempted"]) for e in entries if e["action"] == "role_refused"]
    assert refusals == [(local_person(), "token bootstrap"), ("alice", "token list"), ("alice", "history")]
    assert alice not in exported.stdout and alice.split("_", 2)[2] not in exported.stdout
