"""The feed writer, the feed reader and the event stream against one real ``redis-server``,
without a bridge: order across an outage, the bounded queue, and how a reader ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.cluster.events_stream import EventStream
from bridge.cluster.feeds import FeedWriter, SharedFeeds
from bridge.cluster.member import ClusterMember
from bridge.config import ClusterSettings, Secret
from bridge.events import EventType, make_event
from bridge.web.feed import Frame
from tests.support.redis_server import RedisServer


@pytest.fixture
async def member(redis_server: RedisServer) -> AsyncIterator[ClusterMember]:
    """A member's client (its heartbeat is not started: only the parts under test write)."""
    member = ClusterMember(ClusterSettings(redis_url=Secret(redis_server.url),
                                           instance_id="here"))
    try:
        yield member
    finally:
        await member.redis.aclose()


def frame(n: int, kind: EventType = EventType.TRANSCRIPT_FINAL) -> Frame:
    return Frame(n, kind, "inbound", b'{"n":%d}' % n)


async def test_frames_queued_while_redis_is_away_are_written_in_order_once_it_is_back(
        member: ClusterMember, redis_server: RedisServer) -> None:
    async with FeedWriter(member, max_events=100, retain_s=60) as writer, \
            SharedFeeds(member, max_readers=4, max_per_call=4) as shared:
        writer.opened("CA1", "uid-1")
        writer.append("CA1", "uid-1", frame(1))
        await writer_idle(writer)
        await redis_server.kill()
        for n in range(2, 6):
            writer.append("CA1", "uid-1", frame(n))
        await redis_server.start()  # empty: this server keeps nothing across a kill
        writer.append("CA1", "uid-1", frame(6, EventType.CALL_ENDED))
        await writer_idle(writer)

        feed = await shared.find("CA1")
        assert feed is not None and feed.stream_uid == "uid-1" and feed.ended
        reader = shared.read(feed, 0)
        assert reader is not None
        frames = await reader.take(1)
        assert [f.id for f in frames] == [2, 3, 4, 5, 6]  # the lost Redis took frame 1 only
        assert reader.closed
        shared.leave(reader)
    assert writer.dropped == 0 and member.up


async def writer_idle(writer: FeedWriter) -> None:
    """Until the writer has nothing left to write."""
    assert await writer.drained(20)


async def test_beyond_its_queue_the_writer_drops_the_newest_with_one_log_line(
        member: ClusterMember, redis_server: RedisServer) -> None:
    await redis_server.kill()
    with capture_logs() as logs:
        async with EventStream(member, stream="events", max_len=1000, max_age_s=0,
                               limit=3) as stream:
            events = [make_event(EventType.TRANSCRIPT_FINAL, {"call_id": "CA1", "n": n},
                                 call_id="CA1", leg="inbound") for n in range(5)]
            for event in events:
                stream.offer(event)
            assert stream.pending == 3 and stream.dropped == 2
            await redis_server.start()
            assert await stream.drained(20)
    dropped = [line for line in logs if line["event"].startswith("redis event stream "
                                                                  "entries dropped")]
    assert len(dropped) == 1
    written = await redis_server.command("XRANGE", "events", "-", "+")
    assert [e.id for e in events[:3]] == [line for line in written.splitlines()
                                          if line.startswith("msg_")]


async def test_a_reader_ends_when_a_new_stream_takes_the_call_key(
        member: ClusterMember) -> None:
    async with FeedWriter(member, max_events=100, retain_s=60) as writer, \
            SharedFeeds(member, max_readers=4, max_per_call=4) as shared:
        writer.opened("CA1", "uid-1")
        writer.append("CA1", "uid-1", frame(1))
        await writer_idle(writer)
        feed = await shared.find("CA1")
        assert feed is not None
        reader = shared.read(feed, 0)
        assert reader is not None
        assert [f.id for f in await reader.take(1)] == [1]
        writer.opened("CA1", "uid-2")  # a later stream announcing the same call id
        await writer_idle(writer)
        assert await reader.take(0.1) == [] and reader.closed
        shared.leave(reader)


async def test_readers_are_bounded_per_call_and_per_instance(member: ClusterMember) -> None:
    async with FeedWriter(member, max_events=100, retain_s=60) as writer, \
            SharedFeeds(member, max_readers=3, max_per_call=2) as shared:
        for call_id in ("CA1", "CA2"):
            writer.opened(call_id, f"uid-{call_id}")
            writer.append(call_id, f"uid-{call_id}", frame(1))
        await writer_idle(writer)
        one, two = await shared.find("CA1"), await shared.find("CA2")
        assert one is not None and two is not None
        first, second = shared.read(one, 0), shared.read(one, 0)
        assert first is not None and second is not None
        assert shared.read(one, 0) is None  # a third viewer of CA1 here
        third = shared.read(two, 0)
        assert third is not None
        assert shared.read(two, 0) is None  # a fourth on this instance
        shared.leave(first)
        assert shared.read(two, 0) is not None


async def test_a_reader_closes_when_redis_goes_away_so_its_viewer_reconnects(
        member: ClusterMember, redis_server: RedisServer) -> None:
    async with FeedWriter(member, max_events=100, retain_s=60) as writer, \
            SharedFeeds(member, max_readers=4, max_per_call=4) as shared:
        writer.opened("CA1", "uid-1")
        writer.append("CA1", "uid-1", frame(1))
        await writer_idle(writer)
        feed = await shared.find("CA1")
        assert feed is not None
        reader = shared.read(feed, 0)
        assert reader is not None
        assert [f.id for f in await reader.take(1)] == [1]
        await redis_server.kill()
        assert await reader.take(5) == [] and reader.closed
        assert not member.up
        assert await shared.find("CA1") is None  # and the admin API answers 503 for it
        shared.leave(reader)


async def test_the_event_stream_is_trimmed_by_age_and_by_length(
        member: ClusterMember) -> None:
    async with member.redis.pipeline(transaction=False) as pipe:
        for n in range(1, 1001):  # entries from 1970: far older than any age limit
            pipe.xadd("aged", {"type": "old"}, id=f"1-{n}")
            pipe.xadd("long", {"type": "old"})
        await pipe.execute()
    new = make_event(EventType.TRANSCRIPT_FINAL, {"call_id": "CA1"}, call_id="CA1")
    async with EventStream(member, stream="aged", max_len=100_000, max_age_s=60) as aged, \
            EventStream(member, stream="long", max_len=100, max_age_s=0) as long:
        aged.offer(new)
        long.offer(new)
        assert await aged.drained(20) and await long.drained(20)
    for name in ("aged", "long"):
        entries: Any = await member.redis.xrange(name)
        kinds = [fields[b"type"] for _, fields in entries]
        assert kinds[-1] == b"transcript.final" and entries[-1][1][b"id"] == new.id.encode()
        # trimmed by whole nodes (approximately), so some old entries may stay
        assert len(kinds) < 500, name
