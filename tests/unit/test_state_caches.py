"""The caches on a runner's check path: parsed state files (by stat signature) and journal states (by row)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, field_validator

from adapters.localhost import RACY_S, ParsedFileCache, write_json_atomic
from engine.journal import Journal
from engine.state import EventKind
from tests.unit.test_reconciler import CANARY, World

PARSES: list[int] = []


class Counted(BaseModel):
    value: int

    @field_validator("value")
    @classmethod
    def count(cls, value: int) -> int:
        PARSES.append(value)
        return value


def age(path: Path, seconds: float) -> None:
    """Set the file's modification time ``seconds`` in the past (as if it was written then)."""
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(then, then))


def test_an_unchanged_file_is_parsed_once_and_a_replaced_one_again(tmp_path: Path) -> None:
    path, cache = tmp_path / "state.json", ParsedFileCache(Counted)
    assert cache.read(path) is None
    write_json_atomic(path, '{"value": 1}')
    age(path, 10 * RACY_S)
    PARSES.clear()
    first = cache.read(path)
    assert first is not None and first.value == 1
    assert cache.read(path) is first and PARSES == [1]
    write_json_atomic(path, '{"value": 2}')  # same size; another inode
    second = cache.read(path)
    assert second is not None and second.value == 2


def test_a_file_changed_within_the_racy_window_is_not_trusted(tmp_path: Path) -> None:
    """Rewritten in place, same inode, size and modification time: only a parse done after the racy window
    may be reused, so the freshly written file is parsed again."""
    path = tmp_path / "state.json"
    write_json_atomic(path, '{"value": 1}')
    stamp = os.stat(path).st_mtime_ns
    # The first read happens within the racy window however slowly this test runs: the cache's clock says
    # "now" is the file's modification time.
    cache = ParsedFileCache(Counted, clock=lambda: stamp / 1e9)
    first = cache.read(path)
    assert first is not None and first.value == 1
    path.write_text('{"value": 2}')
    os.utime(path, ns=(stamp, stamp))
    second = cache.read(path)
    assert second is not None and second.value == 2


def test_a_journal_state_is_reused_until_another_process_appends(journal_at: str) -> None:
    world = World(journal_at)
    world.deploy_stable()
    deployment_id = world.submit("2.0.0", CANARY)
    reader = Journal(journal_at)  # its own connection, as another process has
    before = reader.state(deployment_id)
    assert reader.state(deployment_id) is before
    world.journal.append(deployment_id, EventKind.PAUSED, {})
    after = reader.state(deployment_id)
    assert after.paused and not before.paused
    assert after.last_seq > before.last_seq
