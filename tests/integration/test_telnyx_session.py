"""The Telnyx STT client against the emulator: one real peer, no bridge around it."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest
from aiohttp import web

from bridge.config import Secret, TelnyxSettings
from bridge.errors import UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding
from bridge.stt.base import EngineResult
from bridge.stt.telnyx import TelnyxSession
from tests.conftest import API_KEY
from tests.support.audio import pcm_program, ulaw
from tests.support.faults import Failure, Fault
from tests.support.telnyx_stt import TelnyxSttEmulator

AUDIO = ulaw(pcm_program(("silence", 100), ("tone", 600, 400), ("silence", 300),
                         ("tone", 300, 850)))  # (kind, ms, Hz)


def settings(url: str, **changes: object) -> TelnyxSettings:
    base = TelnyxSettings(url=url, api_key=Secret(API_KEY), connect_timeout_s=2.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def session_for(telnyx: TelnyxSettings, encoding: AudioEncoding,
                sample_rate: int = 8000) -> TelnyxSession:
    return TelnyxSession(telnyx, encoding, sample_rate, close_grace_s=1.0)


async def collect(session: TelnyxSession) -> list[EngineResult]:
    return [result async for result in session.results()]


async def test_streams_audio_and_reads_finals_then_flushes_on_close_stream(
        stt: TelnyxSttEmulator) -> None:
    session = session_for(settings(stt.url), AudioEncoding.PCMU)
    await session.open()
    reader = asyncio.create_task(collect(session))
    for offset in range(0, len(AUDIO), 800):
        await session.send_audio(AUDIO[offset:offset + 800])
    await session.finish()
    results = await asyncio.wait_for(reader, 5)  # the Deepgram engine closes after flushing
    await session.close()
    assert results == [EngineResult("tone 400 hertz", True, 0.92),
                       EngineResult("tone 850 hertz", True, 0.92)]
    [recorded] = stt.sessions
    assert bytes(recorded.audio) == AUDIO
    assert recorded.binary_frames == -(-len(AUDIO) // 800)
    assert recorded.text_frames == ['{"type": "CloseStream"}']
    assert "Origin" not in recorded.headers


async def test_reads_frames_in_the_typed_shape_too() -> None:
    async with TelnyxSttEmulator(api_key=API_KEY, with_type_field=True) as stt:
        session = session_for(settings(stt.url), AudioEncoding.PCMU)
        await session.open()
        reader = asyncio.create_task(collect(session))
        await session.send_audio(AUDIO)
        await session.finish()
        assert [r.text for r in await asyncio.wait_for(reader, 5)] == [
            "tone 400 hertz", "tone 850 hertz"]
        await session.close()


async def test_bad_key_is_refused_at_the_handshake(stt: TelnyxSttEmulator) -> None:
    session = session_for(settings(stt.url, api_key=Secret("nope")), AudioEncoding.PCMU)
    with pytest.raises(UpstreamRefused) as caught:
        await session.open()
    assert caught.value.status == 401
    assert "nope" not in str(caught.value)


async def test_bad_parameters_are_refused_with_the_services_code(
        stt: TelnyxSttEmulator) -> None:
    session = session_for(settings(stt.url, transcription_engine="Azure"), AudioEncoding.PCMA)
    await session.open()
    with pytest.raises(UpstreamRefused) as caught:
        await collect(session)
    assert caught.value.code == "40002"
    await session.close()


async def test_error_frame_in_the_typed_shape_is_an_error_too() -> None:
    async with TelnyxSttEmulator(api_key=API_KEY, with_type_field=True) as stt:
        session = session_for(settings(stt.url, transcription_engine="Telnyx"),
                              AudioEncoding.PCMU)
        await session.open()
        with pytest.raises(UpstreamRefused):
            await collect(session)
        await session.close()


async def test_dropped_connection_is_unavailable_not_refused() -> None:
    async with TelnyxSttEmulator(api_key=API_KEY) as stt:
        stt.every_session = Fault(1600, Failure.DROP)
        session = session_for(settings(stt.url), AudioEncoding.PCMU)
        await session.open()
        reader = asyncio.create_task(collect(session))
        await session.send_audio(AUDIO[:1600])
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(reader, 5)
        await session.close()


async def test_nothing_listening_is_unavailable(refused_port: int) -> None:
    url = f"ws://127.0.0.1:{refused_port}/v2/speech-to-text/transcription"
    with pytest.raises(UpstreamUnavailable, match="cannot connect"):
        await session_for(settings(url), AudioEncoding.PCMU).open()


async def test_throttled_handshake_is_unavailable() -> None:
    async with TelnyxSttEmulator(api_key=API_KEY, reject_status=429) as stt:
        with pytest.raises(UpstreamUnavailable) as caught:
            await session_for(settings(stt.url), AudioEncoding.PCMU).open()
        assert caught.value.status == 429


async def test_a_session_we_closed_is_no_drop_when_the_server_never_answers() -> None:
    """A server that never answers our close frame leaves the socket to end without one
    (1006): the session still ends as we asked, not as a dropped connection."""
    client_closed = asyncio.Event()

    async def never_closes(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        async for _ in ws:  # reads until the client's close frame, and answers nothing
            pass
        client_closed.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 3)  # no close frame back
        return ws

    app = web.Application()
    app.router.add_get("/v2/speech-to-text/transcription", never_closes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        session = TelnyxSession(settings(f"ws://127.0.0.1:{port}/v2/speech-to-text/transcription"),
                                AudioEncoding.PCMU, 8000, close_grace_s=0.2)
        await session.open()
        reader = asyncio.create_task(collect(session))
        await session.send_audio(AUDIO[:800])
        await session.finish()
        await session.close()
        assert await asyncio.wait_for(reader, 10) == []  # ended, and without an error
        assert client_closed.is_set()
    finally:
        await runner.cleanup()
