"""The cluster's calls against a real ``redis-server``, two members in this process: what the
hash holds, and what a cancelled or unanswered admin action leaves behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import orjson
import pytest
import redis.asyncio as redis
from structlog.testing import capture_logs

from bridge.cluster.calls import MAX_CALLS_LISTED, ClusterCalls, Command, Reply
from bridge.cluster.member import MAX_LISTED, ClusterMember
from bridge.config import ClusterSettings, Secret
from bridge.errors import ClusterMessageInvalid, OwnerUnreachable
from tests.support.redis_server import RedisServer

TOKEN = "integration-admin-token-0123"


class Owner:
    """What instance ``a`` holds, and an admin action it lets the test finish."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Any]] = {}
        self.updated = asyncio.Event()
        self.started = asyncio.Event()
        self.finish = asyncio.Event()
        self.requests: list[str] = []

    async def perform(self, command: Command) -> Reply:
        self.requests.append(command.request_id)
        self.started.set()
        await self.finish.wait()
        return Reply(200, {"call_id": command.call_key})


def _settings(redis_server: RedisServer, instance: str, *,
              command_timeout_s: float = 0.5) -> ClusterSettings:
    return ClusterSettings(redis_url=Secret(redis_server.url), instance_id=instance,
                           heartbeat_s=60, takeover_s=180, command_timeout_s=command_timeout_s)


@asynccontextmanager
async def _instance(redis_server: RedisServer, name: str, owner: Owner | None = None, *,
                    command_timeout_s: float = 0.5) -> AsyncIterator[ClusterCalls]:
    """One member with its calls; it takes admin actions when given an ``owner``."""
    async with AsyncExitStack() as stack:
        member = await stack.enter_async_context(ClusterMember(
            _settings(redis_server, name, command_timeout_s=command_timeout_s)))
        calls = await stack.enter_async_context(ClusterCalls(
            member, summaries=(lambda: owner.calls) if owner else dict,
            updated=owner.updated if owner else asyncio.Event(), admin_token=TOKEN,
            perform=owner.perform if owner else None))
        if owner is not None:
            async with asyncio.timeout(10):
                await calls.listening.wait()
        yield calls


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[tuple[Owner, ClusterCalls,
                                                                     ClusterCalls]]:
    owner = Owner()
    async with AsyncExitStack() as stack:
        calls_a = await stack.enter_async_context(_instance(redis_server, "a", owner))
        calls_b = await stack.enter_async_context(_instance(redis_server, "b"))
        yield owner, calls_a, calls_b


@asynccontextmanager
async def _client(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    """A client of the test's own: a party that can read and write Redis, no admin token."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def _settled(calls: ClusterCalls) -> None:
    """Until the admin actions ``calls`` took are all done (each check a round trip)."""
    async with asyncio.timeout(10):
        while calls._in_flight:
            await calls.redis.ping()


async def test_the_hash_follows_the_calls_and_a_rewrite_drops_what_others_put_there(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls], redis_server: RedisServer) -> None:
    owner, calls_a, calls_b = cluster
    owner.calls["CA1"] = {"call_id": "CA1", "opened_at": 0, "legs": {}}
    owner.calls["CA2"] = {"call_id": "CA2", "legs": {}}
    await calls_a.publish_changes()
    listed, left_out = await calls_b.elsewhere()
    assert sorted(c["call_id"] for c in listed) == ["CA1", "CA2"] and not left_out
    assert {c["instance"] for c in listed} == {"a"}
    assert await calls_b.owners("CA1") == ["a"] and await calls_b.owners("CA9") == []

    del owner.calls["CA1"]
    await calls_a.publish_changes()
    assert [c["call_id"] for c in (await calls_b.elsewhere())[0]] == ["CA2"]

    await redis_server.command("HSET", calls_a.own_key, "CA-forged", "not json")
    await redis_server.command("HSET", calls_a.own_key, "CA-odd", '{"call_id": 7}')
    assert [c["call_id"] for c in (await calls_b.elsewhere())[0]] == ["CA2"]  # skipped
    await calls_a.publish_all()
    assert await redis_server.command("HKEYS", calls_a.own_key) == "CA2"
    assert await calls_b.counts(["a", "b"]) == [1, 0]


async def test_a_cancelled_action_frees_its_place_and_its_late_reply_expires(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls], redis_server: RedisServer) -> None:
    owner, _, calls_b = cluster
    sending = asyncio.create_task(calls_b.send("a", "end", "CA1", None))
    await owner.started.wait()
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert calls_b._waiting == 0
    owner.finish.set()
    # The reply nobody reads is left to expire. Each check is a round trip to Redis, in
    # which the owner's task (on this loop) writes it.
    reply_key = f"callbridge:reply:{owner.requests[0]}"
    async with asyncio.timeout(10):
        while not await calls_b.redis.exists(reply_key):
            pass
    assert 0 < int(await redis_server.command("PTTL", reply_key)) <= 30_500
    assert (await calls_b.send("a", "pause", "CA1", None)).status == 200


async def test_an_owner_that_does_not_answer_in_time_is_reported(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls]) -> None:
    owner, _, calls_b = cluster
    with pytest.raises(OwnerUnreachable, match=r"instance a did not answer within 0.5 s"):
        await calls_b.send("a", "pause", "CA1", None)
    with pytest.raises(OwnerUnreachable, match="instance z is not listening"):
        await calls_b.send("z", "pause", "CA1", None)
    assert calls_b._waiting == 0
    owner.finish.set()


async def test_a_command_replayed_on_another_instance_or_after_a_restart_is_not_done(
        redis_server: RedisServer) -> None:
    first_a, c, restarted_a = Owner(), Owner(), Owner()
    for owner in (first_a, c, restarted_a):
        owner.finish.set()
    async with _client(redis_server) as spy, spy.pubsub() as sniffer:
        await sniffer.psubscribe("callbridge:commands:*")
        async with _instance(redis_server, "b") as calls_b:
            async with _instance(redis_server, "a", first_a), \
                    _instance(redis_server, "c", c) as calls_c:
                assert (await calls_b.send("a", "end", "CA1", None)).status == 200
                captured = None
                async with asyncio.timeout(10):
                    while captured is None or captured["type"] != "pmessage":
                        captured = await sniffer.get_message(timeout=None)
                # Signed for a: republished on c's channel, c does not do it.
                # Heard by c and by the sniffer.
                assert await spy.publish("callbridge:commands:c", captured["data"]) == 2
                assert (await calls_b.send("c", "pause", "CA2", None)).status == 200
                await _settled(calls_c)
                assert len(c.requests) == 1 and calls_c.outcomes["ignored"] == 1
            # a restarts within the minute its command is accepted: it does not do it again.
            async with _instance(redis_server, "a", restarted_a) as calls_a:
                assert await spy.publish("callbridge:commands:a", captured["data"]) == 2
                assert (await calls_b.send("a", "pause", "CA3", None)).status == 200
                await _settled(calls_a)
                assert len(restarted_a.requests) == 1
                assert restarted_a.requests[0] != first_a.requests[0]
                assert calls_a.outcomes["ignored"] == 1 and calls_a.outcomes["taken"] == 1
    assert len(first_a.requests) == 1


async def test_an_action_that_fails_past_perform_leaves_later_actions_taken(
        redis_server: RedisServer) -> None:
    class Unencodable(Owner):
        async def perform(self, command: Command) -> Reply:
            self.requests.append(command.request_id)
            if command.call_key == "CA-odd":
                return Reply(200, {"legs": {"inbound", "outbound"}})  # a set: not JSON
            return Reply(200, {"call_id": command.call_key})

    owner = Unencodable()
    async with _instance(redis_server, "a", owner) as calls_a, \
            _instance(redis_server, "b") as calls_b:
        with capture_logs() as logs:
            assert (await calls_b.send("a", "show", "CA-odd", None)).status == 500
        assert any(e["log_level"] == "error" for e in logs)
        reply = await calls_b.send("a", "show", "CA1", None)
        assert reply == Reply(200, {"call_id": "CA1"})
        assert calls_a.listening.is_set() and len(owner.requests) == 2


async def test_a_reply_pushed_by_a_party_without_the_admin_token_is_refused(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls], redis_server: RedisServer) -> None:
    owner, calls_a, calls_b = cluster
    async with _client(redis_server) as spy, spy.pubsub() as sniffer:
        await sniffer.psubscribe("callbridge:commands:a")

        async def answer_first() -> None:
            message = None
            while message is None or message["type"] != "pmessage":
                message = await sniffer.get_message(timeout=None)
            request = orjson.loads(message["data"])["request"]
            # The owner is still at work (owner.finish): this reply is there first.
            await owner.started.wait()
            await spy.rpush(f"callbridge:reply:{request}", orjson.dumps(
                {"status": 202, "body": orjson.dumps({"call_id": "CA1"}).decode(),
                 "sig": "AAAA"}))

        async with asyncio.timeout(10):
            forger = asyncio.create_task(answer_first())
            with pytest.raises(ClusterMessageInvalid, match="signature"):
                await calls_b.send("a", "end", "CA1", None)
            await forger
    owner.finish.set()
    await _settled(calls_a)


async def test_members_skip_what_is_not_a_member_and_never_raise(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls], redis_server: RedisServer) -> None:
    owner, calls_a, calls_b = cluster
    owner.calls["CA1"] = {"call_id": "CA1", "legs": {}}
    await calls_a.publish_changes()
    now_ms = int(time.time() * 1000)
    async with _client(redis_server) as hostile, hostile.pipeline(transaction=False) as pipe:
        for name, body in (("x-garbage", b"garbage"), ("x-list", b"[1]"),
                           ("x-big", b'{"a": "' + b"a" * 20_000 + b'"}')):
            pipe.set(f"callbridge:instance:{name}", body)
            pipe.zadd("callbridge:instances", {name: now_ms})
        pipe.zadd("callbridge:instances", {b"x-\xff\xfe": now_ms})
        pipe.zadd("callbridge:instances", {"bad id/slash": now_ms})
        # More members than are listed, all "heartbeating" an hour from now.
        pipe.zadd("callbridge:instances", {f"future-{n}": now_ms + 3_600_000
                                           for n in range(MAX_LISTED)})
        await pipe.execute()
    members = await calls_b.member.members()
    assert {m["instance"] for m in members if m["alive"]} == {"a", "b"}
    assert not any(m["instance"].startswith(("x-", "future-", "bad")) for m in members)
    assert calls_b.member.skipped >= 5
    listed, left_out = await calls_b.elsewhere()
    assert [c["call_id"] for c in listed] == ["CA1"] and not left_out
    assert await calls_b.owners("CA1") == ["a"]
    assert not any(i.startswith("future-") for i in await calls_b.member.lost())


async def test_the_cluster_listing_is_bounded_as_a_whole(
        cluster: tuple[Owner, ClusterCalls, ClusterCalls], redis_server: RedisServer) -> None:
    _, calls_a, calls_b = cluster
    each = MAX_CALLS_LISTED // 2 + 1
    async with _instance(redis_server, "c") as calls_c, _client(redis_server) as hostile:
        for calls in (calls_a, calls_c):
            await hostile.hset(calls.own_key, mapping={
                f"CA{n}": orjson.dumps({"call_id": f"CA{n}"}) for n in range(each)})
        listed, left_out = await calls_b.elsewhere()
    assert left_out and len(listed) == each
    assert len({c["instance"] for c in listed}) == 1


async def test_a_second_process_under_the_same_instance_id_is_reported_once(
        redis_server: RedisServer) -> None:
    # The second one's first heartbeat finds the first's key, as a restarted pod finds its
    # previous run's: that alone is not reported.
    with capture_logs() as logs:
        async with ClusterMember(_settings(redis_server, "twin")) as first, \
                ClusterMember(_settings(redis_server, "twin")) as second:
            assert second.heartbeats == 1 and not second.twin_seen
            await first.heartbeat()
            await second.heartbeat()
            await first.heartbeat()
    twins = [e for e in logs if e["event"].startswith("another process heartbeats")]
    assert [e["log_level"] for e in twins] == ["error", "error"]  # one for each process
    assert first.twin_seen and second.twin_seen
