"""``callbridge stt-local``: the embedded recognizer as a WebSocket server on 127.0.0.1.

It speaks the part of the Telnyx STT protocol the bridge uses (same path and query
parameters, binary audio, transcript and error frames, ``CloseStream``), so the bridge's
whole path runs exactly as in production. Segmentation on silence runs on the event loop
(cheap: one RMS per 20 ms block); recognition runs in a pool of worker processes. Each
session's results are produced in order by one task, so at most one decode per session is
in flight. The socket is always read, even while recognition is busy, so a client's close is
answered at once. Audio awaiting recognition is bounded per session (``MAX_BACKLOG_MS``): a
session that falls further behind gets an error frame and close 1013, never a silent loss.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final

import structlog
from aiohttp import WSMsgType, web

from bridge.codecs.g711 import audioop
from bridge.config import LocalSttSettings
from bridge.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
)
from bridge.stt.local import recognizer
from bridge.stt.local.protocol import (
    FELL_BEHIND,
    PATH,
    TOO_MANY_SESSIONS,
    QueryError,
    SessionParams,
    check_query,
    error_frame,
    transcript_frame,
)
from bridge.stt.local.segmenter import Segment, Segmenter

log = structlog.get_logger("bridge.stt.local")

MAX_AUDIO_MESSAGE: Final = 1024 * 1024
# Speech awaiting recognition, per session. Far above what a paced call accumulates (one
# utterance at a time); reached only when audio arrives much faster than it is recognised.
MAX_BACKLOG_MS: Final = 60_000
# Legs one worker (one core) recognises in real time with finals only, on a busy machine
# (bench/README.md); the default session limit is this many per worker.
SESSIONS_PER_WORKER: Final = 8


def session_limit(settings: LocalSttSettings) -> int:
    """``local_stt.max_sessions``, or when it is 0 what the workers sustain."""
    workers = settings.workers or os.cpu_count() or 1
    return settings.max_sessions or SESSIONS_PER_WORKER * workers


class RecognizerPool:
    """The worker processes. Rebuilt when a worker dies (the pool is then unusable)."""

    def __init__(self, workers: int, model: str = recognizer.WHISPER,
                 beam_size: int = 1) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._init_args = (model, beam_size)
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # spawn: workers must not inherit the event loop's state through fork.
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=recognizer.init_worker,
                                   initargs=self._init_args)

    async def warm_up(self) -> None:
        """Load the model in every worker before the first call needs it."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._pool, recognizer.warm_up)
                               for _ in range(self.workers)))

    async def decode(self, pcm: bytes, rate: int, final: bool) -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, recognizer.decode, pcm, rate, final)
        except BrokenProcessPool:
            log.error("a recognizer worker died; restarting the pool")
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


SETTINGS = web.AppKey("local_settings", LocalSttSettings)
POOL = web.AppKey("local_pool", RecognizerPool)
ACTIVE: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("local_active")


def create_stt_app(settings: LocalSttSettings) -> web.Application:
    """The embedded recognizer's application."""
    app = web.Application()
    app[SETTINGS] = settings
    app[ACTIVE] = set()
    app.cleanup_ctx.append(_pool)
    app.router.add_get(PATH, transcription)
    app.router.add_get("/healthz", _healthz)
    return app


async def _pool(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    # Hashing the weights takes a moment: off the loop, once, before any worker loads them.
    await loop.run_in_executor(None, recognizer.check_model, settings.model)
    pool = RecognizerPool(settings.workers, settings.model, settings.beam_size)
    try:
        await pool.warm_up()
        app[POOL] = pool
        yield
    finally:
        active = app[ACTIVE]
        for ws in tuple(active):
            await ws.close(code=CLOSE_GOING_AWAY, message=b"recognizer shutting down")
        await asyncio.get_running_loop().run_in_executor(None, pool.close)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "sessions": len(request.app[ACTIVE])})


async def transcription(request: web.Request) -> web.StreamResponse:
    """One recognition session."""
    app = request.app
    settings = app[SETTINGS]
    ws = web.WebSocketResponse(max_msg_size=MAX_AUDIO_MESSAGE)
    await ws.prepare(request)
    checked = check_query(request.query)
    if isinstance(checked, QueryError):
        log.info("session refused", code=checked.code, parameter=checked.parameter)
        await ws.send_str(error_frame(checked))
        await ws.close(code=CLOSE_POLICY_VIOLATION, message=checked.title.encode())
        return ws
    limit = session_limit(settings)
    if len(app[ACTIVE]) >= limit:
        log.warning("session refused: max_sessions reached", max_sessions=limit)
        await ws.send_str(error_frame(QueryError(
            TOO_MANY_SESSIONS, "Too many concurrent sessions",
            f"the embedded recognizer serves at most {limit} sessions",
            "max_sessions")))
        await ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"too many sessions")
        return ws
    app[ACTIVE].add(ws)
    try:
        await Session(ws, checked, settings, app[POOL]).run()
    finally:
        app[ACTIVE].discard(ws)
    return ws


class Session:
    """One session: decode audio, segment it, recognise utterances in order, send frames."""

    def __init__(self, ws: web.WebSocketResponse, params: SessionParams,
                 settings: LocalSttSettings, pool: RecognizerPool) -> None:
        self.ws = ws
        self.params = params
        self.pool = pool
        pcm_rate = 16000 if params.sample_rate == 24000 else params.sample_rate
        endpointing = params.endpointing_ms
        self.segmenter = Segmenter(
            pcm_rate,
            endpointing_ms=settings.endpointing_ms if endpointing is None
            else endpointing or settings.max_utterance_ms,
            max_utterance_ms=settings.max_utterance_ms,
            partial_every_ms=settings.partial_every_ms if params.interim_results else None)
        # Bounded by MAX_BACKLOG_MS of finals, plus at most one partial.
        self.jobs: asyncio.Queue[Segment | None] = asyncio.Queue()
        self.backlog_ms = 0
        self._odd = b""
        self._rate_state: Any = None  # audioop.ratecv carries it between frames

    async def run(self) -> None:
        """Read until CloseStream or the client's close. Cancelling drops pending results."""
        ending = "closed"
        async with asyncio.TaskGroup() as tasks:
            recognising = tasks.create_task(self._recognise())
            try:
                ending = await self._read()
            finally:
                if ending != "close_stream":
                    recognising.cancel()
            if ending == "close_stream":
                self.jobs.put_nowait(None)
                # Keep reading while the last results are recognised: a client that stops
                # waiting and closes gets its close answered at once, not after the backlog.
                closed = tasks.create_task(self._drain())
                await asyncio.wait({recognising, closed}, return_when=asyncio.FIRST_COMPLETED)
                recognising.cancel()
                closed.cancel()
        if ending == "behind":
            log.warning("session closed: recognition fell behind",
                        backlog_ms=self.backlog_ms, limit_ms=MAX_BACKLOG_MS)
            await self._send(error_frame(QueryError(
                FELL_BEHIND, "Recognition fell behind",
                f"more than {MAX_BACKLOG_MS // 1000} s of speech awaited recognition; "
                "send audio no faster than real time", "audio")))
            await self.ws.close(code=CLOSE_TRY_AGAIN_LATER, message=b"recognition behind")
        elif ending == "close_stream" and not self.ws.closed:
            await self.ws.close(code=CLOSE_NORMAL)

    async def _read(self) -> str:
        """Feed audio to the segmenter until the stream ends; returns how it ended:
        ``close_stream`` (the client asked), ``closed`` (the socket closed) or ``behind``."""
        async for message in self.ws:
            if message.type is WSMsgType.BINARY:
                for segment in self.segmenter.feed(self._to_pcm(message.data)):
                    if not self._submit(segment):
                        return "behind"
            elif message.type is WSMsgType.TEXT:
                control = _control(message.data)
                if control in ("CloseStream", "Finalize"):
                    for segment in self.segmenter.flush():
                        if not self._submit(segment):
                            return "behind"
                    if control == "CloseStream":
                        return "close_stream"
                # KeepAlive and any other text: ignored, as Telnyx documents
        return "closed"

    async def _drain(self) -> None:
        """After CloseStream: ignore what the client sends until it closes."""
        async for _ in self.ws:
            pass

    def _submit(self, segment: Segment) -> bool:
        """Queue a segment for recognition; False when the backlog would pass its bound."""
        if not segment.final:
            if self.jobs.empty():  # a partial waits only when nothing else does
                self.jobs.put_nowait(segment)
            return True
        length_ms = self._length_ms(segment)
        if self.backlog_ms + length_ms > MAX_BACKLOG_MS:
            return False
        self.backlog_ms += length_ms
        self.jobs.put_nowait(segment)
        return True

    async def _recognise(self) -> None:
        while (segment := await self.jobs.get()) is not None:
            if not segment.final and not self.jobs.empty():
                continue  # a newer result is already waiting: this partial is stale
            try:
                text, confidence = await self.pool.decode(segment.pcm, self.segmenter.rate,
                                                          segment.final)
            except BrokenProcessPool:
                await self._send(error_frame(QueryError(
                    "50000", "Recognizer failed", "a recognition worker died", "audio")))
                await self.ws.close(code=CLOSE_INTERNAL_ERROR, message=b"recognizer failed")
                return
            if segment.final:
                self.backlog_ms -= self._length_ms(segment)
            if text and not await self._send(transcript_frame(
                    text, is_final=segment.final, confidence=confidence,
                    start_ms=segment.start_ms, end_ms=segment.end_ms)):
                return

    async def _send(self, frame: str) -> bool:
        """Send a frame; False when the client has gone (nothing left to tell it)."""
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(frame)
        except ConnectionResetError:  # closed between the check and the write
            return False
        return True

    def _length_ms(self, segment: Segment) -> int:
        return len(segment.pcm) * 1000 // (self.segmenter.rate * 2)

    def _to_pcm(self, data: bytes) -> bytes:
        fmt = self.params.input_format
        if fmt == "mulaw":
            return audioop.ulaw2lin(data, 2)
        if fmt == "alaw":
            return audioop.alaw2lin(data, 2)
        data = self._odd + data  # linear16: keep a split sample for the next frame
        cut = len(data) - len(data) % 2
        self._odd = data[cut:]
        if self.params.sample_rate == 24000:  # the model's rate is 16 kHz: no need for more
            pcm, self._rate_state = audioop.ratecv(data[:cut], 2, 1, 24000, 16000,
                                                   self._rate_state)
            return pcm
        return data[:cut]


def _control(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None
