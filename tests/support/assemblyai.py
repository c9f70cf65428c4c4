"""An AssemblyAI Universal-Streaming v3 emulator: a real ``websockets`` server on 127.0.0.1.

It checks the raw-key ``Authorization`` (a wrong one gets ``Error`` 1008 and a close with
1008, as the service does), sends ``Begin``, enforces the audio rules (each message
50-1000 ms; no faster than real time, with ``rate_slack_s``: both close with 3007 after an
``Error``), answers turns from the audio like the other emulators ("tone 400 hertz":
partial turns, then an unformatted and, with ``format_turns``, a formatted end-of-turn with
word times in ms), and on ``Terminate`` flushes, sends ``Termination`` and closes with 1000.

With ``sink=True`` (load tests; ``python -m tests.support.assemblyai --sink``) it checks the
key, sends ``Begin``, recognises nothing and keeps no audio: each session is timed by
``tests/support/sink.py`` and ends a turn per ``sink_final_every_s`` of audio, as the
service does with ``format_turns=true`` when asked (the unformatted end of turn, then the
formatted one), with word times in ms. It does not police message sizes or pacing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
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
from tests.support.telnyx_stt import Recognizer

PATH = "/v3/ws"


@dataclass
class AssemblySession:
    query: dict[str, list[str]]
    headers: Headers
    audio: bytearray = field(default_factory=bytearray)
    message_ms: list[float] = field(default_factory=list)
    text_frames: list[str] = field(default_factory=list)
    closed_with: int | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class AssemblyAIEmulator(Faults):
    def __init__(self, *, api_key: str = "test-assemblyai-key", rate_slack_s: float = 1.0,
                 script: list[str] | None = None, sink: bool = False,
                 sink_final_every_s: float = 0.0) -> None:
        super().__init__()
        self.sink = sink
        self.sink_final_every_s = sink_final_every_s
        self.sink_stats = SinkStats()
        self.api_key = api_key
        self.rate_slack_s = rate_slack_s
        self.script = script  # each turn's text in turn, instead of "tone <Hz> hertz"
        self.sessions: list[AssemblySession] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{PATH}"

    async def __aenter__(self) -> AssemblyAIEmulator:
        self._server = await serve(self._handle, "127.0.0.1", 0, max_size=2**20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _error(self, ws: ServerConnection, session: AssemblySession, code: int,
                     text: str) -> None:
        await ws.send(json.dumps({"type": "Error", "error_code": code, "error": text}))
        session.closed_with = code
        await ws.close(code, text[:120])

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        session = AssemblySession(parse_qs(split.query), ws.request.headers)
        if not self.sink:
            self.sessions.append(session)
        try:
            if ws.request.headers.get("Authorization") != self.api_key:
                await self._error(ws, session, 1008,
                                  "Unauthorized Connection: Missing Authorization header")
                return
            await ws.send(json.dumps({"type": "Begin", "id": "emulated",
                                      "expires_at": int(time.time()) + 10800}))
            if self.sink:
                await self._absorb(ws, session)
            else:
                await self._stream(ws, session)
        except ConnectionClosed:
            pass

    async def _stream(self, ws: ServerConnection, session: AssemblySession) -> None:
        rate = int(session.param("sample_rate") or 16000)
        encoding = session.param("encoding") or "pcm_s16le"
        width = 1 if encoding == "pcm_mulaw" else 2
        recognizer = Recognizer("mulaw" if width == 1 else "linear16", rate, 300, self.script)
        formatted = session.param("format_turns") == "true"
        turn = 0
        fault = self.for_new_session()
        started: float | None = None
        received_s = 0.0
        async for message in ws:
            if isinstance(message, str):
                session.text_frames.append(message)
                if json.loads(message).get("type") == "Terminate":
                    for text, _ in recognizer.flush():
                        await self._end_of_turn(ws, turn, text, recognizer.final_times.pop(0),
                                                formatted)
                        turn += 1
                    await ws.send(json.dumps({"type": "Termination",
                                              "audio_duration_seconds": round(received_s),
                                              "session_duration_seconds": 1}))
                    session.closed_with = 1000
                    await ws.close(1000)
                    return
                continue
            duration_ms = len(message) / width / rate * 1000
            session.message_ms.append(duration_ms)
            if not 50 <= duration_ms <= 1000:
                await self._error(ws, session, 3007, f"Input duration violation: "
                                  f"{duration_ms:.0f} ms. Expected between 50 and 1000 ms")
                return
            started = time.monotonic() if started is None else started
            received_s += duration_ms / 1000
            wall = time.monotonic() - started
            if received_s > wall + self.rate_slack_s:
                await self._error(ws, session, 3007, f"Audio Transmission Rate Exceeded: "
                                  f"Received {received_s:.1f} sec. audio in {wall:.1f} sec")
                return
            session.audio += message
            if fault is not None and len(session.audio) >= fault.after_bytes:
                if fault.failure is Failure.DROP:
                    ws.transport.abort()
                    return
                if fault.failure is Failure.STALL:
                    continue  # reads on, says nothing
                if fault.failure is Failure.CLOSE:
                    session.closed_with = fault.code
                    await ws.close(fault.code)
                    return
                await self._error(ws, session, fault.code, "Session Cancelled: An error occurred")
                return
            for text, final in recognizer.feed(message):
                if final:
                    await self._end_of_turn(ws, turn, text, recognizer.final_times.pop(0),
                                            formatted)
                    turn += 1
                else:
                    await ws.send(json.dumps(self._turn(turn, text, False, False, None)))

    async def _absorb(self, ws: ServerConnection, session: AssemblySession) -> None:
        """Sink mode: time the audio, end a turn per ``sink_final_every_s`` of it."""
        width = 1 if session.param("encoding") == "pcm_mulaw" else 2
        bytes_per_s = int(session.param("sample_rate") or 16000) * width
        clock = SinkClock(self.sink_stats, bytes_per_s, self.sink_final_every_s)
        formatted = session.param("format_turns") == "true"
        text = " ".join(FINAL_WORDS)
        turn = 0
        try:
            async for message in ws:
                if isinstance(message, str):
                    if json.loads(message).get("type") == "Terminate":
                        await ws.send(json.dumps({
                            "type": "Termination",
                            "audio_duration_seconds": round(clock.received / bytes_per_s),
                            "session_duration_seconds": 1}))
                        await ws.close(1000)
                        return
                    continue
                span = clock.take(len(message))
                if span is None:
                    continue
                times = (int(span[0] * 1000), int(span[1] * 1000))
                await self._end_of_turn(ws, turn, text, times, formatted)
                turn += 1
        finally:
            clock.end()

    def _check_sink(self, connection: ServerConnection, request: Request) -> Response | None:
        """Sink mode's handshake: ``/stats`` answered, the rest go on to the session."""
        return self.sink_stats.respond(connection, request)

    async def _end_of_turn(self, ws: ServerConnection, turn: int, text: str,
                           times: tuple[int, int], formatted: bool) -> None:
        await ws.send(json.dumps(self._turn(turn, text, True, False, times)))
        if formatted:
            pretty = text[0].upper() + text[1:] + "."
            await ws.send(json.dumps(self._turn(turn, pretty, True, True, times)))

    @staticmethod
    def _turn(order: int, text: str, end: bool, is_formatted: bool,
              times: tuple[int, int] | None) -> dict[str, Any]:
        words = []
        if times is not None:
            parts = text.split()
            step = (times[1] - times[0]) / max(len(parts), 1)
            words = [{"text": w, "start": int(times[0] + n * step),
                      "end": int(times[0] + (n + 1) * step), "confidence": 0.9,
                      "word_is_final": True} for n, w in enumerate(parts)]
        return {"type": "Turn", "turn_order": order, "turn_is_formatted": is_formatted,
                "end_of_turn": end, "transcript": text, "end_of_turn_confidence": 0.9,
                "utterance": "", "words": words}




async def _serve_forever(options: argparse.Namespace) -> None:
    emulator = AssemblyAIEmulator(api_key=options.api_key, sink=True,
                                  sink_final_every_s=options.final_every_s)
    emulator._server = await serve_on_port(emulator._handle, emulator._check_sink,
                                           options.port)
    print(f"AssemblyAI emulator on {emulator.url} in sink mode (GET {STATS_PATH})", flush=True)
    await emulator._server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_serve_forever(command_line("AssemblyAI", port=9102,
                                            api_key="test-assemblyai-key")))
