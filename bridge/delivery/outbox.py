"""The durable outbox: SQLite in WAL mode, one row per event and per (event, target) delivery.

Synchronous on purpose: every method runs on the outbox's own thread (see
``bridge.delivery.writer.OutboxThread``), never on the event loop. Operator commands open the
same file from another process; WAL mode lets them read and write while a bridge runs.

An event is stored with one delivery per target that wants it, in one transaction. It leaves
the outbox when each delivery is ``delivered`` or ``dead`` (at once, or after
``retention_days``). Calls in progress are tracked in ``live_calls`` (with each leg's final
text so far, also in that transaction), so that a bridge that was killed can close them with
``call.ended`` when it starts again. With the leg's text, each final's transcript line
(``LegText.line``: leg, speaker, sequence, times, redacted text) is kept in ``live_finals``
while its call is in progress, so that such a call's ``call.completed`` can tell the whole
transcript: a call that ends as usual takes its lines with it when its ``call.ended`` is
stored.

At rest the file holds transcripts, so it and its ``-wal``/``-shm`` files are created 0600
(whatever the umask) in a directory created 0700 when missing; deleted rows are overwritten
(``secure_delete``), and the WAL, which keeps old page images until a checkpoint, is
checkpointed and truncated after every purge and retention run.

A final held back for redaction (it may be the start of a number the next final completes)
is kept in ``held_finals`` with every number masked (``bridge.compliance.mask``), replaced
as the leg's held finals change, and never delivered while the bridge runs. A bridge that
starts finds rows there only if the previous one died holding them: they become ordinary
(masked) finals, in order, before the calls left open are closed.

Delivery order is per call: for a target, only the oldest pending delivery of each call is
ever due (``due_heads``), so a retry holds back the rest of that call and nothing else.

The file records its schema in ``PRAGMA user_version``: a file of an older schema is brought
up to date when opened (``Outbox._migrate``), one of a newer schema is refused.

In cluster mode a mirror copies the undelivered events and the calls in progress to Redis
(``bridge.cluster.outbox``). The file says what the copy lacks: each event and live call has
a ``version`` that triggers raise on every change the copy must follow (a delivery finished,
a leg's text grew, held finals replaced) and the ``mirrored`` version last copied (NULL:
never); one that leaves after it was copied leaves a tombstone, so that its removal reaches
Redis even across a crash. Without a mirror nothing is ever copied, so no tombstone is
written and the columns cost nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bridge.errors import ConfigError, OutboxDiskFull
from bridge.events import EventType

# 2: held finals keep their speaker and text beside the body (``_migrate``).
# 3: what the cluster's mirror has copied (``MIRROR_SCHEMA``).
# 4: the transcript lines of calls in progress (``live_finals``, ``held_finals.line``).
SCHEMA_VERSION: Final = 4
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    call_id TEXT NOT NULL,
    leg TEXT,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    mirrored INTEGER
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    target TEXT NOT NULL,
    call_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (event_seq, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (target, state, call_id, event_seq);
CREATE TABLE IF NOT EXISTS targets (
    name TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret_env TEXT NOT NULL,
    disabled_at REAL,
    disabled_reason TEXT
);
CREATE TABLE IF NOT EXISTS live_calls (
    call_id TEXT PRIMARY KEY,
    started TEXT NOT NULL,
    targets TEXT NOT NULL,
    started_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0,
    mirrored INTEGER
);
CREATE TABLE IF NOT EXISTS held_finals (
    call_id TEXT NOT NULL,
    leg TEXT NOT NULL,
    position INTEGER NOT NULL,
    id TEXT NOT NULL,
    body BLOB NOT NULL,
    targets TEXT NOT NULL,
    speaker TEXT,
    text TEXT NOT NULL DEFAULT '',
    line TEXT,
    PRIMARY KEY (call_id, leg, position)
);
CREATE TABLE IF NOT EXISTS live_legs (
    call_id TEXT NOT NULL REFERENCES live_calls(call_id) ON DELETE CASCADE,
    leg TEXT NOT NULL,
    speaker TEXT,
    text TEXT NOT NULL DEFAULT '',
    transcripts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (call_id, leg)
);
CREATE TABLE IF NOT EXISTS live_finals (
    call_id TEXT NOT NULL REFERENCES live_calls(call_id) ON DELETE CASCADE,
    leg TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (call_id, leg, sequence)
) WITHOUT ROWID;
"""

# After ``_migrate``: these name the columns schema 3 added.
MIRROR_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS mirror_tombstones (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('event', 'call')),
    key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_to_mirror ON events (seq) WHERE mirrored IS NOT version;
CREATE INDEX IF NOT EXISTS calls_to_mirror ON live_calls (call_id)
    WHERE mirrored IS NOT version;
CREATE TRIGGER IF NOT EXISTS mirror_delivery_finished AFTER UPDATE OF state ON deliveries
    WHEN NEW.state IS NOT OLD.state
    BEGIN UPDATE events SET version = version + 1 WHERE seq = NEW.event_seq; END;
CREATE TRIGGER IF NOT EXISTS mirror_event_gone AFTER DELETE ON events
    WHEN OLD.mirrored IS NOT NULL
    BEGIN INSERT INTO mirror_tombstones (kind, key) VALUES ('event', OLD.seq); END;
CREATE TRIGGER IF NOT EXISTS mirror_leg_added AFTER INSERT ON live_legs
    BEGIN UPDATE live_calls SET version = version + 1 WHERE call_id = NEW.call_id; END;
CREATE TRIGGER IF NOT EXISTS mirror_leg_grew AFTER UPDATE ON live_legs
    BEGIN UPDATE live_calls SET version = version + 1 WHERE call_id = NEW.call_id; END;
CREATE TRIGGER IF NOT EXISTS mirror_held_added AFTER INSERT ON held_finals
    BEGIN UPDATE live_calls SET version = version + 1 WHERE call_id = NEW.call_id; END;
CREATE TRIGGER IF NOT EXISTS mirror_held_gone AFTER DELETE ON held_finals
    BEGIN UPDATE live_calls SET version = version + 1 WHERE call_id = OLD.call_id; END;
CREATE TRIGGER IF NOT EXISTS mirror_call_gone AFTER DELETE ON live_calls
    WHEN OLD.mirrored IS NOT NULL
    BEGIN INSERT INTO mirror_tombstones (kind, key) VALUES ('call', OLD.call_id); END;
"""


FILE_MODE: Final = 0o600
DIRECTORY_MODE: Final = 0o700
SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def secure_location(path: str | Path) -> None:
    """Prepare the outbox file's place: its directory created 0700 when missing, the file
    created 0600, and the file and its side files made 0600 when they already exist.

    Raises ``ConfigError`` naming ``outbox.path`` when the place cannot be prepared.
    """
    path = Path(path)
    try:
        if not path.parent.exists():
            path.parent.mkdir(mode=DIRECTORY_MODE, parents=True)
        if not path.exists():
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE))
        _tighten_modes(path)
    except OSError as exc:
        raise ConfigError("outbox.path", f"cannot create {path}: "
                          f"{exc.strerror or type(exc).__name__}") from None


def _tighten_modes(path: Path) -> None:
    """Make the file and its side files 0600 by name: never by opening them, because closing
    any descriptor of a database drops this process's POSIX locks on it, which SQLite relies
    on to know that a connection is using the WAL."""
    for candidate in (path, *(path.with_name(path.name + side) for side in SIDE_FILES)):
        if candidate.exists():
            os.chmod(candidate, FILE_MODE)


@dataclass(frozen=True, slots=True)
class LegText:
    """What a final adds to its leg's text so far, which closing the call after a restart
    reports, and its transcript line (``bridge.artifacts.completed.transcript_line``) for
    the call's ``call.completed`` then; ``line`` None: none kept."""

    speaker: str | None
    text: str
    line: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as the outbox keeps it, everything given explicitly: the outbox never reads
    the body, it only stores and returns it.

    ``opens_call`` (a ``call.started``) starts tracking the call with that data; ``adds``
    (a final) appends to its leg's text; a ``call.ended`` stops tracking the call.
    """

    id: str
    type: EventType
    call_id: str
    leg: str | None
    body: bytes
    targets: tuple[str, ...]
    opens_call: Mapping[str, object] | None = None
    adds: LegText | None = None


@dataclass(frozen=True, slots=True)
class HeldFinals:
    """A leg's held finals, already masked, in order: they replace the leg's previous ones."""

    call_id: str
    leg: str
    finals: tuple[StoredEvent, ...]


@dataclass(frozen=True, slots=True)
class DueDelivery:
    event_seq: int
    event_id: str
    event_type: str
    call_id: str
    body: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True, slots=True)
class HeldFinal:
    """One held final (masked) of a leg, in its order."""

    leg: str
    id: str
    body: bytes
    targets: tuple[str, ...]
    speaker: str | None
    text: str
    line: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class LiveCall:
    """A call in progress (or one that was when the bridge stopped); ``held`` only as the
    mirror reads it. ``lines``: the transcript lines of its stored finals, by leg and
    sequence."""

    call_id: str
    started: dict[str, Any]  # the call.started event's data
    targets: tuple[str, ...]
    legs: list[dict[str, Any]]
    held: tuple[HeldFinal, ...] = ()
    lines: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class ToMirror:
    """What the copy in Redis lacks, oldest first: events with the targets still pending
    (None: nothing pending, the copy goes), live calls with their held finals, removals,
    every known target (name -> url, secret's variable) when there are events, and how
    many events are too young to be in it yet."""

    events: list[tuple[int, int, StoredEvent | None]]  # (seq, version, event)
    calls: list[tuple[int, LiveCall]]  # (version, call)
    removed: list[tuple[int, str, str]]  # tombstones: (id, 'event' or 'call', seq or call id)
    targets: dict[str, tuple[str, str]]
    young: int = 0  # events left for a later batch: stored within the grace period

    @property
    def empty(self) -> bool:
        return not (self.events or self.calls or self.removed)


@dataclass(frozen=True, slots=True)
class Adopted:
    """What ``adopt`` added: per new event, its call and targets (for delivery's counts)."""

    events: list[tuple[str, tuple[str, ...]]]
    skipped: int  # events already here (a takeover redone)


class Outbox:
    """The SQLite outbox. Not thread-safe: one thread uses one ``Outbox``."""

    def __init__(self, path: str | Path, *, max_events: int = 1_000_000,
                 retention_days: float = 0.0) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.retention_s = retention_days * 86400
        secure_location(self.path)
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        self.db.row_factory = sqlite3.Row
        # Deleted transcripts are overwritten with zeros, not left in free pages.
        self.db.execute("PRAGMA secure_delete=ON")
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a crash of this process; only a power loss
        # can lose the last transactions.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        try:
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise ConfigError("outbox.path", f"{self.path} was written by a newer "
                                  f"callbridge (outbox schema {version}, this one knows "
                                  f"{SCHEMA_VERSION})")
            self.db.executescript(SCHEMA)
            self._migrate()
            self.db.executescript(MIRROR_SCHEMA)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self.db.close()  # the caller gets no Outbox to close
            raise
        # SQLite gives new -wal/-shm files the database file's mode; ones left by an older
        # version are tightened here.
        _tighten_modes(self.path)
        self._count = self._count_events()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        """Bring a file of an older schema up to date, in place (``CREATE TABLE IF NOT
        EXISTS`` leaves an existing table as it was).

        Schema 1 held finals had only their body: their speaker and text are copied out of
        it once, here, so that nothing after this reads a stored body. Schema 3 adds the
        mirror's versions to events and live calls (nothing of an older file was copied).
        Schema 4 adds held finals' transcript lines (None for those of an older file: a
        call they belong to tells its transcript without them).
        """
        for table in ("events", "live_calls"):
            columns = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if "mirrored" not in columns:
                with self._transaction():
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN "
                                    "version INTEGER NOT NULL DEFAULT 0")
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN mirrored INTEGER")
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(held_finals)")}
        if "line" not in columns:
            with self._transaction():
                self.db.execute("ALTER TABLE held_finals ADD COLUMN line TEXT")
        if "text" in columns:
            return
        with self._transaction():
            self.db.execute("ALTER TABLE held_finals ADD COLUMN speaker TEXT")
            self.db.execute("ALTER TABLE held_finals ADD COLUMN text TEXT NOT NULL DEFAULT ''")
            for row in self.db.execute("SELECT rowid, body FROM held_finals").fetchall():
                data = json.loads(bytes(row["body"])).get("data", {})
                self.db.execute("UPDATE held_finals SET speaker=?, text=? WHERE rowid=?",
                                (data.get("speaker"), data.get("text") or "", row["rowid"]))

    def _count_events(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    # -- writing ------------------------------------------------------------------------------

    def register_targets(self, targets: Iterable[tuple[str, str, str]]) -> None:
        """Record (name, url, secret_env) so a restarted bridge can reach per-call targets."""
        with self._transaction():
            self.db.executemany(
                "INSERT INTO targets (name, url, secret_env) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET url=excluded.url, "
                "secret_env=excluded.secret_env", list(targets))

    def forget_targets(self, names: Sequence[str]) -> None:
        """Delete the rows of retired targets that no pending or dead delivery still needs
        (a dead one keeps its target's URL for ``replay``)."""
        if not names:
            return
        with self._transaction():
            self.db.executemany(
                "DELETE FROM targets WHERE name=? AND NOT EXISTS (SELECT 1 FROM deliveries "
                "WHERE target=targets.name AND state IN ('pending', 'dead'))",
                [(name,) for name in names])

    def store(self, batch: Sequence[StoredEvent], now: float | None = None,
              held: Sequence[HeldFinals] = ()) -> list[bool]:
        """Store events, then replace legs' held finals, in one transaction; per event, True
        if stored, False if the outbox is full. Raises ``OutboxDiskFull`` when the disk is."""
        now = time.time() if now is None else now
        stored: list[bool] = []
        try:
            with self._transaction():
                for item in batch:
                    if self._count >= self.max_events:
                        stored.append(False)
                        continue
                    self._insert(item, now)
                    stored.append(True)
                for snapshot in held:
                    self._replace_held(snapshot)
        except sqlite3.OperationalError as exc:
            self._count = self._count_events()
            if "full" in str(exc).lower():
                raise OutboxDiskFull(str(exc)) from None
            raise
        return stored

    def _replace_held(self, snapshot: HeldFinals) -> None:
        self.db.execute("DELETE FROM held_finals WHERE call_id=? AND leg=?",
                        (snapshot.call_id, snapshot.leg))
        self.db.executemany(
            "INSERT INTO held_finals (call_id, leg, position, id, body, targets, speaker, text, "
            "line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(snapshot.call_id, snapshot.leg, n, item.id, item.body,
              json.dumps(list(item.targets)), item.adds.speaker if item.adds else None,
              item.adds.text if item.adds else "", _line_json(item.adds))
             for n, item in enumerate(snapshot.finals)])

    def release_held(self, now: float | None = None) -> int:
        """Turn finals a dead process held into deliverable events, leg by leg in order (their
        text is masked), so that they are delivered and closing their calls includes them.
        Returns how many. Only for a start: a running bridge's held finals stay held."""
        now = time.time() if now is None else now
        with self._transaction():
            return len(self._release_held(now))

    def _release_held(self, now: float, call_ids: Sequence[str] | None = None,
                      ) -> list[tuple[str, tuple[str, ...]]]:
        where, args = "", tuple[str, ...]()
        if call_ids is not None:
            where = f"WHERE call_id IN ({','.join('?' * len(call_ids))}) "
            args = tuple(call_ids)
        rows = self.db.execute(
            "SELECT call_id, leg, id, body, targets, speaker, text, line "  # noqa: S608
            f"FROM held_finals {where}ORDER BY call_id, leg, position", args).fetchall()
        released = []
        for row in rows:
            targets = tuple(json.loads(row["targets"]))
            if self.db.execute("SELECT 1 FROM events WHERE id=?", (row["id"],)).fetchone():
                continue  # released already (a takeover redone)
            self._insert(StoredEvent(
                row["id"], EventType.TRANSCRIPT_FINAL, row["call_id"], row["leg"],
                bytes(row["body"]), targets,
                adds=LegText(row["speaker"], row["text"], _line(row["line"]))), now)
            released.append((row["call_id"], targets))
        self.db.execute(f"DELETE FROM held_finals {where}", args)  # noqa: S608
        return released

    def _insert(self, item: StoredEvent, now: float) -> None:
        cursor = self.db.execute(
            "INSERT INTO events (id, type, call_id, leg, body, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (item.id, str(item.type), item.call_id, item.leg, item.body, now))
        seq = cursor.lastrowid
        self.db.executemany(
            "INSERT INTO deliveries (event_seq, target, call_id, state, next_attempt_at, "
            "updated_at) VALUES (?, ?, ?, 'pending', ?, ?)",
            [(seq, target, item.call_id, now, now) for target in item.targets])
        self._count += 1
        self._track_call(item, now)
        if not item.targets:
            self._finish_event(int(seq or 0), now)

    def _track_call(self, item: StoredEvent, now: float) -> None:
        if item.opens_call is not None:
            self.db.execute(
                # Never REPLACE: a row is one stream's, and no other stream may overwrite it
                # (its targets and its finals are what recovery delivers).
                "INSERT INTO live_calls (call_id, started, targets, started_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(call_id) DO NOTHING",
                (item.call_id, json.dumps(dict(item.opens_call)), json.dumps(list(item.targets)),
                 now))
        elif item.adds is not None and item.leg is not None:
            self.db.execute(
                "INSERT INTO live_legs (call_id, leg, speaker, text, transcripts) "
                "SELECT ?, ?, ?, ?, 1 WHERE EXISTS (SELECT 1 FROM live_calls WHERE call_id=?) "
                "ON CONFLICT(call_id, leg) DO UPDATE SET "
                "text = CASE WHEN text = '' THEN excluded.text "
                "ELSE text || ' ' || excluded.text END, transcripts = transcripts + 1",
                (item.call_id, item.leg, item.adds.speaker, item.adds.text, item.call_id))
            line = item.adds.line
            if line is not None and isinstance(line.get("sequence"), int):
                self.db.execute(
                    # The leg's row above already raised the call's version for the mirror.
                    "INSERT INTO live_finals (call_id, leg, sequence, line) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM live_calls WHERE call_id=?) "
                    "ON CONFLICT DO NOTHING",
                    (item.call_id, item.leg, line["sequence"], _line_json(item.adds),
                     item.call_id))
        elif item.type is EventType.CALL_ENDED:
            self.db.execute("DELETE FROM live_calls WHERE call_id=?", (item.call_id,))
            self.db.execute("DELETE FROM held_finals WHERE call_id=?", (item.call_id,))

    def mark_delivered(self, event_seq: int, target: str, status: int,
                       now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction():
            self.db.execute(
                "UPDATE deliveries SET state='delivered', attempts=attempts+1, last_status=?, "
                "last_error=NULL, updated_at=? WHERE event_seq=? AND target=?",
                (status, now, event_seq, target))
            self._finish_event(event_seq, now)

    def schedule_retry(self, event_seq: int, target: str, at: float, error: str,
                       status: int | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction():
            self.db.execute(
                "UPDATE deliveries SET attempts=attempts+1, next_attempt_at=?, last_status=?, "
                "last_error=?, updated_at=? WHERE event_seq=? AND target=?",
                (at, status, error, now, event_seq, target))

    def mark_dead(self, event_seq: int, target: str, error: str, status: int | None,
                  now: float | None = None, *, attempted: bool = True) -> None:
        now = time.time() if now is None else now
        with self._transaction():
            self.db.execute(
                "UPDATE deliveries SET state='dead', attempts=attempts+?, last_status=?, "
                "last_error=?, updated_at=? WHERE event_seq=? AND target=?",
                (1 if attempted else 0, status, error, now, event_seq, target))
            self._finish_event(event_seq, now)

    def check_writable(self) -> None:
        """Raises if the outbox cannot take a write now (for readiness)."""
        with self._transaction():
            self.db.execute("UPDATE targets SET name = name WHERE 0")

    def retry_now(self, now: float | None = None) -> int:
        """Make every pending delivery due (at start: the receivers may be back)."""
        now = time.time() if now is None else now
        with self._transaction():
            return int(self.db.execute(
                "UPDATE deliveries SET next_attempt_at=? WHERE state='pending' AND "
                "next_attempt_at > ?", (now, now)).rowcount)

    def disable_target(self, target: str, reason: str, now: float | None = None) -> int:
        """Disable a target and dead-letter its pending deliveries; returns how many."""
        now = time.time() if now is None else now
        with self._transaction():
            self.db.execute("UPDATE targets SET disabled_at=?, disabled_reason=? WHERE name=?",
                            (now, reason, target))
            seqs = [row[0] for row in self.db.execute(
                "SELECT event_seq FROM deliveries WHERE target=? AND state='pending'",
                (target,))]
            self.db.execute(
                "UPDATE deliveries SET state='dead', last_error=?, updated_at=? "
                "WHERE target=? AND state='pending'", (reason, now, target))
            for seq in seqs:
                self._finish_event(seq, now)
        return len(seqs)

    def disabled_targets(self) -> dict[str, str]:
        return {row["name"]: row["disabled_reason"] or "" for row in self.db.execute(
            "SELECT name, disabled_reason FROM targets WHERE disabled_at IS NOT NULL")}

    def _finish_event(self, event_seq: int, now: float) -> None:
        """Delete the event once no delivery is pending, unless retention keeps it."""
        if self.retention_s > 0:
            return
        pending = self.db.execute(
            "SELECT COUNT(*) FROM deliveries WHERE event_seq=? AND state <> 'delivered'",
            (event_seq,)).fetchone()[0]
        if pending == 0:
            self._delete_events([event_seq])

    def _delete_events(self, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        self.db.executemany("DELETE FROM events WHERE seq=?", [(s,) for s in seqs])
        self._count -= len(seqs)

    def purge(self, older_than_s: float, *, include_dead: bool,
              now: float | None = None) -> int:
        """Delete finished events older than ``older_than_s``; dead ones only if asked."""
        now = time.time() if now is None else now
        finished = ("delivered", "dead") if include_dead else ("delivered", "delivered")
        with self._transaction():
            seqs = [row[0] for row in self.db.execute(
                "SELECT seq FROM events e WHERE created_at < ? AND NOT EXISTS ("
                "SELECT 1 FROM deliveries d WHERE d.event_seq = e.seq AND d.state NOT IN (?, ?))",
                (now - older_than_s, *finished))]
            self._delete_events(seqs)
        self.checkpoint()
        return len(seqs)

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it: page images of deleted rows do not
        linger in the WAL. Skipped quietly while another connection reads."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def purge_retained(self, now: float | None = None) -> int:
        """Apply ``retention_days`` to delivered events."""
        if self.retention_s <= 0:
            self.checkpoint()  # events already left as they were delivered
            return 0
        return self.purge(self.retention_s, include_dead=False, now=now)

    def replay(self, *, event_id: str | None = None, dead: bool = False,
               now: float | None = None) -> int:
        """Make dead (or, by id, any undelivered) deliveries pending again; re-enables their
        targets. Returns how many deliveries were re-queued."""
        now = time.time() if now is None else now
        where = "state='dead'"
        args: tuple[Any, ...] = ()
        if event_id is not None:
            where = "state <> 'delivered' AND event_seq=(SELECT seq FROM events WHERE id=?)"
            args = (event_id,)
        elif not dead:
            return 0
        with self._transaction():
            targets = [row[0] for row in self.db.execute(
                f"SELECT DISTINCT target FROM deliveries WHERE {where}", args)]  # noqa: S608
            changed = self.db.execute(
                f"UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?, "  # noqa: S608
                f"updated_at=? WHERE {where}", (now, now, *args)).rowcount
            self.db.executemany("UPDATE targets SET disabled_at=NULL, disabled_reason=NULL "
                                "WHERE name=?", [(t,) for t in targets])
        return int(changed)

    # -- reading ------------------------------------------------------------------------------

    def due_heads(self, target: str, now: float, limit: int,
                  busy_calls: Iterable[str] = ()) -> tuple[list[DueDelivery], float | None]:
        """The oldest pending delivery of each call for ``target`` that is due now, and the
        time the next not-yet-due head falls due (None if there is none)."""
        busy = set(busy_calls)
        due: list[DueDelivery] = []
        next_at: float | None = None
        rows = self.db.execute(
            "SELECT d.event_seq, d.call_id, d.attempts, d.next_attempt_at, e.id, e.type, "
            "e.body, e.created_at FROM deliveries d JOIN events e ON e.seq = d.event_seq "
            "WHERE d.target=? AND d.state='pending' AND d.event_seq = ("
            "  SELECT MIN(d2.event_seq) FROM deliveries d2 WHERE d2.target=d.target "
            "  AND d2.state='pending' AND d2.call_id=d.call_id) "
            "ORDER BY d.next_attempt_at, d.event_seq", (target,))
        for row in rows:
            if row["call_id"] in busy:
                continue
            if row["next_attempt_at"] > now:
                next_at = row["next_attempt_at"] if next_at is None else min(
                    next_at, row["next_attempt_at"])
                continue
            if len(due) < limit:
                due.append(DueDelivery(row["event_seq"], row["id"], row["type"],
                                       row["call_id"], bytes(row["body"]), row["attempts"],
                                       row["created_at"]))
        return due, next_at

    def pending_by_target(self) -> dict[str, dict[str, int]]:
        """Per target, per call: deliveries still waiting."""
        pending: dict[str, dict[str, int]] = {}
        for row in self.db.execute(
                "SELECT target, call_id, COUNT(*) FROM deliveries WHERE state='pending' "
                "GROUP BY target, call_id"):
            pending.setdefault(row[0], {})[row[1]] = int(row[2])
        return pending

    def live_calls(self, call_ids: Sequence[str] | None = None) -> list[LiveCall]:
        """The calls in progress (all, or those of ``call_ids``), with each leg's text."""
        calls = []
        for row in self.db.execute("SELECT call_id, started, targets FROM live_calls"):
            if call_ids is not None and row["call_id"] not in call_ids:
                continue
            calls.append(self._live_call(row))
        return calls

    def _live_call(self, row: sqlite3.Row, *, held: bool = False) -> LiveCall:
        legs = [dict(leg) for leg in self.db.execute(
            "SELECT leg, speaker, text, transcripts FROM live_legs WHERE call_id=? "
            "ORDER BY leg", (row["call_id"],))]
        finals: tuple[HeldFinal, ...] = ()
        if held:
            finals = tuple(HeldFinal(h["leg"], h["id"], bytes(h["body"]),
                                     tuple(json.loads(h["targets"])), h["speaker"], h["text"],
                                     _line(h["line"]))
                           for h in self.db.execute(
                               "SELECT leg, id, body, targets, speaker, text, line "
                               "FROM held_finals WHERE call_id=? ORDER BY leg, position",
                               (row["call_id"],)))
        lines = tuple(line for (raw,) in self.db.execute(
            "SELECT line FROM live_finals WHERE call_id=? ORDER BY leg, sequence",
            (row["call_id"],)) if (line := _line(raw)) is not None)
        return LiveCall(row["call_id"], json.loads(row["started"]),
                        tuple(json.loads(row["targets"])), legs, finals, lines)

    def targets(self) -> dict[str, tuple[str, str]]:
        return {row["name"]: (row["url"], row["secret_env"])
                for row in self.db.execute("SELECT name, url, secret_env FROM targets")}

    def status(self) -> list[dict[str, Any]]:
        """Per target: pending (never tried), retrying, dead and delivered-but-kept counts."""
        rows = self.db.execute(
            "SELECT target, "
            "SUM(state='pending' AND attempts=0) AS pending, "
            "SUM(state='pending' AND attempts>0) AS retrying, "
            "SUM(state='dead') AS dead, SUM(state='delivered') AS delivered, "
            "MIN(CASE WHEN state='pending' THEN next_attempt_at END) AS next_attempt_at "
            "FROM deliveries GROUP BY target ORDER BY target")
        disabled = self.disabled_targets()
        return [dict(row) | {"disabled": row["target"] in disabled} for row in rows]

    def list_deliveries(self, *, dead: bool, limit: int = 100) -> list[dict[str, Any]]:
        state = "dead" if dead else "pending"
        return [dict(row) for row in self.db.execute(
            "SELECT e.id, e.type, e.call_id, e.leg, d.target, d.attempts, d.last_status, "
            "d.last_error, e.created_at, d.updated_at FROM deliveries d "
            "JOIN events e ON e.seq = d.event_seq WHERE d.state=? ORDER BY d.event_seq "
            "LIMIT ?", (state, limit))]

    # -- the cluster's mirror ------------------------------------------------------------------

    def to_mirror(self, limit: int, grace_s: float = 0.0,
                  now: float | None = None) -> ToMirror:
        """Up to ``limit`` each of the events, live calls and removals the copy lacks;
        events stored less than ``grace_s`` ago wait (one delivered meanwhile is never
        copied), counted in ``young``.

        Calls and removals come only with the last batch of events, so that a call's
        ``call.ended`` is copied before the call's own copy leaves."""
        cutoff = (time.time() if now is None else now) - grace_s
        events: list[tuple[int, int, StoredEvent | None]] = []
        for row in self.db.execute(
                "SELECT seq, version, id, type, call_id, leg, body, (SELECT json_group_array("
                "target) FROM (SELECT target FROM deliveries WHERE event_seq=seq "
                "AND state='pending' ORDER BY target)) AS pending FROM events "
                "WHERE mirrored IS NOT version AND created_at <= ? ORDER BY seq LIMIT ?",
                (cutoff, limit)):
            targets = tuple(json.loads(row["pending"]))
            event = StoredEvent(row["id"], EventType(row["type"]), row["call_id"], row["leg"],
                                bytes(row["body"]), targets) if targets else None
            events.append((row["seq"], row["version"], event))
        if len(events) == limit:
            return ToMirror(events, [], [], self.targets())
        young = int(self.db.execute(
            "SELECT COUNT(*) FROM events WHERE mirrored IS NOT version AND created_at > ?",
            (cutoff,)).fetchone()[0]) if grace_s > 0 else 0
        calls = [(row["version"], self._live_call(row, held=True)) for row in self.db.execute(
            "SELECT call_id, started, targets, version FROM live_calls "
            "WHERE mirrored IS NOT version LIMIT ?", (limit,)).fetchall()]
        removed = [(row[0], row[1], row[2]) for row in self.db.execute(
            "SELECT id, kind, key FROM mirror_tombstones ORDER BY id LIMIT ?", (limit,))]
        return ToMirror(events, calls, removed, self.targets() if events else {}, young)

    def mark_mirrored(self, batch: ToMirror, next_limit: int = 0,
                      grace_s: float = 0.0) -> ToMirror | None:
        """Record that Redis now has ``batch``. A row changed since it was read stays to be
        copied again; one deleted since gets a tombstone, as Redis may now hold it. With
        ``next_limit``, returns the next batch (``to_mirror``), saving the caller a trip."""
        with self._transaction():
            seqs = [seq for seq, _, _ in batch.events]
            present = {row[0] for row in self.db.execute(
                f"SELECT seq FROM events WHERE seq IN ({','.join('?' * len(seqs))})",  # noqa: S608
                seqs)} if seqs else set()
            self.db.executemany("UPDATE events SET mirrored=? WHERE seq=?",
                                [(version, seq) for seq, version, _ in batch.events
                                 if seq in present])
            self.db.executemany("INSERT INTO mirror_tombstones (kind, key) VALUES ('event', ?)",
                                [(str(seq),) for seq in seqs if seq not in present])
            for version, call in batch.calls:
                if not self.db.execute("UPDATE live_calls SET mirrored=? WHERE call_id=?",
                                       (version, call.call_id)).rowcount:
                    self.db.execute("INSERT INTO mirror_tombstones (kind, key) "
                                    "VALUES ('call', ?)", (call.call_id,))
            self.db.executemany("DELETE FROM mirror_tombstones WHERE id=?",
                                [(tombstone_id,) for tombstone_id, _, _ in batch.removed])
        return self.to_mirror(next_limit, grace_s) if next_limit else None

    def mirror_backlog(self) -> int:
        """Events, live calls and removals the copy in Redis lacks."""
        return int(self.db.execute(
            "SELECT (SELECT COUNT(*) FROM events WHERE mirrored IS NOT version) + "
            "(SELECT COUNT(*) FROM live_calls WHERE mirrored IS NOT version) + "
            "(SELECT COUNT(*) FROM mirror_tombstones)").fetchone()[0])

    def mirrored_keys(self) -> tuple[set[str], set[str]]:
        """The seqs (as text) of the events and the ids of the live calls copied at least
        once: a copy in Redis of anything else is stale."""
        return ({str(row[0]) for row in self.db.execute(
                    "SELECT seq FROM events WHERE mirrored IS NOT NULL")},
                {row[0] for row in self.db.execute(
                    "SELECT call_id FROM live_calls WHERE mirrored IS NOT NULL")})

    def mirror_again(self) -> None:
        """Make the whole file to be copied again (Redis's copy is not trusted)."""
        with self._transaction():
            self.db.execute("UPDATE events SET mirrored=NULL")
            self.db.execute("UPDATE live_calls SET mirrored=NULL")
            self.db.execute("DELETE FROM mirror_tombstones")

    def drop_mirrored(self) -> tuple[int, int]:
        """Delete the events and live calls that were copied to Redis (another instance took
        them over); returns how many of each. What was never copied stays."""
        with self._transaction():
            calls = [row[0] for row in self.db.execute(
                "SELECT call_id FROM live_calls WHERE mirrored IS NOT NULL")]
            self.db.executemany("DELETE FROM held_finals WHERE call_id=?",
                                [(c,) for c in calls])
            self.db.executemany("DELETE FROM live_calls WHERE call_id=?", [(c,) for c in calls])
            events = self.db.execute("DELETE FROM events WHERE mirrored IS NOT NULL").rowcount
            self.db.execute("DELETE FROM mirror_tombstones")
        self._count = self._count_events()
        return int(events), len(calls)

    def is_empty(self) -> bool:
        """No event and no live call: a new file, or one with nothing left to do."""
        return self._count == 0 and self.db.execute(
            "SELECT 1 FROM live_calls LIMIT 1").fetchone() is None

    def adopt(self, events: Sequence[StoredEvent], calls: Sequence[LiveCall],
              targets: Iterable[tuple[str, str, str]] = (), *, release_held: bool = False,
              now: float | None = None) -> Adopted:
        """Add another outbox's events (each keeping its id, so a receiver sees the same
        ``webhook-id``) after everything here, in the order given, and its live calls with
        their legs' text and held finals; in one transaction. Events whose id is already
        here are skipped (a takeover redone). ``outbox.max_events`` does not refuse them:
        they were already accepted once. ``release_held``: the calls' held finals become
        ordinary (masked) finals at once, as at a restart."""
        now = time.time() if now is None else now
        added: list[tuple[str, tuple[str, ...]]] = []
        skipped = 0
        with self._transaction():
            self.db.executemany(
                "INSERT INTO targets (name, url, secret_env) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO NOTHING", list(targets))
            for item in events:
                if self.db.execute("SELECT 1 FROM events WHERE id=?",
                                   (item.id,)).fetchone() is not None:
                    skipped += 1
                    continue
                self._insert(StoredEvent(item.id, item.type, item.call_id, item.leg,
                                         item.body, item.targets), now)
                added.append((item.call_id, item.targets))
            for call in calls:
                self.db.execute(
                    "INSERT INTO live_calls (call_id, started, targets, started_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT(call_id) DO NOTHING",
                    (call.call_id, json.dumps(call.started), json.dumps(list(call.targets)),
                     now))
                self.db.executemany(
                    "INSERT INTO live_legs (call_id, leg, speaker, text, transcripts) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(call_id, leg) DO NOTHING",
                    [(call.call_id, leg.get("leg"), leg.get("speaker"), leg.get("text") or "",
                      int(leg.get("transcripts") or 0)) for leg in call.legs])
                self.db.executemany(
                    "INSERT INTO live_finals (call_id, leg, sequence, line) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(call.call_id, str(line.get("leg")), line["sequence"],
                      json.dumps(line, separators=(",", ":"), ensure_ascii=False))
                     for line in call.lines if isinstance(line.get("sequence"), int)])
                for position, held in enumerate(call.held):
                    self.db.execute(
                        "INSERT INTO held_finals (call_id, leg, position, id, body, targets, "
                        "speaker, text, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT(call_id, leg, position) DO NOTHING",
                        (call.call_id, held.leg, position, held.id, held.body,
                         json.dumps(list(held.targets)), held.speaker, held.text,
                         None if held.line is None else json.dumps(
                             held.line, separators=(",", ":"), ensure_ascii=False)))
            if release_held and calls:
                added += self._release_held(now, [call.call_id for call in calls])
        return Adopted(added, skipped)

    @property
    def event_count(self) -> int:
        return self._count

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)


def _line_json(adds: LegText | None) -> str | None:
    """A final's transcript line as stored: compact JSON."""
    if adds is None or adds.line is None:
        return None
    return json.dumps(dict(adds.line), separators=(",", ":"), ensure_ascii=False)


def _line(raw: str | None) -> dict[str, Any] | None:
    """A stored transcript line (None: none, or not one this code wrote)."""
    if raw is None:
        return None
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite already rolled back on some errors (disk full)
            self.db.execute("ROLLBACK")
