"""Live feeds shared through Redis: any instance serves the captions of any call.

The instance holding a call mirrors its feed (``FeedWriter``, a ``bridge.web.feed.FeedMirror``)
into two keys:

* ``Keys.feed(call)``: a stream of the feed's frames, each under the explicit id
  ``0-<SSE id>`` (fields ``type``, ``leg``, ``data`` = the webhook body), so a frame has the
  same SSE id on every instance and ``Last-Event-ID`` resumes anywhere. Capped at
  ``cluster.feed_max_events`` entries (``MAXLEN ~``), partials included: they are appended
  like every event, for viewers following live, and a joining viewer's replay leaves out
  those a later partial or final of their leg superseded (``bridge.web.feed.replay``).
* ``Keys.feed_info(call)``: a hash with the feed's ``stream_uid`` (what its tokens sign,
  so any instance can issue and check them), the ``instance`` holding it and ``ended``.

Both expire ``live.retain_s`` after the call ends, and ``IDLE_TTL_S`` after their last write
while the call lives (so the feed of a call whose instance died does not stay for ever).
Appending never blocks the call (``RedisAppender``): while Redis is away the frames wait in
a bounded queue and are written in order when it is back; beyond the queue they are
dropped, which leaves gaps in ids but never puts them out of order. A batch is one
transaction (``MULTI``), and writing it again after a failure is harmless: an id already
in the stream is refused, not added twice. The frame ``call.ended`` marks the feed ended
in the same transaction.

An instance that does not hold a call reads its feed with a ``FeedReader`` per viewer: the
backlog after the viewer's resume point, then ``XREAD BLOCK`` on a client of its own, until
the feed's ``call.ended`` (or its end is recorded, or the stream is replaced by a new one
under the same call key). The number of readers on one instance is bounded by
``cluster.feed_readers``; each holds one Redis connection while it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from bridge.cluster.appender import RedisAppender
from bridge.cluster.connection import REDIS_ERRORS, check_cancelled, connect, text
from bridge.cluster.member import ClusterMember
from bridge.errors import InvalidNumber
from bridge.events import EventType
from bridge.numbers import read_int
from bridge.web.feed import MAX_EVENT_ID, Frame, replay

log = structlog.get_logger("bridge.cluster")

IDLE_TTL_S: Final = 86400  # a live call's feed keys, after their last write
QUEUE_LIMIT: Final = 20_000  # feed changes waiting for Redis, all calls together
READ_BATCH: Final = 500


class Change(Enum):
    OPENED = "opened"
    FRAME = "frame"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class FeedChange:
    """One step of a feed's life, as the writer sends it to Redis."""

    call_id: str
    stream_uid: str
    change: Change
    frame: Frame | None = None


class FeedWriter(RedisAppender[FeedChange]):
    """Mirrors this instance's feeds into Redis (see the module's docstring)."""

    name = "live feed frames"

    def __init__(self, member: ClusterMember, *, max_events: int, retain_s: float,
                 limit: int = QUEUE_LIMIT) -> None:
        super().__init__(member, limit=limit)
        self.max_events = max_events
        self.retain_ms = int(retain_s * 1000)
        self.refused = 0  # commands Redis refused for a reason other than a repeat

    def opened(self, call_id: str, stream_uid: str) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.OPENED))

    def append(self, call_id: str, stream_uid: str, frame: Frame) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.FRAME, frame))

    def ended(self, call_id: str, stream_uid: str) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.ENDED))

    async def write(self, batch: Sequence[FeedChange]) -> None:
        keys = self.member.keys
        latest: dict[str, FeedChange] = {}
        # One transaction: a reader never sees frames without the feed's identity, nor the
        # call's end without its last frame.
        async with self.member.redis.pipeline(transaction=True) as pipe:
            for step in batch:
                stream = keys.feed(step.call_id)
                if step.change is Change.OPENED:
                    pipe.delete(stream)  # an earlier feed under this call key is over
                elif step.frame is not None:
                    frame = step.frame
                    pipe.xadd(stream, {"type": frame.kind.value, "leg": frame.leg or "",
                                       "data": frame.data},
                              id=f"0-{frame.id}", maxlen=self.max_events, approximate=True)
                latest[step.call_id] = step
            for call_id, step in latest.items():
                # Written with every batch, so a Redis that lost its data (a restart without
                # persistence) has the feed's identity again with its next frames.
                ended = step.change is Change.ENDED or (
                    step.frame is not None and step.frame.kind is EventType.CALL_ENDED)
                ttl_ms = self.retain_ms if ended else IDLE_TTL_S * 1000
                info = keys.feed_info(call_id)
                pipe.hset(info, mapping={"stream_uid": step.stream_uid,
                                         "instance": self.member.id, "ended": int(ended)})
                pipe.pexpire(info, ttl_ms)
                pipe.pexpire(keys.feed(call_id), ttl_ms)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, ResponseError) and "equal or smaller" not in str(result):
                self.refused += 1  # a repeated frame is refused harmlessly; others counted


@dataclass(frozen=True, slots=True)
class SharedFeed:
    """A feed as Redis knows it."""

    call_id: str
    stream_uid: str
    instance: str
    ended: bool

    @property
    def subject(self) -> str:
        """What a token for this feed signs (as ``LiveFeed.subject`` on its instance)."""
        return f"{self.call_id}\n{self.stream_uid}"


def frames_of(entries: Any) -> tuple[list[Frame], int]:
    """The frames of stream entries (``XRANGE``'s reply), and the last entry id's number.

    Entries that are not a feed's frame (a foreign writer's) are skipped, not trusted.
    """
    frames = []
    last = 0
    for raw_id, fields in entries or ():
        epoch, _, number = text(raw_id).partition("-")
        if epoch != "0":
            continue  # not an id a feed writer gives
        try:
            frame_id = read_int(number, field="feed entry id", low=1, high=MAX_EVENT_ID)
        except InvalidNumber:
            continue
        last = max(last, frame_id)
        try:
            kind = EventType(text(fields.get(b"type", b"")))
        except ValueError:
            continue
        leg = text(fields.get(b"leg", b"")) or None
        data = fields.get(b"data")
        if isinstance(data, bytes):
            frames.append(Frame(frame_id, kind, leg, data))
    return frames, last


class FeedReader:
    """One viewer's frames of a feed held by another instance (a ``FrameSource``)."""

    def __init__(self, feeds: SharedFeeds, feed: SharedFeed, after: int) -> None:
        self.feed = feed
        self.closed = False
        self._feeds = feeds
        self._last = after
        self._started = False
        self._read: asyncio.Task[Any] | None = None

    @property
    def _stream(self) -> str:
        return self._feeds.member.keys.feed(self.feed.call_id)

    async def take(self, within_s: float) -> list[Frame]:
        """The backlog after the resume point first, then new frames as they come; [] on a
        quiet spell or once closed. Redis failing closes the reader (the viewer's browser
        reconnects and resumes, here or elsewhere). Cancelling leaves nothing behind."""
        if self.closed:
            return []
        try:
            if not self._started:
                self._started = True
                frames, full = await self._range()
                check_cancelled()
                if self.feed.ended and not full:
                    self.closed = True  # everything the ended feed has is in hand
                return self._seen(replay(frames))
            frames = await self._follow(within_s)
            if not frames and not self.closed:
                frames = await self._still_current()
            check_cancelled()
        except REDIS_ERRORS as exc:
            self._feeds.member.trouble("reading a live feed", exc)
            self.closed = True
            return []
        return self._seen(frames)

    def _seen(self, frames: list[Frame]) -> list[Frame]:
        if any(frame.kind is EventType.CALL_ENDED for frame in frames):
            self.closed = True
        return frames

    async def _range(self) -> tuple[list[Frame], bool]:
        entries = await self._feeds.member.redis.xrange(
            self._stream, min=f"0-{self._last + 1}", max="+", count=READ_BATCH) or []
        frames, last = frames_of(entries)
        self._last = max(self._last, last)
        return frames, len(entries) >= READ_BATCH

    async def _follow(self, within_s: float) -> list[Frame]:
        # The blocking read runs in a task of its own so that closing the reader (shutdown)
        # can end the wait at once.
        self._read = asyncio.create_task(self._wait_for_frames(within_s))
        read = self._read
        try:
            await asyncio.wait({read})
        finally:
            self._read = None
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await read
        if read.cancelled():
            return []
        reply = read.result()
        frames: list[Frame] = []
        for _, entries in reply or ():
            got, last = frames_of(entries)
            frames.extend(got)
            self._last = max(self._last, last)
        return frames

    async def _wait_for_frames(self, within_s: float) -> Any:
        return await self._feeds.blocking.xread({self._stream: f"0-{self._last}"},
                                                count=READ_BATCH,
                                                block=max(1, int(within_s * 1000)))

    async def _still_current(self) -> list[Frame]:
        """A quiet spell: the feed may have ended without its last frame, or been replaced
        by a new stream under the same call key, or expired."""
        uid, ended = await self._feeds.member.redis.hmget(
            self._feeds.member.keys.feed_info(self.feed.call_id), ["stream_uid", "ended"])
        if uid is None or text(uid) != self.feed.stream_uid:
            self.closed = True
            return []
        if text(ended or b"0") == "1":
            frames, full = await self._range()  # what came between the read and now
            self.closed = not full
            return frames
        return []

    def close(self) -> None:
        self.closed = True
        if self._read is not None:
            self._read.cancel()


class SharedFeeds:
    """Feeds of calls held by other instances, read from Redis. Use ``async with``."""

    def __init__(self, member: ClusterMember, *, max_readers: int,
                 max_per_call: int) -> None:
        self.member = member
        self.blocking: redis.Redis = connect(member.settings, blocking=True)
        self.max_readers = max_readers
        self.max_per_call = max_per_call
        self.readers: set[FeedReader] = set()
        self._per_call: Counter[str] = Counter()

    async def __aenter__(self) -> SharedFeeds:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.blocking.aclose()

    async def find(self, call_id: str) -> SharedFeed | None:
        """The feed Redis has under ``call_id``, or None (none, or Redis away: then the
        member is told, and ``member.up`` says which)."""
        try:
            info = await self.member.redis.hgetall(self.member.keys.feed_info(call_id))
        except REDIS_ERRORS as exc:
            self.member.trouble("finding a live feed", exc)
            return None
        self.member.recovered()
        uid = info.get(b"stream_uid")
        if not uid:
            return None
        return SharedFeed(call_id, text(uid), text(info.get(b"instance", b"")),
                          text(info.get(b"ended", b"0")) == "1")

    def read(self, feed: SharedFeed, after: int) -> FeedReader | None:
        """A reader for one viewer from event ``after`` on; None when this instance already
        has ``max_readers`` readers, or ``max_per_call`` of this call."""
        if len(self.readers) >= self.max_readers or \
                self._per_call[feed.call_id] >= self.max_per_call:
            return None
        reader = FeedReader(self, feed, after)
        self.readers.add(reader)
        self._per_call[feed.call_id] += 1
        return reader

    def leave(self, reader: FeedReader) -> None:
        if reader in self.readers:
            self.readers.discard(reader)
            self._per_call[reader.feed.call_id] -= 1
            if self._per_call[reader.feed.call_id] <= 0:
                del self._per_call[reader.feed.call_id]
        reader.close()

    def close(self) -> None:
        """Shutting down: every reader's stream ends."""
        for reader in self.readers:
            reader.close()
