"""Where the journal's rows live: one small store protocol, SQLite here (the embedded default, one file in WAL
mode) and PostgreSQL in ``adapters/postgres_journal.py`` (for a cluster of several nodes).

The journal (``engine/journal.py``) owns every SQL statement and writes them in the subset both databases
speak: ``?`` placeholders, ``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``. A store only runs them: it
connects, creates the tables in its own dialect, and runs each write as one transaction serialised with every
other writer of the same journal, in any process on any node: the hash chain needs a total order of events.
SQLite gets that from ``BEGIN IMMEDIATE`` (one writer per file; writers queue on a lock file first);
PostgreSQL from a transaction-level advisory lock taken first in every write.

A journal location is a path (SQLite), a ``postgresql://`` URL, or a reference to one (``env:NAME`` or
``file:/path``, resolved in each process that opens the journal, so the password travels in neither the
configuration file nor an actor's arguments). ``describe`` shows a location without its password.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.locks import flock_within, open_lock_file, unlock
from engine.secrets import REFERENCE, resolve

T = TypeVar("T")
Row = tuple[Any, ...]
POSTGRES_SCHEMES = ("postgresql", "postgres")
WRITERS_SUFFIX = ".writers"  # the SQLite writers' lock file, beside the database

# The tables in every store; each store fills in its own types for the sequence, times and counts.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq {serial},
    deployment_id TEXT NOT NULL,
    at {double} NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_deployment ON events (deployment_id, seq);
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    target_key TEXT NOT NULL,
    submitted_seq {bigint} NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_active ON deployments (active, submitted_seq);
CREATE INDEX IF NOT EXISTS deployments_by_target ON deployments (target_key, submitted_seq);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS pipeline_events (
    seq {serial},
    pipeline_id TEXT NOT NULL,
    at {double} NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_events_by_id ON pipeline_events (pipeline_id, seq)
"""
SQLITE_SCHEMA = SCHEMA.format(serial="INTEGER PRIMARY KEY AUTOINCREMENT", double="REAL", bigint="INTEGER")


class JournalUnavailable(RuntimeError):
    """The journal's database cannot be reached or refused the request; the message names the location
    (never its password) and the cause."""


class StoreCursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one statement inside the current write transaction; its rows (none for most writes)."""
        ...

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """One statement for each of ``rows`` (batched by the driver), inside the current transaction."""
        ...


class JournalStore(Protocol):
    """What the journal needs from a database."""

    location: str  # where the rows live, safe to show (no password)

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One statement outside any write transaction (it sees every committed write)."""
        ...

    def write(self, work: Callable[[StoreCursor], T]) -> T:
        """Run ``work`` in one transaction, serialised with every other writer of this journal. ``work`` may
        run a second time when the connection was lost before anything was committed: it must only use the
        cursor (no other side effects)."""
        ...

    def restart_sequence(self, cursor: StoreCursor) -> None:
        """After events were inserted with their own ``seq`` (a migration): new events follow the highest."""
        ...

    def close(self) -> None: ...


def is_postgres(location: str | Path) -> bool:
    text = str(location)
    return text.split("://", 1)[0] in POSTGRES_SCHEMES or bool(REFERENCE.match(text))


def describe(location: str | Path) -> str:
    """A location as it may be shown: a URL without its password; a reference as written."""
    text = str(location)
    if text.split("://", 1)[0] not in POSTGRES_SCHEMES:
        return text
    parts = urllib.parse.urlsplit(text)
    host = parts.hostname or ""
    netloc = (
        (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def resolve_url(location: str) -> tuple[str, str]:
    """(the PostgreSQL URL to connect with, what may be shown of it) for a URL or a reference to one."""
    if not REFERENCE.match(location):
        return location, describe(location)
    url = resolve("url", location, section="journal")
    if url.split("://", 1)[0] not in POSTGRES_SCHEMES:
        raise ValueError(f"journal.url: {location} does not hold a postgresql:// URL")
    return url, f"{describe(url)} (from {location})"


def open_store(location: str | Path, busy_timeout_s: float = 30.0) -> JournalStore:
    """The store for a location: PostgreSQL for URLs and references, else a SQLite file at that path."""
    if is_postgres(location):
        # The one place the journal reaches an adapter: the PostgreSQL client is an external system's.
        from adapters.postgres_journal import PostgresStore

        url, shown = resolve_url(str(location))
        return PostgresStore(url, shown, lock_timeout_s=busy_timeout_s)
    return SqliteStore(Path(location).expanduser(), busy_timeout_s)


class _SqliteCursor:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, [tuple(row) for row in rows])


class JournalDamaged(JournalUnavailable):
    """The journal's file is damaged (cut short, overwritten): SQLite cannot read it as a database. What was
    committed before the damage can still be read with ``engine.journal_salvage.salvage``."""


def _lenient_text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def _sqlite_problem(path: Path, error: sqlite3.Error) -> JournalUnavailable:
    """SQLite's error as ours, naming the file (a damaged file says how to get its events back)."""
    text = str(error)[:200]  # SQLite may quote a whole row
    if isinstance(error, sqlite3.DatabaseError) and any(
        sign in text for sign in ("malformed", "not a database", "corrupt")
    ):
        return JournalDamaged(
            f"journal {path}: the file is damaged ({text}); nothing was written. Keep a copy of it; "
            "`python orchestrator.py journal salvage` reads back every event committed before the damage"
        )
    return JournalUnavailable(f"journal {path}: {text}")


def _writers_lock(path: Path) -> int:
    """A descriptor of the writers' lock file, or -1 where it cannot be created (a folder this process may
    not write to): writers then wait in SQLite's busy handler only, as they did before the file existed."""
    try:
        return open_lock_file(path.with_name(path.name + WRITERS_SUFFIX))
    except OSError:
        return -1


class SqliteStore:
    """One file in WAL mode; ``BEGIN IMMEDIATE`` makes a writer wait (up to ``busy_timeout_s``) for
    another. SQLite's errors come out as JournalUnavailable (JournalDamaged for a damaged file).

    Writers queue on a lock file beside the database first (``<file>.writers``, an flock taken within 2 ms
    of its release, see engine/locks.py), so ``BEGIN IMMEDIATE`` seldom meets a held lock: SQLite's busy
    handler sleeps 1, 2, 5, 10 and up to 100 ms between tries, and deployments that start together made
    each other wait tens of milliseconds for transactions of one or two. The busy timeout stays for any
    writer that does not take the file lock."""

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.location = str(path)
        self.busy_timeout_s = busy_timeout_s
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._writers = _writers_lock(path)
        try:
            self._db = sqlite3.connect(
                path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            # Bytes that are not UTF-8 (a damaged row) read as U+FFFD: the row's hash then names it, and
            # the rows around it stay readable (SQLite's own decoding fails the whole query).
            self._db.text_factory = _lenient_text
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SQLITE_SCHEMA)
        except sqlite3.Error as error:
            if self._writers >= 0:
                os.close(self._writers)
            raise _sqlite_problem(path, error) from None

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as error:
                raise _sqlite_problem(self.path, error) from None

    def write(self, work: Callable[[StoreCursor], T]) -> T:
        with self._lock:
            queued = self._writers >= 0
            if queued and not flock_within(self._writers, self.busy_timeout_s):
                waited = f"{self.busy_timeout_s:g}s"
                raise JournalUnavailable(f"journal {self.path}: another writer held it for over {waited}")
            try:
                return self._write(work)
            except sqlite3.Error as error:
                raise _sqlite_problem(self.path, error) from None
            finally:
                if queued:
                    unlock(self._writers)

    def _write(self, work: Callable[[StoreCursor], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(_SqliteCursor(self._db))
        except BaseException:
            if self._db.in_transaction:  # a damaged file may already have ended it
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    def restart_sequence(self, cursor: StoreCursor) -> None:
        """AUTOINCREMENT already follows the highest ``seq`` inserted."""

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._writers >= 0:
                os.close(self._writers)
                self._writers = -1
