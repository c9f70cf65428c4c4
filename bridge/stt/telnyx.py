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

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode

import orjson
import structlog

from bridge.config import TelnyxSettings
from bridge.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding
from bridge.stt.base import MAX_ERROR_CHARS, EngineResult, confidence, seconds
from bridge.stt.base import text as engine_text
from bridge.stt.reconnect import RETRYABLE_CLOSE_CODES
from bridge.stt.websocket import WebSocketSession

log = structlog.get_logger("bridge.stt.telnyx")

INPUT_FORMATS: Final = {AudioEncoding.PCMU: "mulaw", AudioEncoding.PCMA: "alaw",
                        AudioEncoding.L16: "linear16"}
CLOSE_STREAM: Final = '{"type": "CloseStream"}'


def build_url(settings: TelnyxSettings, encoding: AudioEncoding, sample_rate: int = 8000) -> str:
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
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return parse_frame_object(frame) if isinstance(frame, dict) else None


def parse_frame_object(frame: dict[str, Any]) -> ServerFrame:
    """``parse_server_frame`` for an already decoded JSON object."""
    errors = frame.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0] if isinstance(errors[0], dict) else {}
        return ServerError(_error_text(first.get("code")), _error_text(first.get("title")),
                           _error_text(first.get("detail")))
    if frame.get("type") == "error" or ("error" in frame and "transcript" not in frame):
        error = frame.get("error")
        if isinstance(error, dict):
            return ServerError(_error_text(error.get("code")),
                               _error_text(error.get("title")), _error_text(error.get("detail")))
        return ServerError("", "error", _error_text(error))
    transcript = frame.get("transcript")
    if not isinstance(transcript, str) or not transcript.strip():
        return None
    start, end = _times(frame)
    return EngineResult(text=transcript.strip(), is_final=frame.get("is_final") is True,
                        confidence=confidence(frame.get("confidence")), start_s=start,
                        end_s=end)


def _error_text(value: object) -> str:
    """An error's code or text as the engine sent it (numbers too), cut short."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)[:MAX_ERROR_CHARS]
    return engine_text(value, MAX_ERROR_CHARS)


def _times(frame: dict[str, Any]) -> tuple[float | None, float | None]:
    """Segment times when the engine sends them (``start_time``/``duration`` in seconds)."""
    start, duration = seconds(frame.get("start_time")), seconds(frame.get("duration"))
    if start is not None and duration is not None:
        return start, start + duration
    return None, None


class TelnyxSession(WebSocketSession):
    """One Telnyx STT WebSocket session. See ``EngineSession`` for the contract."""

    def __init__(self, settings: TelnyxSettings, encoding: AudioEncoding,
                 sample_rate: int = 8000, *, close_grace_s: float = 2.0) -> None:
        super().__init__()
        self._settings = settings
        self._close_grace_s = close_grace_s
        self.url = build_url(settings, encoding, sample_rate)

    async def open(self) -> None:
        headers = {}
        if self._settings.api_key:
            headers["Authorization"] = f"Bearer {self._settings.api_key.reveal()}"
        await self._connect(headers, open_timeout=self._settings.connect_timeout_s,
                            ping_interval=self._settings.ping_interval_s,
                            close_timeout=self._close_grace_s)

    async def send_audio(self, chunk: bytes) -> None:
        await self._send(chunk)

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        await self._send_many(chunks)

    async def results(self) -> AsyncIterator[EngineResult]:
        async for raw in self.text_frames():
            frame = parse_frame_object(raw)
            if isinstance(frame, ServerError):
                raise UpstreamRefused(f"speech-to-text error: {frame.title}".strip(),
                                      code=frame.code or None)
            if frame is not None:
                yield frame

    def closed_error(self, code: int, reason: str) -> UpstreamError | None:
        # Telnyx's own client retries only the transient codes; the rest are final.
        error = UpstreamUnavailable if str(code) in RETRYABLE_CLOSE_CODES else UpstreamRefused
        return error("speech-to-text connection dropped", code=str(code))

    async def finish(self) -> None:
        await self._send_quietly(CLOSE_STREAM)
