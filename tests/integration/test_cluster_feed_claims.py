"""Who may write a call's shared feed, and what a reader trusts of it, against one real
``redis-server``: a second live stream under the same call id never writes into the first's
feed, and entries no feed writer gives end a reader instead of spinning it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from structlog.testing import capture_logs

from bridge.cluster.feeds import FeedWriter, SharedFeeds
from bridge.cluster.member import ClusterMember
from bridge.config import ClusterSettings, Secret
from bridge.events import EventType
from bridge.web.feed import Frame
from tests.support.redis_server import RedisServer


def settings(redis_server: RedisServer, instance_id: str) -> ClusterSettings:
    return ClusterSettings(redis_url=Secret(redis_server.url), instance_id=instance_id,
                           heartbeat_s=1, takeover_s=30)


@pytest.fixture
async def holder(redis_server: RedisServer) -> AsyncIterator[ClusterMember]:
    """A live member (its heartbeat runs): the instance holding the first stream."""
    async with ClusterMember(settings(redis_server, "inst-a")) as member:
        try:
            yield member
        finally:
            await member.redis.aclose()


@pytest.fixture
async def other(redis_server: RedisServer) -> AsyncIterator[ClusterMember]:
    """A second member's client (no heartbeat needed: it only writes or reads)."""
    member = ClusterMember(settings(redis_server, "inst-b"))
    try:
        yield member
    finally:
        await member.redis.aclose()


def said(n: int, text: str) -> Frame:
    return Frame(n, EventType.TRANSCRIPT_FINAL, "inbound", b'{"text":"%s"}' % text.encode())


async def test_a_second_live_stream_under_the_same_call_id_is_not_mirrored(
        holder: ClusterMember, other: ClusterMember) -> None:
    async with FeedWriter(holder, max_events=100, retain_s=60) as first, \
            FeedWriter(other, max_events=100, retain_s=60) as second, \
            SharedFeeds(other, max_readers=4, max_per_call=4) as shared:
        first.opened("CA1", "uid-a")
        for n in (1, 2, 3):
            first.append("CA1", "uid-a", said(n, f"victim {n}"))
        assert await first.drained(20)
        with capture_logs() as logs:
            second.opened("CA1", "uid-b")
            for n in (1, 2, 3, 4, 5):
                second.append("CA1", "uid-b", said(n, f"intruder {n}"))
            second.ended("CA1", "uid-b")
            assert await second.drained(20)
        first.append("CA1", "uid-a", said(4, "victim 4"))
        assert await first.drained(20)

        feed = await shared.find("CA1")
        assert feed is not None and feed.stream_uid == "uid-a" and feed.instance == "inst-a"
        assert not feed.ended
        reader = shared.read(feed, 0)
        assert reader is not None
        frames = await reader.take(1)
        shared.leave(reader)
    assert [(f.id, f.data) for f in frames] == [
        (n, b'{"text":"victim %d"}' % n) for n in (1, 2, 3, 4)]
    assert first.refused == 0 and first.unshared == 0
    assert second.unshared == 1
    assert len([line for line in logs if line["event"].startswith("live feed not shared")]) == 1


async def test_a_feed_whose_instance_is_gone_is_taken_by_a_new_stream(
        other: ClusterMember, redis_server: RedisServer) -> None:
    gone = ClusterMember(settings(redis_server, "inst-gone"))  # no heartbeat: not alive
    try:
        async with FeedWriter(gone, max_events=100, retain_s=60) as first, \
                FeedWriter(other, max_events=100, retain_s=60) as second, \
                SharedFeeds(other, max_readers=4, max_per_call=4) as shared:
            first.opened("CA1", "uid-a")
            first.append("CA1", "uid-a", said(1, "old"))
            assert await first.drained(20)
            second.opened("CA1", "uid-b")
            second.append("CA1", "uid-b", said(1, "new"))
            assert await second.drained(20)
            feed = await shared.find("CA1")
            assert feed is not None and feed.stream_uid == "uid-b"
            reader = shared.read(feed, 0)
            assert reader is not None
            assert [f.data for f in await reader.take(1)] == [b'{"text":"new"}']
            shared.leave(reader)
        assert second.unshared == 0
    finally:
        await gone.redis.aclose()


async def test_an_entry_no_feed_writer_gives_ends_the_reader_instead_of_spinning_it(
        other: ClusterMember) -> None:
    redis = other.redis
    keys = other.keys
    async with FeedWriter(other, max_events=100, retain_s=60) as writer, \
            SharedFeeds(other, max_readers=4, max_per_call=4) as shared:
        writer.opened("CA1", "uid-a")
        writer.append("CA1", "uid-a", said(1, "first"))
        assert await writer.drained(20)
        feed = await shared.find("CA1")
        assert feed is not None
        reader = shared.read(feed, 0)
        assert reader is not None
        assert [f.id for f in await reader.take(1)] == [1]
        # A writer to Redis that is no feed writer: entries the reader cannot read past
        # with 0-<n> ids (skipped without moving on, XREAD would return them at once again).
        await redis.xadd(keys.feed("CA1"), {"type": "dtmf", "data": "{}"}, id="0-2")
        await redis.xadd(keys.feed("CA1"), {"junk": "1"}, id="1-0")
        assert [f.id for f in await reader.take(30)] == [2]
        assert reader.closed
        assert await reader.take(30) == []
        shared.leave(reader)
