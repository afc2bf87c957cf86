"""The journal: an append-only, hash-chained event log per deployment plus a snapshot of its folded state.

It is the source of truth: write the intent before acting and the outcome after. Its rows live in a store
(``engine/journal_store.py``): a SQLite file in WAL mode by default, PostgreSQL for a cluster of several
nodes. Several processes (queen, runners, drivers reading history) share it; each append folds the event into
the snapshot inside one write transaction, serialised with every other writer, so readers never see one
without the other and the events have one total order. Every event carries the SHA-256 of the previous event
and its own content, so editing or deleting a row is detected by ``verify_chain``, whichever store holds it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import ValidationError

from engine.journal_store import JournalDamaged, JournalStore, SqliteStore, StoreCursor, open_store
from engine.models import Artifact, DeploymentRequest, Phase
from engine.pipeline_state import PipelineEvent, PipelineEventKind
from engine.state import DeploymentState, Event, EventKind, fold

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
    """The journal at ``location``: a SQLite file's path, a ``postgresql://`` URL, or a reference to one
    (``env:NAME``, ``file:/path``), or an open ``JournalStore``."""

    def __init__(
        self,
        location: str | Path | JournalStore,
        busy_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = (
            location if not isinstance(location, str | Path) else open_store(location, busy_timeout_s)
        )
        # The file of a SQLite journal (None on PostgreSQL); ``location`` says where any journal is.
        self.path: Path | None = self._store.path if isinstance(self._store, SqliteStore) else None
        self.location = self._store.location
        self._now = clock
        self._lock = threading.Lock()  # guards the parsed-state cache (the store guards its connection)
        self._parsed: dict[str, tuple[str, DeploymentState]] = {}

    def close(self) -> None:
        self._store.close()

    # ---------------------------------------------------------------------------------- writing
    def submit(self, deployment_id: str, request: DeploymentRequest, actor: str) -> DeploymentState:
        """Record a new deployment; submitting the same id twice returns the first one (idempotent)."""
        now = self._now()

        def work(db: StoreCursor) -> DeploymentState:
            rows = db.execute("SELECT snapshot FROM deployments WHERE deployment_id = ?", (deployment_id,))
            if rows:
                return DeploymentState.model_validate_json(rows[0][0])
            data = {"request": request.model_dump(mode="json", by_alias=True)}
            seq = _insert(db, deployment_id, now, EventKind.SUBMITTED, actor, data)
            state = DeploymentState(
                deployment_id=deployment_id, request=request, submitted_at=now, updated_at=now, last_seq=seq
            )
            db.execute(
                "INSERT INTO deployments VALUES (?, ?, ?, ?, 1, ?)",
                (deployment_id, request.target.key, seq, state.phase().value, state.model_dump_json()),
            )
            return state

        return self._store.write(work)

    def append(
        self, deployment_id: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> DeploymentState:
        """Append one event and fold it into the snapshot, atomically. Returns the new state."""
        return self._store.write(lambda db: self._append_in(db, deployment_id, kind, data or {}, actor))

    def _append_in(
        self, db: StoreCursor, deployment_id: str, kind: EventKind, data: dict[str, Any], actor: str
    ) -> DeploymentState:
        # The row as it is inside this transaction; not parsed again when it is the one last read or written.
        state = self._parse(deployment_id, _snapshot_row(db, deployment_id))
        now = max(self._now(), state.updated_at)
        seq = _insert(db, deployment_id, now, kind, actor, data)
        event = Event(seq=seq, deployment_id=deployment_id, kind=kind, at=now, actor=actor, data=data)
        new = fold(state, event)  # a new state: the one folded may be shared with readers and stays as is
        snapshot = new.model_dump_json()
        db.execute(
            "UPDATE deployments SET phase = ?, active = ?, snapshot = ? WHERE deployment_id = ?",
            (new.phase().value, int(new.active), snapshot, deployment_id),
        )
        # The next read of this row finds it parsed (a rolled-back write leaves another row: parsed again).
        self._remember(deployment_id, snapshot, new)
        return new

    def append_event(
        self, subject: str, kind: EventKind, data: dict[str, Any] | None = None, actor: str = "system"
    ) -> int:
        """Append one chained event that belongs to no deployment's state (audit entries: refusals, tokens,
        configuration changes, checkpoints). Returns its sequence number."""
        return self._store.write(lambda db: _insert(db, subject, self._now(), kind, actor, data or {}))

    # ---------------------------------------------------------------------------------- reading
    def state(self, deployment_id: str) -> DeploymentState:
        """The deployment's folded state. Shared while unchanged (a runner reads it at every check, and
        parsing it costs far more than reading it): do not modify it."""
        rows = self._store.read("SELECT snapshot FROM deployments WHERE deployment_id = ?", (deployment_id,))
        if not rows:
            raise UnknownDeploymentError(deployment_id)
        return self._parse(deployment_id, str(rows[0][0]))

    def _parse(self, deployment_id: str, snapshot: str) -> DeploymentState:
        """The state of a snapshot row, parsed again only when the row changed."""
        with self._lock:
            cached = self._parsed.get(deployment_id)
        if cached is not None and cached[0] == snapshot:
            return cached[1]
        state = DeploymentState.model_validate_json(snapshot)
        self._remember(deployment_id, snapshot, state)
        return state

    def _remember(self, deployment_id: str, snapshot: str, state: DeploymentState) -> None:
        with self._lock:
            if len(self._parsed) >= PARSED_STATES:
                self._parsed.clear()
            self._parsed[deployment_id] = (snapshot, state)

    def find(self, prefix: str) -> DeploymentState:
        """A deployment by id or unique id prefix (as the CLI accepts)."""
        exact = self._store.read("SELECT snapshot FROM deployments WHERE deployment_id = ?", (prefix,))
        if exact:
            return DeploymentState.model_validate_json(exact[0][0])
        rows = self._store.read(
            "SELECT snapshot FROM deployments WHERE substr(deployment_id, 1, ?) = ? LIMIT 2",
            (len(prefix), prefix),
        )
        if len(rows) != 1:
            raise UnknownDeploymentError(prefix) if not rows else KeyError(f"'{prefix}' is ambiguous")
        return DeploymentState.model_validate_json(rows[0][0])

    def deployments(
        self, active_only: bool = False, limit: int = 1000, target_key: str | None = None
    ) -> list[DeploymentState]:
        """Deployments in submission order (oldest first); the newest ``limit`` of them."""
        query, params = "SELECT deployment_id, snapshot FROM deployments WHERE 1 = 1", []
        if active_only:
            query += " AND active = 1"
        if target_key is not None:
            query += " AND target_key = ?"
            params.append(target_key)
        rows = self._store.read(query + " ORDER BY submitted_seq DESC LIMIT ?", (*params, limit))
        if active_only:  # the queen reads these at every admission: kept parsed while unchanged
            return [self._parse(r[0], r[1]) for r in reversed(rows)]
        return [DeploymentState.model_validate_json(r[1]) for r in reversed(rows)]

    def newest_that_made_live(self, target_key: str, revision: str) -> DeploymentState | None:
        """The newest deployment of the target that succeeded with ``revision`` as its candidate: parsed from
        the newest back, one at a time (usually the first is the one; a target's history only grows)."""
        rows = self._store.read(
            "SELECT deployment_id, snapshot FROM deployments WHERE target_key = ? AND phase = ?"
            " ORDER BY submitted_seq DESC",
            (target_key, Phase.SUCCEEDED.value),
        )
        for deployment_id, snapshot in rows:
            state = self._parse(str(deployment_id), str(snapshot))
            if state.request.artifact.revision == revision:
                return state
        return None

    def events(self, deployment_id: str | None = None, after_seq: int = 0) -> list[Event]:
        query = "SELECT seq, deployment_id, at, kind, actor, data, hash FROM events WHERE seq > ?"
        params: tuple[Any, ...] = (after_seq,)
        if deployment_id is not None:
            query += " AND deployment_id = ?"
            params += (deployment_id,)
        rows = self._store.read(query + " ORDER BY seq", params)
        return [_parsed(Event, _event_row(r, "deployment_id")) for r in rows]

    def phase_counts(self) -> dict[Phase, int]:
        rows = self._store.read("SELECT phase, COUNT(*) FROM deployments GROUP BY phase")
        return {Phase(r[0]): int(r[1]) for r in rows}

    def planned_stable_artifact(self, deployment_id: str) -> Artifact | None:
        """The artifact of the revision a deployment found serving (recorded when it was planned)."""
        for event in self.events(deployment_id):
            if event.kind is EventKind.PLANNED and event.data.get("stable_artifact"):
                return Artifact.model_validate(event.data["stable_artifact"])
        return None

    def last_seq(self) -> int:
        """The newest event's sequence number (0 for an empty journal): a cheap "has anything changed"."""
        rows = self._store.read("SELECT MAX(seq) FROM events")
        return int(rows[0][0] or 0) if rows else 0

    def live_deployments(self) -> list[DeploymentState]:
        """Per target, the newest deployment that succeeded: it made the revision that should be live.
        Kept parsed while unchanged (supervision reads these at every round)."""
        query = (
            "SELECT d.deployment_id, d.snapshot FROM deployments d JOIN ("
            " SELECT target_key, MAX(submitted_seq) AS newest FROM deployments WHERE phase = ?"
            " GROUP BY target_key) n ON d.target_key = n.target_key AND d.submitted_seq = n.newest"
            " ORDER BY d.submitted_seq"
        )
        rows = self._store.read(query, (Phase.SUCCEEDED.value,))
        return [self._parse(r[0], r[1]) for r in rows]

    def busy_targets(self) -> set[str]:
        """Targets with an admitted deployment that has not ended: their runner owns them."""
        query = "SELECT DISTINCT target_key FROM deployments WHERE active = 1 AND phase != ?"
        rows = self._store.read(query, (Phase.QUEUED.value,))
        return {str(r[0]) for r in rows}

    def target_owner(self, target_key: str) -> str | None:
        """The deployment that owns one target now: its admitted deployment that has not ended, or else the
        newest that succeeded (the one that made its live revision); None when neither exists."""
        query = (
            "SELECT deployment_id FROM deployments WHERE target_key = ?"
            " AND ((active = 1 AND phase != ?) OR phase = ?)"
            " ORDER BY (active = 1 AND phase != ?) DESC, submitted_seq DESC LIMIT 1"
        )
        queued, succeeded = Phase.QUEUED.value, Phase.SUCCEEDED.value
        rows = self._store.read(query, (target_key, queued, succeeded, queued))
        return str(rows[0][0]) if rows else None

    def put_record(self, kind: str, key: str, data: dict[str, Any]) -> None:
        """Small durable registries (registered environments, health monitors), keyed by (kind, key)."""
        body = json.dumps(data, sort_keys=True, default=str)
        self._store.write(lambda db: _put_record(db, kind, key, body))

    def delete_record(self, kind: str, key: str) -> None:
        self._store.write(
            lambda db: db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
        )

    def record(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self._store.read("SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

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

        def work(db: StoreCursor) -> dict[str, Any]:
            rows = db.execute("SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key))
            before = json.loads(rows[0][0]) if rows else None
            data = change(before)
            _put_record(db, kind, key, json.dumps(data, sort_keys=True, default=str))
            facts = event.data(before, data) if event is not None else None
            if event is not None and facts is not None:
                self._append_in(db, event.deployment_id, event.kind, facts, event.actor)
            return data

        return self._store.write(work)

    def records(self, kind: str) -> list[dict[str, Any]]:
        rows = self._store.read("SELECT data FROM records WHERE kind = ? ORDER BY key", (kind,))
        return [json.loads(r[0]) for r in rows]

    def acquire_lease(
        self, name: str, owner: str, ttl_s: float, alive: Callable[[str], bool] = lambda _: True
    ) -> str | None:
        """Take or renew lease ``name`` for ``owner``; returns the other holder when it is still fresh and
        ``alive(holder)`` says it still runs.

        One orchestrator (one Ray cluster) drives the deployments of a journal: a second one started on the
        same journal would run them twice. A row lease: the check and the take are one serialised write, on
        SQLite and PostgreSQL alike; freshness is judged by the taker's clock."""
        now = self._now()

        def work(db: StoreCursor) -> str | None:
            rows = db.execute("SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,))
            if rows:
                held = json.loads(rows[0][0])
                fresh = now - float(held["renewed_at"]) < ttl_s
                if held["owner"] != owner and fresh and alive(str(held["owner"])):
                    return str(held["owner"])
            _put_record(db, "lease", name, json.dumps({"owner": owner, "renewed_at": now}))
            return None

        return self._store.write(work)

    def lease(self, name: str) -> dict[str, Any] | None:
        """The last holder of lease ``name`` (``owner``, ``renewed_at``), fresh or not, or None."""
        rows = self._store.read("SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def release_lease(self, name: str, owner: str) -> None:
        def work(db: StoreCursor) -> None:
            rows = db.execute("SELECT data FROM records WHERE kind = 'lease' AND key = ?", (name,))
            if rows and json.loads(rows[0][0])["owner"] == owner:
                db.execute("DELETE FROM records WHERE kind = 'lease' AND key = ?", (name,))

        self._store.write(work)

    def verify_chain(self, anchor: str = GENESIS) -> tuple[bool, int | None]:
        """Recompute every hash from ``anchor`` (the hash before the first kept event: GENESIS unless old
        events were pruned); returns (True, None) or (False, first bad seq)."""
        bad = first_broken(self.chain(), anchor)
        return (True, None) if bad is None else (False, bad.seq)

    def chain(self, after_seq: int = 0, limit: int | None = None) -> list[ChainRow]:
        """The events as stored (seq order), with every field their hashes cover."""
        query = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq"
        params: tuple[Any, ...] = (after_seq,)
        if limit is not None:
            query, params = query + " LIMIT ?", (after_seq, limit)
        return [ChainRow(*row) for row in self._store.read(query, params)]

    def head(self) -> tuple[int, str] | None:
        """The newest event's (seq, hash), or None when the journal is empty."""
        rows = self._store.read("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        return None if not rows else (int(rows[0][0]), str(rows[0][1]))

    def prune(self, before_seq: int) -> int:
        """Delete the events before ``before_seq`` and the finished deployments whose events all came
        before it (retention); returns how many events went. The caller anchors the chain first."""

        def work(db: StoreCursor) -> int:
            active = db.execute("SELECT MIN(submitted_seq) FROM deployments WHERE active = 1")[0][0]
            newest = db.execute("SELECT MAX(seq) FROM events")[0][0]
            if active is not None and before_seq > int(active):
                raise ValueError(f"cannot prune to seq {before_seq}: an active deployment began at {active}")
            if newest is None or before_seq > int(newest):
                # The newest event stays: new events chain from it.
                raise ValueError(f"cannot prune up to seq {before_seq}: the newest event is {newest}")
            removed = int(db.execute("SELECT COUNT(*) FROM events WHERE seq < ?", (before_seq,))[0][0])
            db.execute("DELETE FROM events WHERE seq < ?", (before_seq,))
            db.execute(
                "DELETE FROM deployments WHERE active = 0 AND deployment_id NOT IN "
                "(SELECT DISTINCT deployment_id FROM events)"
            )
            return removed

        removed = self._store.write(work)
        with self._lock:
            self._parsed.clear()
        return removed

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

        def work(db: StoreCursor) -> PipelineEvent | None:
            if only_first and db.execute(
                "SELECT 1 FROM pipeline_events WHERE pipeline_id = ? LIMIT 1", (pipeline_id,)
            ):
                return None
            now = self._now()
            seq = _insert(db, pipeline_id, now, kind, actor, data, PIPELINE_STREAM)
            return PipelineEvent(seq=seq, pipeline_id=pipeline_id, kind=kind, at=now, actor=actor, data=data)

        return self._store.write(work)

    def pipeline_events(self, pipeline_id: str) -> list[PipelineEvent]:
        rows = self._store.read(
            "SELECT seq, pipeline_id, at, kind, actor, data, hash FROM pipeline_events "
            "WHERE pipeline_id = ? ORDER BY seq",
            (pipeline_id,),
        )
        return [_parsed(PipelineEvent, _event_row(r, "pipeline_id")) for r in rows]

    def pipeline_ids(self, unfinished_only: bool = False, prefix: str = "") -> list[str]:
        """Pipelines in creation order; ``unfinished_only``: those without a finished event."""
        query = "SELECT pipeline_id FROM pipeline_events WHERE kind = ? AND pipeline_id LIKE ?"
        if unfinished_only:
            query += " AND pipeline_id NOT IN (SELECT pipeline_id FROM pipeline_events WHERE kind = ?)"
        params: tuple[str, ...] = (PipelineEventKind.CREATED.value, prefix + "%")
        params += (PipelineEventKind.FINISHED.value,) if unfinished_only else ()
        rows = self._store.read(query + " ORDER BY seq", params)
        return [str(r[0]) for r in rows]

    def verify_pipeline_chain(self) -> tuple[bool, int | None]:
        """The pipelines' own hash chain, recomputed like the deployments' one (``verify_chain``)."""
        rows = self._store.read(
            "SELECT seq, pipeline_id, at, kind, actor, data, prev_hash, hash FROM pipeline_events "
            "ORDER BY seq"
        )
        bad = first_broken(ChainRow(*row) for row in rows)
        return (True, None) if bad is None else (False, bad.seq)


PIPELINE_STREAM = ("pipeline_events", "pipeline_id")


def _event_row(row: tuple[Any, ...], key: str) -> dict[str, Any]:
    """An event row (seq, id, at, kind, actor, data, hash) as the fields of its model."""
    seq, stream_id, at, kind, actor, data, digest = row
    try:
        parsed = json.loads(data)
    except (TypeError, ValueError) as error:
        raise JournalDamaged(f"journal event seq {seq}: its data is not JSON ({error}): {_CHANGED}") from None
    return {
        "seq": seq,
        key: stream_id,
        "at": at,
        "kind": kind,
        "actor": actor,
        "data": parsed,
        "hash": digest,
    }


_CHANGED = "the row was changed outside the orchestrator; `journal verify` names the first damaged event"
Parsed = TypeVar("Parsed", Event, PipelineEvent)


def _parsed(model: type[Parsed], fields: dict[str, Any]) -> Parsed:
    """An event row as its model; a row that no longer fits it is damage, named by its seq."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise JournalDamaged(
            f"journal event seq {fields['seq']}: {where}: {problem['msg']}: {_CHANGED}"
        ) from None


_EVENT_COLUMNS = "seq, deployment_id, at, kind, actor, data, prev_hash, hash"
_PIPELINE_COLUMNS = "seq, pipeline_id, at, kind, actor, data, prev_hash, hash"


def _insert(
    db: StoreCursor,
    subject: str,
    at: float,
    kind: EventKind | PipelineEventKind,
    actor: str,
    data: dict[str, Any],
    stream: tuple[str, str] = ("events", "deployment_id"),
) -> int:
    """One event chained to the last one committed in its stream, (table, id column) of the deployments' or
    the pipelines' events (the caller holds the journal's write lock)."""
    table, key = stream
    last = db.execute(f"SELECT hash FROM {table} ORDER BY seq DESC LIMIT 1")
    prev = last[0][0] if last else GENESIS
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    digest = _event_hash(prev, subject, at, kind.value, actor, body)
    rows = db.execute(
        f"INSERT INTO {table} ({key}, at, kind, actor, data, prev_hash, hash) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
        (subject, at, kind.value, actor, body, prev, digest),
    )
    if not rows:
        raise RuntimeError("the journal did not return the new event's sequence number")
    return int(rows[0][0])


def _snapshot_row(db: StoreCursor, deployment_id: str) -> str:
    rows = db.execute("SELECT snapshot FROM deployments WHERE deployment_id = ?", (deployment_id,))
    if not rows:
        raise UnknownDeploymentError(deployment_id)
    return str(rows[0][0])


def _put_record(db: StoreCursor, kind: str, key: str, body: str) -> None:
    db.execute(
        "INSERT INTO records VALUES (?, ?, ?) ON CONFLICT (kind, key) DO UPDATE SET data = excluded.data",
        (kind, key, body),
    )


# -------------------------------------------------------------------------------------------- copying
class JournalCopyRefused(ValueError):
    """A journal cannot be copied as asked; the message says why and what was (not) written."""


@dataclass(frozen=True)
class CopyReport:
    source: str
    target: str
    events: int
    deployments: int
    records: int
    head: str  # the last event's hash: the same in both journals


_DEPLOYMENT_COLUMNS = "deployment_id, target_key, submitted_seq, phase, active, snapshot"


def copy_journal(source: Journal, target: Journal, lease_ttl_s: float = 30.0) -> CopyReport:
    """Copy ``source`` into the empty ``target`` (e.g. a SQLite journal into PostgreSQL): every event with its
    sequence number, time and hashes as they are, every deployment snapshot and record (not the leases: they
    belong to the orchestrator of the source), in one transaction: all or nothing. The source's chain is
    verified first, the target's after; the two must end in the same hash. A pruned journal is verified from
    its first kept event (whose anchor the signed audit checkpoints vouch for: ``audit verify``)."""
    events = source.chain()
    anchor = events[0].prev_hash if events else GENESIS
    bad = first_broken(events, anchor)
    if bad is not None:
        raise JournalCopyRefused(f"{source.location}: hash chain broken at seq {bad.seq}; nothing was copied")
    now = source._now()
    for lease in source.records("lease"):
        if now - float(lease.get("renewed_at", 0)) < lease_ttl_s:
            raise JournalCopyRefused(
                f"{source.location} is in use by an orchestrator ({lease.get('owner')}): stop it first, so "
                "that nothing is written while it is copied; nothing was copied"
            )
    deployments = source._store.read(f"SELECT {_DEPLOYMENT_COLUMNS} FROM deployments")
    records = source._store.read("SELECT kind, key, data FROM records WHERE kind <> 'lease'")
    pipeline_events = source._store.read(f"SELECT {_PIPELINE_COLUMNS} FROM pipeline_events ORDER BY seq")

    def work(db: StoreCursor) -> None:
        if db.execute("SELECT seq FROM events LIMIT 1") or db.execute("SELECT kind FROM records LIMIT 1"):
            raise JournalCopyRefused(f"{target.location} is not empty; nothing was copied")
        db.execute_many(f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", events)
        db.execute_many(
            f"INSERT INTO deployments ({_DEPLOYMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", deployments
        )
        db.execute_many("INSERT INTO records (kind, key, data) VALUES (?, ?, ?)", records)
        db.execute_many(
            f"INSERT INTO pipeline_events ({_PIPELINE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            pipeline_events,
        )
        target._store.restart_sequence(db)

    target._store.write(work)
    return _checked_copy(source, target, events, anchor, (len(deployments), len(records)))


def _checked_copy(
    source: Journal, target: Journal, events: list[ChainRow], anchor: str, counts: tuple[int, int]
) -> CopyReport:
    head = events[-1].hash if events else GENESIS
    copied = target.chain()
    bad = first_broken(copied, anchor)
    copied_head = copied[-1].hash if copied else GENESIS
    if bad is not None or len(copied) != len(events) or copied_head != head:
        raise JournalCopyRefused(
            f"{target.location}: the copy does not verify (chain broken at seq {bad.seq if bad else None}, "
            f"{len(copied)} of {len(events)} events, last hash {copied_head[:12]} for {head[:12]}): "
            "do not use it"
        )
    return CopyReport(source.location, target.location, len(events), *counts, head)
