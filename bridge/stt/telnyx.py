"""Telnyx speech-to-text over WebSocket: one session per leg.

Configuration is the query string only, fixed at connect time; audio goes as binary frames
in the leg's own codec (``input_format=mulaw|alaw&sample_rate=8000``, the rate sent
explicitly because the parameter's default is 16000). Server frames are classified by their
keys, not by a ``type`` field, because Telnyx's guides and live traffic omit ``type`` while
its API description adds one; both forms of transcript and error frames are read.
``{"type":"CloseStream"}`` asks the engine to flush; some engines then close, others never
do, so the session closes itself after a grace period.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from bridge import __version__
from bridge.config import SttSettings
from bridge.errors import UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding
from bridge.stt.base import EngineResult
from bridge.stt.reconnect import RETRYABLE_CLOSE_CODES

log = structlog.get_logger("bridge.stt.telnyx")

INPUT_FORMATS: Final = {AudioEncoding.PCMU: "mulaw", AudioEncoding.PCMA: "alaw",
                        AudioEncoding.L16: "linear16"}
CLOSE_STREAM: Final = json.dumps({"type": "CloseStream"})
MAX_SERVER_MESSAGE: Final = 256 * 1024  # transcript frames are small; bound them anyway


def build_url(settings: SttSettings, encoding: AudioEncoding, sample_rate: int = 8000) -> str:
    """The session URL for a leg: base URL plus every configured parameter.

    The format is the leg's own: ``mulaw``/``alaw`` at 8000, ``linear16`` at the leg's rate
    (a 16 kHz leg is sent at 16 kHz, not downsampled).

    ``keyterm`` and ``keywords`` are sent once per term, as Telnyx's examples repeat them.
    """
    params: list[tuple[str, str]] = [
        ("transcription_engine", settings.transcription_engine),
        ("input_format", INPUT_FORMATS[encoding]),
        ("sample_rate", str(sample_rate)),
    ]
    for key in ("model", "language", "endpointing", "redact"):
        value = getattr(settings, key)
        if value:
            params.append((key, value))
    if settings.interim_results:
        params.append(("interim_results", "true"))
    params += [("keyterm", term) for term in settings.keyterms]
    params += [("keywords", term) for term in settings.keywords]
    separator = "&" if "?" in settings.url else "?"
    return f"{settings.url}{separator}{urlencode(params)}"


@dataclass(frozen=True, slots=True)
class ServerError:
    """An error frame: the session is over."""

    code: str
    title: str
    detail: str


ServerFrame = EngineResult | ServerError | None


def parse_server_frame(text: str) -> ServerFrame:
    """Classify one text frame from the server; None for frames to ignore.

    Error: an ``errors`` array, or ``type == "error"`` with an ``error`` string or object.
    Transcript: has ``transcript``. An empty final (the utterance-end marker) is ignored.
    """
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not isinstance(frame, dict):
        return None
    errors = frame.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return ServerError(str(first.get("code", "")), str(first.get("title", "")),
                           str(first.get("detail", "")))
    if frame.get("type") == "error" or ("error" in frame and "transcript" not in frame):
        error = frame.get("error")
        if isinstance(error, dict):
            return ServerError(str(error.get("code", "")), str(error.get("title", "")),
                               str(error.get("detail", "")))
        return ServerError("", "error", str(error or ""))
    transcript = frame.get("transcript")
    if not isinstance(transcript, str) or not transcript.strip():
        return None
    start, end = _times(frame)
    return EngineResult(text=transcript.strip(), is_final=frame.get("is_final") is True,
                        confidence=_confidence(frame.get("confidence")), start_s=start,
                        end_s=end)


def _confidence(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return min(max(float(value), 0.0), 1.0)
    return None


def _times(frame: dict[str, Any]) -> tuple[float | None, float | None]:
    """Segment times when the engine sends them (``start_time``/``duration`` in seconds)."""
    start, duration = frame.get("start_time"), frame.get("duration")
    if isinstance(start, (int, float)) and isinstance(duration, (int, float)):
        return float(start), float(start) + float(duration)
    return None, None


class TelnyxSession:
    """One Telnyx STT WebSocket session. See ``EngineSession`` for the contract."""

    def __init__(self, settings: SttSettings, encoding: AudioEncoding,
                 sample_rate: int = 8000) -> None:
        self._settings = settings
        self.url = build_url(settings, encoding, sample_rate)
        self._ws: ClientConnection | None = None

    async def open(self) -> None:
        headers = {}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key.reveal()}"
        try:
            self._ws = await connect(
                self.url,
                additional_headers=headers,
                # Telnyx's edge is reported to refuse handshakes carrying Origin; send none.
                origin=None,
                user_agent_header=f"callbridge/{__version__}",
                open_timeout=self._settings.connect_timeout_s,
                compression=None,  # G.711 does not compress; spare the CPU
                max_size=MAX_SERVER_MESSAGE,
                max_queue=64,
                write_limit=64 * 1024,
                close_timeout=self._settings.close_grace_s,
                # Pings find half-open sockets: no pong within the interval drops the session
                # (close 1011), which reconnects.
                ping_interval=self._settings.ping_interval_s,
                ping_timeout=self._settings.ping_interval_s,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            error = UpstreamRefused if status in (400, 401, 403, 404) else UpstreamUnavailable
            raise error("speech-to-text handshake refused", status=status) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise UpstreamUnavailable(f"cannot connect to speech-to-text: "
                                      f"{type(exc).__name__}") from None

    async def send_audio(self, chunk: bytes) -> None:
        try:
            await self._connection().send(chunk)
        except ConnectionClosed:
            raise UpstreamUnavailable("speech-to-text connection closed while sending") from None

    async def results(self) -> AsyncIterator[EngineResult]:
        ws = self._connection()
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                frame = parse_server_frame(message)
                if isinstance(frame, ServerError):
                    raise UpstreamRefused(f"speech-to-text error: {frame.title}".strip(),
                                          code=frame.code or None)
                if frame is not None:
                    yield frame
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code not in (1000, 1001):
                # Telnyx's own client retries only the transient codes; the rest are final.
                error = UpstreamUnavailable if str(code) in RETRYABLE_CLOSE_CODES \
                    else UpstreamRefused
                raise error("speech-to-text connection dropped", code=str(code)) from None

    async def finish(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # already gone: nothing left to flush
            await self._connection().send(CLOSE_STREAM)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            raise RuntimeError("session used before open()")
        return self._ws

