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

A stream claims these keys (a Lua script, with its batch): free ones, its own, its instance's
(a live call key is unique on one instance), or those of an ended feed or of an instance that
is gone. A second live stream announcing a call id another live instance holds is not
mirrored: it stays local to its instance and never touches the first feed's keys.

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
under the same call key, or an entry id no feed writer gives appears). Entries are trusted
for nothing: ones that are no frame, or whose data could break the SSE stream, are skipped.
The number of readers on one instance is bounded by ``cluster.feed_readers``; each holds
one Redis connection while it waits.
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


# One feed's changes of a batch, atomically. The feed's keys are claimed first: taken when
# free (no identity, or an ended feed), when already this stream's, when held by this same
# instance (a live call key is unique on one instance, so what it held is over: a restart's
# leftover), or when the holder is gone (its instance key expired). A feed still held by
# another live instance is refused (-1) and nothing is written. Otherwise the frames are added
# (an id already in the stream is refused harmlessly) and the number of other refusals is
# returned.
# KEYS: feed-info, feed stream. ARGV: stream uid, this instance, instance key prefix, ended
# (0/1), ttl ms, max entries, then id/type/leg/data of each frame.
WRITE_FEED: Final = """
local uid = redis.call('HGET', KEYS[1], 'stream_uid')
if uid ~= ARGV[1] then
  if uid then
    local holder = redis.call('HGET', KEYS[1], 'instance') or ''
    local ended = redis.call('HGET', KEYS[1], 'ended')
    if ended ~= '1' and holder ~= ARGV[2] and holder ~= ''
        and redis.call('EXISTS', ARGV[3] .. holder) == 1 then
      return -1
    end
  end
  redis.call('DEL', KEYS[2])
end
local refused = 0
for i = 7, #ARGV, 4 do
  local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], ARGV[i],
                            'type', ARGV[i + 1], 'leg', ARGV[i + 2], 'data', ARGV[i + 3])
  if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller') then
    refused = refused + 1
  end
end
redis.call('HSET', KEYS[1], 'stream_uid', ARGV[1], 'instance', ARGV[2], 'ended', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return refused
"""
UNSHARED_LIMIT: Final = 10_000  # feeds remembered as refused, until their end


class FeedWriter(RedisAppender[FeedChange]):
    """Mirrors this instance's feeds into Redis (see the module's docstring).

    A feed whose call key another live instance's stream holds in Redis is not mirrored: it
    stays this instance's own (its viewers connect here), counted in ``unshared`` with one
    log line, and none of its changes touch the other feed's keys.
    """

    name = "live feed frames"

    def __init__(self, member: ClusterMember, *, max_events: int, retain_s: float,
                 limit: int = QUEUE_LIMIT) -> None:
        super().__init__(member, limit=limit)
        self.max_events = max_events
        self.retain_ms = int(retain_s * 1000)
        self.refused = 0  # commands Redis refused for a reason other than a repeat
        self.unshared = 0  # feeds refused because another instance's stream holds the key
        self._unshared: set[tuple[str, str]] = set()
        self._script = member.redis.register_script(WRITE_FEED)

    def opened(self, call_id: str, stream_uid: str) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.OPENED))

    def append(self, call_id: str, stream_uid: str, frame: Frame) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.FRAME, frame))

    def ended(self, call_id: str, stream_uid: str) -> None:
        self.offer(FeedChange(call_id, stream_uid, Change.ENDED))

    async def write(self, batch: Sequence[FeedChange]) -> None:
        keys = self.member.keys
        feeds: dict[tuple[str, str], list[FeedChange]] = {}
        for step in batch:
            feeds.setdefault((step.call_id, step.stream_uid), []).append(step)
        writing = [(feed, steps) for feed, steps in feeds.items() if feed not in self._unshared]
        # One transaction: a reader never sees frames without the feed's identity, nor the
        # call's end without its last frame. The identity is written with every batch, so a
        # Redis that lost its data (a restart without persistence) has it again with the
        # feed's next frames.
        async with self.member.redis.pipeline(transaction=True) as pipe:
            for (call_id, stream_uid), steps in writing:
                ended = any(step.change is Change.ENDED or (
                    step.frame is not None and step.frame.kind is EventType.CALL_ENDED)
                    for step in steps)
                args: list[str | bytes | int] = [
                    stream_uid, self.member.id, keys.instance(""), int(ended),
                    self.retain_ms if ended else IDLE_TTL_S * 1000, self.max_events]
                for step in steps:
                    if step.frame is not None:
                        frame = step.frame
                        args += [f"0-{frame.id}", frame.kind.value, frame.leg or "", frame.data]
                await self._script(keys=[keys.feed_info(call_id), keys.feed(call_id)],
                                   args=args, client=pipe)
            results = await pipe.execute(raise_on_error=False) if writing else []
        for ((call_id, stream_uid), _), result in zip(writing, results, strict=True):
            if isinstance(result, ResponseError):
                self.refused += 1
            elif result == -1:
                self._refuse(call_id, stream_uid)
            elif isinstance(result, int):
                self.refused += result
        for step in batch:
            if step.change is Change.ENDED:
                self._unshared.discard((step.call_id, step.stream_uid))

    def _refuse(self, call_id: str, stream_uid: str) -> None:
        self.unshared += 1
        if len(self._unshared) < UNSHARED_LIMIT:
            self._unshared.add((call_id, stream_uid))
        log.warning("live feed not shared: another instance's live stream holds its call id "
                    "in Redis; viewers of this call must connect to this instance",
                    call_id=call_id)


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


# A frame's data as another instance wrote it: an event's webhook body, far below this. A
# larger one, or one with a line break (it would end the SSE ``data`` line and let the rest
# pose as fields of its own), is not a feed writer's and is skipped.
MAX_FRAME_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entries:
    """What a read of a feed's stream gave (``frames_of``)."""

    frames: list[Frame]
    last: int  # the last entry id's number read, so the next read starts after it
    foreign: bool  # an entry id no feed writer gives (not ``0-<n>``): the reading stops


def frames_of(entries: Any) -> Entries:
    """The frames of stream entries (``XRANGE``'s or ``XREAD``'s reply, in id order).

    Entries whose fields are not a feed's frame (a foreign writer's) are skipped, not trusted,
    but read past. An entry id outside ``0-<n>`` ends the entries taken: a reader cannot read
    past it with ``0-<n>`` ids, so it stops there.
    """
    frames: list[Frame] = []
    last = 0
    for raw_id, fields in entries or ():
        epoch, _, number = text(raw_id).partition("-")
        if epoch != "0":
            return Entries(frames, last, foreign=True)
        try:
            frame_id = read_int(number, field="feed entry id", low=1, high=MAX_EVENT_ID)
        except InvalidNumber:
            return Entries(frames, last, foreign=True)
        last = max(last, frame_id)
        try:
            kind = EventType(text(fields.get(b"type", b"")))
        except (ValueError, UnicodeDecodeError):
            continue
        leg = fields.get(b"leg", b"")
        data = fields.get(b"data")
        if isinstance(data, bytes) and isinstance(leg, bytes) and \
                len(data) <= MAX_FRAME_BYTES and b"\n" not in data and b"\r" not in data:
            try:
                frames.append(Frame(frame_id, kind, leg.decode() or None, data))
            except UnicodeDecodeError:
                continue
    return Entries(frames, last, foreign=False)


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
        read = self._took(frames_of(entries))
        return read.frames, len(entries) >= READ_BATCH and not read.foreign

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
            frames.extend(self._took(frames_of(entries)).frames)
        return frames

    def _took(self, read: Entries) -> Entries:
        """Past every entry read (skipped ones too, or the next read would return them
        again at once); an entry no feed writer gives ends the reader."""
        self._last = max(self._last, read.last)
        if read.foreign:
            self.closed = True
        return read

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
