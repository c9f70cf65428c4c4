"""Engine limits in process: the real ``Call`` and legs, a scripted engine, the slots of one
process (``bridge.stt.slots``). A leg beyond the limit waits and says so once, takes the
secondary when it has room, and keeps its one slot through reconnects."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.calls import Call
from bridge.config import Settings
from bridge.events import AudioEncoding, AudioFrame, StreamStarted, StreamStopped, Track
from bridge.stt.slots import LocalEngineSlots
from tests.support.fake_engine import EngineScript, FakeEngines, WaitingSink

FRAME = 160  # 20 ms of G.711
SETTINGS = Settings()


def started(call_id: str) -> StreamStarted:
    return StreamStarted("twilio", call_id, f"MZ-{call_id}", AudioEncoding.PCMU, 8000,
                         (Track.INBOUND,), {})


def frames(ms: int, first_ts: int = 0) -> list[AudioFrame]:
    return [AudioFrame(Track.INBOUND, bytes([n % 250 + 1]) * FRAME, first_ts + 20 * n, None)
            for n in range(ms // 20)]


async def feed(call: Call, audio: list[AudioFrame]) -> None:
    for n, frame in enumerate(audio):
        call.handle(frame)
        if n % 10 == 9:
            await asyncio.sleep(0)  # the leg's sender runs, as beside the media reader


async def feed_in_real_time_until(call: Call, done: asyncio.Task[None], *,
                                  first_ts: int, within_s: float = 10) -> int:
    """Frames paced as a provider sends them (20 ms each) until ``done``; the next ts."""
    ts = first_ts
    async with asyncio.timeout(within_s):
        while not done.done():
            call.handle(AudioFrame(Track.INBOUND, b"\x55" * FRAME, ts, None))
            ts += 20
            await asyncio.sleep(0.02)
    return ts


def data(sink: WaitingSink, kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in sink.of_type(kind)]


def leg_summary(sink: WaitingSink) -> dict[str, Any]:
    [ended] = data(sink, "call.ended")
    legs: list[dict[str, Any]] = ended["legs"]
    return legs[0]


async def test_a_leg_beyond_the_limit_waits_says_so_once_and_transcribes_once_a_slot_frees(
        ) -> None:
    script = EngineScript(utterance_ms=300)
    engines = FakeEngines({"telnyx": script})
    slots = LocalEngineSlots({"telnyx": 1})
    first_sink, second_sink = WaitingSink(), WaitingSink()
    async with asyncio.TaskGroup() as tasks:
        first = Call(settings=SETTINGS, sink=first_sink, engines=engines, tasks=tasks,
                     slots=slots)
        first.handle(started("CA-first"))
        await feed(first, frames(700))
        await first_sink.wait_for("transcript.final", 1)

        second = Call(settings=SETTINGS, sink=second_sink, engines=engines, tasks=tasks,
                      slots=slots)
        second.handle(started("CA-second"))
        await feed(second, frames(700))
        await second_sink.wait_for("transcription.error", 1)
        [error] = data(second_sink, "transcription.error")
        assert error["error"]["code"] == "engine_capacity"
        assert error["error"]["retryable"] is True
        assert len(script.sessions) == 1  # the engine never saw a second session

        first.handle(StreamStopped())
        await first.end("stopped")  # its slot frees: the waiting leg takes it
        transcribing = tasks.create_task(second_sink.wait_for("transcript.final", 1))
        ts = await feed_in_real_time_until(second, transcribing, first_ts=700)
        await feed(second, frames(700, first_ts=ts))  # more after it started
        second.handle(StreamStopped())
        await second.end("stopped")

    assert len(data(second_sink, "transcription.error")) == 1  # however long it waited
    leg = leg_summary(second_sink)
    assert leg["engine_capacity_waits"] == 1 and leg["upstream"] == "ok"
    assert leg["bytes_untranscribed"] >= 700 * 8  # what came while it waited
    assert leg["transcripts"] >= 2
    assert len(script.sessions) == 2
    assert slots.in_use() == {"telnyx": 0}


async def test_a_full_primary_sends_the_leg_to_the_secondary_with_room() -> None:
    primary, secondary = EngineScript(utterance_ms=300), EngineScript(utterance_ms=300)
    engines = FakeEngines({"telnyx": primary, "deepgram": secondary}, secondary="deepgram")
    slots = LocalEngineSlots({"telnyx": 1, "deepgram": 1})
    sinks = [WaitingSink() for _ in range(3)]
    async with asyncio.TaskGroup() as tasks:
        calls = [Call(settings=SETTINGS, sink=sink, engines=engines, tasks=tasks, slots=slots)
                 for sink in sinks]
        for n, call in enumerate(calls):
            call.handle(started(f"CA-{n}"))
            await feed(call, frames(700))
            await sinks[n].wait_for("transcript.final" if n < 2 else "transcription.error", 1)
        assert slots.in_use() == {"telnyx": 1, "deepgram": 1}
        for call in calls:
            call.handle(StreamStopped())
            await call.end("stopped")

    [failover] = data(sinks[1], "transcription.failover")
    assert (failover["from"], failover["to"]) == ("telnyx", "deepgram")
    assert failover["error"]["code"] == "engine_capacity"
    assert data(sinks[1], "transcription.error") == []
    assert leg_summary(sinks[1])["engine"] == "deepgram"
    # both full: the third leg waits, and says so once
    [error] = data(sinks[2], "transcription.error")
    assert error["error"]["code"] == "engine_capacity"
    assert leg_summary(sinks[2])["upstream"] == "engine_capacity"  # the call ended first
    assert (len(primary.sessions), len(secondary.sessions)) == (1, 1)
    assert slots.in_use() == {"telnyx": 0, "deepgram": 0}


async def test_a_reconnect_keeps_the_legs_slot_and_a_failover_gives_it_back() -> None:
    dropping = EngineScript(utterance_ms=300, drop_after_bytes=[2000])
    refusing = EngineScript(refuse=True)
    secondary = EngineScript(utterance_ms=300)
    slots = LocalEngineSlots({"telnyx": 1, "deepgram": 1})
    sink = WaitingSink()
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=FakeEngines({"telnyx": dropping}),
                    tasks=tasks, slots=slots)
        call.handle(started("CA-drop"))
        await feed(call, frames(1000))
        await sink.wait_for("transcript.final", 3)
        assert slots.in_use()["telnyx"] == 1
        call.handle(StreamStopped())
        await call.end("stopped")
    leg = leg_summary(sink)
    assert leg["reconnects"] == 1 and leg["engine_capacity_waits"] == 0
    assert sink.of_type("transcription.error") == []

    sink = WaitingSink()
    engines = FakeEngines({"telnyx": refusing, "deepgram": secondary}, secondary="deepgram")
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=engines, tasks=tasks, slots=slots)
        call.handle(started("CA-refused"))
        await feed(call, frames(700))
        await sink.wait_for("transcript.final", 1)
        assert slots.in_use() == {"telnyx": 0, "deepgram": 1}  # the primary's went back
        call.handle(StreamStopped())
        await call.end("stopped")
    assert slots.in_use() == {"telnyx": 0, "deepgram": 0}


async def test_a_service_at_capacity_makes_the_leg_wait_with_backoff_even_without_our_limits(
        ) -> None:
    script = EngineScript(utterance_ms=300, full_for_opens=2)
    sink = WaitingSink()
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=SETTINGS, sink=sink, engines=FakeEngines({"telnyx": script}),
                    tasks=tasks)  # no slots given: no limits of ours
        call.handle(started("CA-429"))
        transcribing = tasks.create_task(sink.wait_for("transcript.final", 1))
        await feed_in_real_time_until(call, transcribing, first_ts=0)
        call.handle(StreamStopped())
        await call.end("stopped")
    [error] = data(sink, "transcription.error")
    assert error["error"]["code"] == "engine_capacity" and error["error"]["status"] is None
    assert script.opens == 3  # two refusals, each followed by a wait, then the session
    leg = leg_summary(sink)
    assert leg["engine_capacity_waits"] == 2 and leg["upstream"] == "ok"
    assert leg["reconnects"] == 0 and leg["bytes_untranscribed"] > 0
