"""AssemblyAI Universal-Streaming v3: one session per leg.

The query string carries ``speech_model``, ``encoding`` (``pcm_mulaw`` for µ-law legs;
``pcm_s16le`` for linear legs, and for A-law legs, decoded exactly rather than re-encoded),
``sample_rate``, ``format_turns``, ``keyterms_prompt`` (a JSON list) and the redaction
parameters mapped from the bridge's ``redact`` values. ``Authorization`` is the raw key
(no "Bearer").

Two rules of the service shape the sending side: each audio message must hold 50-1000 ms
(else close 3007), and audio may not arrive faster than real time (3007 again). Chunks are
gathered into messages of at least 100 ms, the last one padded with silence to 50 ms, and
sending waits whenever the session's audio would run ahead of the wall clock (replays after
a reconnect included).

``Turn`` messages with ``end_of_turn`` are finals; with ``format_turns`` the service sends
the turn twice, unformatted then formatted, and the formatted one is kept. Word times (ms
from the session's first audio) place results. ``Terminate`` ends a session: the service
answers with its last turns, then ``Termination``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from bridge.codecs import g711
from bridge.config import AssemblyAISettings
from bridge.errors import (
    CLOSE_POLICY_VIOLATION,
    EngineAtCapacity,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from bridge.events import AudioEncoding
from bridge.stt.base import MAX_ERROR_CHARS, EngineResult, Word, confidence, seconds
from bridge.stt.base import text as engine_text
from bridge.stt.websocket import WebSocketSession

MIN_MESSAGE_MS: Final = 50
TARGET_MESSAGE_MS: Final = 100
AHEAD_SLACK_S: Final = 0.5  # how far ahead of real time the sender may run
# The bridge's redact values, as AssemblyAI PII policies.
PII_POLICIES: Final = {
    "pci": ("credit_card_number", "credit_card_cvv", "credit_card_expiration"),
    "ssn": ("us_social_security_number",),
    "numbers": ("account_number", "banking_information", "phone_number"),
}
FATAL_CODES: Final = frozenset({1008, 3006, 3007, 4001, 4002, 4003})
AT_CAPACITY: Final = 3009  # "Too many concurrent sessions" (a rate of new sessions, in fact)


def build_url(settings: AssemblyAISettings, encoding: AudioEncoding, sample_rate: int) -> str:
    params: list[tuple[str, str]] = [
        ("speech_model", settings.speech_model),
        ("encoding", "pcm_mulaw" if encoding is AudioEncoding.PCMU else "pcm_s16le"),
        ("sample_rate", str(sample_rate)),
        ("format_turns", "true" if settings.format_turns else "false")]
    if settings.keyterms:
        params.append(("keyterms_prompt", json.dumps(list(settings.keyterms))))
    policies = [p for value in settings.redact for p in PII_POLICIES.get(value, ())]
    if policies:
        params += [("redact_pii", "true"), ("redact_pii_policies", json.dumps(policies)),
                   ("redact_pii_sub", "entity_name")]
    return f"{settings.url}?{urlencode(params)}"


def error_for(code: int, message: str) -> UpstreamError:
    """An Error frame or close code: 1008/3006/3007/4001-4003 are refusals; the rest
    (3005 server error, 3008 session expired) may be retried. Too many sessions (3009, or
    1008 saying "concurrent": AssemblyAI's pages use both) is the engine at capacity: the
    leg waits for room."""
    if code == AT_CAPACITY or (code == CLOSE_POLICY_VIOLATION and "concurrent" in message.lower()):
        return EngineAtCapacity(f"speech-to-text refused another session: {message[:80]}")
    error = UpstreamRefused if code in FATAL_CODES else UpstreamUnavailable
    return error(f"speech-to-text error: {message[:80]}", code=str(code))


class TurnReader:
    """Turns to results: partials, and one final per turn (the formatted one if asked). Pure."""

    def __init__(self, formatted: bool) -> None:
        self.formatted = formatted
        self.done_turns: set[int] = set()

    def take(self, message: dict[str, Any]) -> EngineResult | None:
        raw_order = message.get("turn_order")
        order = raw_order if isinstance(raw_order, int) and not isinstance(raw_order, bool) \
            else -1
        text = engine_text(message.get("transcript")).strip()
        listed = message.get("words")
        words = [w for w in (listed if isinstance(listed, list) else []) if isinstance(w, dict)]
        start_s = seconds(words[0].get("start"), scale=0.001) if words else None
        end_s = seconds(words[-1].get("end"), scale=0.001) if words else None
        if not message.get("end_of_turn"):
            return EngineResult(text, False, None, start_s, end_s) if text else None
        if self.formatted and not message.get("turn_is_formatted"):
            return None  # the formatted copy of this turn follows
        if order in self.done_turns or not text:
            return None
        self.done_turns.add(order)
        confidences = [c for c in (confidence(w.get("confidence")) for w in words)
                       if c is not None]
        mean = sum(confidences) / len(confidences) if confidences else None
        timed = []
        for w in words:
            start, end = seconds(w.get("start"), scale=0.001), seconds(w.get("end"), scale=0.001)
            if start is not None and end is not None:
                timed.append(Word(engine_text(w.get("text"), 200), start, end,
                                  confidence(w.get("confidence"))))
        return EngineResult(text, True, mean, start_s, end_s, tuple(timed))


class AssemblyAISession(WebSocketSession):
    """One Universal-Streaming session. See ``EngineSession`` for the contract."""

    def __init__(self, settings: AssemblyAISettings, encoding: AudioEncoding,
                 sample_rate: int = 8000, *, close_grace_s: float = 10.0) -> None:
        super().__init__()
        self._settings = settings
        self._close_grace_s = close_grace_s
        self._encoding = encoding
        self.url = build_url(settings, encoding, sample_rate)
        width = 1 if encoding is AudioEncoding.PCMU else 2
        self._bytes_per_ms = sample_rate // 1000 * width
        self._silence = b"\xff" if encoding is AudioEncoding.PCMU else b"\x00"
        self._pending = bytearray()
        self._sent_ms = 0.0
        self._started_at: float | None = None
        self._reader = TurnReader(settings.format_turns)

    async def open(self) -> None:
        await self._connect({"Authorization": self._settings.api_key.reveal()},
                            open_timeout=self._settings.connect_timeout_s,
                            ping_interval=self._settings.ping_interval_s,
                            close_timeout=self._close_grace_s)

    async def send_audio(self, chunk: bytes) -> None:
        if self._encoding is AudioEncoding.PCMA:
            chunk = g711.decode_alaw(chunk)  # sent as pcm_s16le: exact, no re-encoding
        self._pending += chunk
        if len(self._pending) >= TARGET_MESSAGE_MS * self._bytes_per_ms:
            await self._send_pending()

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        # Gathered into messages of TARGET_MESSAGE_MS anyway: one chunk at a time is as good.
        for chunk in chunks:
            await self.send_audio(chunk)

    async def _send_pending(self) -> None:
        """Send what is gathered as one message (at most 1000 ms), never ahead of real time."""
        loop = asyncio.get_running_loop()
        while self._pending:
            size = min(len(self._pending), 1000 * self._bytes_per_ms)
            message = bytes(self._pending[:size])
            del self._pending[:size]
            if len(message) < MIN_MESSAGE_MS * self._bytes_per_ms:
                message += self._silence * (MIN_MESSAGE_MS * self._bytes_per_ms - len(message))
            if self._started_at is None:
                self._started_at = loop.time()
            ahead = self._sent_ms / 1000 - (loop.time() - self._started_at) - AHEAD_SLACK_S
            if ahead > 0:
                await asyncio.sleep(ahead)  # the service's rule: no faster than real time
            await self._send(message)
            self._sent_ms += len(message) / self._bytes_per_ms

    async def results(self) -> AsyncIterator[EngineResult]:
        async for frame in self.text_frames():
            kind = frame.get("type")
            if kind == "Turn":
                result = self._reader.take(frame)
                if result is not None:
                    yield result
            elif kind == "Termination":
                return
            elif kind == "Error" or (kind is None and "error" in frame):
                code = frame.get("error_code")
                raise error_for(code if isinstance(code, int) and not isinstance(code, bool)
                                and 0 <= code < 10_000 else 3005,
                                engine_text(frame.get("error"), MAX_ERROR_CHARS))

    def closed_error(self, code: int, reason: str) -> UpstreamError | None:
        if code >= 3000 or code == CLOSE_POLICY_VIOLATION:
            return error_for(code, reason)
        return UpstreamUnavailable("speech-to-text connection dropped", code=str(code))

    async def finish(self) -> None:
        with contextlib.suppress(UpstreamUnavailable):
            await self._send_pending()
        await self._send_quietly(json.dumps({"type": "Terminate"}))
