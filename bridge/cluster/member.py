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
import secrets
import time
from collections.abc import Callable
from typing import Any, Final, cast

import orjson
import redis.asyncio as redis
import structlog

from bridge.cluster.connection import (
    REDIS_ERRORS,
    Keys,
    check_cancelled,
    connect,
    stop,
    where,
)
from bridge.config import INSTANCE_ID, ClusterSettings

log = structlog.get_logger("bridge.cluster")

# Members whose last heartbeat is older than this are forgotten from the members' set.
FORGET_AFTER_S: Final = 7 * 86400
MAX_LISTED: Final = 1000
MAX_HEARTBEAT_BYTES: Final = 16 * 1024
# A heartbeat time further ahead than this (a member's clock, or a forged score) is not
# listed: such entries would otherwise push the real members out of the newest MAX_LISTED.
MAX_CLOCK_AHEAD_S: Final = 60


def parse_heartbeat(raw: object) -> dict[str, Any] | None:
    """A member's state as its heartbeat wrote it; None for anything that is not one
    (wrong type, larger than ``MAX_HEARTBEAT_BYTES``, not a JSON object)."""
    if not isinstance(raw, bytes | str) or len(raw) > MAX_HEARTBEAT_BYTES:
        return None
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return state if isinstance(state, dict) else None


def member_id(raw: object) -> str | None:
    """A member's id as read from the members' set; None unless it is a valid instance id
    (anything else was written by a party other than a member)."""
    if not isinstance(raw, bytes):
        return None
    try:
        instance_id = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return instance_id if INSTANCE_ID.match(instance_id) else None


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
        # Told apart from another process that runs under the same instance id.
        self.boot = secrets.token_hex(8)
        self.twin_seen = False
        self.skipped = 0  # entries of the members' set or heartbeats that were not one
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
        await stop(self._task)
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
        body = orjson.dumps({"instance": self.id, "heartbeat_ms": now_ms, **self.state(),
                             "boot": self.boot})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.instance(self.id), body,
                     px=int(self.settings.takeover_s * 1000), get=True)
            pipe.zadd(self.keys.instances, {self.id: now_ms})
            pipe.zremrangebyscore(self.keys.instances, 0, now_ms - FORGET_AFTER_S * 1000)
            previous, *_ = await pipe.execute()
        self._check_twin(previous)
        self.heartbeats += 1

    def _check_twin(self, previous: object) -> None:
        # The first heartbeat may find the key of this instance's previous run (a restarted
        # pod reuses its id before the old key expires); a later one finding another boot
        # means a second process is running under this id right now.
        if self.heartbeats == 0 or previous is None or self.twin_seen:
            return
        state = parse_heartbeat(previous)
        if state is not None and state.get("boot") == self.boot:
            return
        self.twin_seen = True
        log.error("another process heartbeats under this instance id: give each instance "
                  "its own cluster.instance_id, or the two take each other's actions and "
                  "calls", instance=self.id)

    async def members(self) -> list[dict[str, Any]]:
        """Every member seen in the last week, alive or lost, newest heartbeat first: the
        alive ones with the state their last heartbeat gave.

        What others could have written is checked: entries that are not instance ids,
        heartbeat times ahead of now, and heartbeats that are not JSON objects are skipped
        (counted in ``skipped``).
        """
        ids, scores = await self._listed(newest_first=True)
        if not ids:
            return []
        bodies = await self.redis.mget([self.keys.instance(i) for i in ids])
        result = []
        for instance_id, body, score in zip(ids, bodies, scores, strict=True):
            if body is not None:
                state = parse_heartbeat(body)
                if state is None:
                    self.skipped += 1
                    continue
                state.update(instance=instance_id, alive=True)
            else:
                state = {"instance": instance_id, "alive": False, "heartbeat_ms": score}
            result.append(state)
        return result

    async def _listed(self, *, newest_first: bool) -> tuple[list[str], list[int]]:
        """Up to ``MAX_LISTED`` valid member ids with their heartbeat times, never one from
        the future."""
        now_ms = int(time.time() * 1000)
        newest, oldest = now_ms + MAX_CLOCK_AHEAD_S * 1000, now_ms - FORGET_AFTER_S * 1000
        if newest_first:
            entries = await self.redis.zrevrangebyscore(
                self.keys.instances, newest, oldest, start=0, num=MAX_LISTED, withscores=True)
        else:
            entries = await self.redis.zrangebyscore(
                self.keys.instances, oldest, newest, start=0, num=MAX_LISTED, withscores=True)
        ids, scores = [], []
        for raw, score in cast("list[tuple[bytes, float]]", entries):
            instance_id = member_id(raw)
            if instance_id is None:
                self.skipped += 1
                continue
            ids.append(instance_id)
            scores.append(int(score))
        return ids, scores

    async def lost(self) -> list[str]:
        """Members whose heartbeat has expired (not this one)."""
        ids, _ = await self._listed(newest_first=False)
        others = [i for i in ids if i != self.id]
        if not others:
            return []
        alive = await self.redis.mget([self.keys.instance(i) for i in others])
        return [i for i, body in zip(others, alive, strict=True) if body is None]
