"""Deepgram live streaming (``/v1/listen``): one session per leg.

Configuration is the query string: the leg's codec (``encoding=mulaw|alaw|linear16``,
``sample_rate``, ``channels=1``), ``model``, ``interim_results``, ``endpointing``,
``utterance_end_ms``, ``smart_format``, ``redact`` (one parameter per value), ``keyterm``
(Nova-3 and Flux) or ``keywords`` (older models), one parameter per term. Auth is
``Authorization: Token <key>``.

Deepgram finalises an utterance in pieces: each ``is_final`` result is a settled segment,
and ``speech_final`` (or an ``UtteranceEnd`` message) ends the utterance. The session joins
the settled segments into one final per utterance, with the first segment's start and the
last one's end (seconds from the session's first audio); a partial is the settled segments
so far plus the interim one. Deepgram closes a session after 10 s without audio
(``NET-0001``), so a ``KeepAlive`` goes out whenever no audio was sent for
``keepalive_s``. At the end: ``Finalize``, then ``CloseStream``; the server sends what it
has left and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

from bridge.config import DeepgramSettings
from bridge.errors import (
    CLOSE_POLICY_VIOLATION,
    NORMAL_CLOSES,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from bridge.events import AudioEncoding
from bridge.stt.base import EngineResult, Word, confidence, seconds
from bridge.stt.base import text as engine_text
from bridge.stt.websocket import WebSocketSession

ENCODINGS: Final = {AudioEncoding.PCMU: "mulaw", AudioEncoding.PCMA: "alaw",
                    AudioEncoding.L16: "linear16"}
KEYTERM_MODELS: Final = ("nova-3", "flux")


def build_url(settings: DeepgramSettings, encoding: AudioEncoding, sample_rate: int) -> str:
    params: list[tuple[str, str]] = [
        ("encoding", ENCODINGS[encoding]), ("sample_rate", str(sample_rate)),
        ("channels", "1"), ("model", settings.model), ("language", settings.language)]
    if settings.interim_results:
        params.append(("interim_results", "true"))
    if settings.endpointing:
        params.append(("endpointing", settings.endpointing))
    if settings.utterance_end_ms:
        params.append(("utterance_end_ms", str(settings.utterance_end_ms)))
    if settings.smart_format:
        params.append(("smart_format", "true"))
    params += [("redact", value) for value in settings.redact]
    key = "keyterm" if settings.model.startswith(KEYTERM_MODELS) else "keywords"
    params += [(key, term) for term in settings.keyterms]
    return f"{settings.url}?{urlencode(params)}"


@dataclass
class UtteranceJoiner:
    """Joins Deepgram's settled segments into one final per utterance. Pure."""

    settled: list[str] = field(default_factory=list)
    words: list[Word] = field(default_factory=list)
    start_s: float | None = None
    end_s: float | None = None
    confidences: list[float] = field(default_factory=list)

    def take(self, message: dict[str, Any]) -> EngineResult | None:
        """One ``Results`` message in; a partial or a final out (or nothing)."""
        channel = message.get("channel")
        alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
        best = alternatives[0] if isinstance(alternatives, list) and alternatives and \
            isinstance(alternatives[0], dict) else {}
        text = engine_text(best.get("transcript")).strip()
        start = seconds(message.get("start") or 0.0) or 0.0
        end = start + (seconds(message.get("duration") or 0.0) or 0.0)
        if message.get("is_final"):
            if text:
                self.settled.append(text)
                self.words += _words(best)
                self.start_s = start if self.start_s is None else self.start_s
                self.end_s = end
                value = confidence(best.get("confidence"))
                if value is not None:
                    self.confidences.append(value)
            if message.get("speech_final") or message.get("from_finalize"):
                return self.close()
            return None
        if not text and not self.settled:
            return None
        return EngineResult(" ".join([*self.settled, text]).strip(), False, None,
                            self.start_s if self.start_s is not None else start, end)

    def close(self) -> EngineResult | None:
        """The utterance is over (``speech_final`` or ``UtteranceEnd``): its final."""
        if not self.settled:
            return None
        confidence = (sum(self.confidences) / len(self.confidences)
                      if self.confidences else None)
        result = EngineResult(" ".join(self.settled), True, confidence, self.start_s, self.end_s,
                              tuple(self.words))
        self.settled, self.confidences, self.start_s, self.end_s = [], [], None, None
        self.words = []
        return result


def _words(alternative: dict[str, Any]) -> list[Word]:
    words = []
    items = alternative.get("words")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        start, end = seconds(item.get("start")), seconds(item.get("end"))
        if start is not None and end is not None:
            words.append(Word(engine_text(item.get("punctuated_word") or item.get("word"), 200),
                              start, end, confidence(item.get("confidence"))))
    return words


def classify_close(code: int, reason: str) -> UpstreamRefused | UpstreamUnavailable | None:
    """Deepgram's close frames: ``DATA-0000`` (audio it cannot decode) is fatal; ``NET-``
    codes and 1011 are retryable; a normal close is the end."""
    if code in NORMAL_CLOSES:
        return None
    if "DATA" in reason or code == CLOSE_POLICY_VIOLATION:
        return UpstreamRefused(f"speech-to-text refused the audio: {reason[:40]}",
                               code=str(code))
    return UpstreamUnavailable(f"speech-to-text connection dropped: {reason[:40]}",
                               code=str(code))


class DeepgramSession(WebSocketSession):
    """One Deepgram live session. See ``EngineSession`` for the contract."""

    def __init__(self, settings: DeepgramSettings, encoding: AudioEncoding,
                 sample_rate: int = 8000, *, close_grace_s: float = 10.0) -> None:
        super().__init__()
        self._settings = settings
        self._close_grace_s = close_grace_s
        self.url = build_url(settings, encoding, sample_rate)
        self._joiner = UtteranceJoiner()
        self._last_send = 0.0
        self._keepalive: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._connect({"Authorization": f"Token {self._settings.api_key.reveal()}"},
                            open_timeout=self._settings.connect_timeout_s,
                            ping_interval=self._settings.ping_interval_s,
                            close_timeout=self._close_grace_s)
        self._last_send = asyncio.get_running_loop().time()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="deepgram keepalive")

    async def _keep_alive(self) -> None:
        """Deepgram closes after 10 s without audio: say we are here while none flows."""
        loop = asyncio.get_running_loop()
        interval = self._settings.keepalive_s
        while True:
            await asyncio.sleep(interval / 2)
            if loop.time() - self._last_send >= interval:
                await self._send_quietly(json.dumps({"type": "KeepAlive"}))
                self._last_send = loop.time()

    async def send_audio(self, chunk: bytes) -> None:
        await self._send(chunk)
        self._last_send = asyncio.get_running_loop().time()

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        await self._send_many(chunks)
        self._last_send = asyncio.get_running_loop().time()

    async def results(self) -> AsyncIterator[EngineResult]:
        async for frame in self.text_frames():
            kind = frame.get("type")
            result = None
            if kind == "Results":
                result = self._joiner.take(frame)
            elif kind == "UtteranceEnd":
                result = self._joiner.close()
            if result is not None:
                yield result
        final = self._joiner.close()  # a session that ended mid-utterance
        if final is not None:
            yield final

    def closed_error(self, code: int, reason: str) -> UpstreamError | None:
        return classify_close(code, reason)

    async def finish(self) -> None:
        await self._send_quietly(json.dumps({"type": "Finalize"}))
        await self._send_quietly(json.dumps({"type": "CloseStream"}))

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        await super().close()
