"""The engines' WebSocket client: websockets' sans-I/O protocol over a plain asyncio transport.

Audio is the hot path (one small binary frame per chunk per leg, for every leg), so audio
frames are serialised here directly: a FIN+binary header, a mask cut from a pool of random
bytes drawn 4 KiB at a time (RFC 6455 section 5.3 asks for an unpredictable mask per frame,
not for a system call per frame), the payload masked by websockets' C helper, and one
``transport.write`` (or ``writelines`` for every chunk that is ready). There is no send lock
and no drain per message: the transport's write buffer is bounded by its high-water mark,
and only a writer that finds it paused waits. While it is paused, nothing more is read
from the server either: what the server sends may need an answer (a pong to each of its
pings), and a server that sends and never reads would otherwise fill our memory with them.

Everything else goes through websockets' ``ClientProtocol``: the opening handshake, text
messages, pings and pongs, the closing handshake and every byte the server sends. Its
pending output is written before any directly serialised frame, so frames reach the wire
in the order they were asked for.

Keepalive, the close timeout and the pong deadline are loop timers, not tasks: a session
that sends no pong within ``ping_timeout`` is failed with 1011 and its socket closed, as
websockets' own client does.

A proxy (``HTTPS_PROXY``, ``SOCKS_PROXY``, ... as websockets reads them) is not spoken here:
``open_engine_connection`` hands such URLs to websockets' own asyncio client. Redirects
are not followed (no engine's streaming endpoint redirects): a 3xx answer is a failed
handshake like a 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import importlib
import os
import ssl
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Final, NoReturn, Protocol, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidMessage,
)
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import CLOSED, OPEN
from websockets.proxy import get_proxy
from websockets.uri import parse_uri

from bridge.errors import ConfigError

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build of websockets without its C helper
    from websockets.utils import apply_mask

MASK_POOL_BYTES: Final = 4096
_FIN_BINARY: Final = 0x82
_MASKED: Final = 0x80
_SHORT_HEADER: Final = struct.Struct("!BB")
_MEDIUM_HEADER: Final = struct.Struct("!BBH")
_LONG_HEADER: Final = struct.Struct("!BBQ")


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The one client TLS context of the process (system CAs, hostname checks).

    Building one loads the CA bundle, about 30 ms of CPU: once per process, not once per
    engine session (websockets' and asyncio's default for ``ssl=True``), which would cost
    a reconnect storm of 1,000 legs half a minute of a core.
    """
    return ssl.create_default_context()


class MaskPool:
    """Frame masks cut from random bytes fetched in bulk: one ``os.urandom`` per 1024 frames."""

    __slots__ = ("_offset", "_pool")

    def __init__(self) -> None:
        self._pool = b""
        self._offset = MASK_POOL_BYTES

    def take(self) -> bytes:
        """Four fresh random bytes, never handed out twice."""
        offset = self._offset
        if offset >= MASK_POOL_BYTES:
            self._pool, offset = os.urandom(MASK_POOL_BYTES), 0
        self._offset = offset + 4
        return self._pool[offset:offset + 4]


def encode_binary_frame(payload: bytes, mask: bytes) -> bytes:
    """One unfragmented, masked binary frame as a client sends it (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = _SHORT_HEADER.pack(_FIN_BINARY, _MASKED | length)
    elif length < 65536:
        header = _MEDIUM_HEADER.pack(_FIN_BINARY, _MASKED | 126, length)
    else:
        header = _LONG_HEADER.pack(_FIN_BINARY, _MASKED | 127, length)
    return header + mask + apply_mask(payload, mask)


class EngineSocket(Protocol):
    """A connected engine WebSocket, whichever client carries it.

    Sends raise ``websockets.exceptions.ConnectionClosed`` once the connection is gone;
    iterating yields messages (``str`` for text, ``bytes`` for binary) and ends like
    websockets' clients: quietly after a 1000/1001 close, with ``ConnectionClosedError``
    after any other end.
    """

    async def send_audio(self, chunk: bytes) -> None:
        """Send one binary message."""

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        """Send each chunk as its own binary message, in order."""

    async def send_text(self, text: str) -> None:
        """Send one text message."""

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        """The server's messages until the connection ends."""

    async def close(self) -> None:
        """The closing handshake, bounded by the close timeout; idempotent."""


class EngineConnection(asyncio.Protocol):
    """One engine WebSocket over an asyncio transport; see the module docstring.

    Built by ``open_engine_connection``. ``write_audio``/``write_audio_many`` never wait:
    the caller awaits ``drain()`` when ``writing_paused`` says the write buffer is past
    its high-water mark (``send_audio`` does both).
    """

    def __init__(self, protocol: ClientProtocol, *, ping_interval: float | None,
                 ping_timeout: float | None, close_timeout: float, max_queue: int,
                 write_limit: int) -> None:
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._close_timeout = close_timeout
        self._max_queue = max_queue
        self._write_limit = write_limit
        self._masks = MaskPool()
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._fragments: list[bytes] = []
        self._fragment_opcode: Opcode | None = None
        self._queue_full = False  # the reader is ``max_queue`` messages behind
        self._reading_paused = False  # the transport's reading: queue full or writing paused
        self.writing_paused = False
        self._message_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._response: asyncio.Future[None] = self._loop.create_future()
        self._upgraded = False
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._ping_data: bytes | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- sending -------------------------------------------------------------------------

    def write_audio(self, chunk: bytes) -> None:
        """Queue one binary message on the socket now; raises ``ConnectionClosed`` when
        the connection is no longer open."""
        transport = self._open_transport()
        if self._protocol.writes:
            self._flush()  # a pong or our ping first: the wire keeps the order of calls
        transport.write(encode_binary_frame(chunk, self._masks.take()))

    def write_audio_many(self, chunks: Sequence[bytes]) -> None:
        """``write_audio`` for several chunks in one write."""
        transport = self._open_transport()
        if self._protocol.writes:
            self._flush()
        take = self._masks.take
        transport.writelines([encode_binary_frame(chunk, take()) for chunk in chunks])

    async def send_audio(self, chunk: bytes) -> None:
        try:
            self.write_audio(chunk)
        except ConnectionClosed:
            await self._closed_while_sending()
        if self.writing_paused:
            await self.drain()

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        try:
            self.write_audio_many(chunks)
        except ConnectionClosed:
            await self._closed_while_sending()
        if self.writing_paused:
            await self.drain()

    async def send_text(self, text: str) -> None:
        try:
            self._open_transport()
        except ConnectionClosed:
            await self._closed_while_sending()
        self._protocol.send_text(text.encode())
        self._flush()
        if self.writing_paused:
            await self.drain()

    async def _closed_while_sending(self) -> NoReturn:
        """Raise ``ConnectionClosed`` once the connection is down, as websockets' clients
        do: what the server said before closing (an error frame, its close code) reaches
        the reader first, so the session ends for the server's reason, not for this send."""
        if not self._lost.done() and self._close_timer is None and self._transport is not None:
            self._close_timer = self._loop.call_later(self._close_timeout,
                                                      self._transport.abort)
        await asyncio.shield(self._lost)
        raise self._closed()

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark; raises
        ``ConnectionClosed`` if the connection ends meanwhile. Cancelling leaves the
        buffered frames queued on the socket."""
        while self.writing_paused and not self._lost.done():
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        transport = self._transport
        if self._lost.done() or transport is None or transport.is_closing():
            # An aborted transport drops its buffer and resumes writing before it reports
            # the connection lost: what was buffered never left.
            await self._closed_while_sending()

    @property
    def buffered_bytes(self) -> int:
        """Bytes written but not yet taken by the socket."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def _open_transport(self) -> asyncio.Transport:
        transport = self._transport
        if self._protocol.state is not OPEN or transport is None or transport.is_closing():
            raise self._closed()
        return transport

    def _closed(self) -> ConnectionClosed:
        protocol = self._protocol
        if protocol.state is CLOSED:
            return protocol.close_exc
        return ConnectionClosedError(protocol.close_rcvd, protocol.close_sent,
                                     protocol.close_rcvd_then_sent)

    def _flush(self) -> None:
        transport = self._transport
        writes = self._protocol.data_to_send()
        if transport is None or transport.is_closing():
            return  # nothing reaches the socket any more (uvloop would raise); lost follows
        for data in writes:
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
            else:
                transport.close()  # TLS has no half-close: the closing handshake is done
        if self._protocol.close_expected() and self._close_timer is None:
            # The server closes the TCP connection after the closing handshake; one that
            # never does is cut off (RFC 6455 section 7.1.1).
            self._close_timer = self._loop.call_later(self._close_timeout, transport.abort)

    # -- receiving -----------------------------------------------------------------------

    def __aiter__(self) -> EngineConnection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    async def recv(self) -> str | bytes:
        """The next message; raises ``ConnectionClosed`` once the connection has ended and
        every message received before was read."""
        while not self._messages:
            if self._lost.done():
                raise self._closed()
            self._message_waiter = self._loop.create_future()
            try:
                await self._message_waiter
            finally:
                self._message_waiter = None
        message = self._messages.popleft()
        if self._queue_full and len(self._messages) <= self._max_queue // 4:
            self._queue_full = False
            self._update_reading()
        return message

    def _frame_received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(opcode, bytes(frame.data))
            else:
                self._fragment_opcode, self._fragments = opcode, [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            # The protocol already bounds the message (max_size) and rejects a stray
            # continuation, so the fragments here belong to one message of bounded size.
            self._fragments.append(bytes(frame.data))
            if frame.fin and self._fragment_opcode is not None:
                data = b"".join(self._fragments)
                self._deliver(self._fragment_opcode, data)
                self._fragment_opcode, self._fragments = None, []
        elif opcode is Opcode.PONG and frame.data == self._ping_data:
            self._pong_received()

    def _deliver(self, opcode: Opcode, data: bytes) -> None:
        if opcode is Opcode.TEXT:
            try:
                message: str | bytes = data.decode()
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                return
        else:
            message = data
        self._messages.append(message)
        if len(self._messages) >= self._max_queue and not self._queue_full:
            # A reader that falls behind stops the socket, not our memory.
            self._queue_full = True
            self._update_reading()
        self._wake_reader()

    def _update_reading(self) -> None:
        """Read from the socket unless the reader is behind or our own writes wait."""
        transport = self._transport
        paused = self._queue_full or self.writing_paused
        if transport is None or paused is self._reading_paused:
            return
        self._reading_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _wake_reader(self) -> None:
        waiter = self._message_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, code: int, reason: str) -> None:
        if self._protocol.state is OPEN:
            self._protocol.fail(code, reason)
            self._flush()

    # -- keepalive -----------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        if self._ping_interval is not None and not self._lost.done():
            self._ping_timer = self._loop.call_later(self._ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self._protocol.state is not OPEN:
            return
        self._ping_data = self._masks.take()
        self._protocol.send_ping(self._ping_data)
        self._flush()
        if self._ping_timeout is not None:
            self._pong_timer = self._loop.call_later(self._ping_timeout, self._pong_missed)

    def _pong_received(self) -> None:
        self._ping_data = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._schedule_ping()

    def _pong_missed(self) -> None:
        """A half-open socket or a stalled server: fail the connection as websockets'
        own keepalive does (1011), which ends the session and lets the leg reconnect."""
        self._pong_timer = None
        self._fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        if self._protocol.state is OPEN and self._transport is not None:
            self._protocol.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()
        elif self._transport is not None and not self._lost.done() \
                and self._close_timer is None:
            self._transport.abort()
        await asyncio.shield(self._lost)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # create_connection makes a stream one
        stream.set_write_buffer_limits(self._write_limit)
        self._transport = stream

    def data_received(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()  # pongs to the server's pings, the echo of its close
        for event in events:
            if isinstance(event, Frame):
                self._frame_received(event)
            elif isinstance(event, Response) and not self._response.done():
                self._upgraded = self._protocol.handshake_exc is None
                self._response.set_result(None)

    def eof_received(self) -> None:
        self._protocol.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._protocol.receive_eof()  # idempotent: the protocol is CLOSED from here
        for timer in (self._ping_timer, self._pong_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._close_timer = None
        self._lost.set_result(None)
        if not self._response.done():
            self._response.set_result(None)
        self._wake_reader()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._update_reading()  # the server's pings would only pile up pongs behind ours

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._update_reading()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- opening -------------------------------------------------------------------------

    async def _handshake(self, headers: Mapping[str, str], user_agent: str) -> None:
        protocol = self._protocol
        request = protocol.connect()
        request.headers.update(headers)
        request.headers.setdefault("User-Agent", user_agent)
        protocol.send_request(request)
        self._flush()
        await self._response
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        if not self._upgraded:
            raise InvalidMessage("the connection closed during the handshake")
        # The server may have spoken and even closed already (an error frame right after
        # the upgrade): its messages wait to be read.
        self._schedule_ping()


def check_proxy(url: str) -> None:
    """Raise ``ConfigError`` when a SOCKS proxy applies to ``url`` but python-socks, which
    websockets needs to speak SOCKS, is not installed: every session of that engine would
    fail while opening, so the bridge refuses to start instead. The proxy's address is not
    repeated (it may carry a password)."""
    uri = parse_uri(url)
    proxy = get_proxy(uri)
    if proxy is None or not proxy.startswith("socks"):
        return
    try:
        importlib.import_module("python_socks.async_.asyncio")  # what websockets imports
    except ImportError:
        raise ConfigError(_proxy_variable(uri.secure, proxy),
                          f"names a SOCKS proxy for {uri.host}, and speaking SOCKS needs "
                          "python-socks: pip install 'python-socks[asyncio]' (or list the "
                          "host in NO_PROXY)") from None


def _proxy_variable(secure: bool, proxy: str) -> str:
    """The environment variable that gave ``proxy``, in the order websockets looks."""
    schemes = ("wss", "socks", "https") if secure else ("ws", "socks", "https", "http")
    for scheme in schemes:
        for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            if os.environ.get(name) == proxy or (scheme == "socks" and name in os.environ):
                return name
    return "SOCKS_PROXY"


async def open_engine_connection(
        url: str, headers: Mapping[str, str], *, user_agent: str, open_timeout: float,
        ping_interval: float | None, ping_timeout: float | None, close_timeout: float,
        max_size: int, max_queue: int, write_limit: int) -> EngineSocket:
    """Connect to an engine: directly over ``EngineConnection``, or through websockets'
    own client when a proxy applies to ``url``.

    Sends no Origin and offers no extension (audio does not compress). Raises what
    websockets' ``connect`` raises: ``InvalidStatus`` for a refused upgrade, another
    ``InvalidHandshake``, ``OSError``, or ``TimeoutError`` after ``open_timeout``.
    Cancelling leaves no connection behind.
    """
    uri = parse_uri(url)
    if get_proxy(uri) is not None:
        proxied = await connect(
            url, additional_headers=dict(headers), origin=None, user_agent_header=user_agent,
            open_timeout=open_timeout, compression=None, max_size=max_size,
            max_queue=max_queue, write_limit=write_limit, close_timeout=close_timeout,
            ping_interval=ping_interval, ping_timeout=ping_timeout)
        return ProxiedConnection(proxied)
    loop = asyncio.get_running_loop()
    protocol = ClientProtocol(uri, origin=None, extensions=None, max_size=max_size)
    connection: EngineConnection | None = None

    def build() -> EngineConnection:
        return EngineConnection(protocol, ping_interval=ping_interval,
                                ping_timeout=ping_timeout, close_timeout=close_timeout,
                                max_queue=max_queue, write_limit=write_limit)

    try:
        async with asyncio.timeout(open_timeout):
            context = tls_context() if uri.secure else None
            _, connection = await loop.create_connection(
                build, uri.host, uri.port, ssl=context,
                server_hostname=uri.host if uri.secure else None)
            await connection._handshake(headers, user_agent)
    except BaseException:
        if connection is not None:
            connection.abort()
        raise
    return connection


class ProxiedConnection:
    """``EngineSocket`` over websockets' asyncio client, for engines reached through a
    proxy: the same calls, websockets' send path."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send_audio(self, chunk: bytes) -> None:
        await self._connection.send(chunk)

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        for chunk in chunks:
            await self._connection.send(chunk)

    async def send_text(self, text: str) -> None:
        await self._connection.send(text)

    def __aiter__(self) -> AsyncIterator[str | bytes]:
        return self._connection.__aiter__()

    async def close(self) -> None:
        await self._connection.close()
