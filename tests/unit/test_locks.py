"""engine/locks.py and the journal's writers' queue: an flock with a deadline, held by another process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine.journal_store import WRITERS_SUFFIX, JournalUnavailable, SqliteStore
from engine.locks import flock_within, open_lock_file, unlock

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.readline()  # until the test closes stdin
"""


@contextmanager
def held_elsewhere(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds an exclusive flock on ``path`` until the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0


def test_a_lock_held_by_another_process_is_refused_at_the_deadline_then_taken(tmp_path: Path) -> None:
    path = tmp_path / "some.lock"
    fd = open_lock_file(path)
    try:
        with held_elsewhere(path):
            started = time.monotonic()
            assert flock_within(fd, 0.3) is False
            assert time.monotonic() - started >= 0.3
        assert flock_within(fd, 5.0) is True  # released with the holder
        unlock(fd)
    finally:
        os.close(fd)


def test_open_lock_file_creates_its_folder(tmp_path: Path) -> None:
    fd = open_lock_file(tmp_path / "a" / "b" / "x.lock")
    try:
        assert flock_within(fd, 1.0) is True
    finally:
        os.close(fd)
    assert (tmp_path / "a" / "b" / "x.lock").exists()


def test_journal_writers_queue_on_the_lock_file_and_give_up_at_the_busy_timeout(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "journal.db", busy_timeout_s=0.3)
    try:
        store.write(lambda db: db.execute("SELECT 1"))
        with held_elsewhere(tmp_path / ("journal.db" + WRITERS_SUFFIX)):
            with pytest.raises(JournalUnavailable, match=r"another writer held it for over 0\.3s"):
                store.write(lambda db: db.execute("SELECT 1"))
            assert store.read("SELECT 2") == [(2,)]  # readers do not queue
        assert store.write(lambda db: db.execute("SELECT 3")) == [(3,)]
    finally:
        store.close()
