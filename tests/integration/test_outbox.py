"""The outbox on a real SQLite file, without an event loop: storage, state, retention."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.delivery.outbox import Outbox, OutboxDiskFull, StoredEvent
from bridge.events import EventType, OutboundEvent

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
    event = OutboundEvent(f"msg_{call}_{kind.value}_{n}", kind, "t",
                          {"call_id": call, "speaker": "caller", "text": text, "stream_id": "S",
                           "provider": "twilio", "custom_parameters": {}},
                          call, "inbound" if kind is EventType.TRANSCRIPT_FINAL else None)
    return StoredEvent(event, b'{"n": %d}' % n, targets)


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
    big = [StoredEvent(item.event, b"x" * 4000, item.targets)
           for item in (stored(n) for n in range(50))]
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
