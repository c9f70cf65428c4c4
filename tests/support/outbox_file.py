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
