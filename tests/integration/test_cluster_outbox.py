"""The outbox's copy in Redis: a real SQLite file, a real ``redis-server``, the mirror."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from bridge.cluster.connection import text
from bridge.cluster.member import ClusterMember
from bridge.cluster.outbox import OutboxMirror
from bridge.config import ClusterSettings, Secret
from bridge.delivery.outbox import LegText, Outbox, StoredEvent
from bridge.delivery.writer import OutboxThread
from bridge.events import EventType
from tests.support.redis_server import RedisServer

T0 = 1_700_000_000.0  # in the past: a copy takes events stored before now
Opened = Callable[[str], OutboxMirror]


def final(n: int, targets: tuple[str, ...] = ("hooks",), call: str = "CA1") -> StoredEvent:
    return StoredEvent(f"msg_{call}_{n}", EventType.TRANSCRIPT_FINAL, call, "inbound",
                       b'{"n":%d}' % n, targets, adds=LegText("caller", f"word {n}"))


def started(call: str = "CA1") -> StoredEvent:
    return StoredEvent(f"msg_{call}_started", EventType.CALL_STARTED, call, None, b"{}",
                       ("hooks",), opens_call={"call_id": call, "stream_id": "S"})


@pytest.fixture
async def member(redis_server: RedisServer) -> AsyncIterator[ClusterMember]:
    """Instance "a" of a cluster on the test's Redis (its heartbeat is not needed here)."""
    settings = ClusterSettings(redis_url=Secret(redis_server.url), instance_id="a",
                               heartbeat_s=0.1, takeover_s=0.5)
    member = ClusterMember(settings)
    yield member
    await member.redis.aclose()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[OutboxThread]:
    db = OutboxThread(lambda: Outbox(tmp_path / "a.db"))
    await db.open()
    yield db
    await db.close()


def copier(member: ClusterMember) -> OutboxMirror:
    """A mirror that copies events as soon as they are stored (no grace: the tests' clock
    is their own)."""
    mirror = OutboxMirror(member)
    mirror.grace_s = 0.0
    return mirror


async def copied(member: ClusterMember) -> dict[str, dict[str, object]]:
    """Instance a's copy of its events: seq -> record."""
    raw = await member.redis.hgetall(member.keys.outbox("a"))
    return {text(key): orjson.loads(value) for key, value in raw.items()}


async def test_an_event_delivered_between_reading_and_marking_leaves_the_copy(
        member: ClusterMember, outbox: OutboxThread) -> None:
    mirror = copier(member)
    await outbox.call(lambda ob: ob.store([final(1)], now=T0))
    batch = await outbox.call(lambda ob: ob.to_mirror(100))
    await mirror._write(batch)  # Redis has it ...
    [due], _ = await outbox.call(lambda ob: ob.due_heads("hooks", T0, 10))
    await outbox.call(lambda ob: ob.mark_delivered(due.event_seq, "hooks", 204, now=T0))
    await outbox.call(lambda ob: ob.mark_mirrored(batch))  # ... and the row is gone already
    assert await outbox.call(lambda ob: ob.mirror_backlog()) == 1  # its removal
    await mirror.catch_up(outbox)
    assert await copied(member) == {}
    assert await outbox.call(lambda ob: ob.mirror_backlog()) == 0


async def test_a_removal_not_yet_copied_survives_a_crash(
        member: ClusterMember, tmp_path: Path) -> None:
    first = OutboxThread(lambda: Outbox(tmp_path / "a.db"))
    await first.open()
    await first.call(lambda ob: ob.store([final(1), final(2)], now=T0))
    await copier(member).catch_up(first)
    assert sorted(str(record["id"]) for record in (await copied(member)).values()) == [
        "msg_CA1_1", "msg_CA1_2"]
    [due], _ = await first.call(lambda ob: ob.due_heads("hooks", T0, 10))
    await first.call(lambda ob: ob.mark_delivered(due.event_seq, "hooks", 204, now=T0))
    await first.close()  # the process dies before its mirror copies the removal

    again = OutboxThread(lambda: Outbox(tmp_path / "a.db"))
    await again.open()
    try:
        await copier(member).catch_up(again)
    finally:
        await again.close()
    assert [record["id"] for record in (await copied(member)).values()] == ["msg_CA1_2"]


async def test_a_delivery_to_one_of_two_targets_leaves_the_other_in_the_copy(
        member: ClusterMember, outbox: OutboxThread) -> None:
    mirror = copier(member)
    await outbox.call(lambda ob: ob.store([final(1, targets=("one", "two"))], now=T0))
    await mirror.catch_up(outbox)
    [due], _ = await outbox.call(lambda ob: ob.due_heads("one", T0, 10))
    await outbox.call(lambda ob: ob.mark_delivered(due.event_seq, "one", 204, now=T0))
    await mirror.catch_up(outbox)
    [record] = (await copied(member)).values()
    assert record["targets"] == ["two"]


async def test_a_call_in_progress_is_copied_with_its_text_and_leaves_when_it_ends(
        member: ClusterMember, outbox: OutboxThread) -> None:
    mirror = copier(member)
    await outbox.call(lambda ob: ob.store([started(), final(1), final(2)], now=T0))
    await mirror.catch_up(outbox)
    raw = await member.redis.hget(member.keys.outbox_calls("a"), "CA1")
    assert raw is not None
    assert orjson.loads(raw)["legs"] == [{"leg": "inbound", "speaker": "caller",
                                          "text": "word 1 word 2", "transcripts": 2}]
    ended = StoredEvent("msg_CA1_ended", EventType.CALL_ENDED, "CA1", None, b"{}", ("hooks",))
    await outbox.call(lambda ob: ob.store([ended], now=T0))
    await mirror.catch_up(outbox)
    assert await member.redis.hlen(member.keys.outbox_calls("a")) == 0


async def test_a_restart_after_a_takeover_drops_what_was_copied_and_keeps_the_rest(
        member: ClusterMember, outbox: OutboxThread) -> None:
    mirror = copier(member)
    await outbox.call(lambda ob: ob.store([final(1)], now=T0))
    await mirror.catch_up(outbox)
    await outbox.call(lambda ob: ob.store([final(2)], now=T0))  # never copied
    # A survivor took the copy over: the namespace is gone, the mark says so.
    await member.redis.delete(member.keys.outbox("a"))
    await member.redis.set(member.keys.taken_over("a"), "b")

    await copier(member).reconcile(outbox)
    ids = await outbox.call(lambda ob: [row[0] for row in ob.db.execute(
        "SELECT id FROM events ORDER BY seq")])
    assert ids == ["msg_CA1_2"]
    assert await member.redis.exists(member.keys.taken_over("a")) == 0


async def test_a_restart_with_a_new_file_takes_its_rows_back_from_redis(
        member: ClusterMember, outbox: OutboxThread, tmp_path: Path) -> None:
    await outbox.call(lambda ob: ob.store([started(), final(1), final(2)], now=T0))
    await copier(member).catch_up(outbox)

    fresh = OutboxThread(lambda: Outbox(tmp_path / "new.db"))
    await fresh.open()
    try:
        mirror = copier(member)
        await mirror.reconcile(fresh)
        ids = await fresh.call(lambda ob: [row[0] for row in ob.db.execute(
            "SELECT id FROM events ORDER BY seq")])
        calls = await fresh.call(lambda ob: ob.live_calls())
        await mirror.catch_up(fresh)  # copied again under the new file's numbers
    finally:
        await fresh.close()
    assert ids == ["msg_CA1_started", "msg_CA1_1", "msg_CA1_2"]
    assert [call.legs for call in calls] == [[{"leg": "inbound", "speaker": "caller",
                                               "text": "word 1 word 2", "transcripts": 2}]]
    assert sorted(str(r["id"]) for r in (await copied(member)).values()) == sorted(ids)


async def test_a_restart_with_its_file_drops_rows_redis_has_beyond_it(
        member: ClusterMember, outbox: OutboxThread) -> None:
    await member.redis.hset(member.keys.outbox("a"), "999", b'{"id": "msg_stale"}')
    await outbox.call(lambda ob: ob.store([final(1)], now=T0))
    mirror = copier(member)
    await mirror.reconcile(outbox)
    await mirror.catch_up(outbox)
    assert [record["id"] for record in (await copied(member)).values()] == ["msg_CA1_1"]


async def test_an_event_stored_within_the_grace_waits_and_is_counted(
        member: ClusterMember, outbox: OutboxThread) -> None:
    await outbox.call(lambda ob: ob.store([final(1)], now=T0))
    waiting = await outbox.call(lambda ob: ob.to_mirror(100, grace_s=5.0, now=T0 + 1))
    assert waiting.events == [] and waiting.young == 1
    due = await outbox.call(lambda ob: ob.to_mirror(100, grace_s=5.0, now=T0 + 6))
    assert [seq for seq, _, _ in due.events] == [1] and due.young == 0


async def test_a_call_s_copy_waits_for_its_events_to_be_copied(
        member: ClusterMember, outbox: OutboxThread) -> None:
    await outbox.call(lambda ob: ob.store([started(), final(1), final(2)], now=T0))
    first = await outbox.call(lambda ob: ob.to_mirror(2))
    assert len(first.events) == 2 and first.calls == []  # the call's text includes final 2
    await outbox.call(lambda ob: ob.mark_mirrored(first))
    second = await outbox.call(lambda ob: ob.to_mirror(2))
    assert len(second.events) == 1 and [call.call_id for _, call in second.calls] == ["CA1"]


async def test_a_start_without_redis_voids_a_takeover_mark_once_redis_is_back(
        member: ClusterMember, outbox: OutboxThread, redis_server: RedisServer) -> None:
    await outbox.call(lambda ob: ob.store([final(1)], now=T0))
    await redis_server.stop()
    mirror = copier(member)
    await mirror.reconcile(outbox)  # Redis away: the file is the truth
    await redis_server.start()
    # A survivor had taken this id over meanwhile; this instance, alive, keeps its file.
    await member.redis.set(member.keys.taken_over("a"), "b")
    task = asyncio.create_task(mirror.run(outbox, asyncio.Event()))
    try:
        async with asyncio.timeout(10):
            # Redis offers nothing to wait on for a key to appear: look again shortly.
            while not await member.redis.exists(member.keys.outbox_copy("a")):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await member.redis.exists(member.keys.taken_over("a")) == 0
    assert [record["id"] for record in (await copied(member)).values()] == ["msg_CA1_1"]
