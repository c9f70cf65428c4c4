"""A Telnyx speech-to-text WebSocket emulator: a real ``websockets`` server on 127.0.0.1.

It checks what a client sends as the real service does (path, ``Authorization: Bearer``,
query parameters in Telnyx's validation order with Telnyx's error codes, binary audio only)
and answers deterministically from the audio it received, never from wall time:

* audio is decoded per ``input_format`` and cut into 20 ms blocks; a block is voiced when
  its RMS passes a threshold; an utterance ends after ``endpointing`` ms of unvoiced audio;
* each utterance becomes a final ``"tone <Hz> hertz"``, the tone's frequency measured by
  zero crossings and rounded to 50 Hz (or the next line of ``script`` when one is given);
* with ``interim_results=true`` (Deepgram engine) a partial ``"tone <Hz>"`` follows every
  200 ms of voiced audio;
* ``CloseStream`` flushes the pending utterance; Deepgram-like engines then close with
  1000, the ``Telnyx`` engine never closes by itself (as observed in live traffic).

Frames are in the documented shape (no ``type``); ``with_type_field`` switches to the
API-description shape. Every session records its query, headers, audio and text frames.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import warnings
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.faults import Failure, Faults
from tests.support.sink import (
    FINAL_WORDS,
    STATS_PATH,
    SinkClock,
    SinkStats,
    command_line,
    serve_on_port,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

PATH = "/v2/speech-to-text/transcription"
ENGINES = ("Deepgram", "Telnyx", "Google", "Azure", "xAI", "AssemblyAI", "Speechmatics",
           "Soniox", "Parakeet", "Reson8")
FORMATS = ("mp3", "wav", "webm", "ogg", "flac", "ogg_opus", "webm_opus", "linear16", "linear32",
           "mulaw", "alaw", "opus", "amr_nb", "amr_wb", "g729", "speex")
RAW_FORMATS = ("linear16", "linear32", "mulaw", "alaw", "opus", "amr_nb", "amr_wb", "g729",
               "speex")
# Telnyx's engine/format matrix, the rows that matter for telephony (unsupported -> 40002).
UNSUPPORTED = {("Telnyx", "mulaw"), ("Telnyx", "alaw"), ("Azure", "mulaw"), ("Azure", "alaw"),
               ("Google", "alaw"), ("Speechmatics", "alaw"), ("Parakeet", "mulaw"),
               ("Parakeet", "alaw")}
CLOSES_ON_CLOSE_STREAM = ("Deepgram", "Speechmatics", "Soniox")
BLOCK_MS = 20
VOICED_RMS = 300


@dataclass
class EmulatorSession:
    """What one client session sent, and how it ended."""

    path: str
    query: dict[str, list[str]]
    headers: Headers
    audio: bytearray = field(default_factory=bytearray)
    binary_frames: int = 0
    text_frames: list[str] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False  # a STALL fault struck: it reads on and says nothing

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class Recognizer:
    """Deterministic 'recognition' of tone bursts; see the module docstring."""

    def __init__(self, input_format: str, sample_rate: int, endpointing_ms: int | None,
                 script: list[str] | None) -> None:
        self.width = 2 if input_format == "linear16" else 1
        self.input_format = input_format
        self.samples_per_block = sample_rate * BLOCK_MS // 1000
        self.endpointing_ms = endpointing_ms
        self.script = list(script or [])
        self._raw = bytearray()
        self._voiced = bytearray()  # PCM of the current utterance
        self._silent_ms = 0
        self._since_partial_ms = 0
        self._partials = 0
        self.sample_rate = sample_rate
        self.blocks = 0  # audio time: 20 ms blocks received
        self.utterance_start_ms = self.utterance_end_ms = 0
        self.final_times: list[tuple[int, int]] = []  # (start, end) ms of each final, in turn

    def feed(self, data: bytes) -> list[tuple[str, bool]]:
        """Take audio; return (text, is_final) results in order."""
        self._raw += data
        out: list[tuple[str, bool]] = []
        block = self.samples_per_block * self.width
        while len(self._raw) >= block:
            chunk = bytes(self._raw[:block])
            del self._raw[:block]
            pcm = self._decode(chunk)
            self.blocks += 1
            if audioop.rms(pcm, 2) >= VOICED_RMS:
                if not self._voiced:
                    self.utterance_start_ms = (self.blocks - 1) * BLOCK_MS
                self.utterance_end_ms = self.blocks * BLOCK_MS
                self._voiced += pcm
                self._silent_ms = 0
                self._since_partial_ms += BLOCK_MS
                if self._since_partial_ms >= 200:
                    self._since_partial_ms = 0
                    self._partials += 1
                    out.append((self._partial_text(), False))
            elif self._voiced:
                self._silent_ms += BLOCK_MS
                if self.endpointing_ms is not None and self._silent_ms >= self.endpointing_ms:
                    self.final_times.append((self.utterance_start_ms, self.utterance_end_ms))
                    out.append((self._final_text(), True))
        return out

    def flush(self) -> list[tuple[str, bool]]:
        if not self._voiced:
            return []
        self.final_times.append((self.utterance_start_ms, self.utterance_end_ms))
        return [(self._final_text(), True)]

    def _partial_text(self) -> str:
        """With a script, the first words of the coming final, more each time."""
        if self.script:
            return " ".join(self.script[0].split()[:4 * self._partials])
        return f"tone {self._frequency()}"

    def _final_text(self) -> str:
        text = self.script.pop(0) if self.script else f"tone {self._frequency()} hertz"
        self._voiced.clear()
        self._silent_ms = self._since_partial_ms = self._partials = 0
        return text

    def _frequency(self) -> int:
        samples = [int.from_bytes(self._voiced[i:i + 2], "little", signed=True)
                   for i in range(0, len(self._voiced), 2)]
        crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
        seconds = len(samples) / self.sample_rate
        return int(round(crossings / 2 / seconds / 50) * 50) if seconds else 0

    def _decode(self, chunk: bytes) -> bytes:
        if self.input_format == "mulaw":
            return audioop.ulaw2lin(chunk, 2)
        if self.input_format == "alaw":
            return audioop.alaw2lin(chunk, 2)
        return chunk


class TelnyxSttEmulator(Faults):
    """Run with ``async with TelnyxSttEmulator() as emulator:``; connect to ``emulator.url``.

    Faults (``tests/support/faults.py``): ``ERROR`` sends Telnyx's error frame (40010, the
    engine failed) and closes 1000, as the service does."""

    def __init__(self, *, api_key: str = "test-telnyx-key", with_type_field: bool = False,
                 script: list[str] | None = None, reject_status: int | None = None,
                 with_times: bool = False, sink: bool = False,
                 sink_final_every_s: float = 0.0) -> None:
        super().__init__()
        self.api_key = api_key
        self.with_type_field = with_type_field
        self.script = script
        self.reject_status = reject_status
        self.with_times = with_times  # add start_time/duration (s) to finals, as some do
        # Sink mode, for load tests: no recognition and no audio kept; each binary message's
        # lateness is measured instead, and (optionally) a final is sent per N s of audio.
        self.sink = sink
        self.sink_final_every_s = sink_final_every_s
        self.sink_stats = SinkStats()
        self.sessions: list[EmulatorSession] = []
        self._server: Server | None = None
        self.session_opened = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}{PATH}"

    async def __aenter__(self) -> TelnyxSttEmulator:
        self._server = await serve(self._handle, "127.0.0.1", 0,
                                   process_request=self._check_handshake, max_size=2**20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.sink and request.path == STATS_PATH:
            return self.sink_stats.respond(connection, request)
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        if "Origin" in request.headers:
            return connection.respond(HTTPStatus.FORBIDDEN, "Origin not allowed\n")
        if self.reject_status is not None:
            return connection.respond(HTTPStatus(self.reject_status), "Rejected\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        session = EmulatorSession(split.path, parse_qs(split.query), ws.request.headers)
        self.sessions.append(session)
        self.session_opened.set()
        try:
            error = self._validate(session)
            if error is not None:
                await self._send_error(ws, session, *error)
                await ws.close(1000)
                return
            if self.sink:
                await self._absorb(ws, session)
            else:
                await self._stream(ws, session)
        except ConnectionClosed:
            pass
        finally:
            session.closed.set()

    def _validate(self, session: EmulatorSession) -> tuple[str, str, str, str] | None:
        engine = session.param("transcription_engine") or "Deepgram"
        fmt = session.param("input_format") or "mp3"
        rate = session.param("sample_rate")
        if engine not in ENGINES:
            return ("40007", "Invalid transcription engine",
                    f"Engine '{engine}' is not supported", "transcription_engine")
        if fmt not in FORMATS:
            return ("40001", "Invalid input format",
                    f"Supported formats: {', '.join(FORMATS)}", "input_format")
        if (engine, fmt) in UNSUPPORTED:
            return ("40002", "Unsupported format",
                    f"Format '{fmt}' is not supported by engine '{engine}'", "input_format")
        if fmt in RAW_FORMATS:
            if rate is None:
                return ("40003", "Sample rate required",
                        f"sample_rate is required for '{fmt}'", "sample_rate")
            if not rate.isdigit() or int(rate) <= 0:
                return ("40004", "Invalid sample rate",
                        "sample_rate must be a positive integer", "sample_rate")
            if fmt == "amr_nb" and int(rate) != 8000:
                return ("40005", "Invalid sample rate for codec",
                        "amr_nb requires 8000", "sample_rate")
        return None

    async def _send_error(self, ws: ServerConnection, session: EmulatorSession, code: str,
                          title: str, detail: str, parameter: str) -> None:
        if self.with_type_field:
            frame: dict[str, Any] = {"type": "error", "error": f"{title}: {detail}"}
        else:
            frame = {"errors": [{"code": code, "title": title, "detail": detail,
                                 "source": {"parameter": parameter}}]}
        session.sent.append(frame)
        await ws.send(json.dumps(frame))

    async def _send(self, ws: ServerConnection, session: EmulatorSession,
                    frame: dict[str, Any]) -> None:
        if session.stalled:
            return  # a stalled engine: it reads, it says nothing
        if self.with_type_field:
            frame = {"type": "transcript"} | frame
        session.sent.append(frame)
        await ws.send(json.dumps(frame))

    async def _stream(self, ws: ServerConnection, session: EmulatorSession) -> None:
        engine = session.param("transcription_engine") or "Deepgram"
        endpointing = session.param("endpointing")
        recognizer = Recognizer(session.param("input_format") or "mp3",
                                int(session.param("sample_rate") or 16000),
                                None if endpointing == "false" else int(endpointing or 100),
                                self.script)
        interim = session.param("interim_results") == "true"
        deepgram_like = engine != "Telnyx"
        if engine == "Telnyx" and interim:
            recognizer = Recognizer("mulaw", 8000, None, None)  # observed: no output at all
        fault = self.for_new_session()
        async for message in ws:
            if isinstance(message, str):
                session.text_frames.append(message)
                control = _control_type(message)
                if control == "CloseStream":
                    for text, _final in recognizer.flush():
                        await self._final(ws, session, text, deepgram_like,
                                          recognizer.final_times.pop(0))
                    if engine in CLOSES_ON_CLOSE_STREAM:
                        await ws.close(1000)
                        return
                continue  # other text is ignored, as Telnyx documents
            session.audio += message
            session.binary_frames += 1
            if fault is not None and len(session.audio) >= fault.after_bytes:
                if fault.failure is Failure.DROP:
                    ws.transport.abort()  # the client sees 1006: no close frame
                    return
                if fault.failure is Failure.STALL:
                    session.stalled = True
                elif fault.failure is Failure.CLOSE:
                    await ws.close(fault.code)
                    return
                else:
                    await self._send_error(ws, session, "40010", "Engine failure",
                                           "The transcription engine failed", "audio")
                    await ws.close(1000)
                    return
            for text, final in recognizer.feed(message):
                if final:
                    await self._final(ws, session, text, deepgram_like,
                                      recognizer.final_times.pop(0))
                elif interim and deepgram_like:
                    await self._send(ws, session, {"transcript": text, "is_final": False,
                                                   "speech_final": False, "confidence": 0.0})

    async def _absorb(self, ws: ServerConnection, session: EmulatorSession) -> None:
        """Sink mode: take audio as fast as it comes and time it (``tests/support/sink.py``);
        a final per ``sink_final_every_s`` of audio, in the Deepgram-engine shape, which has
        no word times."""
        width = 2 if session.param("input_format") == "linear16" else 1
        clock = SinkClock(self.sink_stats, int(session.param("sample_rate") or 8000) * width,
                          self.sink_final_every_s)
        final = json.dumps({"transcript": " ".join(FINAL_WORDS), "is_final": True,
                            "speech_final": True, "confidence": 0.9})
        try:
            async for message in ws:
                if isinstance(message, str):
                    if _control_type(message) == "CloseStream":
                        await ws.close(1000)
                        break
                    continue
                if clock.take(len(message)) is not None:
                    await ws.send(final)
        finally:
            clock.end()

    async def _final(self, ws: ServerConnection, session: EmulatorSession, text: str,
                     deepgram_like: bool, times: tuple[int, int]) -> None:
        extra: dict[str, Any] = {}
        if self.with_times:
            extra = {"start_time": times[0] / 1000, "duration": (times[1] - times[0]) / 1000}
        if deepgram_like:
            await self._send(ws, session, {"transcript": text, "is_final": True,
                                           "speech_final": True, "confidence": 0.92, **extra})
            await self._send(ws, session, {"transcript": "", "is_final": True,
                                           "utterance_end": True})
        else:
            await self._send(ws, session, {"transcript": text, "is_final": True,
                                           "confidence": None})


def _control_type(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value.get("type") if isinstance(value, dict) else None


def expected_frequency_text(freq_hz: float) -> str:
    """The final text the emulator gives a clean tone of ``freq_hz``."""
    return f"tone {int(round(freq_hz / 50) * 50)} hertz"




async def _serve_forever(options: argparse.Namespace) -> None:
    emulator = TelnyxSttEmulator(api_key=options.api_key, sink=options.sink,
                                 sink_final_every_s=options.final_every_s)
    emulator._server = await serve_on_port(emulator._handle, emulator._check_handshake,
                                           options.port)
    mode = f" in sink mode (GET {STATS_PATH})" if options.sink else ""
    print(f"Telnyx STT emulator on {emulator.url}{mode} (key {options.api_key!r})", flush=True)
    await emulator._server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_serve_forever(command_line("Telnyx STT", port=9100, api_key="test-telnyx-key",
                                            sink_only=False)))
