"""Reading back a damaged SQLite journal: every event committed before the damage, verified by its hash chain.

A SQLite file cut short (a full disk, a copy interrupted) is refused whole by SQLite ("database disk image is
malformed") although most of its pages are intact. ``salvage`` works on a copy: it pads the copy back to the
size its header records (the lost pages read as empty), opens it read-only and looks each event up by its
sequence number, so that a lost page costs only the rows on it. The events are then checked link by link:
``kept`` is the longest run from the first event whose hashes chain, ``damaged_at`` the first sequence number
that is missing, unreadable or does not match its hash. A lost interior page of the events' b-tree hides every
row below it: those rows are reported missing (the chain then breaks at the first of them), never invented.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.journal import _EVENT_COLUMNS, GENESIS, ChainRow

_HEADER = b"SQLite format 3\x00"
# Sequence numbers looked up past the last one found before giving up (rows deleted or on lost pages).
LOOK_AHEAD = 128


@dataclass
class Salvage:
    path: str
    kept: list[ChainRow] = field(default_factory=list)  # the verified events, in order, from the first
    damaged_at: int | None = None  # the first seq missing, unreadable or not matching its hash
    unreadable: list[int] = field(default_factory=list)  # seqs SQLite could not read (look-ahead included)
    later: list[ChainRow] = field(default_factory=list)  # found after the damage: their chain is broken

    def summary(self) -> str:
        head = f"journal {self.path}: {len(self.kept)} events verified"
        if self.kept:
            head += f" (seq {self.kept[0].seq} to {self.kept[-1].seq})"
        if self.damaged_at is None:
            return head + "; no damage found"
        found = f"{len(self.later)} events found after it (unverified)"
        return f"{head}; damaged from seq {self.damaged_at}; {found}"


def salvage(path: str | Path) -> Salvage:
    """What the SQLite journal at ``path`` still holds; the file itself is left untouched."""
    source = Path(path)
    with tempfile.TemporaryDirectory(prefix="journal-salvage-") as folder:
        copy = Path(folder) / "journal.db"
        shutil.copyfile(source, copy)
        wal = source.with_name(source.name + "-wal")
        if wal.exists():  # committed transactions not yet checkpointed into the file
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        _pad_to_recorded_size(copy)
        db = sqlite3.connect(copy)
        db.text_factory = lambda value: value.decode("utf-8", "replace")  # a damaged row fails its hash
        try:
            return _read_back(db, str(source))
        finally:
            db.close()


def _pad_to_recorded_size(copy: Path) -> None:
    with copy.open("r+b") as file:
        header = file.read(100)
        if len(header) < 100 or not header.startswith(_HEADER):
            return  # nothing to go by: SQLite says what it can
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65_536 if page_size == 1 else page_size
        pages = int.from_bytes(header[28:32], "big")
        size = file.seek(0, 2)
        if pages and page_size and size < pages * page_size:
            file.truncate(pages * page_size)  # zeros: pages SQLite will call damaged, one by one


def _read_back(db: sqlite3.Connection, shown: str) -> Salvage:
    result = Salvage(path=shown)
    rows: list[ChainRow] = []
    first = _first_seq(db)
    seq, last_found = first, first
    while seq - last_found <= LOOK_AHEAD:
        try:
            found = db.execute(f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq = ?", (seq,)).fetchall()
        except sqlite3.DatabaseError:
            result.unreadable.append(seq)
            found = []
        if found:
            rows.append(ChainRow(*found[0]))
            last_found = seq
        seq += 1
    _verify(result, rows, first)
    return result


def _first_seq(db: sqlite3.Connection) -> int:
    """The lowest seq (events before it may have been pruned), or 1 when even that cannot be read."""
    try:
        rows = db.execute("SELECT MIN(seq) FROM events").fetchall()
    except sqlite3.DatabaseError:
        return 1
    return max(1, int(rows[0][0])) if rows and rows[0][0] is not None else 1  # seqs start at 1


def _verify(result: Salvage, rows: list[ChainRow], first: int) -> None:
    """Keep the rows that chain from the first one (its own prev_hash anchors a pruned journal)."""
    expected_seq, prev = first, rows[0].prev_hash if rows else GENESIS
    for position, row in enumerate(rows):
        if row.seq != expected_seq or row.prev_hash != prev or row.recomputed_hash() != row.hash:
            result.damaged_at = expected_seq  # a damaged row's own seq may be garbage (seen: 0)
            result.later = rows[position:]
            return
        result.kept.append(row)
        expected_seq, prev = row.seq + 1, row.hash
    if result.unreadable and result.damaged_at is None:  # the rows after the last good one are unreadable
        result.damaged_at = expected_seq
