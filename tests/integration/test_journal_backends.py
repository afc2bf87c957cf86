"""The journal on both backends (a SQLite file, a real PostgreSQL reached over TLS): writers in several
processes make one hash chain, one orchestrator holds the lease, a SQLite journal migrates into PostgreSQL
with its chain intact, and the password never shows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from engine.journal import Journal
from engine.journal_store import JournalUnavailable, describe
from engine.models import Artifact, DeploymentRequest, PlatformConfig, Strategy
from engine.state import EventKind
from harness.postgres import PostgresServer
from tests.integration.test_cli import cli
from tests.unit.test_reconciler import CANARY, World

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
WRITERS, APPENDS = 4, 30

_WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
from engine.journal import Journal
from engine.state import EventKind
journal = Journal({location!r})
while time.time() < {start}:
    time.sleep(0.005)
for n in range({appends}):
    journal.append("d1", EventKind.NOTE, {{"writer": {writer}, "n": n}}, actor="writer-{writer}")
"""


def _request() -> DeploymentRequest:
    return DeploymentRequest(
        artifact=Artifact(name="web", version="1.0.0", command=["true"]),
        strategy=Strategy.model_validate({"type": "rolling", "replicas": 1}),
        environment="staging",
        platform=PlatformConfig(type="local"),
    )


def test_writers_in_several_processes_make_one_chain(journal_at: str) -> None:
    """Concurrent appends from four processes: every event is chained to the one committed before it (without
    a lock serialising writers across processes, two read the same last hash and the chain forks)."""
    journal = Journal(journal_at)
    journal.submit("d1", _request(), actor="test")
    start = time.time() + 3.0  # all writers begin together, after their imports
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER.format(repo=str(REPO), location=journal_at, start=start, appends=APPENDS, writer=w),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(WRITERS)
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err[-2000:]
    events = journal.events("d1")
    assert len(events) == 1 + WRITERS * APPENDS
    assert journal.verify_chain() == (True, None)
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    per_writer = [[e.data["n"] for e in events if e.data.get("writer") == w] for w in range(WRITERS)]
    assert all(ns == list(range(APPENDS)) for ns in per_writer)
    assert journal.state("d1").last_seq == seqs[-1]  # the snapshot folded every event


def test_one_lease_holder_among_two_orchestrators(journal_at: str) -> None:
    """Two orchestrators on one journal, each with its own connection: the second is refused while the
    first renews, takes over when the first releases, and takes over a stale lease."""
    clock = [1000.0]
    first = Journal(journal_at, clock=lambda: clock[0])
    second = Journal(journal_at, clock=lambda: clock[0])
    assert first.acquire_lease("queen", "cluster-a", ttl_s=30) is None
    assert second.acquire_lease("queen", "cluster-b", ttl_s=30) == "cluster-a"
    clock[0] += 20
    assert first.acquire_lease("queen", "cluster-a", ttl_s=30) is None  # renewed
    clock[0] += 20
    assert second.acquire_lease("queen", "cluster-b", ttl_s=30) == "cluster-a"  # 20 s after the renewal
    second.release_lease("queen", "cluster-b")  # not its lease: changes nothing
    assert second.acquire_lease("queen", "cluster-b", ttl_s=30) == "cluster-a"
    first.release_lease("queen", "cluster-a")
    assert second.acquire_lease("queen", "cluster-b", ttl_s=30) is None
    assert first.acquire_lease("queen", "cluster-a", ttl_s=30) == "cluster-b"
    clock[0] += 31  # cluster-b stopped renewing
    assert first.acquire_lease("queen", "cluster-a", ttl_s=30) is None
    assert first.acquire_lease("queen", "cluster-b", ttl_s=30, alive=lambda _: False) is None  # dead holder


_RACER = """
import sys, time
sys.path.insert(0, {repo!r})
from engine.journal import Journal
journal = Journal({location!r})
while time.time() < {start}:
    time.sleep(0.001)
print(journal.acquire_lease("queen", "owner-{n}", ttl_s=300) or "mine")
"""


def test_racing_orchestrators_get_one_lease(journal_at: str) -> None:
    """Six processes ask for the lease at the same moment: exactly one gets it, the others name it."""
    Journal(journal_at).records("lease")  # the tables exist before the race
    start = time.time() + 3.0
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER.format(repo=str(REPO), location=journal_at, start=start, n=n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    answers = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err[-2000:]
        answers.append(out.strip())
    winners = [f"owner-{n}" for n, answer in enumerate(answers) if answer == "mine"]
    assert len(winners) == 1, answers
    assert all(answer in ("mine", winners[0]) for answer in answers), answers


# ------------------------------------------------------------------------------------------ migration
def _sqlite_journal_with_history(tmp_path: Path) -> tuple[str, Journal]:
    path = str(tmp_path / "journal.db")
    world = World(path)
    world.deploy_stable()
    assert world.run(world.submit("2.0.0", CANARY)).value == "succeeded"
    world.submit("3.0.0", CANARY)  # still active when migrated
    world.journal.put_record("environment", "qa", {"name": "qa"})
    world.journal.acquire_lease("queen", "old-cluster", ttl_s=30)
    world.journal.release_lease("queen", "old-cluster")
    return path, world.journal


def test_migrate_copies_the_chain_intact_and_a_tampered_copy_is_caught(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    source_path, source = _sqlite_journal_with_history(tmp_path)
    url = postgres.create_database()
    env = {**os.environ, "ORCH_JOURNAL_URL": url}
    migrated = cli("journal", "migrate", "--from", source_path, "--to", "env:ORCH_JOURNAL_URL", env=env)
    assert migrated.returncode == 0, migrated.stderr
    assert postgres.password not in migrated.stdout + migrated.stderr
    target = Journal(url)
    assert [(e.seq, e.hash, e.kind, e.data) for e in target.events()] == [
        (e.seq, e.hash, e.kind, e.data) for e in source.events()
    ]
    assert [s.model_dump() for s in target.deployments()] == [s.model_dump() for s in source.deployments()]
    assert target.records("environment") == [{"name": "qa"}]
    assert target.verify_chain() == (True, None)
    # The copy goes on where the source ended: the next event follows the last sequence number and chains.
    active = target.deployments(active_only=True)[0].deployment_id
    last = source.events()[-1].seq
    assert target.append(active, EventKind.PAUSED, {}).last_seq == last + 1
    assert target.verify_chain() == (True, None)

    target._store.write(lambda db: db.execute("UPDATE events SET data = '{}' WHERE seq = 3"))
    verified = cli("journal", "verify", "--journal", "env:ORCH_JOURNAL_URL", env=env)
    assert verified.returncode == 1 and "BROKEN at seq 3" in verified.stdout, verified.stdout


def test_migrate_refuses_a_tampered_source_and_a_used_target(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    source_path, source = _sqlite_journal_with_history(tmp_path)
    url = postgres.create_database()
    env = {**os.environ, "ORCH_JOURNAL_URL": url}
    actor = source.events()[3].actor
    source._store.write(lambda db: db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 4"))
    refused = cli("journal", "migrate", "--from", source_path, "--to", "env:ORCH_JOURNAL_URL", env=env)
    assert refused.returncode == 2 and "hash chain broken at seq 4" in refused.stderr, refused.stderr
    assert Journal(url).events() == []  # nothing was copied
    source._store.write(lambda db: db.execute("UPDATE events SET actor = ? WHERE seq = 4", (actor,)))
    assert source.verify_chain() == (True, None)
    Journal(url).submit("other", _request(), actor="test")
    again = cli("journal", "migrate", "--from", source_path, "--to", "env:ORCH_JOURNAL_URL", env=env)
    assert again.returncode == 2 and "is not empty" in again.stderr, again.stderr
    assert [e.deployment_id for e in Journal(url).events()] == ["other"]


# ------------------------------------------------------------------------------------------ TLS, secrets
def test_postgres_is_reached_over_tls_only(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    journal = Journal(url)
    assert journal._store.read("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") == [(True,)]
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(postgres.url(url.rsplit("/", 1)[1].split("?")[0], sslmode="disable"))
    with pytest.raises(JournalUnavailable, match="no encryption") as refused:
        Journal(url.replace("sslmode=verify-full", "sslmode=disable"))
    assert postgres.password not in str(refused.value)


def test_the_password_never_shows(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.create_database()
    wrong = url.replace(postgres.password, "Wr0ng-pa55word")
    monkeypatch.setenv("ORCH_JOURNAL_URL", wrong)
    with pytest.raises(JournalUnavailable, match="password authentication failed") as refused:
        Journal("env:ORCH_JOURNAL_URL")
    assert "Wr0ng-pa55word" not in str(refused.value) and "from env:ORCH_JOURNAL_URL" in str(refused.value)
    monkeypatch.setenv("ORCH_JOURNAL_URL", url)
    journal = Journal("env:ORCH_JOURNAL_URL")
    assert postgres.password not in journal.location and journal.location.startswith("postgresql://orch@")
    assert postgres.password not in describe(url)
    monkeypatch.delenv("ORCH_JOURNAL_URL")
    unset = r"journal\.url: the environment variable ORCH_JOURNAL_URL is not set"
    with pytest.raises(ValueError, match=unset):
        Journal("env:ORCH_JOURNAL_URL")


_DROP_JOURNAL_CONNECTIONS = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'deploy-orchestrator'"
)


def test_a_journal_reconnects_after_its_connection_is_dropped(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    journal = Journal(url)
    journal.submit("d1", _request(), actor="test")
    with postgres.admin() as admin:
        dropped = admin.execute(_DROP_JOURNAL_CONNECTIONS).fetchall()
    assert dropped and all(row[0] for row in dropped)
    assert journal.state("d1").deployment_id == "d1"  # read again on a new connection
    journal.append("d1", EventKind.NOTE, {"message": "after"})
    with postgres.admin() as admin:
        admin.execute(_DROP_JOURNAL_CONNECTIONS)
    assert journal.append("d1", EventKind.NOTE, {"message": "again"}).message == "again"
    assert journal.verify_chain() == (True, None)
    assert [e.kind.value for e in journal.events()] == ["submitted", "note", "note"]
