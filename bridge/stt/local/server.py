"""``callbridge stt-local``: the embedded recognizer as a WebSocket server on 127.0.0.1.

It speaks the part of the Telnyx STT protocol the bridge uses (same path and query
parameters, binary audio, transcript and error frames, ``CloseStream``), so the bridge's
whole path runs exactly as in production. Segmentation on silence runs on the event loop
(cheap: one RMS per 20 ms block); recognition runs in a pool of worker processes. Each
session's results are produced in order by one task; a session whose recognition falls
behind pushes back on its socket rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from bridge.errors import CLOSE_NORMAL
from bridge.stt.local import recognizer
from bridge.stt.local.protocol import (
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

CLOSE_TRY_AGAIN_LATER: Final = 1013
MAX_AUDIO_MESSAGE: Final = 1024 * 1024
JOB_QUEUE: Final = 8  # utterances waiting for recognition, per session


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
            await ws.close(code=1001, message=b"recognizer shutting down")
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
        await ws.close(code=1008, message=checked.title.encode())
        return ws
    if len(app[ACTIVE]) >= settings.max_sessions:
        log.warning("session refused: max_sessions reached", max_sessions=settings.max_sessions)
        await ws.send_str(error_frame(QueryError(
            TOO_MANY_SESSIONS, "Too many concurrent sessions",
            f"the embedded recognizer serves at most {settings.max_sessions} sessions",
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
        self.jobs: asyncio.Queue[Segment | None] = asyncio.Queue(JOB_QUEUE)
        self._odd = b""
        self._rate_state: Any = None  # audioop.ratecv carries it between frames

    async def run(self) -> None:
        """Read until CloseStream or the client's close. Cancelling drops pending results."""
        async with asyncio.TaskGroup() as tasks:
            recognising = tasks.create_task(self._recognise())
            try:
                closing = await self._read()
            finally:
                if not recognising.done():
                    if closing:
                        await self.jobs.put(None)
                    else:
                        recognising.cancel()
            await recognising
            if closing and not self.ws.closed:
                await self.ws.close(code=CLOSE_NORMAL)

    async def _read(self) -> bool:
        """Feed audio to the segmenter; True when the client asked to close the stream."""
        async for message in self.ws:
            if message.type is WSMsgType.BINARY:
                for segment in self.segmenter.feed(self._to_pcm(message.data)):
                    await self._submit(segment)
            elif message.type is WSMsgType.TEXT:
                control = _control(message.data)
                if control in ("CloseStream", "Finalize"):
                    for segment in self.segmenter.flush():
                        await self._submit(segment)
                    if control == "CloseStream":
                        return True
                # KeepAlive and any other text: ignored, as Telnyx documents
        return False

    async def _submit(self, segment: Segment) -> None:
        if not segment.final:
            with contextlib.suppress(asyncio.QueueFull):  # behind already: skip the partial
                self.jobs.put_nowait(segment)
        else:
            await self.jobs.put(segment)  # back-pressure: stop reading until there is room

    async def _recognise(self) -> None:
        while (segment := await self.jobs.get()) is not None:
            if not segment.final and not self.jobs.empty():
                continue  # a newer result is already waiting: this partial is stale
            try:
                text, confidence = await self.pool.decode(segment.pcm, self.segmenter.rate,
                                                          segment.final)
            except BrokenProcessPool:
                await self.ws.send_str(error_frame(QueryError(
                    "50000", "Recognizer failed", "a recognition worker died", "audio")))
                await self.ws.close(code=1011, message=b"recognizer failed")
                return
            if text and not self.ws.closed:
                await self.ws.send_str(transcript_frame(
                    text, is_final=segment.final, confidence=confidence,
                    start_ms=segment.start_ms, end_ms=segment.end_ms))

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
