"""Talk analytics in a whole call in process: the real ``Call``, its legs and the after-call
service with the talk observer, a scripted engine and a recording sink; no subprocess.

What the end-to-end tests cannot steer to the frame: a pause of one leg in the middle of its
speech, and finals a redaction emptied."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bridge.analytics.talk import talk_observer
from bridge.artifacts.service import AfterCallService
from bridge.calls import Call
from bridge.config import Settings
from bridge.events import AudioEncoding, AudioFrame, StreamStarted, StreamStopped, Track
from tests.support.audio import pcm_program, ulaw
from tests.support.fake_engine import EngineScript, FakeEngines, RecordingSink

FRAME = 160  # 20 ms of G.711
EDGE_MS = 150  # what an edge the detector finds is good to (see tests/e2e/test_talk_analytics)
STARTED = StreamStarted("twilio", "CA-talk", "MZ-talk", AudioEncoding.PCMU, 8000,
                        (Track.INBOUND, Track.OUTBOUND), {})


def frames(track: Track, audio: bytes) -> list[tuple[int, Track, bytes]]:
    return [(n // 8, track, audio[n:n + FRAME]) for n in range(0, len(audio), FRAME)]


Action = Callable[[Call], object]


async def play(call: Call, timeline: list[tuple[int, Track, bytes]],
               at: dict[int, Action]) -> None:
    """Both legs' frames in stream-time order; ``at[ms]`` is done before the frames of ms."""
    for n, (ms, track, payload) in enumerate(sorted(timeline, key=lambda f: (f[0], f[1]))):
        if ms in at:
            at.pop(ms)(call)
        call.handle(AudioFrame(track, payload, ms, None))
        if n % 10 == 9:
            await asyncio.sleep(0)  # let the legs' senders run, as the media reader would


async def whole_call(script: EngineScript, timeline: list[tuple[int, Track, bytes]],
                     at: dict[int, Action] | None = None) -> dict[str, Any]:
    sink = RecordingSink()
    async with asyncio.TaskGroup() as tasks:
        call = Call(settings=Settings(), sink=sink, engines=FakeEngines({"telnyx": script}),
                    tasks=tasks, after=AfterCallService([talk_observer]))
        call.handle(STARTED)
        await play(call, timeline, dict(at or {}))
        call.handle(StreamStopped())
        await call.end("stopped")
    ended = sink.of_type("call.ended")
    assert len(ended) == 1
    data: dict[str, Any] = dict(ended[0].data)
    analytics: dict[str, Any] = data["analytics"]
    return analytics


async def test_a_paused_leg_neither_talks_nor_falls_silent_while_paused() -> None:
    # The caller speaks 0-6 s without a break, but is paused 2-5 s (card entry): its talk is
    # 0-2 s and 5-6 s. The agent speaks 3-4 s, during the caller's pause: that is its talk,
    # and no overtalk, though the caller's audio then was speech too.
    caller = ulaw(pcm_program(("voice", 6000, 125), ("silence", 1000)))
    agent = ulaw(pcm_program(("silence", 3000), ("voice", 1000, 160), ("silence", 3000)))
    timeline = frames(Track.INBOUND, caller) + frames(Track.OUTBOUND, agent)
    analytics = await whole_call(EngineScript(utterance_ms=500), timeline, at={
        2000: lambda call: call.set_paused(True, Track.INBOUND, reason="admin"),
        5000: lambda call: call.set_paused(False, Track.INBOUND, reason="admin")})
    legs = analytics["legs"]
    assert abs(legs["inbound"]["talk_ms"] - 3000) <= 2 * EDGE_MS, legs
    assert abs(legs["outbound"]["talk_ms"] - 1000) <= EDGE_MS, legs
    assert analytics["overtalk_ms"] == 0 and analytics["interruptions"] == 0
    # Measured: 0-2 s and 5-7 s. Silence is the last second, after the caller stopped (the
    # pause itself, 3 s without the caller's talk, is none of it).
    assert analytics["measured_ms"] == 7000 - 3000
    assert abs(analytics["longest_silence_ms"] - 1000) <= EDGE_MS, analytics
    assert abs(analytics["silence_ms"] - 1000) <= EDGE_MS, analytics


async def test_words_of_a_final_emptied_by_redaction_still_count() -> None:
    # Three finals; the second only ends the card number begun in the first, so redaction
    # empties it and it is never published: its two words were spoken all the same.
    script = EngineScript(utterance_ms=500, finals=["my card number is 4111 1111",
                                                    "1111 1111", "thanks"])
    caller = ulaw(pcm_program(("voice", 1500, 125)))
    analytics = await whole_call(script, frames(Track.INBOUND, caller))
    assert analytics["legs"]["inbound"]["words"] == 6 + 2 + 1
    assert analytics["overtalk_ms"] is None  # one leg: nothing to overlap with
