"""An upstream that drops mid-call: reconnect, replay, no lost or repeated finals."""

from __future__ import annotations

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec
from tests.conftest import BridgeFactory, run_call
from tests.support.audio import ulaw
from tests.support.faults import Failure, Fault
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER_THREE
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e



async def test_two_drops_mid_utterance_lose_and_repeat_nothing(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    # Session 1 drops in the first tone (0.5 s of audio); session 2, which starts with the
    # replay from the beginning, drops in the second tone (1.5 s into its audio).
    stt.faults = [Fault(4000, Failure.DROP), Fault(12000, Failure.DROP)]
    stt.with_times = True  # segment times let the bridge forget exactly what a final covers
    bridge = await bridge_factory(CALLBRIDGE_AUDIO_CHUNK_MS="20")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_THREE)},
                    call_id="CA-drops")
    events = await run_call(bridge, receiver, spec, speed=2, within_s=30)
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == ["tone 400 hertz", "tone 700 hertz",
                                           "tone 1000 hertz"]
    assert [f["sequence"] for f in finals] == [1, 2, 3]
    assert not any(e.type == "transcription.error" for e in events)
    ends = [f["end_ms"] for f in finals]
    assert ends == sorted(ends) and ends[-1] <= len(CALLER_THREE) // 16 + 100
    assert 800 <= ends[0] <= 1400  # the first tone ends at 800 ms of the call
    # The engine got all the audio: each session starts inside what the ones before covered.
    audio = ulaw(CALLER_THREE)
    assert len(stt.sessions) == 3
    covered = 0
    for session in stt.sessions:
        got = bytes(session.audio)
        start = audio.find(got)  # the whole session's audio is one stretch of the call's
        assert 0 <= start <= covered
        covered = max(covered, start + len(got))
    assert covered == len(audio)
    [leg] = events[-1].data["legs"]
    assert leg["reconnects"] == 2
    drops = bridge.log_events("speech-to-text session dropped; reconnecting and replaying")
    assert len(drops) == 2


async def test_a_refusal_is_not_retried(bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
                                        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(TELNYX_API_KEY="wrong-key")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_THREE)},
                    call_id="CA-refused")
    events = await run_call(bridge, receiver, spec)
    errors = [e for e in events if e.type == "transcription.error"]
    assert len(errors) == 1
    assert stt.sessions == []  # refused at the handshake, once: no session, no retry storm
    assert bridge.log_events("speech-to-text session dropped; reconnecting and replaying") == []
