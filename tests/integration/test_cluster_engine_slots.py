"""Engine limits across a cluster, against a real ``redis-server``: two members' slots in one
sorted set of expiring leases; a release frees at once, a silent instance's leases expire,
and with Redis away each instance keeps to its share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from bridge.cluster.engine_slots import ACQUIRE_TIMEOUT_S, ClusterEngineSlots
from bridge.cluster.member import ClusterMember
from bridge.config import ClusterSettings, Secret
from tests.support.redis_server import RedisServer

KEY = "callbridge:engine:deepgram"


def cluster(redis: RedisServer, instance: str) -> ClusterSettings:
    return ClusterSettings(redis_url=Secret(redis.url), instance_id=instance, heartbeat_s=0.1,
                           takeover_s=0.6)


@asynccontextmanager
async def members(redis: RedisServer, *names: str) -> AsyncIterator[list[ClusterMember]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(ClusterMember(cluster(redis, name)))
               for name in names]


async def leases(redis: RedisServer) -> list[str]:
    return sorted((await redis.command("ZRANGE", KEY, "0", "-1")).split())


async def test_the_limit_holds_across_instances_and_a_release_frees_its_slot(
        redis_server: RedisServer) -> None:
    async with (members(redis_server, "a", "b") as (a, b),
                ClusterEngineSlots(a, {"deepgram": 2}) as slots_a,
                ClusterEngineSlots(b, {"deepgram": 2}) as slots_b):
        held_a, held_b = await slots_a.acquire("deepgram"), await slots_b.acquire("deepgram")
        assert held_a is not None and held_b is not None
        assert await slots_a.acquire("deepgram") is None
        assert await slots_b.acquire("deepgram") is None
        assert await leases(redis_server) == sorted([f"a:{held_a.lease}", f"b:{held_b.lease}"])
        assert slots_b.usage() == {("deepgram", "instance"): 1, ("deepgram", "cluster"): 2}

        held_a.release()
        await slots_a.renew()  # what the renewal loop does at once when woken by a release
        again = await slots_b.acquire("deepgram")
        assert again is not None
        assert await leases(redis_server) == sorted([f"b:{held_b.lease}", f"b:{again.lease}"])
    assert await leases(redis_server) == []  # leaving gives back what was held


async def test_an_instance_that_stops_renewing_loses_its_slots_within_takeover_s(
        redis_server: RedisServer) -> None:
    async with members(redis_server, "dead", "b") as (dead, b), \
            ClusterEngineSlots(b, {"deepgram": 2}) as slots_b:
        # never entered: no renewal, as for an instance SIGKILLed after taking its slots
        silent = ClusterEngineSlots(dead, {"deepgram": 2})
        assert None not in [await silent.acquire("deepgram") for _ in range(2)]
        assert await slots_b.acquire("deepgram") is None
        # The leases end takeover_s after they were taken, on Redis's clock: past that, and
        # not before, the survivor gets a slot.
        scores = (await redis_server.command("ZRANGE", KEY, "0", "-1", "WITHSCORES")).split()
        expiry_ms = max(float(score) for score in scores[1::2])
        seconds, micros = (await redis_server.command("TIME")).split()
        remaining_s = expiry_ms / 1000 - (int(seconds) + int(micros) / 1e6)
        assert 0 < remaining_s <= dead.settings.takeover_s
        await asyncio.sleep(remaining_s + 0.01)
        taken = await slots_b.acquire("deepgram")
        assert taken is not None
        assert await leases(redis_server) == [f"b:{taken.lease}"]


async def test_with_redis_away_each_instance_keeps_to_its_share_and_the_count_comes_back(
        redis_server: RedisServer) -> None:
    async with (members(redis_server, "a", "b") as (a, _b),
                ClusterEngineSlots(a, {"deepgram": 4}) as slots_a):
        await slots_a.renew()  # two members alive, as the renewals see them
        assert slots_a.members_alive == 2
        await redis_server.kill()
        held = [await slots_a.acquire("deepgram") for _ in range(3)]
        assert held[2] is None and None not in held[:2]  # 4 between 2 members
        assert not a.up

        await redis_server.start()  # empty: it kept nothing
        await slots_a.renew()
        assert len(await leases(redis_server)) == 2  # the leases taken meanwhile are written


async def test_a_stalled_redis_does_not_hold_a_leg_once_it_is_known_to_be_away(
        redis_server: RedisServer) -> None:
    async with (members(redis_server, "a") as (a,),
                ClusterEngineSlots(a, {"deepgram": 4}) as slots_a):
        redis_server.freeze()
        try:
            # The first leg waits at most ACQUIRE_TIMEOUT_S, then takes the local share and
            # the member is marked away; the next ones do not ask Redis at all. (The timeout
            # only stops a hang: without both, each would wait out the client's timeouts.)
            async with asyncio.timeout(ACQUIRE_TIMEOUT_S + 3):
                first = await slots_a.acquire("deepgram")
                assert not a.up
                second = await slots_a.acquire("deepgram")
            assert first is not None and second is not None
        finally:
            redis_server.thaw()


async def test_members_heartbeating_from_the_future_do_not_shrink_the_share(
        redis_server: RedisServer) -> None:
    async with members(redis_server, "a", "b") as (a, _), \
            ClusterEngineSlots(a, {"deepgram": 4}) as slots_a:
        seconds, _micros = (await redis_server.command("TIME")).split()
        an_hour_ahead_ms = (int(seconds) + 3600) * 1000
        fakes = [arg for n in range(50) for arg in (str(an_hour_ahead_ms), f"future-{n}")]
        assert await redis_server.command("ZADD", "callbridge:instances", *fakes) == "50"
        await slots_a.renew()
        assert slots_a.members_alive == 2
