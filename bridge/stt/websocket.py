"""What the WebSocket engines share: connecting, sending, reading text frames, closing.

Each engine module subclasses ``WebSocketSession`` with its URL and headers, reads its
frames with ``text_frames()`` and says what a close code means in ``closed_error()``.
Handshake refusals map to errors here: a 4xx status (but 429) is a refusal, never
retried; 429 says the account has no room for another session (Deepgram enforces its
concurrency limit so at the upgrade), which the leg treats as an engine at capacity;
anything else that prevents the connection may pass.

The connection itself is ``bridge.stt.transport``: audio frames written straight to the
socket, websockets' sans-I/O protocol for the rest (or websockets' own client behind a
proxy).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Final

import orjson
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bridge import __version__
from bridge.errors import (
    CLOSE_ABNORMAL,
    NORMAL_CLOSES,
    EngineAtCapacity,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from bridge.stt.transport import EngineSocket, open_engine_connection

MAX_SERVER_MESSAGE: Final = 1024 * 1024


class WebSocketSession:
    """The transport of one engine session; the engine modules add the protocol."""

    url: str

    def __init__(self) -> None:
        self._ws: EngineSocket | None = None
        self._closing = False  # we closed it: how it then ends is no failure

    async def _connect(self, headers: Mapping[str, str], *, open_timeout: float,
                       ping_interval: float, close_timeout: float = 10.0) -> None:
        try:
            self._ws = await open_engine_connection(
                self.url, headers,
                user_agent=f"callbridge/{__version__}",
                # No Origin (Telnyx's edge is reported to refuse handshakes with one), no
                # compression (audio does not compress; spare the CPU).
                open_timeout=open_timeout,
                max_size=MAX_SERVER_MESSAGE, max_queue=64, write_limit=64 * 1024,
                close_timeout=close_timeout,
                # Pings find half-open sockets: no pong within the interval drops the
                # session (close 1011), which reconnects.
                ping_interval=ping_interval, ping_timeout=ping_interval)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == HTTPStatus.TOO_MANY_REQUESTS:
                raise EngineAtCapacity("speech-to-text refused another session (429)",
                                       status=status) from None
            error = UpstreamRefused if 400 <= status < 500 else UpstreamUnavailable
            raise error("speech-to-text handshake refused", status=status) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise UpstreamUnavailable(f"cannot connect to speech-to-text: "
                                      f"{type(exc).__name__}") from None

    async def _send(self, data: bytes | str) -> None:
        try:
            if isinstance(data, str):
                await self._connection().send_text(data)
            else:
                await self._connection().send_audio(data)
        except ConnectionClosed:
            raise UpstreamUnavailable("speech-to-text connection closed while sending") from None

    async def _send_many(self, chunks: Sequence[bytes]) -> None:
        """``_send`` for every chunk that is ready, written to the socket at once."""
        try:
            await self._connection().send_audio_many(chunks)
        except ConnectionClosed:
            raise UpstreamUnavailable("speech-to-text connection closed while sending") from None

    async def _send_quietly(self, data: str) -> None:
        """A control message at the end: if the socket is gone, there is nothing to flush."""
        with contextlib.suppress(ConnectionClosed):
            await self._connection().send_text(data)

    async def text_frames(self) -> AsyncIterator[dict[str, Any]]:
        """The server's JSON objects until the session ends; an abnormal end raises the
        error ``closed_error`` gives for its close code."""
        try:
            async for message in self._connection():
                if isinstance(message, bytes):
                    continue
                try:
                    # orjson: no NaN, no Infinity, no integers beyond 64 bits.
                    frame = orjson.loads(message)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(frame, dict):
                    yield frame
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else CLOSE_ABNORMAL
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            # A session we closed ourselves ended as we asked, whatever the close code says
            # (a server that never answers our close leaves 1006 behind).
            ours = self._closing
            error = self.closed_error(code, reason) if code not in NORMAL_CLOSES else None
            if error is not None and not ours:
                raise error from None

    def closed_error(self, code: int, reason: str) -> UpstreamError | None:
        return UpstreamUnavailable("speech-to-text connection dropped", code=str(code))

    async def close(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()

    def _connection(self) -> EngineSocket:
        if self._ws is None:
            raise RuntimeError("session used before open()")
        return self._ws
