"""The journal's less travelled operations on a real SQLite file: copying (all or nothing, chain verified),
pruning (never an active deployment, never the newest event), leases, prefixes, pipelines' own chain, and a
row that no longer fits its model named by its seq."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.config import load_config
from engine.journal import Journal, JournalCopyRefused, UnknownDeploymentError, copy_journal
from engine.journal_store import JournalDamaged, describe, resolve_url
from engine.models import Phase
from engine.pipeline_state import PipelineEventKind
from engine.requests import build_request
from engine.state import EventKind
from tests.unit.fakes import FakeClock

REQUEST = build_request(load_config(), {"name": "web", "version": "1.0.0"}, "canary", "development")


def _journal(folder: Path, name: str = "journal.db", clock: FakeClock | None = None) -> Journal:
    return Journal(folder / name, clock=(clock or FakeClock()).now)


def _finished(journal: Journal, deployment_id: str) -> None:
    journal.submit(deployment_id, REQUEST, actor="alice")
    journal.append(deployment_id, EventKind.FINISHED, {"outcome": Phase.SUCCEEDED.value})


def test_a_copy_holds_every_event_deployment_and_record_and_verifies(tmp_path: Path) -> None:
    source, target = _journal(tmp_path, "a.db"), _journal(tmp_path, "b.db")
    _finished(source, "web-1")
    source.put_record("environment", "qa", {"name": "qa"})
    source.append_pipeline_event("p-1", PipelineEventKind.CREATED, {"spec": {}})
    report = copy_journal(source, target)
    assert (report.events, report.deployments, report.records) == (2, 1, 1)
    assert target.chain() == source.chain() and target.verify_chain() == (True, None)
    assert target.pipeline_events("p-1")[0].kind is PipelineEventKind.CREATED
    assert target.state("web-1").phase() is Phase.SUCCEEDED
    with pytest.raises(JournalCopyRefused, match="not empty; nothing was copied"):
        copy_journal(source, target)


def test_a_broken_or_busy_journal_is_not_copied(tmp_path: Path) -> None:
    clock = FakeClock()
    source, target = _journal(tmp_path, "a.db", clock), _journal(tmp_path, "b.db")
    _finished(source, "web-1")
    assert source.acquire_lease("queen", "ray://here", ttl_s=30) is None
    with pytest.raises(JournalCopyRefused, match="in use by an orchestrator"):
        copy_journal(source, target)
    clock.t += 60  # the lease is stale: nobody drives the journal any more
    db = sqlite3.connect(source.path or "")
    db.execute("UPDATE events SET actor = 'mallory' WHERE seq = 1")
    db.commit()
    db.close()
    with pytest.raises(JournalCopyRefused, match="broken at seq 1; nothing was copied"):
        copy_journal(source, target)
    assert target.last_seq() == 0


def test_pruning_keeps_active_deployments_and_the_newest_event(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    _finished(journal, "web-1")
    journal.submit("web-2", REQUEST, actor="alice")
    with pytest.raises(ValueError, match="an active deployment began at 3"):
        journal.prune(4)
    journal.append("web-2", EventKind.FINISHED, {"outcome": Phase.FAILED.value})
    with pytest.raises(ValueError, match="the newest event is 4"):
        journal.prune(5)
    assert journal.prune(3) == 2
    assert [d.deployment_id for d in journal.deployments()] == ["web-2"]
    anchor = journal.chain()[0].prev_hash
    assert journal.verify_chain(anchor) == (True, None)
    assert journal.phase_counts() == {Phase.FAILED: 1}


def test_leases_are_taken_renewed_refused_and_released(tmp_path: Path) -> None:
    clock = FakeClock()
    journal = _journal(tmp_path, clock=clock)
    assert journal.acquire_lease("queen", "a", ttl_s=10) is None
    assert journal.acquire_lease("queen", "b", ttl_s=10) == "a"
    assert journal.acquire_lease("queen", "b", ttl_s=10, alive=lambda owner: False) is None  # a is gone
    journal.release_lease("queen", "a")  # not the holder: nothing happens
    assert (journal.lease("queen") or {})["owner"] == "b"
    journal.release_lease("queen", "b")
    assert journal.lease("queen") is None


def test_the_deployment_that_made_a_revision_live_is_the_newest_succeeded_with_it(tmp_path: Path) -> None:
    journal = _journal(tmp_path)

    def deployed(deployment_id: str, version: str, outcome: Phase) -> None:
        request = build_request(load_config(), {"name": "web", "version": version}, "canary", "development")
        journal.submit(deployment_id, request, actor="alice")
        journal.append(deployment_id, EventKind.FINISHED, {"outcome": outcome.value})

    deployed("web-1", "1.0.0", Phase.SUCCEEDED)
    deployed("web-2", "2.0.0", Phase.FAILED)
    deployed("web-3", "1.0.0", Phase.SUCCEEDED)  # the same revision again, later
    deployed("web-4", "3.0.0", Phase.SUCCEEDED)
    revision = journal.state("web-1").request.artifact.revision
    target = journal.state("web-1").request.target.key
    found = journal.newest_that_made_live(target, revision)
    assert found is not None and found.deployment_id == "web-3"
    failed = journal.state("web-2").request.artifact.revision
    assert journal.newest_that_made_live(target, failed) is None  # it never went live
    assert journal.newest_that_made_live("other.development", revision) is None


def test_deployments_are_found_by_unique_prefix(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    _finished(journal, "web-1a")
    _finished(journal, "web-1b")
    assert journal.find("web-1a").deployment_id == "web-1a"
    with pytest.raises(KeyError, match="ambiguous"):
        journal.find("web-1")
    with pytest.raises(UnknownDeploymentError, match="no deployment 'api'"):
        journal.find("api")
    with pytest.raises(UnknownDeploymentError):
        journal.append("api", EventKind.NOTE, {})
    assert journal.planned_stable_artifact("web-1a") is None
    journal.delete_record("environment", "none")  # deleting what is not there is not an error


def test_the_pipelines_chain_is_verified_on_its_own(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    assert journal.append_pipeline_event("p-1", PipelineEventKind.CREATED, {}) is not None
    assert journal.append_pipeline_event("p-1", PipelineEventKind.CREATED, {}, only_first=True) is None
    journal.append_pipeline_event("p-1", PipelineEventKind.FINISHED, {"phase": "succeeded"})
    assert journal.pipeline_ids() == ["p-1"] and journal.pipeline_ids(unfinished_only=True) == []
    assert journal.verify_pipeline_chain() == (True, None)
    db = sqlite3.connect(journal.path or "")
    db.execute("UPDATE pipeline_events SET data = '{}' WHERE seq = 2")
    db.commit()
    db.close()
    assert journal.verify_pipeline_chain() == (False, 2)


def test_a_row_that_no_longer_fits_its_model_is_named_by_its_seq(tmp_path: Path) -> None:
    journal = _journal(tmp_path)
    _finished(journal, "web-1")
    db = sqlite3.connect(journal.path or "")
    db.execute("UPDATE events SET kind = 'exploded' WHERE seq = 2")
    db.execute("UPDATE events SET data = 'not json' WHERE seq = 1")
    db.commit()
    db.close()
    with pytest.raises(JournalDamaged, match=r"seq 1: its data is not JSON"):
        journal.events("web-1")
    with pytest.raises(JournalDamaged, match=r"seq 2: kind: "):
        journal.events("web-1", after_seq=1)
    assert journal.verify_chain() == (False, 1)


def test_a_journal_location_is_shown_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    assert describe("postgresql://orch:secret@db.example:5432/journal?sslmode=require") == (
        "postgresql://orch@db.example:5432/journal"
    )
    assert describe("/var/lib/orch/journal.db") == "/var/lib/orch/journal.db"
    monkeypatch.setenv("ORCH_TEST_JOURNAL_URL", "postgresql://orch:secret@db.example/journal")
    url, shown = resolve_url("env:ORCH_TEST_JOURNAL_URL")
    assert url.endswith("secret@db.example/journal") and "secret" not in shown and "(from env:" in shown
    monkeypatch.setenv("ORCH_TEST_JOURNAL_URL", "mysql://db.example/journal")
    with pytest.raises(ValueError, match="does not hold a postgresql:// URL"):
        resolve_url("env:ORCH_TEST_JOURNAL_URL")


def test_a_state_just_appended_is_read_without_parsing_until_another_writer_changes_the_row(
    tmp_path: Path,
) -> None:
    """A runner reads its deployment's state after every append: the state it wrote is read back as is,
    and a row changed by another connection (another process) is parsed again, never served stale."""
    mine, other = _journal(tmp_path), _journal(tmp_path)
    mine.submit("web-1", REQUEST, actor="alice")
    written = mine.append("web-1", EventKind.ADMITTED, {"runner": "runner-1"})
    assert mine.state("web-1") is written
    assert mine.state("web-1") == other.state("web-1")  # the same as a parse of the row
    changed = other.append("web-1", EventKind.FINISHED, {"outcome": Phase.SUCCEEDED.value})
    read = mine.state("web-1")
    assert read is not written and read.last_seq == changed.last_seq == written.last_seq + 1
    assert read.phase() is Phase.SUCCEEDED and written.runner == read.runner == "runner-1"


def test_an_append_folds_onto_the_row_as_it_is_when_another_writer_changed_it(tmp_path: Path) -> None:
    """The state last read or written is folded onto only when the row is still the one it came from."""
    mine, other = _journal(tmp_path), _journal(tmp_path)
    mine.submit("web-1", REQUEST, actor="alice")
    mine.append("web-1", EventKind.ADMITTED, {"runner": "runner-1"})  # known to mine, parsed
    other.append("web-1", EventKind.PAUSED, {"reason": "look first"})  # the row changes behind its back
    new = mine.append("web-1", EventKind.NOTE, {"text": "still here"})
    assert new.paused and new.runner == "runner-1" and new.last_seq == 4
    assert new == other.state("web-1")  # what any reader parses from the row


# One event of every kind, in an order a deployment could see them, with the data that changes the most.
EVERY_KIND: list[tuple[EventKind, dict[str, object]]] = [
    (EventKind.ADMITTED, {"runner": "runner-1"}),
    (EventKind.APPROVAL_REQUESTED, {"state": "pending", "message": "waiting for prod-team"}),
    (EventKind.APPROVED, {"state": "approved"}),
    (EventKind.REJECTED, {"state": "rejected", "message": "no"}),
    (EventKind.APPROVAL_EXPIRED, {"state": "expired"}),
    (EventKind.ARTIFACT_VERIFIED, {"checks": [], "ran": True}),
    (EventKind.COMPLIANCE_CHECKED, {"passed": True}),
    (
        EventKind.PLANNED,
        {
            "plan": [
                {"kind": "deploy", "replicas": 1},
                {"kind": "set_weight", "weight": 50},
                {"kind": "analyze", "duration_ms": 1000},
                {"kind": "set_weight", "weight": 100},
                {"kind": "remove_stable"},
            ],
            "stable_revision": "0-9-0",
            "stable_artifact": {"version": "0.9.0"},
            "candidate_revision": "1-0-0",
            "weights": {"0-9-0": 100},
            "address": "http://127.0.0.1:1",
        },
    ),
    (EventKind.STEP_STARTED, {"index": 0, "baseline": {"0-9-0": {"requests": 3}}}),
    (EventKind.STEP_COMPLETED, {"index": 0}),
    (EventKind.WEIGHTS_SET, {"weights": {"0-9-0": 50, "1-0-0": 50}, "address": "http://127.0.0.1:2"}),
    (EventKind.WINDOW_RESTARTED, {"consecutive_failures": 1, "baseline": {"1-0-0": {"requests": 1}}}),
    (EventKind.WINDOW_EXTENDED, {"extensions": 1}),
    (EventKind.MEASUREMENT, {"candidate": {"requests": 5}}),
    (EventKind.PAUSED, {"reason": "look"}),
    (EventKind.RESUMED, {}),
    (EventKind.HOOK, {"outcome": "held", "type": "pre-promotion", "hook": "qa", "answer": "later"}),
    (EventKind.DRIFT, {"candidate_restart": True}),
    (EventKind.PLATFORM_FAULT, {"reason": "router down"}),
    (EventKind.PLATFORM_RESTORED, {"restored": "back", "fresh_window": True, "baseline": {"x": 1}}),
    (EventKind.NOTE, {"message": "still here"}),
    (EventKind.AUDIT, {"action": "looked"}),
    (EventKind.ENVIRONMENT_STATUS, {"healthy": True}),
    (EventKind.PROMOTE_REQUESTED, {"full": True}),
    (EventKind.ROLLBACK_REQUESTED, {"trigger": "manual", "reason": "wrong build", "by": "alice"}),
    (EventKind.ROLLBACK_STARTED, {"trigger": "manual", "reason": "wrong build", "by": "alice"}),
    (EventKind.FINISHED, {"outcome": Phase.ROLLED_BACK.value, "message": "undone", "weights": {"a": 100}}),
]


def test_the_state_folded_on_is_left_as_it_was_by_an_event_of_every_kind(tmp_path: Path) -> None:
    """An append folds onto the state readers were handed (the one last read or written) and must leave it
    as it was: each of them still equals its row, and the new state equals its row as another connection
    parses it."""
    assert {kind for kind, _ in EVERY_KIND} | {EventKind.SUBMITTED} == set(EventKind)
    journal, reader = _journal(tmp_path), _journal(tmp_path)
    journal.submit("web-1", REQUEST, actor="alice")
    handed_out = [journal.state("web-1")]
    rows = [handed_out[0].model_dump_json()]
    for kind, data in EVERY_KIND:
        new = journal.append("web-1", kind, dict(data))
        assert new == reader.state("web-1"), kind  # the row it wrote, parsed by another connection
        for state, row in zip(handed_out, rows, strict=True):
            assert state.model_dump_json() == row, f"{kind.value} changed a state handed out before it"
        handed_out.append(journal.state("web-1"))
        rows.append(handed_out[-1].model_dump_json())
    assert handed_out[-1].phase() is Phase.ROLLED_BACK and handed_out[-1].weights == {"a": 100}
    assert handed_out[-1].versions == {"1-0-0": "1.0.0", "0-9-0": "0.9.0"}
