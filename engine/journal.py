"""The journal: an append-only, hash-chained event log per deployment plus a snapshot of its folded state.

SQLite in WAL mode, one file. It is the source of truth: write the intent before acting and the outcome after.
Several processes (queen, runners, drivers reading history) share the file; each append folds the event into
the snapshot inside one ``BEGIN IMMEDIATE`` transaction, so readers never see one without the other. Every
event carries the SHA-256 of the previous event and its own content, so editing or deleting a row is detected
by ``verify_chain``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from engine.models import Artifact, DeploymentRequest, Phase
from engine.pipeline_state import PipelineEvent, PipelineEventKind
from engine.state import DeploymentState, Event, EventKind, fold

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id TEXT NOT NULL,
    at REAL NOT NULL,
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
    submitted_seq INTEGER NOT NULL,
    phase TEXT NOT NULL,
    active INTEGER NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deployments_active ON deployments (active, submitted_seq);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS pipeline_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pipeline_events_by_id ON pipeline_events (pipeline_id, seq);
"""
GENESIS = "0" * 64
PARSED_STATES = 64  # states kept parsed per journal connection (by deployment), while their row is unchanged


class UnknownDeploymentError(KeyError):
    def __init__(self, deployment_id: str) -> None:
        super().__init__(f"no deployment '{deployment_id}' in the journal")
        self.deployment_id = deployment_id

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RecordEvent:
    """An event appended with a record change (``Journal.update_record``): ``data(before, after)`` makes
    its data from the record before and after the change, or returns None when there is nothing to say."""

    deployment_id: str
    kind: EventKind
    actor: str
    data: Callable[[dict[str, Any] | None, dict[str, Any]], dict[str, Any] | None]


def _event_hash(prev: str, deployment_id: str, at: float, kind: str, actor: str, data: str) -> str:
    payload = json.dumps([prev, deployment_id, repr(at), kind, actor, data], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class ChainRow(NamedTuple):
    """One event as stored, with the fields its hash covers (what verifiers and exports need)."""

    seq: int
    subject: str  # the deployment id, or what an audit entry is about
    at: float
    kind: str
    actor: str
    data: str  # the canonical JSON the hash covers
    prev_hash: str
    hash: str

    def recomputed_hash(self) -> str:
        return _event_hash(self.prev_hash, self.subject, self.at, self.kind, self.actor, self.data)


def first_broken(rows: Iterable[ChainRow], prev: str = GENESIS) -> ChainRow | None:
    """The first row that does not follow ``prev`` or whose content does not match its hash, or None."""
    for row in rows:
        if row.prev_hash != prev or row.recomputed_hash() != row.hash:
            return row
        prev = row.hash
    return None


class Journal:
    def __init__(
        self, path: str | Path, busy_timeout_s: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path).expanduser()
        self._now = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._parsed: dict[str, tuple[str, DeploymentState]] = {}
        self._db = sqlite3.connect(
            self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---------------------------------------------------------------------------------- writing
    def submit(self, deployment_id: str, request: DeploymentRequest, actor: str) -> DeploymentState:
        """Record a new deployment; submitting the same id twice returns the first one (idempotent)."""
        now = self._now()
        with self._transaction() as db:
            row = db.execute(
                "SELECT snapshot FROM deployments WHERE deployment_id = ?", (deployment_id,)
            ).fetchone()
            if row is not None:
                return DeploymentState.model_validate_json(row[0])
            data = {"request": request.model_dump(mode="json", by_alias=True)}
            seq = self._insert(db, deployment_id, now, EventKind.SUBMITTED, actor, data)
            state = DeploymentState(
                deployment_id=deployment_id, request=request, submitted_at=now, updated_at=now, last_seq=seq
            )
            db.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, 1, ?)",
                (deployment_id, request.target.key, seq, state.phase().value, state.model_dump_json()),
            )
            return state

    def append(
        self, deployment_id: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> DeploymentState:
        """Append one event and fold it into the snapshot, atomically. Returns the new state."""
        with self._transaction() as db:
            return self._append_in(db, deployment_id, kind, data or {}, actor)

    def _append_in(
        self, db: sqlite3.Connection, deployment_id: str, kind: EventKind, data: dict[str, Any], actor: str
    ) -> DeploymentState:
        state = self._snapshot(db, deployment_id)
        now = max(self._now(), state.updated_at)
        seq = self._insert(db, deployment_id, now, kind, actor, data)
        event = Event(seq=seq, deployment_id=deployment_id, kind=kind, at=now, actor=actor, data=data)
        new = fold(state, event, in_place=True)  # parsed just now, held by nobody else
        db.execute(
            "UPDATE deployments SET phase = ?, active = ?, snapshot = ? WHERE deployment_id = ?",
            (new.phase().value, int(new.active), new.model_dump_json(), deployment_id),
        )
        return new

    def append_event(
        self, subject: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> int:
        """Append one chained event that belongs to no deployment's state (audit entries: refusals, tokens,
        configuration changes, checkpoints). Returns its sequence number."""
        with self._transaction() as db:
            return self._insert(db, subject, self._now(), kind, actor, data or {})

    def _insert(
        self,
        db: sqlite3.Connection,
        deployment_id: str,
        at: float,
        kind: EventKind | PipelineEventKind,
        actor: str,
        data: dict[str, Any],
        stream: tuple[str, str] = ("events", "deployment_id"),
    ) -> int:
        """Append to a hash-chained stream: (table, id column) of deployments' or pipelines' events."""
        table, key = stream
        last = db.execute(f"SELECT hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
        prev = last[0] if last else GENESIS
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
        digest = _event_hash(prev, deployment_id, at, kind.value, actor, body)
        cursor = db.execute(
            f"INSERT INTO {table} ({key}, at, kind, actor, data, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (deployment_id, at, kind.value, actor, body, prev, digest),
        )
        if cursor.lastrowid is None:
            raise RuntimeError("the journal did not return the new event's sequence number")
        return cursor.lastrowid

    # ---------------------------------------------------------------------------------- reading
    def _snapshot_row(self, db: sqlite3.Connection, deployment_id: str) -> str:
        row = db.execute(
            "SELECT snapshot FROM deployments WHERE deployment_id = ?", (deployment_id,)
        ).fetchone()
        if row is None:
            raise UnknownDeploymentError(deployment_id)
        return str(row[0])

    def _snapshot(self, db: sqlite3.Connection, deployment_id: str) -> DeploymentState:
        """A fresh parse (the caller may change it)."""
        return DeploymentState.model_validate_json(self._snapshot_row(db, deployment_id))

    def state(self, deployment_id: str) -> DeploymentState:
        """The deployment's folded state. Shared while unchanged (a runner reads it at every check, and
        parsing it costs far more than reading it): do not modify it."""
        with self._lock:
            return self._parse(deployment_id, self._snapshot_row(self._db, deployment_id))

    def _parse(self, deployment_id: str, snapshot: str) -> DeploymentState:
        """The state of a snapshot row, parsed again only when the row changed (call under ``_lock``)."""
        cached = self._parsed.get(deployment_id)
        if cached is not None and cached[0] == snapshot:
            return cached[1]
        state = DeploymentState.model_validate_json(snapshot)
        if len(self._parsed) >= PARSED_STATES:
            self._parsed.clear()
        self._parsed[deployment_id] = (snapshot, state)
        return state

    def find(self, prefix: str) -> DeploymentState:
        """A deployment by id or unique id prefix (as the CLI accepts)."""
        with self._lock:
            exact = self._db.execute(
                "SELECT snapshot FROM deployments WHERE deployment_id = ?", (prefix,)
            ).fetchone()
            if exact is not None:
                return DeploymentState.model_validate_json(exact[0])
            rows = self._db.execute(
                "SELECT snapshot FROM deployments WHERE deployment_id LIKE ? LIMIT 2", (prefix + "%",)
            ).fetchall()
        if len(rows) != 1:
            raise UnknownDeploymentError(prefix) if not rows else KeyError(f"'{prefix}' is ambiguous")
        return DeploymentState.model_validate_json(rows[0][0])

    def deployments(
        self, active_only: bool = False, limit: int = 1000, target_key: str | None = None
    ) -> list[DeploymentState]:
        """Deployments in submission order (oldest first); the newest ``limit`` of them."""
        query = "SELECT deployment_id, snapshot FROM deployments"
        query += " WHERE (? = 0 OR active = 1) AND (? IS NULL OR target_key = ?)"
        query += " ORDER BY submitted_seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (int(active_only), target_key, target_key, limit)).fetchall()
            if active_only:  # the queen reads these at every admission: kept parsed while unchanged
                return [self._parse(r[0], r[1]) for r in reversed(rows)]
        return [DeploymentState.model_validate_json(r[1]) for r in reversed(rows)]

    def events(self, deployment_id: str | None = None, after_seq: int = 0) -> list[Event]:
        query = "SELECT seq, deployment_id, at, kind, actor, data, hash FROM events WHERE seq > ?"
        params: tuple[Any, ...] = (after_seq,)
        if deployment_id is not None:
            query += " AND deployment_id = ?"
            params += (deployment_id,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", params).fetchall()
        return [Event.model_validate(_event_row(r, "deployment_id")) for r in rows]

    def phase_counts(self) -> dict[Phase, int]:
        with self._lock:
            rows = self._db.execute("SELECT phase, COUNT(*) FROM deployments GROUP BY phase").fetchall()
        return {Phase(r[0]): int(r[1]) for r in rows}

    def planned_stable_artifact(self, deployment_id: str) -> Artifact | None:
        """The artifact of the revision a deployment found serving (recorded when it was planned)."""
        for event in self.events(deployment_id):
            if event.kind is EventKind.PLANNED and event.data.get("stable_artifact"):
                return Artifact.model_validate(event.data["stable_artifact"])
        return None

    def last_seq(self) -> int:
        """The newest event's sequence number (0 for an empty journal): a cheap "has anything changed"."""
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def live_deployments(self) -> list[DeploymentState]:
        """Per target, the newest deployment that succeeded: it made the revision that should be live.
        Kept parsed while unchanged (supervision reads these at every round)."""
        query = (
            "SELECT d.deployment_id, d.snapshot FROM deployments d JOIN ("
            " SELECT target_key, MAX(submitted_seq) AS newest FROM deployments WHERE phase = ?"
            " GROUP BY target_key) n ON d.target_key = n.target_key AND d.submitted_seq = n.newest"
            " ORDER BY d.submitted_seq"
        )
        with self._lock:
            rows = self._db.execute(query, (Phase.SUCCEEDED.value,)).fetchall()
            return [self._parse(r[0], r[1]) for r in rows]

    def busy_targets(self) -> set[str]:
        """Targets with an admitted deployment that has not ended: their runner owns them."""
        query = "SELECT DISTINCT target_key FROM deployments WHERE active = 1 AND phase != ?"
        with self._lock:
            rows = self._db.execute(query, (Phase.QUEUED.value,)).fetchall()
        return {str(r[0]) for r in rows}

    def put_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Small durable registries (registered environments, health monitors), keyed by (kind, key)."""
        body = json.dumps(data, sort_keys=True, default=str)
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (kind, key, body))

    def delete_record(self, kind: str, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))

    def record(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def update_record(
        self,
        kind: str,
        key: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
        event: RecordEvent | None = None,
    ) -> dict[str, Any]:
        """Read, change and write one record in one transaction (several processes may change it at once);
        ``event``, when given, is appended to its deployment in the same transaction. An exception raised
        by ``change`` leaves everything as it was."""
        with self._transaction() as db:
            row = db.execute("SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
            before = json.loads(row[0]) if row else None
            data = change(before)
            body = json.dumps(data, sort_keys=True, default=str)
            db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (kind, key, body))
            facts = event.data(before, data) if event is not None else None
            if event is not None and facts is not None:
                self._append_in(db, event.deployment_id, event.kind, facts, event.actor)
        return data

    def records(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT data FROM records WHERE kind = ? ORDER BY key", (kind,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def acquire_lease(
        self, name: str, owner: str, ttl_s: float, alive: Callable[[str], bool] = lambda _: True
    ) -> str | None:
        """Take or renew lease ``name`` for ``owner``; returns the other holder when it is still fresh and
        ``alive(holder)`` says it still runs.

        One orchestrator (one Ray cluster) drives the deployments of a journal: a second one started on the
        same file would run them twice."""
        now = self._now()
        with self._transaction() as db:
            row = db.execute("SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,)).fetchone()
            if row is not None:
                held = json.loads(row[0])
                fresh = now - float(held["renewed_at"]) < ttl_s
                if held["owner"] != owner and fresh and alive(str(held["owner"])):
                    return str(held["owner"])
            body = json.dumps({"owner": owner, "renewed_at": now})
            db.execute("INSERT OR REPLACE INTO records VALUES ('lease', ?, ?)", (name, body))
        return None

    def lease(self, name: str) -> dict[str, Any] | None:
        """The last holder of lease ``name`` (``owner``, ``renewed_at``), fresh or not, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,)
            ).fetchone()
        return json.loads(row[0]) if row is not None else None

    def release_lease(self, name: str, owner: str) -> None:
        with self._transaction() as db:
            row = db.execute("SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,)).fetchone()
            if row is not None and json.loads(row[0])["owner"] == owner:
                db.execute("DELETE FROM records WHERE kind = 'lease' AND key = ?", (name,))

    def verify_chain(self, anchor: str = GENESIS) -> tuple[bool, int | None]:
        """Recompute every hash from ``anchor`` (the hash before the first kept event: GENESIS unless old
        events were pruned); returns (True, None) or (False, first bad seq)."""
        bad = first_broken(self.chain(), anchor)
        return (True, None) if bad is None else (False, bad.seq)

    def chain(self, after_seq: int = 0, limit: int | None = None) -> list[ChainRow]:
        """The events as stored (seq order), with every field their hashes cover."""
        query = "SELECT seq, deployment_id, at, kind, actor, data, prev_hash, hash FROM events WHERE seq > ?"
        query += " ORDER BY seq LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (after_seq, -1 if limit is None else limit)).fetchall()
        return [ChainRow(*row) for row in rows]

    def head(self) -> tuple[int, str] | None:
        """The newest event's (seq, hash), or None when the journal is empty."""
        with self._lock:
            row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def prune(self, before_seq: int) -> int:
        """Delete the events before ``before_seq`` and the finished deployments whose events all came
        before it (retention); returns how many events went. The caller anchors the chain first."""
        with self._transaction() as db:
            active = db.execute("SELECT MIN(submitted_seq) FROM deployments WHERE active = 1").fetchone()[0]
            newest = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            if active is not None and before_seq > int(active):
                raise ValueError(f"cannot prune to seq {before_seq}: an active deployment began at {active}")
            if newest is None or before_seq > int(newest):
                # The newest event stays: new events chain from it.
                raise ValueError(f"cannot prune up to seq {before_seq}: the newest event is {newest}")
            removed = db.execute("DELETE FROM events WHERE seq < ?", (before_seq,)).rowcount
            db.execute(
                "DELETE FROM deployments WHERE active = 0 AND deployment_id NOT IN "
                "(SELECT DISTINCT deployment_id FROM events)"
            )
        with self._lock:
            self._parsed.clear()
        return int(removed)

    # ---------------------------------------------------------------------------------- pipelines
    def append_pipeline_event(
        self,
        pipeline_id: str,
        kind: PipelineEventKind,
        data: dict[str, Any],
        actor: str = "system",
        only_first: bool = False,
    ) -> PipelineEvent | None:
        """Append to a pipeline's own event stream. ``only_first``: only when the pipeline has no event yet
        (creating the same pipeline twice records it once); returns None when it was not appended."""
        with self._transaction() as db:
            if (
                only_first
                and db.execute(
                    "SELECT 1 FROM pipeline_events WHERE pipeline_id = ? LIMIT 1", (pipeline_id,)
                ).fetchone()
            ):
                return None
            now = self._now()
            seq = self._insert(db, pipeline_id, now, kind, actor, data, PIPELINE_STREAM)
        return PipelineEvent(seq=seq, pipeline_id=pipeline_id, kind=kind, at=now, actor=actor, data=data)

    def pipeline_events(self, pipeline_id: str) -> list[PipelineEvent]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, pipeline_id, at, kind, actor, data, hash FROM pipeline_events "
                "WHERE pipeline_id = ? ORDER BY seq",
                (pipeline_id,),
            ).fetchall()
        return [PipelineEvent.model_validate(_event_row(r, "pipeline_id")) for r in rows]

    def pipeline_ids(self, unfinished_only: bool = False, prefix: str = "") -> list[str]:
        """Pipelines in creation order; ``unfinished_only``: those without a finished event."""
        query = "SELECT pipeline_id FROM pipeline_events WHERE kind = ? AND pipeline_id LIKE ?"
        if unfinished_only:
            query += " AND pipeline_id NOT IN (SELECT pipeline_id FROM pipeline_events WHERE kind = ?)"
        params: tuple[str, ...] = (PipelineEventKind.CREATED.value, prefix + "%")
        params += (PipelineEventKind.FINISHED.value,) if unfinished_only else ()
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", params).fetchall()
        return [str(r[0]) for r in rows]

    def verify_pipeline_chain(self) -> tuple[bool, int | None]:
        """The pipelines' own hash chain, recomputed like the deployments' one (``verify_chain``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, pipeline_id, at, kind, actor, data, prev_hash, hash FROM pipeline_events "
                "ORDER BY seq"
            ).fetchall()
        bad = first_broken(ChainRow(*row) for row in rows)
        return (True, None) if bad is None else (False, bad.seq)


PIPELINE_STREAM = ("pipeline_events", "pipeline_id")


def _event_row(row: tuple[Any, ...], key: str) -> dict[str, Any]:
    """An event row (seq, id, at, kind, actor, data, hash) as the fields of its model."""
    seq, stream_id, at, kind, actor, data, digest = row
    return {
        "seq": seq,
        key: stream_id,
        "at": at,
        "kind": kind,
        "actor": actor,
        "data": json.loads(data),
        "hash": digest,
    }
