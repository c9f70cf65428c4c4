"""The live feed: each call's events as Server-Sent Events, and the tokens that open it.

Calls publish through a ``LiveTee``: every event goes to the webhook sink as before and,
encoded exactly as its webhook body, to the call's ``LiveFeed``. A feed numbers its events
(the SSE ``id``), keeps a bounded backlog so that a viewer who opens the page mid-call, or
reconnects with ``Last-Event-ID``, sees what it missed, and hands new events to each viewer's
bounded buffer. Nothing here waits: a viewer too slow to keep up is cut off (its browser
reconnects and resumes from the backlog); the call never notices.

Partials are transient: the backlog keeps only each leg's latest one, and drops it once that
leg's next final arrives. Every other event is kept until the backlog's byte budget is used,
oldest first out.

Tokens are ``<expiry>.<signature>``: HMAC-SHA256, under a key derived from the admin token,
of the call id, the id of the stream that feed belongs to, and the expiry. A token opens that
one stream's feed until it expires (a later stream announcing the same call id is another
feed); every instance sharing the admin token accepts it.

In cluster mode a ``FeedMirror`` is told of each feed's start, frames and end, so that
other instances can serve the feed (``bridge.cluster.feeds``) with the same ids and data.

``stream_events`` writes one viewer's stream; the admin API's route checks the viewer's
token for the feed first and then hands the request to it. ``serve_frames`` writes a stream
from any ``FrameSource``: a local viewer, or a reader of another instance's feed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Protocol

import structlog
from aiohttp import web

from bridge.delivery.retry import Outcome
from bridge.delivery.webhooks import EventSink
from bridge.errors import InvalidNumber
from bridge.events import EventType, OutboundEvent
from bridge.numbers import read_int
from bridge.stages import StageTally

log = structlog.get_logger("bridge.feed")

TOKEN_CONTEXT: Final = b"callbridge live feed token v1"
MAX_EXPIRY: Final = 10**11  # Unix seconds: far beyond any token's lifetime
# Retry delay an EventSource uses after a dropped stream (ms); the captions page uses its own.
SSE_RETRY_MS: Final = 2000
MAX_EVENT_ID: Final = 2**53 - 1
SIGNATURE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # a token's HMAC-SHA256, base64url


@dataclass(frozen=True, slots=True)
class Frame:
    """One encoded SSE event."""

    id: int
    kind: EventType
    leg: str | None
    data: bytes
    # When the engine result it shows was received (time.monotonic()), for the
    # result_to_viewer latency; 0: not a result, or not live (a backlog, another instance).
    received_at: float = field(default=0.0, compare=False)

    def encode(self) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.kind.value.encode(), self.data)


class FrameSource(Protocol):
    """Where one viewer's frames come from."""

    @property
    def closed(self) -> bool:
        """No more frames will come once what is buffered has been taken."""

    async def take(self, within_s: float) -> list[Frame]:
        """The next frames, waiting up to ``within_s``; [] on a quiet spell or once closed."""


class FeedMirror(Protocol):
    """Told of every feed's life, in order, to share it with other instances. Must not
    block and must not raise."""

    def opened(self, call_id: str, stream_uid: str) -> None:
        """A new feed under ``call_id``: it replaces any earlier one under that key."""

    def append(self, call_id: str, stream_uid: str, frame: Frame) -> None:
        """The feed's next frame."""

    def ended(self, call_id: str, stream_uid: str) -> None:
        """The feed ended; it is kept ``live.retain_s`` for reconnecting viewers."""


def replay(frames: Iterable[Frame]) -> list[Frame]:
    """What a joining viewer is given of a backlog of frames in id order: every frame, but
    partials only while they are their leg's latest word (the backlog's rule: a later
    partial or final of the same leg, or the call's end, supersedes a partial)."""
    kept: list[Frame] = []
    superseded: set[str | None] = set()
    ended = False
    for frame in reversed(list(frames)):
        if frame.kind is EventType.TRANSCRIPT_PARTIAL:
            if ended or frame.leg in superseded:
                continue
            superseded.add(frame.leg)
        elif frame.kind is EventType.TRANSCRIPT_FINAL:
            superseded.add(frame.leg)
        elif frame.kind is EventType.CALL_ENDED:
            ended = True
        kept.append(frame)
    kept.reverse()
    return kept


class Viewer:
    """One open feed connection's buffer: bounded; overflowing it closes the viewer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.frames: deque[Frame] = deque()
        self.closed = False
        self.overflowed = False
        self._wake = asyncio.Event()

    def offer(self, frame: Frame) -> None:
        if self.closed:
            return
        if len(self.frames) >= self.limit:
            self.overflowed = True
            self.close()
            return
        self.frames.append(frame)
        self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self, within_s: float) -> list[Frame]:
        """What is buffered, waiting up to ``within_s`` for something; [] on a quiet spell
        or once closed and empty."""
        if not self.frames and not self.closed:
            self._wake.clear()
            try:
                async with asyncio.timeout(within_s):
                    await self._wake.wait()
            except TimeoutError:
                return []
        frames = list(self.frames)
        self.frames.clear()
        return frames


class LiveFeed:
    """One call's events, numbered, with a bounded backlog and the viewers watching it."""

    def __init__(self, call_id: str, *, backlog_bytes: int, viewer_buffer: int,
                 mirror: FeedMirror | None = None) -> None:
        self.call_id = call_id
        # Which stream this feed is: tokens are issued for it, not for the call id alone.
        self.stream_uid = uuid.uuid4().hex
        self.ended = False
        self.viewers: set[Viewer] = set()
        self.cut_off = 0  # viewers closed for falling behind
        self._backlog_limit = backlog_bytes
        self._viewer_buffer = viewer_buffer
        self._backlog: deque[Frame] = deque()
        self._backlog_size = 0
        self._partials: dict[str | None, Frame] = {}
        self._last_id = 0
        self._mirror = mirror
        if mirror is not None:
            mirror.opened(call_id, self.stream_uid)

    @property
    def subject(self) -> str:
        """What a token for this feed signs: the call key and the stream's own id."""
        return f"{self.call_id}\n{self.stream_uid}"

    def publish(self, event: OutboundEvent) -> None:
        self._last_id += 1
        timing = event.timing
        frame = Frame(self._last_id, event.type, event.leg, event.body,
                      timing.received_at if timing is not None else 0.0)
        if self._mirror is not None:
            self._mirror.append(self.call_id, self.stream_uid, frame)
        if event.type is EventType.TRANSCRIPT_PARTIAL:
            self._partials[event.leg] = frame
        else:
            if event.type is EventType.TRANSCRIPT_FINAL:
                self._partials.pop(event.leg, None)
            self._keep(frame)
        for viewer in list(self.viewers):
            viewer.offer(frame)
            if viewer.overflowed:
                self.viewers.discard(viewer)
                self.cut_off += 1

    def _keep(self, frame: Frame) -> None:
        self._backlog.append(frame)
        self._backlog_size += len(frame.data)
        while self._backlog_size > self._backlog_limit and self._backlog:
            self._backlog_size -= len(self._backlog.popleft().data)

    def watch(self, after: int) -> Viewer:
        """A new viewer, given first what the backlog holds after event ``after``."""
        viewer = Viewer(self._viewer_buffer)
        kept = [f for f in (*self._backlog, *self._partials.values()) if f.id > after]
        # What the viewer missed is history, not latency: those frames go unmeasured.
        viewer.frames.extend(replace(f, received_at=0.0) if f.received_at else f
                             for f in sorted(kept, key=lambda f: f.id))
        if self.ended:
            viewer.close()
        else:
            self.viewers.add(viewer)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)

    def end(self) -> None:
        if not self.ended and self._mirror is not None:
            self._mirror.ended(self.call_id, self.stream_uid)
        self.ended = True
        self._partials.clear()
        for viewer in self.viewers:
            viewer.close()
        self.viewers.clear()


class LiveFeeds:
    """Every call's feed, by call id; an ended call's feed is kept ``retain_s`` for viewers
    reconnecting to see its end."""

    def __init__(self, *, backlog_bytes: int, viewer_buffer: int, retain_s: float) -> None:
        self.feeds: dict[str, LiveFeed] = {}
        self._backlog_bytes = backlog_bytes
        self._viewer_buffer = viewer_buffer
        self._retain_s = retain_s
        self.cut_off = 0  # viewers closed for falling behind, in feeds already forgotten
        self.mirror: FeedMirror | None = None  # cluster mode: feeds shared through Redis

    def get(self, call_id: str) -> LiveFeed | None:
        return self.feeds.get(call_id)

    def attach(self, call_id: str) -> LiveFeed:
        """A media connection's call started: its own feed, under its call key.

        One stream, one feed: call keys are unique among live calls (``LiveCalls``), so a
        feed found under the key is an ended one kept for reconnecting viewers, and a new
        call's events never join it.
        """
        feed = LiveFeed(call_id, backlog_bytes=self._backlog_bytes,
                        viewer_buffer=self._viewer_buffer, mirror=self.mirror)
        retained = self.feeds.get(call_id)
        if retained is not None:
            retained.end()
            self.cut_off += retained.cut_off
            retained.cut_off = 0
        self.feeds[call_id] = feed
        return feed

    def detach(self, feed: LiveFeed) -> None:
        """The media connection ended: so does its feed, kept ``retain_s`` for viewers."""
        feed.end()
        asyncio.get_running_loop().call_later(self._retain_s, self._forget, feed)

    def _forget(self, feed: LiveFeed) -> None:
        if self.feeds.get(feed.call_id) is feed:
            del self.feeds[feed.call_id]
        self.cut_off += feed.cut_off

    def close(self) -> None:
        """Shutting down: every viewer's stream ends."""
        for feed in self.feeds.values():
            feed.end()

    @property
    def viewers(self) -> int:
        return sum(len(feed.viewers) for feed in self.feeds.values())

    @property
    def viewers_cut_off(self) -> int:
        return self.cut_off + sum(feed.cut_off for feed in self.feeds.values())


class LiveTee:
    """A call's sink: the webhook sink, and the call's live feed once the call has an id."""

    def __init__(self, sink: EventSink, feeds: LiveFeeds) -> None:
        self._sink = sink
        self._feeds = feeds
        self.feed: LiveFeed | None = None

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        outcome = self._sink.publish(event)
        if event.type is EventType.CALL_COMPLETED:
            # Viewers saw every final as it came; the whole transcript again (up to
            # artifacts.completed_max_bytes) would push the call out of the bounded backlog.
            return outcome
        if self.feed is None:
            self.feed = self._feeds.attach(event.call_id)
        self.feed.publish(event)
        return outcome

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        self._sink.hold(call_id, leg, finals)  # held finals are for the outbox, not viewers

    def close(self) -> None:
        if self.feed is not None:
            self._feeds.detach(self.feed)
            self.feed = None


class LiveTokens:
    """Short-lived tokens that open one call's live feed."""

    def __init__(self, admin_token: str) -> None:
        self._key = hmac.new(admin_token.encode(), TOKEN_CONTEXT, hashlib.sha256).digest()

    def _signature(self, call_id: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{call_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, call_id: str, *, now: float, ttl_s: float) -> tuple[str, int]:
        """A token for ``call_id`` and its expiry (Unix seconds)."""
        expires = int(now + ttl_s)
        return f"{expires}.{self._signature(call_id, expires)}", expires

    def check(self, call_id: str, token: str, *, now: float) -> bool:
        """Whether ``token`` opens ``call_id``'s feed at ``now``."""
        expires = self._expiry(token, now=now)
        if expires is None:
            return False
        expected = self._signature(call_id, expires)
        return hmac.compare_digest(token.partition(".")[2].encode(), expected.encode())

    def well_formed(self, token: str, *, now: float) -> bool:
        """Whether ``token`` could open some feed at ``now``: an unexpired expiry and a
        signature of the right form. Cheap and without the subject: what a request must
        show before its feed is looked up; ``check`` decides."""
        return self._expiry(token, now=now) is not None and \
            SIGNATURE.fullmatch(token.partition(".")[2]) is not None

    @staticmethod
    def _expiry(token: str, *, now: float) -> int | None:
        try:
            expires = read_int(token.partition(".")[0], field="token expiry", low=0,
                               high=MAX_EXPIRY)
        except InvalidNumber:
            return None
        return expires if expires >= now else None


def resume_point(request: web.Request) -> int:
    """Where a reconnecting viewer resumes; a value that is no event id starts from the
    backlog, as a new viewer would (EventSource resends whatever id it was given)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    try:
        return read_int(raw, field="Last-Event-ID", low=0, high=MAX_EVENT_ID)
    except InvalidNumber:
        return 0


async def stream_events(request: web.Request, feed: LiveFeed, tokens: LiveTokens, *,
                        max_viewers: int, keepalive_s: float,
                        token_ttl_s: float, latency: StageTally | None = None
                        ) -> web.StreamResponse:
    """``feed``'s events as Server-Sent Events, each ``data`` the webhook's body (so redacted
    exactly as webhooks are), each ``id`` for resuming with ``Last-Event-ID``.

    The caller has checked the viewer's right to ``feed``. First the backlog after the resume
    point, then events as they happen; a ``token`` event brings a fresh token (from
    ``tokens``, valid ``token_ttl_s``) before the one in use runs out. The stream ends after
    the call's ``call.ended``; a viewer that falls behind is disconnected and may resume.
    More than ``max_viewers`` at once get 429. ``latency`` is told how long after its
    result was received each live frame was written.
    """
    if len(feed.viewers) >= max_viewers:
        raise web.HTTPTooManyRequests(text="too many viewers of this call\n")
    viewer = feed.watch(resume_point(request))
    try:
        response = await serve_frames(request, viewer, tokens, feed.subject,
                                      keepalive_s=keepalive_s, token_ttl_s=token_ttl_s,
                                      latency=latency)
    finally:
        feed.leave(viewer)
    if viewer.overflowed:
        log.info("live feed viewer fell behind and was disconnected", call_id=feed.call_id)
    return response


async def serve_frames(request: web.Request, source: FrameSource, tokens: LiveTokens,
                       subject: str, *, keepalive_s: float, token_ttl_s: float,
                       latency: StageTally | None = None) -> web.StreamResponse:
    """Write ``source``'s frames as Server-Sent Events until it closes or the viewer goes
    away, with keepalives and fresh tokens for ``subject`` (see ``stream_events``)."""
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})  # nginx would buffer the stream otherwise
    try:
        await response.prepare(request)
        await response.write(b"retry: %d\n\n" % SSE_RETRY_MS)
        await _stream(response, tokens, subject, source, keepalive_s, token_ttl_s, latency)
    except ConnectionError:
        pass  # the viewer went away
    return response


async def _stream(response: web.StreamResponse, tokens: LiveTokens, subject: str,
                  viewer: FrameSource, keepalive_s: float, token_ttl_s: float,
                  latency: StageTally | None) -> None:
    refresh_at = 0.0
    while True:
        now = time.monotonic()
        if now >= refresh_at:
            # Well before the viewer's token can run out, a fresh one for reconnecting.
            token, _ = tokens.issue(subject, now=time.time(), ttl_s=token_ttl_s)
            await response.write(b"event: token\ndata: %s\n\n" % token.encode())
            refresh_at = now + token_ttl_s / 3
        frames = await viewer.take(min(keepalive_s, max(refresh_at - now, 0.1)))
        if frames:
            await response.write(b"".join(frame.encode() for frame in frames))
            if latency is not None:
                written = time.monotonic()
                for frame in frames:
                    if frame.received_at:
                        latency.observe(written - frame.received_at)
        elif viewer.closed:
            return
        else:
            await response.write(b": keep-alive\n\n")
