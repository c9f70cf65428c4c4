"""The cluster's calls against a real ``redis-server``, two members in this process: what the
hash holds, and what a cancelled or unanswered admin action leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from bridge.cluster.calls import ClusterCalls, Command, Reply
from bridge.cluster.member import ClusterMember
from bridge.config import ClusterSettings, Secret
from bridge.errors import OwnerUnreachable
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


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[tuple[Owner, ClusterCalls,
                                                                     ClusterCalls]]:
    def settings(instance: str) -> ClusterSettings:
        return ClusterSettings(redis_url=Secret(redis_server.url), instance_id=instance,
                               heartbeat_s=60, takeover_s=180, command_timeout_s=0.5)

    owner = Owner()
    async with AsyncExitStack() as stack:
        member_a = await stack.enter_async_context(ClusterMember(settings("a")))
        member_b = await stack.enter_async_context(ClusterMember(settings("b")))
        calls_a = await stack.enter_async_context(ClusterCalls(
            member_a, summaries=lambda: owner.calls, updated=owner.updated,
            admin_token=TOKEN, perform=owner.perform))
        calls_b = await stack.enter_async_context(ClusterCalls(
            member_b, summaries=dict, updated=asyncio.Event(), admin_token=TOKEN))
        async with asyncio.timeout(10):
            await calls_a.listening.wait()
        yield owner, calls_a, calls_b


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
