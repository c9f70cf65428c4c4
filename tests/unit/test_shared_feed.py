"""What a feed shares with other instances, and how a joining viewer's backlog is replayed,
without a server or Redis."""

from __future__ import annotations

import pytest

from bridge.cluster.feeds import MAX_FRAME_BYTES, Entries, frames_of
from bridge.events import EventType
from bridge.web.feed import Frame, LiveFeed, LiveFeeds, LiveTee, replay
from tests.unit.test_live_feed import Sink, event

PARTIAL, FINAL = EventType.TRANSCRIPT_PARTIAL, EventType.TRANSCRIPT_FINAL


def frame(n: int, kind: EventType, leg: str | None = "inbound") -> Frame:
    return Frame(n, kind, leg, b'{"n":%d}' % n)


def test_replay_keeps_only_each_legs_latest_partial_until_its_final() -> None:
    frames = [frame(1, EventType.CALL_STARTED, None), frame(2, PARTIAL), frame(3, PARTIAL),
              frame(4, PARTIAL, "outbound"), frame(5, FINAL), frame(6, PARTIAL),
              frame(7, PARTIAL, "outbound")]
    assert [f.id for f in replay(frames)] == [1, 5, 6, 7]


def test_replay_drops_every_partial_once_the_call_ended() -> None:
    frames = [frame(1, FINAL), frame(2, PARTIAL), frame(3, PARTIAL, "outbound"),
              frame(4, EventType.CALL_ENDED, None)]
    assert [f.id for f in replay(frames)] == [1, 4]


def test_replay_matches_the_local_backlog_for_the_same_events() -> None:
    local = LiveFeed("CA1", backlog_bytes=1 << 20, viewer_buffer=64)
    kinds = [(EventType.CALL_STARTED, None), (PARTIAL, "inbound"), (PARTIAL, "outbound"),
             (PARTIAL, "inbound"), (FINAL, "inbound"), (PARTIAL, "inbound"),
             (FINAL, "outbound"), (PARTIAL, "outbound")]
    published = []
    for n, (kind, leg) in enumerate(kinds, 1):
        published.append(Frame(n, kind, leg, event(kind, leg=leg, sequence=n).body))
        local.publish(event(kind, leg=leg, sequence=n))
    assert [f.id for f in replay(published)] == [f.id for f in local.watch(0).frames]


class Recorder:
    """A mirror that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, str, int | None]] = []

    def opened(self, call_id: str, stream_uid: str) -> None:
        self.told.append(("opened", stream_uid, None))

    def append(self, call_id: str, stream_uid: str, frame: Frame) -> None:
        self.told.append(("frame", stream_uid, frame.id))

    def ended(self, call_id: str, stream_uid: str) -> None:
        self.told.append(("ended", stream_uid, None))


async def test_the_mirror_hears_each_feeds_life_once_in_order() -> None:
    feeds = LiveFeeds(backlog_bytes=65536, viewer_buffer=16, retain_s=60)
    mirror = Recorder()
    feeds.mirror = mirror
    first, second = LiveTee(Sink(), feeds), LiveTee(Sink(), feeds)
    first.publish(event(EventType.CALL_STARTED, leg=None))
    first.publish(event(EventType.CALL_ENDED, leg=None))
    old = feeds.get("CA1")
    assert old is not None
    first.close()
    second.publish(event(EventType.CALL_STARTED, leg=None))  # the same key, a new stream
    new = feeds.get("CA1")
    assert new is not None
    feeds.close()
    assert mirror.told == [("opened", old.stream_uid, None), ("frame", old.stream_uid, 1),
                           ("frame", old.stream_uid, 2), ("ended", old.stream_uid, None),
                           ("opened", new.stream_uid, None), ("frame", new.stream_uid, 1),
                           ("ended", new.stream_uid, None)]


def test_stream_entries_become_frames_and_foreign_entries_are_skipped() -> None:
    entries = [
        (b"0-1", {b"type": b"call.started", b"leg": b"", b"data": b"{}"}),
        (b"0-2", {b"type": b"transcript.final", b"leg": b"inbound", b"data": b'{"a":1}'}),
        (b"0-3", {b"type": b"no.such.type", b"leg": b"", b"data": b"{}"}),
        (b"0-4", {b"type": b"dtmf", b"leg": b"inbound"}),  # no data
        (b"0-5", {b"type": b"dtmf", b"leg": b"\xff", b"data": b"{}"}),  # leg not UTF-8
    ]
    read = frames_of(entries)
    assert read.frames == [Frame(1, EventType.CALL_STARTED, None, b"{}"),
                           Frame(2, FINAL, "inbound", b'{"a":1}')]
    assert read.last == 5  # what was read, so the next read starts after it
    assert not read.foreign
    assert frames_of(None) == Entries([], 0, foreign=False)


@pytest.mark.parametrize("foreign_id", [b"1-0", b"1733000000000-0", b"0-9007199254740992"])
def test_an_entry_id_no_feed_writer_gives_ends_the_entries(foreign_id: bytes) -> None:
    entries = [(b"0-1", {b"type": b"dtmf", b"leg": b"", b"data": b"{}"}),
               (foreign_id, {b"junk": b"1"}),
               (b"2-0", {b"type": b"dtmf", b"leg": b"", b"data": b"{}"})]
    read = frames_of(entries)
    assert read == Entries([Frame(1, EventType.DTMF, None, b"{}")], 1, foreign=True)


@pytest.mark.parametrize("data", [b'{"a":"x"}\n\nevent: call.ended\ndata: {}', b'{"a":1}\r',
                                  b"x" * (MAX_FRAME_BYTES + 1)])
def test_frame_data_that_could_break_the_event_stream_is_skipped(data: bytes) -> None:
    entries = [(b"0-1", {b"type": b"dtmf", b"leg": b"", b"data": data}),
               (b"0-2", {b"type": b"dtmf", b"leg": b"", b"data": b"{}"})]
    assert frames_of(entries) == Entries([Frame(2, EventType.DTMF, None, b"{}")], 2,
                                         foreign=False)
