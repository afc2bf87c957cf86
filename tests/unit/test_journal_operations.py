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
    """The state parsed before the write lock is used only when the row is still the one it came from."""
    mine, other = _journal(tmp_path), _journal(tmp_path)
    mine.submit("web-1", REQUEST, actor="alice")
    mine.append("web-1", EventKind.ADMITTED, {"runner": "runner-1"})  # known to mine, parsed
    other.append("web-1", EventKind.PAUSED, {"reason": "look first"})  # the row changes behind its back
    new = mine.append("web-1", EventKind.NOTE, {"text": "still here"})
    assert new.paused and new.runner == "runner-1" and new.last_seq == 4
    assert new == other.state("web-1")  # what any reader parses from the row
