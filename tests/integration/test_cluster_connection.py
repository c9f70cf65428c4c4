"""The cluster's Redis clients against a real ``redis-server`` (and ``redis-sentinel``):
their pools of connections are bounded, directly and through Sentinel."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.cluster.connection import BLOCKING_MARGIN, MAX_CONNECTIONS, connect
from bridge.config import ClusterSettings, Secret
from tests.support.redis_server import RedisSentinel, RedisServer


async def test_the_blocking_clients_pool_is_bounded_by_the_feed_readers_and_a_margin(
        redis_server: RedisServer) -> None:
    client = connect(ClusterSettings(redis_url=Secret(redis_server.url), feed_readers=1),
                     blocking=True)
    limit = 1 + BLOCKING_MARGIN
    beyond = 3

    async def wait(n: int) -> object:
        return await client.blpop([f"wait-{n}"], timeout=0)

    waits = [asyncio.create_task(wait(n)) for n in range(limit + beyond)]
    try:
        # The waits beyond the pool find no connection, and fail as Redis being away does;
        # the others hold every connection of the pool.
        refused: list[asyncio.Task[object]] = []
        async with asyncio.timeout(30):
            while len(refused) < beyond:
                done, _ = await asyncio.wait([w for w in waits if w not in refused],
                                             return_when=asyncio.FIRST_COMPLETED)
                refused += done
        assert all(isinstance(w.exception(), RedisConnectionError) for w in refused)
        clients = await redis_server.command("CLIENT", "LIST")
        assert sum("cmd=blpop" in line for line in clients.splitlines()) == limit
        for n in range(limit + beyond):
            await redis_server.command("RPUSH", f"wait-{n}", "go")
        async with asyncio.timeout(30):
            answered = await asyncio.gather(*(w for w in waits if w not in refused))
        assert len(answered) == limit
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        await client.aclose()


async def test_a_client_through_sentinel_reaches_the_primary_with_its_bounded_pool(
        redis_server: RedisServer, tmp_path: Path) -> None:
    async with RedisSentinel(tmp_path / "sentinel", redis_server) as sentinel:
        client = connect(ClusterSettings(sentinels=(sentinel.address,),
                                         sentinel_primary="primary"))
        try:
            await client.set("here", "1")
            assert await client.get("here") == b"1"
            assert client.connection_pool.max_connections == MAX_CONNECTIONS
        finally:
            await client.aclose()
            # The clients of the Sentinels themselves, which the client never closes.
            for watcher in client.connection_pool.sentinel_manager.sentinels:  # type: ignore[attr-defined]
                await watcher.aclose()
