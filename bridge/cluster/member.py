"""This instance as a member of the cluster: heartbeat, health, and the list of members.

A member writes its state (calls, capacity, readiness) under a key that expires
``cluster.takeover_s`` after its last heartbeat, and its heartbeat time in a sorted set of
every member ever seen. A member whose key has expired is lost: survivors take over what
it left (``bridge.cluster`` parts that care watch ``lost``).

Health: any part whose Redis call fails tells the member (``trouble``); the member logs one
line when Redis goes away and one when a later heartbeat finds it back, never one per
event. ``/readyz`` and metrics read ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Final

import orjson
import redis.asyncio as redis
import structlog

from bridge.cluster.connection import (
    REDIS_ERRORS,
    Keys,
    check_cancelled,
    connect,
    text,
    where,
)
from bridge.config import ClusterSettings

log = structlog.get_logger("bridge.cluster")

# Members whose last heartbeat is older than this are forgotten from the members' set.
FORGET_AFTER_S: Final = 7 * 86400
MAX_LISTED: Final = 1000


class ClusterMember:
    """One instance's membership. Use ``async with``; it never fails for Redis being away."""

    def __init__(self, settings: ClusterSettings, *,
                 state: Callable[[], dict[str, Any]] = dict) -> None:
        self.settings = settings
        self.id = settings.instance()
        self.keys = Keys(settings.key_prefix)
        self.redis: redis.Redis = connect(settings)
        self.where = where(settings)
        self.state = state  # what the heartbeat says of this instance (calls, readiness...)
        self.up = False
        self.down_since: float | None = time.monotonic()
        self.heartbeats = 0
        self._failures = 0
        self._first = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reported_down = False

    async def __aenter__(self) -> ClusterMember:
        self._task = asyncio.create_task(self._beat(), name="cluster heartbeat")
        # Start once the first heartbeat is in, or has failed: a Redis that is away is
        # reported, and the instance serves calls anyway.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.takeover_s):
                await self._first.wait()
        log.info("cluster member", instance=self.id, redis=self.where, up=self.up)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.up:
            # Leaving on purpose: the key goes now; what this instance left in Redis is its
            # own to recover at its next start, or a survivor's after takeover_s.
            with contextlib.suppress(*REDIS_ERRORS):
                await self.redis.delete(self.keys.instance(self.id))
        await self.redis.aclose()

    # -- health -------------------------------------------------------------------------------

    def trouble(self, doing: str, error: BaseException) -> None:
        """A Redis call failed: the first failure while up logs one line and marks the
        instance degraded; the rest are silent until Redis is back."""
        self._failures += 1
        if self.up or not self._reported_down:
            log.warning("redis unreachable: cluster state degraded; calls go on and events "
                        "are kept locally until it is back", redis=self.where, doing=doing,
                        error=type(error).__name__)
            self._reported_down = True
        if self.up:
            self.up = False
            self.down_since = time.monotonic()

    def recovered(self) -> None:
        """A Redis call succeeded: if Redis was away, one line says it is back."""
        if self.up:
            return
        if self._reported_down and self.down_since is not None:
            log.info("redis reachable again: cluster state restored", redis=self.where,
                     down_s=round(time.monotonic() - self.down_since, 1),
                     failed_calls=self._failures)
        self.up = True
        self.down_since = None
        self._failures = 0
        self._reported_down = False

    # -- heartbeat ----------------------------------------------------------------------------

    async def _beat(self) -> None:
        while True:
            try:
                await self.heartbeat()
                self.recovered()
            except REDIS_ERRORS as exc:
                self.trouble("heartbeat", exc)
            check_cancelled()
            self._first.set()
            await asyncio.sleep(self.settings.heartbeat_s)

    async def heartbeat(self) -> None:
        """Say this instance is alive, with its state, until ``takeover_s`` from now."""
        now_ms = int(time.time() * 1000)
        body = orjson.dumps({"instance": self.id, "heartbeat_ms": now_ms, **self.state()})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.instance(self.id), body,
                     px=int(self.settings.takeover_s * 1000))
            pipe.zadd(self.keys.instances, {self.id: now_ms})
            pipe.zremrangebyscore(self.keys.instances, 0, now_ms - FORGET_AFTER_S * 1000)
            await pipe.execute()
        self.heartbeats += 1

    async def members(self) -> list[dict[str, Any]]:
        """Every member seen in the last week, alive or lost, newest heartbeat first: the
        alive ones with the state their last heartbeat gave."""
        ids = [text(raw) for raw in
               await self.redis.zrevrange(self.keys.instances, 0, MAX_LISTED - 1)]
        if not ids:
            return []
        bodies = await self.redis.mget([self.keys.instance(i) for i in ids])
        scores = await self.redis.zmscore(self.keys.instances, ids)
        result = []
        for instance_id, body, score in zip(ids, bodies, scores, strict=True):
            if body is not None:
                state = orjson.loads(body)
                state.update(instance=instance_id, alive=True)
            else:
                state = {"instance": instance_id, "alive": False,
                         "heartbeat_ms": int(score) if score is not None else None}
            result.append(state)
        return result

    async def lost(self) -> list[str]:
        """Members whose heartbeat has expired (not this one)."""
        ids = [text(raw) for raw in
               await self.redis.zrange(self.keys.instances, 0, MAX_LISTED - 1)]
        others = [i for i in ids if i != self.id]
        if not others:
            return []
        alive = await self.redis.mget([self.keys.instance(i) for i in others])
        return [i for i, body in zip(others, alive, strict=True) if body is None]
