"""The transcript lines the outbox keeps of calls in progress, on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.outbox import SCHEMA_VERSION, HeldFinals, LiveCall, Outbox, StoredEvent
from bridge.delivery.writer import record
from bridge.events import EventType, make_event

T0 = 1_800_000_000.0


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    opened = Outbox(tmp_path / "o.db")
    yield opened
    opened.close()


def event(kind: EventType, call: str = "CA1", **data: Any) -> StoredEvent:
    made = make_event(kind, {"call_id": call, "stream_id": "S", "provider": "twilio",
                             "custom_parameters": {}, **data},
                      call_id=call, leg=data.get("leg"), targets=("a",))
    return record(made, ("a",))


def final(sequence: int, text: str, leg: str = "inbound", call: str = "CA1",
          start_ms: int = 0) -> StoredEvent:
    return event(EventType.TRANSCRIPT_FINAL, call, leg=leg,
                 speaker="caller" if leg == "inbound" else "agent", sequence=sequence,
                 text=text, is_final=True, confidence=0.9, start_ms=start_ms,
                 end_ms=start_ms + 500, redactions=[], words=[{"text": text}])


def deliver_everything(outbox: Outbox) -> None:
    while True:
        due, _ = outbox.due_heads("a", T0, 100)
        if not due:
            return
        for item in due:
            outbox.mark_delivered(item.event_seq, "a", 204, now=T0)


def texts(call: LiveCall) -> list[tuple[str, int, str]]:
    return [(line["leg"], line["sequence"], line["text"]) for line in call.lines]


def test_a_live_calls_lines_outlive_the_delivery_of_its_finals(outbox: Outbox) -> None:
    outbox.store([event(EventType.CALL_STARTED), final(1, "hello", start_ms=0),
                  final(1, "how can I help", leg="outbound", start_ms=600),
                  final(2, "my card is [credit_card]", start_ms=1200),
                  final(1, "not live", call="CA-unknown")], now=T0)
    deliver_everything(outbox)
    assert outbox.event_count == 0
    [call] = outbox.live_calls()
    assert texts(call) == [("inbound", 1, "hello"), ("inbound", 2, "my card is [credit_card]"),
                           ("outbound", 1, "how can I help")]
    assert call.lines[0] == {"leg": "inbound", "speaker": "caller", "sequence": 1,
                             "start_ms": 0, "end_ms": 500, "text": "hello"}


def test_call_ended_takes_the_calls_lines_with_it(outbox: Outbox) -> None:
    outbox.store([event(EventType.CALL_STARTED), final(1, "hello"),
                  event(EventType.CALL_STARTED, "CA2"), final(1, "other", call="CA2")], now=T0)
    outbox.store([event(EventType.CALL_ENDED, reason="stopped")], now=T0)
    assert [tuple(row) for row in outbox.db.execute(
        "SELECT call_id, line FROM live_finals")] == [
        ("CA2", '{"leg":"inbound","speaker":"caller","sequence":1,"start_ms":0,'
                '"end_ms":500,"text":"other"}')]


def test_finals_held_at_a_crash_join_the_lines_masked_at_the_restart(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "o.db")
    held = HeldFinals("CA1", "inbound", (final(2, "my card is # # # #", start_ms=900),))
    first.store([event(EventType.CALL_STARTED), final(1, "hello")], now=T0, held=[held])
    first.close()  # the process died holding a final
    restarted = Outbox(tmp_path / "o.db")
    try:
        [before] = restarted.live_calls()
        assert texts(before) == [("inbound", 1, "hello")]  # held: not said yet
        assert restarted.release_held(now=T0) == 1
        [call] = restarted.live_calls()
        assert texts(call) == [("inbound", 1, "hello"), ("inbound", 2, "my card is # # # #")]
    finally:
        restarted.close()


def test_an_adopted_call_brings_its_lines_once_however_often_adopted(
        outbox: Outbox, tmp_path: Path) -> None:
    outbox.store([event(EventType.CALL_STARTED), final(1, "hello")], now=T0,
                 held=[HeldFinals("CA1", "inbound", (final(2, "card # #", start_ms=900),))])
    [lost] = outbox.to_mirror(100).calls[0][1:]  # as the mirror copies it to Redis
    survivor = Outbox(tmp_path / "survivor.db")
    try:
        for _ in range(2):  # a takeover redone
            survivor.adopt([], [lost], release_held=True, now=T0)
        [call] = survivor.live_calls()
        assert texts(call) == [("inbound", 1, "hello"), ("inbound", 2, "card # #")]
    finally:
        survivor.close()


def test_a_schema_3_file_is_migrated_and_its_held_finals_still_close_the_call(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    first = Outbox(path)
    first.store([event(EventType.CALL_STARTED), final(1, "hello")], now=T0,
                held=[HeldFinals("CA1", "inbound", (final(2, "card # #"),))])
    first.close()
    with closing(sqlite3.connect(path)) as db:  # as schema 3 left it
        db.executescript("DROP TABLE live_finals; ALTER TABLE held_finals DROP COLUMN line; "
                         "PRAGMA user_version=3;")
    migrated = Outbox(path)
    try:
        assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert migrated.release_held(now=T0) == 1
        [call] = migrated.live_calls()
        assert call.legs[0]["text"] == "hello card # #"
        assert call.lines == ()  # an older file kept no lines: its transcript is empty
    finally:
        migrated.close()
