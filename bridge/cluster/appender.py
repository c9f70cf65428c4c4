"""Appending to Redis without ever making a call wait: a bounded queue and one writer task.

Calls hand entries over with ``offer``, which never blocks: the entry joins a bounded queue,
or, when the queue is full (Redis has been away for a while), is dropped and counted, with
one log line per spell of dropping. One task writes the queue in order, in batches; when
Redis fails, the member is told (its one log line) and the same batch is tried again after a
short pause, so nothing is reordered. A subclass says how a batch is written, and must make
writing a batch twice harmless or say what a repeat costs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import Final, Generic, Self, TypeVar

import structlog

from bridge.cluster.connection import REDIS_ERRORS, check_cancelled, stop
from bridge.cluster.member import ClusterMember

log = structlog.get_logger("bridge.cluster")

BATCH: Final = 256
RETRY_FIRST_S: Final = 0.1
RETRY_MAX_S: Final = 2.0
FLUSH_S: Final = 2.0  # at shutdown, how long what is queued may take to reach Redis

T = TypeVar("T")


class RedisAppender(Generic[T]):
    """Writes offered entries to Redis in order, in a task of its own. Use ``async with``."""

    name = "entries"  # what the log line about dropping calls them

    def __init__(self, member: ClusterMember, *, limit: int) -> None:
        self.member = member
        self.limit = limit
        self.written = 0
        self.dropped = 0
        self._queue: deque[T] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._dropping = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"redis {self.name}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """What is queued gets up to ``FLUSH_S`` to reach Redis; the rest is lost."""
        await self.drained(FLUSH_S)
        await stop(self._task)
        if self._queue:
            log.warning(f"redis {self.name} not written at shutdown", count=len(self._queue))

    async def drained(self, within_s: float) -> bool:
        """Whether everything offered so far is in Redis, waiting up to ``within_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._idle.wait()
        return self._idle.is_set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def offer(self, entry: T) -> None:
        """Queue ``entry`` for Redis; never blocks. Dropped (and counted) when full."""
        if len(self._queue) >= self.limit:
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning(f"redis {self.name} dropped: the queue is full while Redis is "
                            "slow or away", limit=self.limit)
            return
        self._queue.append(entry)
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                await self.write(batch)
            except REDIS_ERRORS as exc:
                check_cancelled()
                self.member.trouble(f"writing {self.name}", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            check_cancelled()
            self.member.recovered()
            delay = RETRY_FIRST_S
            for _ in batch:
                self._queue.popleft()
            self.written += len(batch)
            if self._dropping and len(self._queue) < self.limit // 2:
                self._dropping = False
                log.info(f"redis {self.name} written again", dropped_total=self.dropped)

    async def write(self, batch: Sequence[T]) -> None:
        """Write ``batch`` to Redis, in order; raise one of ``REDIS_ERRORS`` to retry it."""
        raise NotImplementedError
