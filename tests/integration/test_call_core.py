"""A whole call in process: the real ``Call`` and its legs, driven with ingress events, a
scripted engine (``tests/support/fake_engine.py``) and a recording sink; no subprocess."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from bridge.calls import Call
from bridge.config import Settings
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    OutboundEvent,
    StreamStarted,
    StreamStopped,
    Track,
)
from tests.support.fake_engine import EngineScript, FakeEngines, RecordingSink, WaitingSink

FRAME_MS = 20
FRAME = 160  # 20 ms of G.711
SETTINGS = Settings()
STARTED = StreamStarted("twilio", "CA1", "MZ1", AudioEncoding.PCMU, 8000, (Track.INBOUND,), {})


def speech(ms: int, first_ts: int = 0) -> list[tuple[bytes, int]]:
    """Distinct frames (each its own byte value) with their timestamps."""
    return [(bytes([n % 250 + 1]) * FRAME, first_ts + FRAME_MS * n)
            for n in range(ms // FRAME_MS)]


async def feed(call: Call, frames: list[tuple[bytes, int]]) -> None:
    for n, (payload, ts) in enumerate(frames):
        call.handle(AudioFrame(Track.INBOUND, payload, ts, None))
        if n % 10 == 9:
            await asyncio.sleep(0)  # let the leg's sender run, as the media reader would


async def stream_whole_call(engines: FakeEngines, sink: RecordingSink,
                            frames: list[tuple[bytes, int]]) -> None:
    """One call from start to end: its frames, the stream's stop, the call's end."""
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=engines, tasks=tasks)
        call.handle(STARTED)
        await feed(call, frames)
        call.handle(StreamStopped())
        await call.end("stopped")


def finals(sink: RecordingSink) -> list[tuple[int, str, int, int]]:
    return [(data(e)["sequence"], data(e)["text"], data(e)["start_ms"], data(e)["end_ms"])
            for e in sink.of_type("transcript.final")]


def data(event: OutboundEvent) -> dict[str, Any]:
    """An event's data as the webhook's JSON has it."""
    return dict(event.data)


def last_leg(sink: RecordingSink) -> dict[str, Any]:
    """The leg summary in the call's last event, ``call.ended``."""
    ended = sink.events[-1]
    assert ended.type == "call.ended"
    legs: list[dict[str, Any]] = data(ended)["legs"]
    return legs[0]


async def test_frames_out_of_order_and_a_lost_one_reach_the_engine_whole_and_timed() -> None:
    script = EngineScript(utterance_ms=500)
    sink = RecordingSink()
    frames = speech(2000, first_ts=1000)
    lost = frames.pop(30)  # 1600 ms
    shuffled = frames[:]
    for n in range(1, len(shuffled) - 2, 4):
        shuffled[n], shuffled[n + 1] = shuffled[n + 1], shuffled[n]
    await stream_whole_call(FakeEngines({"telnyx": script}), sink, shuffled)
    received = bytes(script.sessions[0].received)
    expected = b"".join(p for p, _ in frames[:30]) + b"\xff" * len(lost[0]) + b"".join(
        p for p, _ in frames[30:])
    assert received == expected
    assert finals(sink) == [(n + 1, str(n + 1), 1000 + 500 * n, 1500 + 500 * n)
                            for n in range(4)]
    assert last_leg(sink)["gaps_filled"] == 1


async def test_a_leg_that_fell_behind_hands_every_waiting_chunk_over_at_once() -> None:
    script = EngineScript(utterance_ms=500)
    sink = RecordingSink()
    frames = speech(2000)
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=FakeEngines({"telnyx": script}),
                    tasks=tasks)
        call.handle(STARTED)
        for payload, ts in frames:  # the leg's sender gets no turn meanwhile: it falls behind
            call.handle(AudioFrame(Track.INBOUND, payload, ts, None))
        call.handle(StreamStopped())
        await call.end("stopped")
    session = script.sessions[0]
    # 2 s of audio in 100 ms chunks: one hand-over (one socket write), not twenty.
    assert session.hand_overs == [20]
    assert bytes(session.received) == b"".join(payload for payload, _ in frames)
    assert [text for _, text, _, _ in finals(sink)] == ["1", "2", "3", "4"]


async def test_paused_audio_never_reaches_the_engine_and_the_clock_runs_on() -> None:
    script = EngineScript(utterance_ms=500)
    sink = RecordingSink()
    frames = speech(3000)
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=FakeEngines({"telnyx": script}),
                    tasks=tasks)
        call.handle(STARTED)
        await feed(call, frames[:50])
        call.set_paused(True, None, reason="admin")
        await feed(call, frames[50:100])
        call.set_paused(False, None, reason="admin")
        await feed(call, frames[100:])
        call.handle(StreamStopped())
        await call.end("stopped")
    assert bytes(script.sessions[0].received) == b"".join(
        p for p, _ in frames[:50] + frames[100:])
    assert [(start, end) for _, _, start, end in finals(sink)] == [
        (0, 500), (500, 1000), (2000, 2500), (2500, 3000)]
    kinds = [str(e.type) for e in sink.events]
    assert kinds.index("transcription.paused") < kinds.index("transcription.resumed")
    assert last_leg(sink)["redaction"]["paused"] == [
        {"start_ms": 1000, "end_ms": 2000}]


async def test_a_card_split_over_finals_is_held_and_redacted_whole() -> None:
    script = EngineScript(utterance_ms=500, finals=["my card number is 4111 1111",
                                                    "1111 1111", "thanks"])
    sink = RecordingSink()
    await stream_whole_call(FakeEngines({"telnyx": script}), sink, speech(1500))
    published = finals(sink)
    assert [(seq, text) for seq, text, _, _ in published] == [
        (1, "my card number is [credit_card]"), (2, "thanks")]
    assert sink.held == {("CA1", "inbound"): []}  # nothing left held at the end
    assert published[0][2:] == (0, 1000)  # the emptied final lends its end
    assert "4111" not in repr(sink.events)


async def test_a_held_final_goes_out_when_the_hold_runs_out() -> None:
    settings = replace(SETTINGS, compliance=replace(SETTINGS.compliance, hold_s=0.2))
    script = EngineScript(utterance_ms=500, finals=["call me back at 55"])
    sink = WaitingSink()
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=settings, sink=sink, engines=FakeEngines({"telnyx": script}),
                    tasks=tasks)
        call.handle(STARTED)
        await feed(call, speech(600))
        await sink.wait_for("transcript.final", 1)  # released by the timer: the call is live
        assert call.state.value == "started"
        call.handle(StreamStopped())
        await call.end("stopped")
    assert finals(sink)[0][:2] == (1, "call me back at 55")


async def test_a_dropped_session_is_replaced_and_replayed_from_the_last_final() -> None:
    script = EngineScript(utterance_ms=500, drop_after_bytes=[6000])
    sink = RecordingSink()
    frames = speech(2000)
    await stream_whole_call(FakeEngines({"telnyx": script}), sink, frames)
    first, second = script.sessions
    audio = b"".join(p for p, _ in frames)
    assert bytes(first.received) == audio[:5600]  # up to the chunk that could not go
    assert bytes(second.received) == audio[4000:]  # from the end of the last final on
    assert [(start, end) for _, _, start, end in finals(sink)] == [
        (0, 500), (500, 1000), (1000, 1500), (1500, 2000)]
    assert last_leg(sink)["reconnects"] == 1


async def test_a_refused_engine_fails_over_to_the_secondary() -> None:
    primary, secondary = EngineScript(refuse=True), EngineScript(utterance_ms=500)
    sink = RecordingSink()
    engines = FakeEngines({"telnyx": primary, "deepgram": secondary}, secondary="deepgram")
    await stream_whole_call(engines, sink, speech(1000))
    failover = sink.of_type("transcription.failover")
    assert [(data(e)["from"], data(e)["to"]) for e in failover] == [("telnyx", "deepgram")]
    assert len(finals(sink)) == 2 and primary.sessions == []
    assert last_leg(sink)["engine"] == "deepgram"
