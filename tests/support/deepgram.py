"""A Deepgram ``/v1/listen`` emulator: a real ``websockets`` server on 127.0.0.1.

It checks ``Authorization: Token``, the query (``encoding`` needs ``sample_rate``), closes
with 1011 ``NET-0001`` after ``idle_s`` without audio or ``KeepAlive`` (10 s on the real
service), and answers from the audio like the Telnyx emulator does ("tone 400 hertz"),
in Deepgram's shape: each utterance settles in two ``is_final`` segments, the second with
``speech_final``, with ``start``/``duration`` in seconds of audio. ``Finalize`` flushes
(``from_finalize``), ``CloseStream`` flushes, sends ``Metadata`` and closes with 1000.

It counts concurrent sessions (``active``, and the most at once, ``max_active``) from the
accepted upgrade to the end of the session; with ``max_concurrent`` set it refuses an upgrade
beyond it with HTTP 429, as Deepgram enforces a project's concurrency limit
(``refused_for_capacity`` counts those).

With ``sink=True`` (load tests; ``python -m tests.support.deepgram --sink``) it recognises
nothing and keeps no audio: each session is timed by ``tests/support/sink.py`` and gets a
final per ``sink_final_every_s`` of audio, one ``Results`` message settling the utterance
(``is_final`` and ``speech_final``) with word times in seconds, as Deepgram sends them.
There is no idle close in sink mode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.support.faults import Failure, Fault, Faults
from tests.support.sink import (
    FINAL_WORDS,
    STATS_PATH,
    SinkClock,
    SinkStats,
    command_line,
    serve_on_port,
    spread_words,
)
from tests.support.telnyx_stt import Recognizer

PATH = "/v1/listen"
FORMATS = {"mulaw": "mulaw", "alaw": "alaw", "linear16": "linear16"}


@dataclass
class DeepgramSession:
    query: dict[str, list[str]]
    headers: Headers
    audio: bytearray = field(default_factory=bytearray)
    keepalives: int = 0
    text_frames: list[str] = field(default_factory=list)
    closed_with: tuple[int, str] | None = None

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


class DeepgramEmulator(Faults):
    def __init__(self, *, api_key: str = "test-deepgram-key", idle_s: float = 10.0,
                 reject_status: int | None = None, max_concurrent: int | None = None,
                 sink: bool = False, sink_final_every_s: float = 0.0) -> None:
        super().__init__()
        self.sink = sink
        self.sink_final_every_s = sink_final_every_s
        self.sink_stats = SinkStats()
        self.api_key = api_key
        self.idle_s = idle_s
        self.reject_status = reject_status
        self.max_concurrent = max_concurrent
        self.active = 0
        self.max_active = 0
        self.refused_for_capacity = 0
        self.sessions: list[DeepgramSession] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{PATH}"

    async def __aenter__(self) -> DeepgramEmulator:
        self._server = await serve(self._handle, "127.0.0.1", 0,
                                   process_request=self._check, max_size=2**20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.sink and request.path == STATS_PATH:
            return self.sink_stats.respond(connection, request)
        split = urlsplit(request.path)
        if split.path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_status is not None:
            return connection.respond(HTTPStatus(self.reject_status), "{}")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, '{"err_code":"INVALID_AUTH",'
                                      '"err_msg":"Invalid credentials."}')
        query = parse_qs(split.query)
        if "encoding" in query and "sample_rate" not in query:
            return connection.respond(HTTPStatus.BAD_REQUEST,
                                      '{"err_code":"INVALID_QUERY_PARAMETER"}')
        if self.max_concurrent is not None and self.active >= self.max_concurrent:
            self.refused_for_capacity += 1
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS,
                                      '{"err_code":"TOO_MANY_REQUESTS","err_msg":"Too many '
                                      'concurrent requests."}')
        # Counted from the accepted upgrade: the handler starts a moment later.
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        split = urlsplit(ws.request.path)
        session = DeepgramSession(parse_qs(split.query), ws.request.headers)
        if self.sink:
            try:
                await self._absorb(ws, session)
            finally:
                self.active -= 1
            return
        self.sessions.append(session)
        fmt = FORMATS.get(session.param("encoding") or "", "linear16")
        rate = int(session.param("sample_rate") or 16000)
        recognizer = Recognizer(fmt, rate, int(session.param("endpointing") or 10), None)
        interim = session.param("interim_results") == "true"
        fault = self.for_new_session()
        try:
            await self._serve(ws, session, recognizer, interim, fault)
        finally:
            self.active -= 1

    async def _serve(self, ws: ServerConnection, session: DeepgramSession,
                     recognizer: Recognizer, interim: bool, fault: Fault | None) -> None:
        stalled = False
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_s):
                        message = await ws.recv()
                except TimeoutError:
                    session.closed_with = (1011, "NET-0001")
                    await ws.close(1011, "NET-0001")
                    return
                if isinstance(message, str):
                    session.text_frames.append(message)
                    kind = json.loads(message).get("type")
                    if kind == "KeepAlive":
                        session.keepalives += 1
                    elif kind in ("Finalize", "CloseStream"):
                        for text, _ in recognizer.flush():
                            await self._final(ws, text, recognizer.final_times.pop(0),
                                              finalize=kind == "Finalize")
                        if kind == "CloseStream":
                            await ws.send(json.dumps({"type": "Metadata",
                                                      "request_id": "emulated"}))
                            session.closed_with = (1000, "")
                            await ws.close(1000)
                            return
                    continue
                session.audio += message
                if fault is not None and len(session.audio) >= fault.after_bytes:
                    if fault.failure is Failure.DROP:
                        ws.transport.abort()
                        return
                    if fault.failure is Failure.STALL:
                        stalled = True
                    else:  # Deepgram has no error frame: it closes with its code
                        session.closed_with = (fault.code, "emulated")
                        await ws.close(fault.code, "emulated")
                        return
                if stalled:
                    continue
                for text, final in recognizer.feed(message):
                    if final:
                        await self._final(ws, text, recognizer.final_times.pop(0))
                    elif interim:
                        await ws.send(json.dumps(self._results(text, False, False, 0, 0)))
        except ConnectionClosed:
            pass

    async def _absorb(self, ws: ServerConnection, session: DeepgramSession) -> None:
        """Sink mode: time the audio, send a final per ``sink_final_every_s`` of it."""
        width = 2 if session.param("encoding") == "linear16" else 1
        clock = SinkClock(self.sink_stats, int(session.param("sample_rate") or 16000) * width,
                          self.sink_final_every_s)
        try:
            async for message in ws:
                if isinstance(message, str):
                    if json.loads(message).get("type") == "CloseStream":
                        await ws.send(json.dumps({"type": "Metadata",
                                                  "request_id": "emulated"}))
                        await ws.close(1000)
                        return
                    continue  # KeepAlive, Finalize: nothing is pending in a sink
                span = clock.take(len(message))
                if span is not None:
                    await ws.send(json.dumps(self._sink_final(*span)))
        except ConnectionClosed:
            pass
        finally:
            clock.end()

    def _sink_final(self, start: float, end: float) -> dict[str, Any]:
        """A settled utterance over the span, with each word's times, in seconds."""
        final = self._results(" ".join(FINAL_WORDS), True, True, start, end - start)
        final["channel"]["alternatives"][0]["words"] = [
            {"word": word, "start": round(a, 3), "end": round(b, 3), "confidence": 0.97,
             "punctuated_word": word} for word, a, b in spread_words(start, end)]
        # What every live result carries besides, so the bridge parses as many bytes as it
        # would from the service.
        final["metadata"] = {"request_id": "emulated",
                             "model_info": {"name": "general-nova-3", "version": "emulated",
                                            "arch": "nova-3"},
                             "model_uuid": "00000000-0000-0000-0000-000000000000"}
        final["from_finalize"] = False
        return final

    async def _final(self, ws: ServerConnection, text: str, times: tuple[int, int],
                     finalize: bool = False) -> None:
        words = text.split()
        start, end = times[0] / 1000, times[1] / 1000
        middle = (start + end) / 2
        first = self._results(" ".join(words[:-1]), True, False, start, middle - start)
        last = self._results(words[-1], True, True, middle, end - middle)
        if finalize:
            last["from_finalize"] = True
        await ws.send(json.dumps(first))
        await ws.send(json.dumps(last))

    @staticmethod
    def _results(text: str, is_final: bool, speech_final: bool, start: float,
                 duration: float) -> dict[str, Any]:
        return {"type": "Results", "channel_index": [0, 1], "duration": duration,
                "start": start, "is_final": is_final, "speech_final": speech_final,
                "channel": {"alternatives": [{"transcript": text, "confidence": 0.97,
                                              "words": []}]}}


async def _serve_forever(options: argparse.Namespace) -> None:
    emulator = DeepgramEmulator(api_key=options.api_key, sink=True,
                                sink_final_every_s=options.final_every_s)
    emulator._server = await serve_on_port(emulator._handle, emulator._check, options.port)
    print(f"Deepgram emulator on {emulator.url} in sink mode (GET {STATS_PATH})", flush=True)
    await emulator._server.wait_closed()


if __name__ == "__main__":
    asyncio.run(_serve_forever(command_line("Deepgram", port=9101,
                                            api_key="test-deepgram-key")))
