"""The media endpoint's WebSocket: data messages go to a handler as the frame reader parses them.

aiohttp's ``WebSocketResponse`` queues every message and wakes the reading task through a
future per message, and its heartbeat schedules a timer reset for every read from the
socket. A media stream is fifty small messages a second per track, and that machinery cost
more than parsing them. ``MediaSocket`` gives aiohttp's frame reader (the compiled one, or
the pure-Python one under ``AIOHTTP_NO_EXTENSIONS``) a queue whose ``feed_data`` hands TEXT
and BINARY messages to a handler at once, inside the protocol's ``data_received``. Close,
ping, pong and errors still take the queue, so ``receive()``, ``close()`` and the close
codes behave exactly as aiohttp's; the reading task wakes only for those, for a handler
failure, and when the handler has replies to write.

Order is kept: while anything waits in the queue (a ping, a wake-up, messages that came
before the handler was attached), data messages queue behind it and the reading task hands
them to the same handler. A flooding peer therefore costs CPU in proportion to what it
sends, one socket read per callback, and memory only up to the queue's limit (aiohttp then
pauses reading) and the legs' bounded audio buffers.

Without the per-read heartbeat, ``watch_idle`` checks the connection on a timer: one silent
for an interval is pinged, and one still silent an interval later is closed as aiohttp's
heartbeat closes it (1006, an ERROR message carrying ``TimeoutError``).

This uses aiohttp's private reader API (``WebSocketResponse._post_start``,
``WebSocketDataQueue``, ``WebSocketReader``); ``direct_reading_available()`` says whether the
installed aiohttp has it, and the endpoint otherwise reads with ``async for`` as before.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from typing import Any, Final

from aiohttp import WSMessage, WSMsgType, helpers, web

try:  # aiohttp's private reader API: checked once, with a fallback in the endpoint
    from aiohttp._websocket import reader as aiohttp_reader
except ImportError:  # pragma: no cover - depends on the installed aiohttp
    aiohttp_reader = None  # type: ignore[assignment]  # checked by direct_reading_available

_QueueBase: Any = getattr(aiohttp_reader, "WebSocketDataQueue", object)
_FrameReader: Any = getattr(aiohttp_reader, "WebSocketReader", None)
# aiohttp's own queue limit (it pauses reading at twice this many queued bytes).
_QUEUE_LIMIT: Final[int] = getattr(helpers, "DEFAULT_CHUNK_SIZE", 2**16)

# Returns True when the reading task has work for the message (replies to write).
MessageHandler = Callable[[WSMsgType, Any], bool]

# The attributes of aiohttp's WebSocketResponse that MediaSocket reads or replaces.
_PRIVATE_API: Final = ("_post_start", "_handle_ping_pong_exception", "_max_msg_size",
                       "_compress", "_decode_text", "_loop", "_reader", "_writer", "_req")

# Read once: an enum member looked up on its class costs more than the rest of the test
# that ``feed_data`` makes for every message.
_TEXT: Final = WSMsgType.TEXT
_BINARY: Final = WSMsgType.BINARY
_CLOSE: Final = WSMsgType.CLOSE

# aiohttp's reader joins continuation frames itself, so a message of this type never comes
# from a peer: it marks the wake-up MediaSocket queues for the reading task.
WAKE: Final = WSMsgType.CONTINUATION


# The parameters of aiohttp's ``WebSocketResponse._post_start``, which ``MediaSocket``
# replaces: another aiohttp may call it differently.
_POST_START_PARAMETERS: Final = ("self", "request", "protocol", "writer")


@functools.cache
def direct_reading_available() -> bool:
    """True when the installed aiohttp has the reader API ``MediaSocket`` builds on, called
    as ``MediaSocket`` calls it (checked once, so that a changed private API falls back to
    the queue instead of failing every media connection)."""
    if _QueueBase is object or _FrameReader is None:
        return False
    probe = web.WebSocketResponse()
    if not all(hasattr(probe, name) for name in _PRIVATE_API):
        return False
    try:
        parameters = tuple(inspect.signature(web.WebSocketResponse._post_start).parameters)
        _FrameReader(_HandingQueue(None, _QUEUE_LIMIT, loop=None), _QUEUE_LIMIT,
                     compress=False, decode_text=True)
    except (TypeError, ValueError):
        return False
    return parameters == _POST_START_PARAMETERS


def _discard(kind: WSMsgType, payload: Any) -> bool:
    return False


def _retrieve(ping: asyncio.Future[None]) -> None:
    """A ping that ends after the idle check moved on: its failure (the connection went
    away meanwhile) needs no report."""
    if not ping.cancelled():
        ping.exception()


class _HandingQueue(_QueueBase):  # type: ignore[misc]  # aiohttp's queue, typed Any
    """aiohttp's message queue, except that data messages go to the handler when nothing
    waits ahead of them."""

    def __init__(self, protocol: Any, limit: int, *,
                 loop: asyncio.AbstractEventLoop | None) -> None:  # None: the API probe only
        super().__init__(protocol, limit, loop=loop)
        self.handler: MessageHandler | None = None  # None: queue data for the reading task
        self.received = False  # anything arrived since the idle check last looked
        self.failure: Exception | None = None
        self.wake_queued = False

    def feed_data(self, data: Any, size: int) -> None:
        # aiohttp's reader calls this (a cpdef method) for every message it parses.
        self.received = True
        kind = data[0]
        handler = self.handler
        if (kind is _TEXT or kind is _BINARY) and handler is not None:
            if self._buffer:  # something queued comes first: keep the order
                super().feed_data(data, size)
                return
            try:
                wanted = handler(kind, data[1])
            except Exception as exc:  # noqa: BLE001  # the reading task re-raises it
                self.handler = _discard  # no data message is handled after a failure
                self.failure = exc
                super().feed_data(WSMessage(WSMsgType.ERROR, exc, None), 0)
                return
            if wanted and not self.wake_queued:
                self.wake_queued = True
                super().feed_data(WSMessage(WAKE, None, None), 0)
            return
        if kind is _CLOSE and handler is not None:
            self.handler = _discard  # nothing the peer sends after its close is handled
        super().feed_data(data, size)


class MediaSocket(web.WebSocketResponse):
    """A server WebSocket whose data messages go to a handler once ``hand_to`` attached it.

    Construct it without ``heartbeat`` (run ``watch_idle`` instead). Until ``hand_to``,
    messages queue for ``receive()`` as usual. The reading task must keep reading
    (``async for``): it gets control messages, the handler's failures (an ERROR message
    whose data is ``failure``), wake-ups (type ``WAKE``) and any data message that queued
    behind them, which it passes to the same handler.
    """

    _idle_ping: asyncio.Future[None] | None = None  # the idle check's last ping, kept referenced

    def _post_start(self, request: Any, protocol: str | None, writer: Any) -> None:
        # aiohttp's _post_start (3.14) with the handing queue and no per-read callback.
        self._ws_protocol = protocol
        self._writer = writer
        loop = self._loop
        assert loop is not None
        queue = _HandingQueue(request._protocol, _QUEUE_LIMIT, loop=loop)
        self._reader = queue
        # aiohttp keeps its parser on the response so that a stalled reader stays alive.
        self._parser = _FrameReader(queue, self._max_msg_size, compress=bool(self._compress),
                                       decode_text=self._decode_text)
        request.protocol.set_parser(self._parser)
        request.protocol.keep_alive(False)

    @property
    def _queue(self) -> _HandingQueue:
        queue = self._reader
        if not isinstance(queue, _HandingQueue):
            raise RuntimeError("MediaSocket is not prepared")
        return queue

    def hand_to(self, handler: MessageHandler) -> None:
        """From now on, data messages go to ``handler`` as they are parsed.

        It runs inside the transport's callback: it must not block, and what it raises ends
        the handling (the reading task gets it as ``failure``).
        """
        self._queue.handler = handler

    def stop_handing(self) -> None:
        """No further data message reaches the handler; later ones are dropped."""
        self._queue.handler = _discard

    @property
    def failure(self) -> Exception | None:
        """What the handler raised, if it did."""
        return self._queue.failure

    def woken(self) -> None:
        """The reading task took the wake-up: the next reply wanted queues another."""
        self._queue.wake_queued = False

    async def watch_idle(self, interval: float) -> None:
        """Ping the peer after ``interval`` seconds of silence; close (1006) after two.

        Anything received counts, as it did for aiohttp's heartbeat. Closing feeds the
        reading task an ERROR message carrying ``TimeoutError``, exactly as the heartbeat
        did. A ping the peer's full socket cannot take yet does not delay that close, and
        what waits in a full socket is dropped with the connection.
        Returns once it closed the connection; cancel it when reading ends.
        """
        queue = self._queue
        while not self.closed:
            queue.received = False
            await asyncio.sleep(interval)
            if queue.received:
                continue
            # Sent beside the check, as aiohttp's heartbeat sends it: aiohttp's writer may
            # hold the ping until the peer reads (its flow control), and a peer that reads
            # nothing must not hold the check with it.
            ping = self._idle_ping = asyncio.ensure_future(self.ping())
            ping.add_done_callback(_retrieve)
            await asyncio.sleep(interval)
            failure = ping.exception() if ping.done() and not ping.cancelled() else None
            if failure is not None:
                self._handle_ping_pong_exception(failure)
                return
            if not queue.received and not self.closed:
                self._handle_ping_pong_exception(
                    TimeoutError(f"No PONG received after {interval} seconds"))
                # aiohttp's close waits to flush what is buffered, which a peer that reads
                # nothing never lets happen: its connection (and its call) would stay.
                transport = self._req.transport if self._req is not None else None
                if transport is not None and transport.get_write_buffer_size():
                    transport.abort()
                return
