"""Engines per call, failover to a secondary engine, a stalled engine, and long sessions."""

from __future__ import annotations

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.assemblyai import AssemblyAIEmulator
from tests.support.audio import ulaw
from tests.support.deepgram import DeepgramEmulator
from tests.support.faults import Failure, Fault
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER_THREE, CALLER_THREE_SAYS
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e



def texts(receiver: WebhookReceiver, call_id: str) -> list[str]:
    return [e.data["text"] for e in receiver.of_call(call_id) if e.type == "transcript.final"]


async def call(bridge: BridgeProcess, receiver: WebhookReceiver, call_id: str,
               speed: float = 0, **parameters: str) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_THREE)},
                    call_id=call_id, custom_parameters=parameters)
    await run_call(bridge, receiver, spec, speed=speed, within_s=30)


async def test_a_fatal_engine_error_fails_over_and_the_transcript_continues(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, deepgram: DeepgramEmulator,
        receiver: WebhookReceiver) -> None:
    stt.every_session = Fault(12000, Failure.ERROR)  # the primary fails for good 1.5 s in
    stt.with_times = True
    bridge = await bridge_factory(CALLBRIDGE_STT_SECONDARY_ENGINE="deepgram",
                                  DEEPGRAM_API_KEY="test-deepgram-key",
                                  CALLBRIDGE_DEEPGRAM_URL=deepgram.url)
    await call(bridge, receiver, "CA-failover", speed=2)
    assert texts(receiver, "CA-failover") == CALLER_THREE_SAYS
    events = receiver.of_call("CA-failover")
    [failover] = [e for e in events if e.type == "transcription.failover"]
    assert (failover.data["from"], failover.data["to"]) == ("telnyx", "deepgram")
    assert not any(e.type == "transcription.error" for e in events)
    [leg] = events[-1].data["legs"]
    assert leg["engine"] == "deepgram" and leg["failed_over"] is True
    assert len(deepgram.sessions) == 1


async def test_a_call_chooses_its_language_and_engine_within_the_allow_list(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, deepgram: DeepgramEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_STT_SECONDARY_ENGINE="deepgram",
                                  DEEPGRAM_API_KEY="test-deepgram-key",
                                  CALLBRIDGE_DEEPGRAM_URL=deepgram.url)
    # language is allowed by default; the engine is not: it stays the primary
    await call(bridge, receiver, "CA-de", callbridge_language="de-DE",
               callbridge_engine="deepgram")
    [session] = stt.sessions
    assert session.param("language") == "de-DE"
    assert deepgram.sessions == []
    assert texts(receiver, "CA-de") == CALLER_THREE_SAYS


async def test_a_stalled_engine_is_treated_as_dropped(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.faults = [Fault(0, Failure.STALL)]  # the first session takes audio, never answers
    # longer than this engine's longest quiet spell between results in this call
    bridge = await bridge_factory(CALLBRIDGE_STT_SILENCE_TIMEOUT_S="1.0")
    await call(bridge, receiver, "CA-stall", speed=2)
    assert texts(receiver, "CA-stall") == CALLER_THREE_SAYS
    [leg] = receiver.of_call("CA-stall")[-1].data["legs"]
    assert leg["reconnects"] == 1 and len(stt.sessions) == 2


async def test_a_session_rolls_over_at_a_pause_before_the_engines_limit(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    async with AssemblyAIEmulator() as assemblyai:
        bridge = await bridge_factory(CALLBRIDGE_STT_ENGINE="assemblyai",
                                      ASSEMBLYAI_API_KEY="test-assemblyai-key",
                                      CALLBRIDGE_ASSEMBLYAI_URL=assemblyai.url,
                                      CALLBRIDGE_ASSEMBLYAI_MAX_SESSION_S="1.0",
                                      CALLBRIDGE_STT_ROLL_MARGIN_S="0.5")
        await call(bridge, receiver, "CA-roll")
        assert [t.rstrip(".").lower() for t in texts(receiver, "CA-roll")] == CALLER_THREE_SAYS
        [leg] = receiver.of_call("CA-roll")[-1].data["legs"]
        assert leg["rolls"] >= 1 and leg["reconnects"] == 0
        assert len(assemblyai.sessions) == leg["rolls"] + 1
        assert all(s.closed_with == 1000 for s in assemblyai.sessions)  # each one ended well
