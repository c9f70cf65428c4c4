"""Engine concurrency limits across the cluster: one Redis sorted set of leases per engine.

Each engine with a ``max_streams`` has a sorted set (``Keys.engine``) whose members are the
sessions in use cluster-wide, ``<instance>:<lease>``, scored by the lease's expiry (Redis
server time, so instances' clocks do not matter). A leg takes a slot with one Lua script
that drops expired leases, counts, and adds its lease if below the limit: atomic, so two
instances can never both take the last slot. This instance renews its leases every
``cluster.heartbeat_s`` to ``cluster.takeover_s`` ahead, and removes a lease as soon as its
leg gives it back; an instance that dies stops renewing, and its leases expire within
``takeover_s``.

Redis away: the leg is not held up. Each instance then allows itself a share of each limit
(the limit divided by the members alive when Redis last answered, at least one; the whole
limit if Redis never answered since the start) counted in this process; the failure is told
to the member (one log line for the outage). When Redis is back, the next renewal writes
every lease held here, including those taken meanwhile, so the cluster's count is whole
again (it may exceed the limit until legs end; the service's own refusal, HTTP 429, is the
last guard).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any, Final

import structlog

from bridge.cluster.connection import REDIS_ERRORS, check_cancelled, stop
from bridge.cluster.member import MAX_CLOCK_AHEAD_S, ClusterMember
from bridge.stt.slots import LocalEngineSlots, LocalSlot, new_lease

log = structlog.get_logger("bridge.cluster")

# KEYS[1] the engine's set; ARGV: limit, member, lease ms. Returns {taken (0/1), in use}.
ACQUIRE: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[1]) then
  return {0, used}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, used + 1}
"""

# KEYS[1] the engine's set; ARGV: lease ms, then the members to renew (added back if they
# expired meanwhile), then "--" and the members given back. Returns the sessions in use.
RENEW: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local renewing = true
for i = 2, #ARGV do
  if ARGV[i] == '--' then
    renewing = false
  elseif renewing then
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[i])
  else
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
local used = redis.call('ZCARD', KEYS[1])
if used > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return used
"""


def local_share(limit: int, members_alive: int) -> int:
    """This instance's part of a limit while Redis is away: an even split among the
    members last seen alive, at least one session (the service's 429 guards the rest)."""
    return max(1, limit // max(1, members_alive))


# How long a leg waits for Redis to grant a slot before it uses the local share (its audio
# is buffered for audio.max_buffer_ms meanwhile).
ACQUIRE_TIMEOUT_S: Final = 2.0


class ClusterEngineSlots:
    """The ``EngineSlots`` of a cluster member (see the module docstring). Use ``async with``
    inside the member's life: leaving stops the renewals and gives back what is held."""

    def __init__(self, member: ClusterMember, limits: Mapping[str, int]) -> None:
        self._member = member
        self._redis = member.redis
        self._keys = member.keys
        self._lease_ms = int(member.settings.takeover_s * 1000)
        self._heartbeat_s = member.settings.heartbeat_s
        self.limits = {name: limit for name, limit in limits.items() if limit > 0}
        self.local = LocalEngineSlots(limits, on_release=self._released)
        self.cluster_in_use: dict[str, int] = dict.fromkeys(self.limits, 0)
        self.members_alive = 1
        self._given_back: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._acquire = self._redis.register_script(ACQUIRE)
        self._renew = self._redis.register_script(RENEW)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ClusterEngineSlots:
        if self.limits:  # without limits, nothing of this goes to Redis
            self._task = asyncio.create_task(self._renew_forever(), name="engine slots")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await stop(self._task)
        if not self.limits:
            return
        for engine in self.limits:
            for lease in self.local.leases(engine):
                self._given_back.setdefault(engine, []).append(lease)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.renew(renewing=False)

    def _member_name(self, lease: str) -> str:
        return f"{self._member.id}:{lease}"

    async def acquire(self, engine: str) -> LocalSlot | None:
        """A slot of ``engine`` within its cluster-wide limit, or None when it is full; a
        local share of the limit while Redis is away (see the module docstring)."""
        limit = self.limits.get(engine)
        if limit is None:
            return self.local.take(engine)
        if not self._member.up:
            # Known to be away: no leg waits seconds for a Redis that is not answering.
            return self.local.take(engine, limit=local_share(limit, self.members_alive))
        # Held here only once Redis granted it: a renewal meanwhile must not write it.
        lease = new_lease()
        try:
            # A Redis that stalls must not hold the leg's start: past this, the local share.
            # A lease granted after the timeout is never renewed and expires (takeover_s).
            async with asyncio.timeout(ACQUIRE_TIMEOUT_S):
                taken, used = await self._acquire(keys=[self._keys.engine(engine)],
                                                  args=[limit, self._member_name(lease),
                                                        self._lease_ms])
        except REDIS_ERRORS as exc:
            check_cancelled()
            self._member.trouble("engine slots", exc)
            return self.local.take(engine, limit=local_share(limit, self.members_alive))
        check_cancelled()  # a leg cancelled meanwhile must stop (its lease expires unrenewed)
        self._member.recovered()
        self.cluster_in_use[engine] = int(used)
        if not int(taken):
            return None
        return self.local.take(engine, limit=0, lease=lease)

    def _released(self, slot: LocalSlot) -> None:
        if slot.engine in self.limits:
            self._given_back.setdefault(slot.engine, []).append(slot.lease)
            self._wake.set()  # freed for the cluster now, not at the next renewal

    def usage(self) -> dict[tuple[str, str], int]:
        """Sessions in use by this instance, and in the cluster when Redis last answered."""
        return self.local.usage() | {(name, "cluster"): count
                                     for name, count in self.cluster_in_use.items()}

    async def renew(self, *, renewing: bool = True) -> None:
        """Renew this instance's leases, remove those given back, read the counts and the
        members alive. Raises ``REDIS_ERRORS``; what was given back is kept for the next try."""
        given_back, self._given_back = self._given_back, {}
        try:
            now_ms = int(time.time() * 1000)
            async with self._redis.pipeline(transaction=False) as pipe:
                for engine in self.limits:
                    held = [self._member_name(lease) for lease in self.local.leases(engine)]
                    gone = [self._member_name(lease) for lease in given_back.get(engine, [])]
                    args: list[Any] = [self._lease_ms, *(held if renewing else []), "--", *gone]
                    await self._renew(keys=[self._keys.engine(engine)], args=args, client=pipe)
                # Not "+inf": entries ahead of now (a forged score) would shrink every
                # instance's share for when Redis is away.
                pipe.zcount(self._keys.instances, now_ms - self._lease_ms,
                            now_ms + MAX_CLOCK_AHEAD_S * 1000)
                *counts, alive = await pipe.execute()
        except BaseException:
            for engine, leases in given_back.items():
                self._given_back.setdefault(engine, [])[:0] = leases
            raise
        self.cluster_in_use = {engine: int(count)
                               for engine, count in zip(self.limits, counts, strict=True)}
        self.members_alive = max(1, int(alive))

    async def _renew_forever(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.renew()
                self._member.recovered()
            except REDIS_ERRORS as exc:
                self._member.trouble("engine slots", exc)
            check_cancelled()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat_s):
                    await self._wake.wait()
