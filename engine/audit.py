"""The audit trail: every action with who, when and why, verifiable by someone who trusts only a public key.

What is recorded. The journal already chains every event with SHA-256 (engine/journal.py); deployment events
are audit entries as they stand (submitted, step applied, traffic shifted, rolled back, ...). Actions that
belong to no deployment's state (a refused call, a token issued or revoked, the configuration changed, a
checkpoint, a pruning) are appended to the same chain as ``audit`` events whose data names the action.

Why checkpoints. A chain of hashes detects an edited row, but not a tail cut off the end, nor a chain
rewritten from some row on with every later hash recomputed. So the head (seq, hash) is signed with an
ed25519 key kept outside the journal, every ``checkpointEvery`` events or ``checkpointInterval``, at a
clean shutdown and on demand: the signer first appends a ``checkpoint`` entry and then signs that entry
(which covers everything before it), and stores the signature in a file outside the journal. A verifier needs
the journal, that file and the public key (written next to the private key, and recorded in the journal
when the key is made). It then knows: every row up to the last checkpoint is as signed; entries after it
are intact as a chain but not signed yet (a cut there cannot be told from a journal that simply ended).
The journal's own ``checkpoint`` entries must each have a signature in the file, so replacing or truncating
the file is seen too.

Retention. An environment's ``auditRetentionDays`` is how long its events must be kept. Pruning removes the
oldest events whose retention has passed, up to the first one that must stay (and never an active
deployment's events), so the chain that remains is contiguous. Before deleting, the last removed event's
(seq, hash) is signed as an ``anchor`` checkpoint: the first remaining event must continue from it, so
removing more from the front, or forging a shorter history, is still detected. An event of a long-retention
environment therefore keeps later short-retention events until it expires itself: retention is a minimum.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field

from engine.journal import GENESIS, ChainRow, Journal
from engine.locks import flock_within, open_lock_file
from engine.models import DurationMs, Environment, Model
from engine.state import EventKind

if TYPE_CHECKING:
    from engine.config import EnterpriseConfig

AUDIT_SUBJECT = "audit"
CONFIG_RECORD = "audit-configuration"
DAY_S = 86_400.0
CHECKPOINT_LOCK_TIMEOUT_S = 30.0  # a checkpoint is written in milliseconds: longer means a stuck process


class AuditSettings(Model):
    """``audit:`` in enterprise_config.yaml."""

    signing_key: str | None = Field(
        default=None, description="ed25519 private key (PEM); None: $ORCH_HOME/audit/signing-key.pem"
    )
    checkpoints: str | None = Field(
        default=None, description="signed checkpoints (JSON lines); None: $ORCH_HOME/audit/checkpoints.jsonl"
    )
    checkpoint_every: int = Field(default=500, ge=1, description="sign the head after this many events")
    checkpoint_interval: DurationMs = Field(default=60_000, gt=0, description="... or after this long")


class AuditTrail:
    """Appends audit entries (actions that belong to no deployment's state) to the journal's chain."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def record(
        self, action: str, actor: str, subject: str = AUDIT_SUBJECT, reason: str = "", **details: Any
    ) -> int:
        data = {"action": action, "reason": reason, **{k: v for k, v in details.items() if v is not None}}
        return self.journal.append_event(subject, EventKind.AUDIT, data, actor)


# --------------------------------------------------------------------------------------------
# Reading and exporting
# --------------------------------------------------------------------------------------------
_ACTIONS = {
    "step_completed": "step_applied",
    "weights_set": "traffic_shifted",
    "rollback_started": "rolling_back",
    "measurement": "measured",
}


def action_of(kind: str, data: Mapping[str, Any]) -> str:
    """The audit action of a journal event: deployment events by kind (a finished deployment by its
    outcome: rolled_back, succeeded, ...), audit events by the action they name."""
    if kind == EventKind.AUDIT.value:
        return str(data.get("action", "audit"))
    if kind == EventKind.FINISHED.value:
        return str(data.get("outcome", "finished"))
    return _ACTIONS.get(kind, kind)


def _reason(data: Mapping[str, Any]) -> str:
    for key in ("reason", "message"):
        if data.get(key):
            return str(data[key])
    if "weights" in data:
        return "weights " + " ".join(f"{rev}={pct}%" for rev, pct in sorted(data["weights"].items()))
    return ""


def entry(row: ChainRow, environments: Mapping[str, str]) -> dict[str, Any]:
    """One event as an audit entry: who, what, when, why, and the chain fields a verifier needs."""
    data = json.loads(row.data)
    return {
        "seq": row.seq,
        "time": datetime.fromtimestamp(row.at, UTC).isoformat(timespec="milliseconds"),
        "at": row.at,
        "actor": row.actor,
        "action": action_of(row.kind, data),
        "kind": row.kind,
        "subject": row.subject,
        "environment": environments.get(row.subject) or data.get("environment"),
        "reason": _reason(data),
        "data": data,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def deployment_environments(journal: Journal) -> dict[str, str]:
    return {s.deployment_id: s.request.environment for s in journal.deployments(limit=10**9)}


def export_jsonl(journal: Journal, out: TextIO, after_seq: int = 0) -> int:
    """Write every entry after ``after_seq`` as one JSON object per line (for a SIEM); returns the count."""
    environments = deployment_environments(journal)
    count = 0
    for row in journal.chain(after_seq=after_seq):
        out.write(json.dumps(entry(row, environments), sort_keys=True, default=str) + "\n")
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# The signing key and checkpoints
# --------------------------------------------------------------------------------------------
def public_key_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as error:
        raise ValueError(f"public key {path}: cannot be read as an ed25519 PEM key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"public key {path}: not an ed25519 key")
    return key


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The private key at ``path``, made on first use (0600, in a 0700 folder) with its public key beside
    it; returns (key, created)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        public_key_path(path).write_text(public_pem(key.public_key()))
        created = True
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"audit signing key {path}: not an ed25519 private key")
    return loaded, created


class Checkpoint(Model):
    """A signed (seq, hash) of the journal's chain."""

    seq: int
    hash: str
    at: float
    kind: str  # periodic | shutdown | manual | anchor | late (an interrupted one, signed after a restart)
    key_id: str
    signature: str = ""

    def payload(self) -> bytes:
        fields = self.model_dump(mode="json", exclude={"signature"})
        return json.dumps({"v": 1, **fields}, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, key: Ed25519PrivateKey) -> Checkpoint:
        return self.model_copy(update={"signature": base64.b64encode(key.sign(self.payload())).decode()})

    def valid(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(base64.b64decode(self.signature), self.payload())
        except (InvalidSignature, ValueError):
            return False
        return self.key_id == key_id(public)


class CheckpointStore:
    """Checkpoints as JSON lines in a file outside the journal, appended under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The store's file lock: a checkpoint's journal entry and its signature are written under it, so a
        reader holding it sees both or neither. Not re-entrant (flock on a new descriptor)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self.path.with_name(self.path.name + ".lock")
        fd = open_lock_file(lock, 0o600)
        try:
            if not flock_within(fd, CHECKPOINT_LOCK_TIMEOUT_S):
                waited = f"{CHECKPOINT_LOCK_TIMEOUT_S:g}s"
                raise TimeoutError(f"{lock} is locked by another process for over {waited}")
            yield
        finally:
            os.close(fd)

    def append(self, checkpoint: Checkpoint, held: bool = False) -> None:
        """Append under the lock (``held``: the caller holds it already)."""
        with (
            contextlib.nullcontext() if held else self.locked(),
            open(self.path, "a", encoding="utf-8") as out,
        ):
            out.write(checkpoint.model_dump_json() + "\n")
            out.flush()
            os.fsync(out.fileno())

    def read_with(self, journal: Journal) -> tuple[list[ChainRow], list[Checkpoint]]:
        """The journal's chain and the checkpoints as of one moment: no checkpoint half written."""
        with self.locked():
            return journal.chain(), self.all()

    def all(self) -> list[Checkpoint]:
        """Every checkpoint, oldest first; ValueError naming the line that is not one."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        result = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    result.append(Checkpoint.model_validate_json(line))
                except ValueError:
                    raise ValueError(
                        f"checkpoint store {self.path}: line {number} is not a checkpoint"
                    ) from None
        return result


class Checkpointer:
    """Signs the journal's head: when due (every N events or T seconds), at shutdown, on demand."""

    def __init__(
        self,
        journal: Journal,
        key_path: Path,
        store: CheckpointStore,
        every: int = 500,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.key_path = key_path
        self.store = store
        self.every = every
        self.interval_s = interval_s
        self.clock = clock
        self.trail = AuditTrail(journal)
        self._key: Ed25519PrivateKey | None = None
        self._interrupted_checked = False
        latest = max(store.all(), key=lambda c: c.seq, default=None)
        self.last_seq = latest.seq if latest else 0
        self.last_at = latest.at if latest else clock()

    @classmethod
    def from_config(
        cls, config: EnterpriseConfig, journal: Journal, clock: Callable[[], float] = time.time
    ) -> Checkpointer:
        settings = config.audit
        return cls(
            journal,
            config.audit_key_path(),
            CheckpointStore(config.audit_checkpoints_path()),
            settings.checkpoint_every,
            settings.checkpoint_interval / 1000,
            clock,
        )

    def key(self) -> Ed25519PrivateKey:
        if self._key is None:
            self._key, created = load_or_create_key(self.key_path)
            if created:  # verifiers find the public key in the trail as well as beside the private key
                public = self._key.public_key()
                self.trail.record(
                    "signing_key_created",
                    "orchestrator",
                    public_key=public_pem(public),
                    key_id=key_id(public),
                )
        return self._key

    def public_key(self) -> Ed25519PublicKey | None:
        """The public key, without making a key when there is none yet."""
        if self._key is not None:
            return self._key.public_key()
        public = public_key_path(self.key_path)
        return load_public_key(public) if public.exists() else None

    def due(self) -> bool:
        head = self.journal.head()
        if head is None or head[0] <= self.last_seq:
            return False
        return head[0] - self.last_seq >= self.every or self.clock() - self.last_at >= self.interval_s

    def maybe(self) -> Checkpoint | None:
        return self.checkpoint("periodic") if self.due() else None

    def checkpoint(self, kind: str, actor: str = "orchestrator") -> Checkpoint | None:
        """Append a ``checkpoint`` entry and sign it (it covers the whole chain before it); None when
        nothing was appended since the last checkpoint."""
        head = self.journal.head()
        if head is None or head[0] <= self.last_seq:
            return None
        key = self.key()
        with self.store.locked():  # readers see the entry and its signature together
            if not self._interrupted_checked:
                self._sign_interrupted(actor)
                self._interrupted_checked = True
            seq = self.trail.record("checkpoint", actor, reason=kind, key_id=key_id(key.public_key()))
            return self.sign(self.journal.chain(after_seq=seq - 1, limit=1)[0], kind, held=True)

    def _sign_interrupted(self, actor: str) -> None:
        """The journal's last checkpoint entry, when no signature covers it or anything after it: its
        writer stopped between the two writes (a crash). It is signed now ("late"), and the late signature
        is itself journaled, so the trail says so. Only that one: two or more unsigned entries are a
        truncated store, which verification goes on calling broken. Call with the store's lock held."""
        latest = max((c.seq for c in self.store.all()), default=0)
        entries = [
            row
            for row in self.journal.chain(after_seq=latest)
            if row.kind == EventKind.AUDIT.value and json.loads(row.data).get("action") == "checkpoint"
        ]
        if not entries:
            return
        row = entries[-1]
        self.sign(row, "late", held=True)
        why = "its signer stopped between the journal entry and the signature"
        self.trail.record("checkpoint_signed_late", actor, reason=why, signed_seq=row.seq)

    def sign(self, row: ChainRow, kind: str, held: bool = False) -> Checkpoint:
        key = self.key()
        now = self.clock()
        checkpoint = Checkpoint(
            seq=row.seq, hash=row.hash, at=now, kind=kind, key_id=key_id(key.public_key())
        ).signed(key)
        self.store.append(checkpoint, held)
        if kind != "anchor":
            self.last_seq, self.last_at = max(self.last_seq, row.seq), now
        return checkpoint


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------
class Verification(Model):
    ok: bool
    problem: str | None = None
    first_bad_seq: int | None = None
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    signed_seq: int | None = None
    signed_at: float | None = None
    unsigned: int = 0
    anchor_seq: int | None = None
    checkpoints: int = 0
    late: int = 0  # checkpoints signed after a restart (their signer stopped between the two writes)

    def summary(self) -> str:
        if not self.ok:
            return f"audit trail BROKEN: {self.problem}"
        if not self.entries:
            return "audit trail empty: nothing to verify"
        span = f"{self.entries} entries, seq {self.first_seq} to {self.last_seq}"
        if self.anchor_seq is not None:
            span += f" (older entries pruned; continues from the signed anchor at seq {self.anchor_seq})"
        if self.signed_seq is None:
            return f"audit trail intact as a chain: {span}; NO signed checkpoint covers it yet"
        stamp = datetime.fromtimestamp(self.signed_at or 0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        tail = (
            f"; {self.unsigned} entries after it are intact but not signed yet"
            if self.unsigned
            else "; nothing follows it"
        )
        late = f"; {self.late} checkpoint(s) signed late, after an interrupted write" if self.late else ""
        signed = f"signed up to seq {self.signed_seq} (checkpoint of {stamp})"
        return f"audit trail intact: {span}; {signed}{tail}{late}"


def _broken(problem: str, seq: int | None) -> Verification:
    return Verification(ok=False, problem=problem, first_bad_seq=seq)


def _chain_problem(rows: list[ChainRow], anchor: Checkpoint | None) -> Verification | None:
    """The first entry that is edited or does not follow the one before it (or the anchor)."""
    prev = anchor.hash if anchor is not None else GENESIS
    for index, row in enumerate(rows):
        if row.recomputed_hash() != row.hash:
            return _broken(f"seq {row.seq} was edited: its content does not match its hash", row.seq)
        if row.prev_hash != prev:
            if index == 0 and prev != GENESIS and anchor is not None:
                why = f"it does not continue from the signed pruning anchor (seq {anchor.seq})"
            elif index == 0:
                why = "it does not start the chain"
            else:
                why = f"it does not follow seq {rows[index - 1].seq}"
            return _broken(f"seq {row.seq}: {why}: entries before it were removed or rewritten", row.seq)
        prev = row.hash
    return None


def _checkpoint_problem(rows: list[ChainRow], checkpoints: list[Checkpoint]) -> Verification | None:
    """A signed checkpoint past the journal's end (a cut tail) or over a different hash (a rewrite)."""
    hashes = {row.seq: row.hash for row in rows}
    last = rows[-1].seq
    matched: int | None = None
    for checkpoint in sorted(checkpoints, key=lambda c: c.seq):
        stamp = datetime.fromtimestamp(checkpoint.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if checkpoint.seq > last:
            return _broken(
                f"the tail was cut: the journal ends at seq {last} but a checkpoint signed at {stamp} covers "
                f"seq {checkpoint.seq} (at least {checkpoint.seq - last} entries are missing)",
                last + 1,
            )
        if hashes.get(checkpoint.seq) != checkpoint.hash:
            since = f"after seq {matched}" if matched is not None else "from the start"
            return _broken(
                f"the chain was rewritten: seq {checkpoint.seq} differs from the checkpoint signed at "
                f"{stamp} (the rewrite lies {since}, up to seq {checkpoint.seq})",
                checkpoint.seq,
            )
        matched = checkpoint.seq
    return None


def _unsigned_checkpoint_entries(rows: list[ChainRow], signed: set[int]) -> Verification | None:
    """Every ``checkpoint`` entry in the journal has its signature in the store (else the store was
    truncated or replaced)."""
    for row in rows:
        if row.kind != EventKind.AUDIT.value or row.seq in signed:
            continue
        if json.loads(row.data).get("action") == "checkpoint":
            return _broken(
                f"the journal records a checkpoint at seq {row.seq} that the checkpoint store lacks: the "
                "store was truncated or replaced (or the signer stopped between the two writes)",
                row.seq,
            )
    return None


def verify_stored(journal: Journal, store: CheckpointStore, public: Ed25519PublicKey | None) -> Verification:
    """``verify_trail`` on the journal and the store read together (a checkpoint being written is seen
    whole or not at all)."""
    rows, checkpoints = store.read_with(journal)
    return verify_trail(journal, checkpoints, public, rows)


def verify_trail(
    journal: Journal,
    checkpoints: list[Checkpoint],
    public: Ed25519PublicKey | None,
    rows: list[ChainRow] | None = None,
    store_read: bool = True,
) -> Verification:
    """Check signatures, the chain (from the last pruning anchor, if any) and the checkpoints against it
    (``rows``: the journal's chain as read with the checkpoints, else read now). Without ``store_read``
    (no store was given) the journal's checkpoint entries are not matched with signatures."""
    if checkpoints and public is None:
        return _broken("signed checkpoints exist but no public key was found to check them", None)
    for checkpoint in checkpoints:
        if public is not None and not checkpoint.valid(public):
            return _broken(
                f"the checkpoint of seq {checkpoint.seq} ({checkpoint.kind}) has no valid signature by key "
                f"{key_id(public)}: the checkpoint store was altered or another public key is needed",
                checkpoint.seq,
            )
    rows = journal.chain() if rows is None else rows
    if not rows:
        if checkpoints:
            return _broken("the journal is empty but signed checkpoints exist: every entry was removed", 1)
        return Verification(ok=True)
    # The newest pruning anchor before the first kept entry: that entry must continue from it.
    anchors = [c for c in checkpoints if c.kind == "anchor" and c.seq < rows[0].seq]
    anchor = max(anchors, key=lambda c: c.seq, default=None)
    later = [c for c in checkpoints if c.kind != "anchor" and c.seq >= rows[0].seq]
    problem = (
        _chain_problem(rows, anchor)
        or _checkpoint_problem(rows, later)
        or (_unsigned_checkpoint_entries(rows, {c.seq for c in checkpoints}) if store_read else None)
    )
    if problem is not None:
        return problem
    signed = max(later, key=lambda c: c.seq, default=None)
    return Verification(
        ok=True,
        entries=len(rows),
        first_seq=rows[0].seq,
        last_seq=rows[-1].seq,
        signed_seq=signed.seq if signed else None,
        signed_at=signed.at if signed else None,
        unsigned=sum(1 for r in rows if signed is None or r.seq > signed.seq),
        anchor_seq=anchor.seq if anchor else None,
        checkpoints=len(checkpoints),
        late=sum(1 for c in later if c.kind == "late"),
    )


def verify_configured(
    config: EnterpriseConfig, journal: Journal, public_key: Path | None = None
) -> Verification:
    """Verify ``journal`` with the configured checkpoint store and the public key given, else the one beside
    the configured signing key (what ``audit verify`` and a compliance check of the trail use)."""
    key_file = public_key or public_key_path(config.audit_key_path())
    public = load_public_key(key_file) if public_key is not None or key_file.exists() else None
    return verify_stored(journal, CheckpointStore(config.audit_checkpoints_path()), public)


# --------------------------------------------------------------------------------------------
# Retention
# --------------------------------------------------------------------------------------------
class PruneResult(Model):
    removed: int
    before_seq: int | None = None
    anchor_seq: int | None = None
    dry_run: bool = False

    def summary(self) -> str:
        if self.before_seq is None:
            return "nothing to prune: no entry is past its environment's retention"
        verb = "would remove" if self.dry_run else "removed"
        anchor = "" if self.dry_run else f"; signed anchor at seq {self.anchor_seq}"
        return f"{verb} {self.removed} entries before seq {self.before_seq}{anchor}"


def retention_days(config: EnterpriseConfig, journal: Journal) -> Callable[[str | None], int]:
    """Days to keep an environment's events (configured or registered); the longest for anything else."""
    days = {name: env.security.audit_retention_days for name, env in config.environments.items()}
    for record in journal.records("environment"):
        registered = Environment.model_validate(record)
        days[registered.name] = registered.security.audit_retention_days
    longest = max(days.values(), default=Environment(name="default").security.audit_retention_days)
    return lambda environment: days.get(environment or "", longest)


def prune_cut(journal: Journal, keep_days: Callable[[str | None], int], now: float) -> int | None:
    """The seq of the first entry that must stay, when some before it may go; else None."""
    rows = journal.chain()
    if len(rows) < 2:
        return None
    environments = deployment_environments(journal)
    active = {s.deployment_id for s in journal.deployments(active_only=True, limit=10**9)}
    for index, row in enumerate(rows[:-1]):  # the newest entry always stays: new ones chain from it
        environment = environments.get(row.subject) or json.loads(row.data).get("environment")
        if row.subject in active or row.at > now - keep_days(environment) * DAY_S:
            return row.seq if index > 0 else None
    return rows[-1].seq


def prune_expired(
    journal: Journal,
    checkpointer: Checkpointer,
    keep_days: Callable[[str | None], int],
    actor: str,
    dry_run: bool = False,
) -> PruneResult:
    """Remove the entries past retention, anchoring what remains with a signed checkpoint first."""
    check = verify_stored(journal, checkpointer.store, checkpointer.public_key())
    if not check.ok:
        raise ValueError(f"refusing to prune a trail that does not verify: {check.problem}")
    cut = prune_cut(journal, keep_days, checkpointer.clock())
    if cut is None:
        return PruneResult(removed=0, dry_run=dry_run)
    doomed = [row for row in journal.chain() if row.seq < cut]
    if dry_run:
        return PruneResult(removed=len(doomed), before_seq=cut, dry_run=True)
    anchor = checkpointer.sign(doomed[-1], "anchor")
    removed = journal.prune(cut)
    checkpointer.trail.record(
        "pruned", actor, reason="retention", before_seq=cut, removed=removed, anchor_seq=anchor.seq
    )
    checkpointer.checkpoint("manual", actor)
    return PruneResult(removed=removed, before_seq=cut, anchor_seq=anchor.seq)


# --------------------------------------------------------------------------------------------
# Configuration changes
# --------------------------------------------------------------------------------------------
def config_fingerprint(path: Path) -> dict[str, Any]:
    """The configuration file's content hash, and its git commit when it lives in a git checkout."""
    fingerprint: dict[str, Any] = {
        "path": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "git_commit": None,
        "git_dirty": None,
    }
    try:
        head = subprocess.run(
            ["git", "-C", str(path.parent), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode == 0:
            status = subprocess.run(
                ["git", "-C", str(path.parent), "status", "--porcelain", "--", path.name],
                capture_output=True,
                text=True,
                timeout=10,
            )
            fingerprint["git_commit"] = head.stdout.strip()
            fingerprint["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass  # no git here: the content hash alone identifies the version
    return fingerprint


def record_configuration(journal: Journal, path: Path, actor: str) -> str | None:
    """Record the configuration's fingerprint when it is new or differs from the last one recorded;
    returns the action recorded (configuration_recorded or configuration_changed) or None."""
    fingerprint = config_fingerprint(path)
    previous = journal.records(CONFIG_RECORD)
    last = previous[-1] if previous else None
    if last is not None and last.get("sha256") == fingerprint["sha256"]:
        return None
    action = "configuration_recorded" if last is None else "configuration_changed"
    AuditTrail(journal).record(
        action,
        actor,
        reason=f"{path.name} {'first seen' if last is None else 'differs from the version recorded before'}",
        previous_sha256=last.get("sha256") if last else None,
        **fingerprint,
    )
    journal.put_record(CONFIG_RECORD, "latest", fingerprint)
    return action


class AuditKeeper:
    """The queen's part: the configuration recorded at start, checkpoints when due and at shutdown."""

    def __init__(self, config: EnterpriseConfig, journal: Journal, clock: Callable[[], float] = time.time):
        self.checkpointer = Checkpointer.from_config(config, journal, clock)
        if config.source is not None:
            record_configuration(journal, config.source, actor="queen")

    def tick(self) -> Checkpoint | None:
        return self.checkpointer.maybe()

    def shutdown(self) -> Checkpoint | None:
        return self.checkpointer.checkpoint("shutdown")
