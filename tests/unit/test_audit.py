"""The audit trail without Ray: signed checkpoints, and what verification catches (an edited row, a cut tail,
a rewritten chain, an altered checkpoint store), retention that keeps the trail verifiable, the export."""

from __future__ import annotations

import io
import itertools
import json
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from engine.audit import (
    AuditTrail,
    Checkpointer,
    CheckpointStore,
    action_of,
    config_fingerprint,
    export_jsonl,
    load_or_create_key,
    prune_expired,
    public_key_path,
    record_configuration,
    verify_stored,
    verify_trail,
)
from engine.journal import GENESIS, Journal, _event_hash
from engine.models import DeploymentRequest, PlatformConfig, Strategy
from engine.state import EventKind

DAY = 86_400.0


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Journal:
    return Journal(tmp_path / "journal.db", clock=clock)


@pytest.fixture
def signer(tmp_path: Path, journal: Journal, clock: Clock) -> Checkpointer:
    store = CheckpointStore(tmp_path / "audit" / "checkpoints.jsonl")
    return Checkpointer(journal, tmp_path / "audit" / "key.pem", store, every=5, interval_s=60, clock=clock)


def request(environment: str = "development", service: str = "web") -> DeploymentRequest:
    return DeploymentRequest(
        artifact={"name": service, "version": "1.0.0"},
        strategy=Strategy(type="rolling"),
        environment=environment,
        platform=PlatformConfig(type="local"),
        requested_by="alice",
    )


def deploy(journal: Journal, deployment_id: str, environment: str = "development") -> None:
    journal.submit(deployment_id, request(environment), actor="alice")
    journal.append(deployment_id, EventKind.WEIGHTS_SET, {"weights": {"1-0-0": 100}}, actor="runner")
    journal.append(deployment_id, EventKind.FINISHED, {"outcome": "succeeded"}, actor="runner")


def verify(journal: Journal, signer: Checkpointer) -> object:
    return verify_trail(journal, signer.store.all(), signer.key().public_key())


def sql(journal: Journal, statement: str, *params: object) -> None:
    """Tamper with the file as an attacker would: another connection, no journal code."""
    with sqlite3.connect(journal.path) as db:
        db.execute(statement, params)


# --------------------------------------------------------------------------------------------- signing
def test_the_key_is_made_on_first_use_owner_only_and_its_public_half_recorded(
    signer: Checkpointer, journal: Journal, tmp_path: Path
) -> None:
    deploy(journal, "d1")
    checkpoint = signer.checkpoint("manual")
    assert checkpoint is not None
    key_file = tmp_path / "audit" / "key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    public = public_key_path(key_file).read_text()
    recorded = [e.data for e in journal.events() if e.data.get("action") == "signing_key_created"]
    assert recorded[0]["public_key"] == public
    assert load_or_create_key(key_file)[1] is False  # the same key again, not a new one
    assert checkpoint.valid(signer.key().public_key())
    assert not checkpoint.model_copy(update={"seq": checkpoint.seq + 1}).valid(signer.key().public_key())


def test_checkpoints_come_every_n_events_or_t_seconds_and_not_for_their_own_entry(
    signer: Checkpointer, journal: Journal, clock: Clock
) -> None:
    trail = AuditTrail(journal)
    trail.record("note", "alice")
    assert signer.maybe() is None  # 1 event, 0 s
    for _ in range(4):
        trail.record("note", "alice")
    first = signer.maybe()
    assert first is not None and first.seq == journal.head()[0]  # type: ignore[index]
    trail.record("note", "alice")
    assert signer.maybe() is None  # 1 event, 0 s
    clock.now += 61
    second = signer.maybe()
    assert second is not None and second.seq > first.seq
    clock.now += 3600
    assert signer.maybe() is None  # nothing new but its own entry
    assert [c.seq for c in signer.store.all()] == [first.seq, second.seq]


def test_an_intact_trail_verifies_up_to_the_last_checkpoint_and_names_the_unsigned_tail(
    signer: Checkpointer, journal: Journal
) -> None:
    deploy(journal, "d1")
    checkpoint = signer.checkpoint("manual")
    deploy(journal, "d2")
    result = verify(journal, signer)
    assert result.ok, result  # type: ignore[attr-defined]
    assert result.signed_seq == checkpoint.seq and result.unsigned == 3  # type: ignore[attr-defined,union-attr]
    assert "3 entries after it are intact but not signed yet" in result.summary()  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------- tampering
def test_an_edited_row_is_named(signer: Checkpointer, journal: Journal) -> None:
    deploy(journal, "d1")
    signer.checkpoint("manual")
    sql(journal, "UPDATE events SET actor = 'mallory' WHERE seq = 2")
    result = verify(journal, signer)
    assert not result.ok and result.first_bad_seq == 2  # type: ignore[attr-defined]
    assert "seq 2 was edited" in result.summary()  # type: ignore[attr-defined]


def test_a_cut_tail_is_caught_by_the_checkpoint(signer: Checkpointer, journal: Journal) -> None:
    deploy(journal, "d1")
    deploy(journal, "d2")
    checkpoint = signer.checkpoint("shutdown")
    assert checkpoint is not None
    sql(journal, "DELETE FROM events WHERE seq > 3")
    assert journal.verify_chain() == (True, None)  # the chain alone cannot tell
    result = verify(journal, signer)
    assert not result.ok and "the tail was cut" in result.summary()  # type: ignore[attr-defined]
    assert f"covers seq {checkpoint.seq}" in result.summary()  # type: ignore[attr-defined]


def test_a_rewritten_chain_is_caught_by_the_checkpoint(signer: Checkpointer, journal: Journal) -> None:
    deploy(journal, "d1")
    checkpoint = signer.checkpoint("periodic")
    deploy(journal, "d2")
    # The attacker edits seq 2 and recomputes every later hash: the chain is consistent again.
    rows = journal.chain()
    prev = GENESIS
    with sqlite3.connect(journal.path) as db:
        for row in rows:
            actor = "mallory" if row.seq == 2 else row.actor
            digest = _event_hash(prev, row.subject, row.at, row.kind, actor, row.data)
            db.execute(
                "UPDATE events SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (actor, prev, digest, row.seq),
            )
            prev = digest
    assert journal.verify_chain() == (True, None)
    result = verify(journal, signer)
    assert not result.ok and result.first_bad_seq == checkpoint.seq  # type: ignore[attr-defined,union-attr]
    assert "the chain was rewritten" in result.summary()  # type: ignore[attr-defined]


def test_a_removed_middle_row_is_named(signer: Checkpointer, journal: Journal) -> None:
    deploy(journal, "d1")
    sql(journal, "DELETE FROM events WHERE seq = 2")
    result = verify(journal, signer)
    assert not result.ok and result.first_bad_seq == 3  # type: ignore[attr-defined]
    assert "does not follow seq 1" in result.summary()  # type: ignore[attr-defined]


def test_an_altered_or_truncated_checkpoint_store_is_caught(
    signer: Checkpointer, journal: Journal, tmp_path: Path
) -> None:
    deploy(journal, "d1")
    signer.checkpoint("manual")
    store = tmp_path / "audit" / "checkpoints.jsonl"
    line = json.loads(store.read_text())
    forged = {**line, "hash": "f" * 64}
    store.write_text(json.dumps(forged) + "\n")
    assert "no valid signature" in verify(journal, signer).summary()  # type: ignore[attr-defined]
    store.write_text("")
    result = verify(journal, signer)
    assert not result.ok and "that the checkpoint store lacks" in result.summary()  # type: ignore[attr-defined]


def test_another_key_does_not_verify(signer: Checkpointer, journal: Journal, tmp_path: Path) -> None:
    deploy(journal, "d1")
    signer.checkpoint("manual")
    other, _ = load_or_create_key(tmp_path / "other" / "key.pem")
    result = verify_trail(journal, signer.store.all(), other.public_key())
    assert not result.ok and "no valid signature" in result.summary()


# --------------------------------------------------------------------------------------------- retention
def test_prune_removes_expired_entries_and_keeps_the_rest_verifiable(
    signer: Checkpointer, journal: Journal, clock: Clock
) -> None:
    deploy(journal, "old-dev", "development")  # seq 1-3
    clock.now += 10 * DAY
    deploy(journal, "newer-dev", "development")  # seq 4-6
    signer.checkpoint("manual")  # seq 7
    clock.now += 360 * DAY  # old-dev is 370 days old, newer-dev 360: only the first expires at 365
    result = prune_expired(journal, signer, lambda env: 365, actor="root")
    assert result.removed == 3 and result.before_seq == 4
    assert journal.chain()[0].seq == 4
    with pytest.raises(KeyError):
        journal.state("old-dev")  # its snapshot went with its events
    assert journal.state("newer-dev").outcome is not None
    check = verify(journal, signer)
    assert check.ok and check.anchor_seq == 3, check  # type: ignore[attr-defined]
    # Removing more from the front is still caught: the first entry no longer continues from the anchor.
    sql(journal, "DELETE FROM events WHERE seq = 4")
    broken = verify(journal, signer)
    assert not broken.ok and "pruning anchor (seq 3)" in broken.summary()  # type: ignore[attr-defined]


def test_retention_is_per_environment_and_a_minimum(
    signer: Checkpointer, journal: Journal, clock: Clock
) -> None:
    deploy(journal, "dev-1", "development")  # seq 1-3, kept 30 days
    deploy(journal, "prod-1", "production")  # seq 4-6, kept 2555 days
    deploy(journal, "dev-2", "development")  # seq 7-9
    clock.now += 40 * DAY
    days = {"development": 30, "production": 2555}
    result = prune_expired(journal, signer, lambda env: days.get(env or "", 2555), actor="root")
    assert result.before_seq == 4  # dev-2 is expired too but stays behind prod-1: the chain stays whole
    assert verify(journal, signer).ok  # type: ignore[attr-defined]


def test_prune_never_touches_an_active_deployment_and_refuses_a_broken_trail(
    signer: Checkpointer, journal: Journal, clock: Clock
) -> None:
    journal.submit("running", request(), actor="alice")
    deploy(journal, "done")
    clock.now += 400 * DAY
    assert prune_expired(journal, signer, lambda env: 1, actor="root").removed == 0
    sql(journal, "UPDATE events SET actor = 'x' WHERE seq = 2")
    with pytest.raises(ValueError, match="does not verify"):
        prune_expired(journal, signer, lambda env: 1, actor="root")


def test_a_dry_run_changes_nothing(signer: Checkpointer, journal: Journal, clock: Clock) -> None:
    deploy(journal, "d1")
    deploy(journal, "d2")
    clock.now += 400 * DAY
    before = journal.chain()
    result = prune_expired(journal, signer, lambda env: 1, actor="root", dry_run=True)
    assert result.dry_run and result.removed == 5 and journal.chain() == before


# --------------------------------------------------------------------------------------------- export
def test_export_gives_who_what_when_why_and_the_chain_fields(journal: Journal) -> None:
    deploy(journal, "d1", "staging")
    journal.append("d1", EventKind.NOTE, {"message": "x"})
    trail = AuditTrail(journal)
    trail.record("role_refused", "zoe", reason="zoe lacks the deployer role", environment="prod")
    out = io.StringIO()
    assert export_jsonl(journal, out) == 5
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["action"] for line in lines] == [
        "submitted",
        "traffic_shifted",
        "succeeded",
        "note",
        "role_refused",
    ]
    assert lines[0]["actor"] == "alice" and lines[0]["environment"] == "staging"
    assert lines[1]["reason"] == "weights 1-0-0=100%"
    assert lines[4]["environment"] == "prod" and lines[4]["reason"] == "zoe lacks the deployer role"
    assert lines[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    assert lines[0]["time"].endswith("+00:00")


def test_finished_events_are_named_by_their_outcome() -> None:
    assert action_of("finished", {"outcome": "rolled_back"}) == "rolled_back"
    assert action_of("step_completed", {}) == "step_applied"
    assert action_of("audit", {"action": "configuration_changed"}) == "configuration_changed"


# --------------------------------------------------------------------------------------------- configuration
def test_a_configuration_change_is_recorded_once_per_version(journal: Journal, tmp_path: Path) -> None:
    config = tmp_path / "enterprise_config.yaml"
    config.write_text("namespace: a\n")
    assert record_configuration(journal, config, "queen") == "configuration_recorded"
    assert record_configuration(journal, config, "queen") is None
    config.write_text("namespace: b\n")
    assert record_configuration(journal, config, "queen") == "configuration_changed"
    changes = [e.data for e in journal.events() if e.kind is EventKind.AUDIT]
    assert changes[1]["previous_sha256"] == changes[0]["sha256"] != changes[1]["sha256"]


def test_the_fingerprint_names_the_git_commit_in_a_checkout(tmp_path: Path) -> None:
    config = tmp_path / "enterprise_config.yaml"
    config.write_text("namespace: a\n")
    assert config_fingerprint(config)["git_commit"] is None  # not a checkout: the content hash alone
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    for command in (["init", "-q"], ["add", config.name], ["commit", "-qm", "config"]):
        subprocess.run([*git, *command], check=True, timeout=30)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    fingerprint = config_fingerprint(config)
    assert fingerprint["git_commit"] == head.strip() and fingerprint["git_dirty"] is False
    config.write_text("namespace: b\n")
    assert config_fingerprint(config)["git_dirty"] is True


def test_a_checkpoint_being_written_is_not_seen_half_written(
    signer: Checkpointer, journal: Journal, tmp_path: Path
) -> None:
    """The journal entry is written, then the signature: a reader in between waits for the second."""
    deploy(journal, "d1")
    public = signer.key().public_key()
    entry_written, reader_done = threading.Event(), threading.Event()
    original = signer.sign

    def slow_sign(*args: object, **kwargs: object) -> object:
        entry_written.set()
        reader_done.wait(0.5)  # the reader runs now; it must block on the store's lock
        return original(*args, **kwargs)  # type: ignore[arg-type]

    signer.sign = slow_sign  # type: ignore[method-assign,assignment]
    writer = threading.Thread(target=signer.checkpoint, args=("manual",))
    writer.start()
    assert entry_written.wait(10)
    unlocked = verify_trail(journal, signer.store.all(), public)  # what a reader without the lock sees now
    assert not unlocked.ok and "that the checkpoint store lacks" in unlocked.summary()
    result = verify_stored(journal, signer.store, public)
    reader_done.set()
    writer.join(10)
    assert result.ok, result.summary()
    assert result.signed_seq == journal.head()[0]  # type: ignore[index]


def test_a_checkpoint_interrupted_between_its_two_writes_is_signed_late_and_says_so(
    signer: Checkpointer, journal: Journal, tmp_path: Path
) -> None:
    deploy(journal, "d1")
    signer.checkpoint("manual")
    deploy(journal, "d2")
    AuditTrail(journal).record("checkpoint", "orchestrator", reason="periodic")  # then the signer died
    broken = verify(journal, signer)
    assert not broken.ok and "that the checkpoint store lacks" in broken.summary()  # type: ignore[attr-defined]

    restarted = Checkpointer(
        journal, signer.key_path, signer.store, every=5, interval_s=60, clock=signer.clock
    )
    deploy(journal, "d3")
    assert restarted.checkpoint("periodic") is not None
    result = verify(journal, restarted)
    assert result.ok, result.summary()  # type: ignore[attr-defined]
    assert result.late == 1 and "1 checkpoint(s) signed late" in result.summary()  # type: ignore[attr-defined]
    late = [e.data for e in journal.events() if e.data.get("action") == "checkpoint_signed_late"]
    assert len(late) == 1 and "stopped between" in late[0]["reason"]


def test_two_unsigned_checkpoint_entries_stay_broken_after_a_restart(
    signer: Checkpointer, journal: Journal
) -> None:
    """A store whose last two signatures were removed is not a crash: only the last entry is signed late."""
    deploy(journal, "d1")
    signer.checkpoint("manual")
    for name in ("d2", "d3"):
        deploy(journal, name)
        AuditTrail(journal).record("checkpoint", "orchestrator", reason="periodic")
    restarted = Checkpointer(
        journal, signer.key_path, signer.store, every=5, interval_s=60, clock=signer.clock
    )
    deploy(journal, "d4")
    restarted.checkpoint("periodic")
    result = verify(journal, restarted)
    assert not result.ok and "that the checkpoint store lacks" in result.summary()  # type: ignore[attr-defined]
