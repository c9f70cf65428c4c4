"""The AssemblyAI engine end to end: message sizes, real-time pacing, formatted turns."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, run_call
from tests.support.assemblyai import AssemblyAIEmulator
from tests.support.audio import alaw, ulaw
from tests.support.faults import Failure, Fault
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER

pytestmark = pytest.mark.e2e



@pytest.fixture
async def assemblyai() -> AsyncIterator[AssemblyAIEmulator]:
    async with AssemblyAIEmulator(rate_slack_s=1.0) as emulator:
        yield emulator


def engine(emulator: AssemblyAIEmulator, key: str = "test-assemblyai-key") -> dict[str, str]:
    return {"CALLBRIDGE_STT_ENGINE": "assemblyai", "ASSEMBLYAI_API_KEY": key,
            "CALLBRIDGE_ASSEMBLYAI_URL": emulator.url, "CALLBRIDGE_AUDIO_CHUNK_MS": "20"}


async def test_audio_in_allowed_sizes_at_real_time_and_formatted_finals(
        bridge_factory: BridgeFactory, assemblyai: AssemblyAIEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(**engine(assemblyai))
    spec = CallSpec("telnyx", AudioEncoding.PCMA, {Track.INBOUND: alaw(CALLER)},
                    call_id="v2:aai")
    # The provider sends 20 ms frames as fast as it can; the service takes 50-1000 ms
    # messages at no more than real time: the bridge gathers and paces.
    await stream_call(bridge.url("/streams/telnyx"), build_call(spec), speed=0)
    await receiver.wait_for(receiver.ended("v2:aai"), within_s=30)
    finals = [e.data for e in receiver.of_call("v2:aai") if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == ["Tone 400 hertz.", "Tone 700 hertz."]
    assert 150 <= finals[0]["start_ms"] < finals[0]["end_ms"] <= 900
    words = finals[0]["words"]  # word times, on the leg's clock
    assert [w["text"] for w in words] == ["Tone", "400", "hertz."]
    assert words[0]["start_ms"] == finals[0]["start_ms"] and words[-1]["end_ms"] == finals[0][
        "end_ms"]
    [session] = assemblyai.sessions
    assert session.headers["Authorization"] == "test-assemblyai-key"  # no "Bearer"
    assert (session.param("encoding"), session.param("sample_rate"),
            session.param("format_turns")) == ("pcm_s16le", "8000", "true")  # A-law decoded
    assert all(50 <= ms <= 1000 for ms in session.message_ms)
    assert session.text_frames == ['{"type": "Terminate"}'] and session.closed_with == 1000


async def test_a_bad_key_is_one_error_and_no_retry(
        bridge_factory: BridgeFactory, assemblyai: AssemblyAIEmulator,
        receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(**engine(assemblyai, key="wrong-key"))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-aai-401")
    events = await run_call(bridge, receiver, spec, within_s=30)
    errors = [e for e in events if e.type == "transcription.error"]
    assert len(errors) == 1 and errors[0].data["error"]["code"] == "1008"
    assert len(assemblyai.sessions) == 1  # refused once: not retried


async def test_a_server_error_reconnects_and_replays_at_real_time(
        bridge_factory: BridgeFactory, assemblyai: AssemblyAIEmulator,
        receiver: WebhookReceiver) -> None:
    assemblyai.faults = [Fault(12000, Failure.ERROR, 3005)]  # 1.5 s in: "Session Cancelled"
    bridge = await bridge_factory(**engine(assemblyai))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-aai-3005")
    events = await run_call(bridge, receiver, spec, within_s=30)
    finals = [e.data["text"] for e in events
              if e.type == "transcript.final"]
    assert finals == ["Tone 400 hertz.", "Tone 700 hertz."]
    assert len(assemblyai.sessions) == 2
    assert assemblyai.sessions[1].closed_with == 1000  # the replay broke no audio rule
