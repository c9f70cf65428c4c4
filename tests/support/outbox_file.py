"""Reading a bridge's outbox file the way an auditor would: straight from SQLite."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def stored_events(path: Path) -> list[tuple[str, str]]:
    """Every event stored in the outbox at ``path``: (type, body text), oldest first.

    The connection is closed before returning (``with sqlite3.connect(...)`` alone only ends
    the transaction, and Python 3.13 warns about the connection left open).
    """
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT type, body FROM events ORDER BY seq").fetchall()
    return [(str(kind), bytes(body).decode()) for kind, body in rows]


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    """The rows of one read-only query on the outbox at ``path``, connection closed."""
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()


# An outbox file as schema 1 wrote it (before held finals kept their speaker and text).
SCHEMA_1 = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL, call_id TEXT NOT NULL, leg TEXT, body BLOB NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE deliveries (event_seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    target TEXT NOT NULL, call_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, last_status INTEGER,
    last_error TEXT, updated_at REAL NOT NULL, PRIMARY KEY (event_seq, target));
CREATE INDEX deliveries_due ON deliveries (target, state, call_id, event_seq);
CREATE TABLE targets (name TEXT PRIMARY KEY, url TEXT NOT NULL, secret_env TEXT NOT NULL,
    disabled_at REAL, disabled_reason TEXT);
CREATE TABLE live_calls (call_id TEXT PRIMARY KEY, started TEXT NOT NULL, targets TEXT NOT NULL,
    started_at REAL NOT NULL);
CREATE TABLE held_finals (call_id TEXT NOT NULL, leg TEXT NOT NULL, position INTEGER NOT NULL,
    id TEXT NOT NULL, body BLOB NOT NULL, targets TEXT NOT NULL,
    PRIMARY KEY (call_id, leg, position));
CREATE TABLE live_legs (call_id TEXT NOT NULL REFERENCES live_calls(call_id) ON DELETE CASCADE,
    leg TEXT NOT NULL, speaker TEXT, text TEXT NOT NULL DEFAULT '',
    transcripts INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (call_id, leg));
PRAGMA user_version=1;
"""


def write_script(path: Path, script: str) -> None:
    """Run ``script`` on a new or existing SQLite file at ``path``, connection closed."""
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)
