"""The outbox on a real SQLite file, without an event loop: storage, state, retention."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.outbox import SCHEMA_VERSION, HeldFinals, LegText, Outbox, StoredEvent
from bridge.delivery.writer import record
from bridge.errors import ConfigError, OutboxDiskFull
from bridge.events import EventType, make_event
from tests.support.outbox_file import SCHEMA_1, write_script

T0 = 1_800_000_000.0
OpenOutbox = Callable[..., Outbox]


@pytest.fixture
def open_outbox(tmp_path: Path) -> Iterator[OpenOutbox]:
    """Opens outbox files in the test's directory, and closes every one afterwards."""
    opened: list[Outbox] = []

    def open_file(name: str, **options: Any) -> Outbox:
        opened.append(Outbox(tmp_path / name, **options))
        return opened[-1]

    yield open_file
    for outbox in opened:
        outbox.close()


def stored(n: int, kind: EventType = EventType.TRANSCRIPT_FINAL, call: str = "CA1",
           targets: tuple[str, ...] = ("a",), text: str = "words") -> StoredEvent:
    final = kind is EventType.TRANSCRIPT_FINAL
    return StoredEvent(
        f"msg_{call}_{kind.value}_{n}", kind, call, "inbound" if final else None,
        b'{"n": %d}' % n, targets,
        opens_call={"call_id": call, "stream_id": "S", "provider": "twilio",
                    "custom_parameters": {}} if kind is EventType.CALL_STARTED else None,
        adds=LegText("caller", text) if final else None)


def test_an_event_leaves_when_every_target_has_it(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(1, targets=("a", "b"))], now=T0)
    [due_a], _ = outbox.due_heads("a", T0, 10)
    outbox.mark_delivered(due_a.event_seq, "a", 204, now=T0)
    assert outbox.event_count == 1
    [due_b], _ = outbox.due_heads("b", T0, 10)
    outbox.mark_dead(due_b.event_seq, "b", "rejected", 400, now=T0)
    assert outbox.event_count == 1  # dead deliveries keep the event for replay
    assert outbox.replay(dead=True, now=T0) == 1
    [again], _ = outbox.due_heads("b", T0, 10)
    outbox.mark_delivered(again.event_seq, "b", 200, now=T0)
    assert outbox.event_count == 0


def test_only_each_calls_oldest_pending_event_is_due(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(1, call="X"), stored(2, call="X"), stored(1, call="Y")], now=T0)
    due, _ = outbox.due_heads("a", T0, 10)
    assert [(d.call_id, d.body) for d in due] == [("X", b'{"n": 1}'), ("Y", b'{"n": 1}')]
    outbox.schedule_retry(due[0].event_seq, "a", T0 + 30, "503", 503, now=T0)
    due, next_at = outbox.due_heads("a", T0 + 1, 10)
    assert [d.call_id for d in due] == ["Y"] and next_at == T0 + 30  # X waits, in order
    due, _ = outbox.due_heads("a", T0 + 1, 10, busy_calls=["Y"])
    assert due == []


def test_retention_keeps_delivered_events_then_purges_them(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db", retention_days=1)
    outbox.store([stored(1), stored(2)], now=T0)
    [first], _ = outbox.due_heads("a", T0, 10)
    outbox.mark_delivered(first.event_seq, "a", 200, now=T0)
    assert outbox.purge_retained(now=T0 + 3600) == 0
    assert outbox.purge_retained(now=T0 + 86400 + 1) == 1  # the pending one stays
    assert outbox.event_count == 1


def test_live_calls_keep_their_finals_until_call_ended(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(0, EventType.CALL_STARTED), stored(1, text="hello there"),
                  stored(2, text="how are you")], now=T0)
    [call] = outbox.live_calls()
    assert call.call_id == "CA1" and call.targets == ("a",)
    assert call.legs == [{"leg": "inbound", "speaker": "caller",
                          "text": "hello there how are you", "transcripts": 2}]
    outbox.store([stored(3, EventType.CALL_ENDED)], now=T0)
    assert outbox.live_calls() == []


def test_a_full_outbox_refuses_and_a_full_disk_is_reported(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db", max_events=2)
    assert outbox.store([stored(1), stored(2), stored(3)], now=T0) == [True, True, False]
    roomy = open_outbox("p.db")
    pages = roomy.db.execute("PRAGMA page_count").fetchone()[0]
    roomy.db.execute(f"PRAGMA max_page_count={pages}")  # the "disk" has no room left
    big = [replace(stored(n), body=b"x" * 4000) for n in range(50)]
    with pytest.raises(OutboxDiskFull):
        roomy.store(big, now=T0)
    assert roomy.event_count == 0


def test_disabling_a_target_dead_letters_its_pending_events(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.register_targets([("a", "https://a.example/h", "SECRET_A")])
    outbox.store([stored(1), stored(2)], now=T0)
    assert outbox.disable_target("a", "410 Gone", now=T0) == 2
    assert outbox.disabled_targets() == {"a": "410 Gone"}
    [row] = outbox.status()
    assert (row["pending"], row["dead"], row["disabled"]) == (0, 2, True)
    outbox.replay(dead=True, now=T0)
    assert outbox.disabled_targets() == {}


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable and writable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_the_outbox_and_its_side_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "o.db"
    outbox = Outbox(path)
    try:
        outbox.store([stored(1)], now=T0)
        files = [path, path.with_name("o.db-wal"), path.with_name("o.db-shm")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    finally:
        outbox.close()


def test_an_outbox_left_readable_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    Outbox(path).close()
    for name in ("o.db", "o.db-wal"):
        (tmp_path / name).touch()
        (tmp_path / name).chmod(0o644)
    Outbox(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_purged_transcript_is_gone_from_the_file_and_its_wal(tmp_path: Path) -> None:
    secret = "the caller said zebra pineapple quartz"
    path = tmp_path / "o.db"
    outbox = Outbox(path, retention_days=1)
    try:
        item = stored(1, text=secret)
        body = replace(item, body=f'{{"text": "{secret}"}}'.encode())
        outbox.store([stored(0, EventType.CALL_STARTED), body,
                      stored(2, EventType.CALL_ENDED)], now=T0)
        for due in outbox.due_heads("a", T0, 10)[0]:
            outbox.mark_delivered(due.event_seq, "a", 204, now=T0)
        while outbox.event_count:
            for due in outbox.due_heads("a", T0, 10)[0]:
                outbox.mark_delivered(due.event_seq, "a", 204, now=T0)
            outbox.purge_retained(now=T0 + 2 * 86400)
        on_disk = b"".join(f.read_bytes() for f in tmp_path.iterdir())
        assert b"zebra pineapple" not in on_disk
    finally:
        outbox.close()


def test_a_missing_directory_is_created_and_an_impossible_one_is_one_line(
        tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        Outbox(blocker / "o.db")
    assert caught.value.setting == "outbox.path"
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "serve", "--port", "0"], capture_output=True,
        text=True, timeout=60, check=False,
        env={**os.environ, "CALLBRIDGE_OUTBOX_PATH": str(blocker / "o.db"),
             "CALLBRIDGE_TELNYX_URL": "ws://127.0.0.1:9/v2/speech-to-text/transcription"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("callbridge: invalid setting outbox.path: cannot create")
    assert "Traceback" not in result.stdout


def held(call: str, leg: str, *texts: str) -> HeldFinals:
    finals = []
    for n, text in enumerate(texts, start=1):
        event = make_event(EventType.TRANSCRIPT_FINAL, {"call_id": call, "leg": leg,
                                                        "speaker": "caller", "sequence": n,
                                                        "text": text},
                           call_id=call, leg=leg, targets=("a",))
        finals.append(record(event, ("a",)))
    return HeldFinals(call, leg, tuple(finals))


def test_held_finals_are_never_due_and_each_snapshot_replaces_the_last(
        open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(0, EventType.CALL_STARTED)], now=T0,
                 held=[held("CA1", "inbound", "first #"), held("CA1", "inbound", "a #", "b #")])
    assert outbox.due_heads("a", T0, 10)[0][0].event_id == "msg_CA1_call.started_0"
    [(count,)] = outbox.db.execute("SELECT COUNT(*) FROM held_finals").fetchall()
    assert count == 2 and outbox.pending_by_target() == {"a": {"CA1": 1}}
    outbox.store([], now=T0, held=[held("CA1", "inbound")])  # released: nothing held
    assert outbox.release_held(now=T0) == 0


def test_a_restart_turns_held_finals_into_finals_in_order_before_closing_calls(
        open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(0, EventType.CALL_STARTED), stored(1, text="hello")], now=T0,
                 held=[held("CA1", "inbound", "my card is # #", "# # thanks")])
    outbox.close()
    restarted = open_outbox("o.db")
    assert restarted.release_held(now=T0) == 2
    [call] = restarted.live_calls()
    assert call.legs[0]["text"] == "hello my card is # # # # thanks"
    assert call.legs[0]["transcripts"] == 3
    bodies = []
    while True:
        due, _ = restarted.due_heads("a", T0, 10)
        if not due:
            break
        bodies.append(due[0].body)
        restarted.mark_delivered(due[0].event_seq, "a", 204, now=T0)
    assert [b'"n": 0' in bodies[0], b'"n": 1' in bodies[1]] == [True, True]
    assert [json.loads(b)["data"]["sequence"] for b in bodies[2:]] == [1, 2]  # as held
    assert [json.loads(b)["data"]["text"] for b in bodies[2:]] == ["my card is # #",
                                                                    "# # thanks"]


def test_call_ended_drops_what_the_call_still_held(open_outbox: OpenOutbox) -> None:
    outbox = open_outbox("o.db")
    outbox.store([stored(0, EventType.CALL_STARTED)], now=T0,
                 held=[held("CA1", "inbound", "#")])
    outbox.store([stored(1, EventType.CALL_ENDED)], now=T0)
    assert outbox.release_held(now=T0) == 0


def test_a_schema_1_file_with_held_finals_is_migrated_and_its_finals_close_the_call(
        tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    held_body = json.dumps({"type": "transcript.final", "timestamp": "t", "data": {
        "call_id": "CA1", "leg": "inbound", "speaker": "caller", "sequence": 2,
        "text": "my card is # #"}}).encode()
    write_script(path, SCHEMA_1)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO live_calls VALUES ('CA1', ?, '[\"a\"]', ?)",
                   (json.dumps({"call_id": "CA1", "stream_id": "S", "provider": "twilio"}), T0))
        db.execute("INSERT INTO live_legs VALUES ('CA1', 'inbound', 'caller', 'hello', 1)")
        db.execute("INSERT INTO held_finals VALUES ('CA1', 'inbound', 0, 'msg_held', ?, "
                   "'[\"a\"]')", (held_body,))
    outbox = Outbox(path)
    try:
        assert outbox.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert outbox.release_held(now=T0) == 1
        [call] = outbox.live_calls()
        assert call.legs == [{"leg": "inbound", "speaker": "caller",
                              "text": "hello my card is # #", "transcripts": 2}]
        [due], _ = outbox.due_heads("a", T0, 10)
        assert (due.event_id, due.body) == ("msg_held", held_body)  # delivered as it was held
    finally:
        outbox.close()


def test_a_file_from_a_newer_version_is_refused_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    write_script(path, f"PRAGMA user_version={SCHEMA_VERSION + 1};")
    with pytest.raises(ConfigError) as caught:
        Outbox(path)
    assert caught.value.setting == "outbox.path" and "newer" in caught.value.problem
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "outbox", "status"], capture_output=True, text=True,
        timeout=60, check=False, env={**os.environ, "CALLBRIDGE_OUTBOX_PATH": str(path)})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("callbridge: invalid setting outbox.path:") and "newer" in line
