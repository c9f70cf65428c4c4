"""The Deepgram engine end to end: finals joined per utterance, and a hold kept alive."""

from __future__ import annotations

import asyncio

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, run_call
from tests.support.admin import TOKEN, admin
from tests.support.audio import pcm_program, ulaw
from tests.support.deepgram import DeepgramEmulator
from tests.support.faults import Failure, Fault
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER

pytestmark = pytest.mark.e2e



def engine(emulator: DeepgramEmulator, **extra: str) -> dict[str, str]:
    return {"CALLBRIDGE_STT_ENGINE": "deepgram", "DEEPGRAM_API_KEY": "test-deepgram-key",
            "CALLBRIDGE_DEEPGRAM_URL": emulator.url, **extra}


async def test_settled_segments_become_one_final_per_utterance(
        bridge_factory: BridgeFactory, deepgram: DeepgramEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(**engine(deepgram))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-dg")
    events = await run_call(bridge, receiver, spec)
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == ["tone 400 hertz", "tone 700 hertz"]
    assert finals[0]["confidence"] == 0.97
    assert 150 <= finals[0]["start_ms"] < finals[0]["end_ms"] <= 900  # Deepgram's own times
    [session] = deepgram.sessions
    assert session.headers["Authorization"] == "Token test-deepgram-key"
    assert (session.param("encoding"), session.param("sample_rate"),
            session.param("channels")) == ("mulaw", "8000", "1")
    assert session.text_frames[-2:] == ['{"type": "Finalize"}', '{"type": "CloseStream"}']


async def test_a_silent_hold_keeps_the_session_alive(
        bridge_factory: BridgeFactory, deepgram: DeepgramEmulator,
        receiver: WebhookReceiver) -> None:
    deepgram.idle_s = 1.0  # a hold far beyond the idle limit, in little time
    bridge = await bridge_factory(**engine(deepgram, CALLBRIDGE_DEEPGRAM_KEEPALIVE_S="0.3",
                                         CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN))
    held = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 4500),
                       ("tone", 400, 700), ("silence", 500))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(held)},
                    call_id="CA-hold")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-hold" for e in events))
    await admin(bridge, "pause", "CA-hold")
    await asyncio.sleep(3.0)  # a hold three times longer than the service's idle limit
    await admin(bridge, "resume", "CA-hold")
    await call
    await receiver.wait_for(receiver.ended("CA-hold"))
    [session] = deepgram.sessions  # one session all along: no idle close, no reconnect
    assert session.keepalives >= 5 and session.closed_with == (1000, "")
    [leg] = receiver.of_call("CA-hold")[-1].data["legs"]
    assert leg["reconnects"] == 0 and leg["upstream"] == "ok"
    texts = [e.data["text"] for e in receiver.of_call("CA-hold") if e.type == "transcript.final"]
    assert texts == ["tone 400 hertz", "tone 700 hertz"]  # the call's end, after the hold


async def test_drops_and_a_server_error_are_survived_with_every_final_once(
        bridge_factory: BridgeFactory, deepgram: DeepgramEmulator,
        receiver: WebhookReceiver) -> None:
    deepgram.faults = [Fault(4000, Failure.DROP),  # mid first tone; then a 1011 close
                       Fault(9600, Failure.CLOSE, 1011)]
    bridge = await bridge_factory(**engine(deepgram))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-dg-drops")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == ["tone 400 hertz", "tone 700 hertz"]
    assert finals[0]["start_ms"] >= 150 and finals[1]["start_ms"] >= 1200  # the call's clock
    [leg] = events[-1].data["legs"]
    assert leg["reconnects"] == 2 and len(deepgram.sessions) == 3


async def test_a_rejected_handshake_is_one_error(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    async with DeepgramEmulator(reject_status=400) as rejecting:
        bridge = await bridge_factory(**engine(rejecting))
        spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                        call_id="CA-dg-400")
        events = await run_call(bridge, receiver, spec)
    errors = [e for e in events if e.type == "transcription.error"]
    assert len(errors) == 1 and errors[0].data["error"]["status"] == 400
    assert bridge.log_events("speech-to-text session dropped; reconnecting and replaying") == []
