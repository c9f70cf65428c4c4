"""End to end: a real ``callbridge serve`` process, the Telnyx STT emulator, a real receiver.

Calls are streamed with the same client ``callbridge simulate`` uses; assertions are on the
exact webhooks received per leg, on the audio the emulator received, and on the logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import aiohttp
import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import API_KEY, BridgeFactory, BridgeProcess, run_call
from tests.support.audio import alaw, ulaw
from tests.support.receiver import Received, WebhookReceiver
from tests.support.speech import AGENT, CALLER
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e



def transcripts(events: list[Received], leg: str) -> list[tuple[str, int, str]]:
    return [(e.type, e.data["sequence"], e.data["text"]) for e in events
            if e.type.startswith("transcript.") and e.data["leg"] == leg]


async def test_two_leg_twilio_call_delivers_exact_webhooks_per_leg(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)},
                    call_id="CA0001", stream_id="MZ0001",
                    custom_parameters={"queue": "billing"}, first_timestamp_ms=102)
    events = await run_call(bridge, receiver, spec)

    assert events[0].type == "call.started" and events[-1].type == "call.ended"
    assert transcripts(events, "inbound") == [("transcript.final", 1, "tone 400 hertz"),
                                              ("transcript.final", 2, "tone 700 hertz")]
    assert transcripts(events, "outbound") == [("transcript.final", 1, "tone 1000 hertz")]
    assert receiver.bad_signatures == 0
    assert len({e.webhook_id for e in events}) == len(events)

    first = next(e for e in events if e.type == "transcript.final")
    assert {k: first.data[k] for k in ("call_id", "stream_id", "provider", "leg", "speaker",
                                       "custom_parameters", "is_final", "confidence")} == {
        "call_id": "CA0001", "stream_id": "MZ0001", "provider": "twilio", "leg": "inbound",
        "speaker": "caller", "custom_parameters": {"queue": "billing"}, "is_final": True,
        "confidence": 0.92}
    for leg in ("inbound", "outbound"):
        finals = [e.data for e in events if e.type == "transcript.final" and e.data["leg"] == leg]
        bounds = [(f["start_ms"], f["end_ms"]) for f in finals]
        assert all(102 <= start <= end for start, end in bounds)
        assert [b[1] for b in bounds] == sorted(b[1] for b in bounds)

    ended = events[-1].data
    assert ended["reason"] == "stopped"
    legs = {leg["leg"]: leg for leg in ended["legs"]}
    assert legs["inbound"]["text"] == "tone 400 hertz tone 700 hertz"
    assert legs["outbound"]["text"] == "tone 1000 hertz"
    assert legs["inbound"]["speaker"] == "caller" and legs["outbound"]["speaker"] == "agent"
    assert legs["inbound"]["transcripts"] == 2 and legs["inbound"]["gaps_filled"] == 0
    assert legs["inbound"]["frames"] == len(CALLER) // 2 // 160
    assert legs["inbound"]["audio_ms"] == len(CALLER) // 16

    # One upstream session per leg, each byte-identical to what was streamed for its track.
    assert len(stt.sessions) == 2
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted([ulaw(CALLER), ulaw(AGENT)])
    for session in stt.sessions:
        assert session.headers["Authorization"] == f"Bearer {API_KEY}"
        assert session.param("input_format") == "mulaw"
        assert session.param("sample_rate") == "8000"
        assert session.text_frames == ['{"type": "CloseStream"}']


async def test_pcma_telnyx_call_is_sent_as_alaw(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    spec = CallSpec("telnyx", AudioEncoding.PCMA,
                    {Track.INBOUND: alaw(CALLER), Track.OUTBOUND: alaw(AGENT)},
                    call_id="v2:call-pcma", stream_id="32DE")
    events = await run_call(bridge, receiver, spec)
    assert transcripts(events, "inbound") == [("transcript.final", 1, "tone 400 hertz"),
                                              ("transcript.final", 2, "tone 700 hertz")]
    assert transcripts(events, "outbound") == [("transcript.final", 1, "tone 1000 hertz")]
    assert events[0].data["provider"] == "telnyx" and events[0].data["encoding"] == "pcma"
    assert {s.param("input_format") for s in stt.sessions} == {"alaw"}
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted([alaw(CALLER), alaw(AGENT)])


async def test_streams_endpoint_recognises_the_dialect(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    spec = CallSpec("telnyx", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="v2:detected")
    events = await run_call(bridge, receiver, spec, path="/streams")
    assert events[0].data["provider"] == "telnyx"
    assert transcripts(events, "inbound") == [("transcript.final", 1, "tone 400 hertz"),
                                              ("transcript.final", 2, "tone 700 hertz")]


async def test_lost_and_reordered_frames_keep_the_audio_clock_true(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    spec = CallSpec("telnyx", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="v2:lossy")
    messages = build_call(spec)
    media = [i for i, (_, text) in enumerate(messages) if '"media"' in text]
    lost = media[20]
    messages[media[30]], messages[media[31]] = messages[media[31]], messages[media[30]]
    del messages[lost]
    await stream_call(bridge.url("/streams/telnyx"), messages, speed=0)
    await receiver.wait_for(receiver.ended("v2:lossy"))
    [session] = stt.sessions
    audio = ulaw(CALLER)
    expected = audio[:20 * 160] + b"\xff" * 160 + audio[21 * 160:]
    assert bytes(session.audio) == expected
    [leg] = receiver.of_call("v2:lossy")[-1].data["legs"]
    assert leg["gaps_filled"] == 1 and leg["gap_fill_ms"] == 20
    assert leg["audio_ms"] == len(audio) // 8


async def test_interim_results_arrive_as_partials_numbered_for_their_final(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_TELNYX_INTERIM_RESULTS="true")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-partials")
    # In real time: a partial is only sent when no earlier event of its call is waiting.
    events = await run_call(bridge, receiver, spec, speed=1)
    seen = transcripts(events, "inbound")
    assert ("transcript.partial", 1, "tone 400") in seen
    assert ("transcript.partial", 2, "tone 700") in seen
    assert [s for s in seen if s[0] == "transcript.final"] == [
        ("transcript.final", 1, "tone 400 hertz"), ("transcript.final", 2, "tone 700 hertz")]
    # every partial precedes the final it belongs to
    for kind, sequence, _ in seen:
        if kind == "transcript.partial":
            assert seen.index(("transcript.final", sequence, f"tone {_.split()[1]} hertz")) > \
                seen.index((kind, sequence, _))


async def media_then(bridge: BridgeProcess, dialect: str, spec: CallSpec, frames: int,
                     final: str | bytes) -> tuple[int | None, str]:
    """Send start and some media, then ``final``; return the close code and reason."""
    messages = [text for _, text in build_call(spec)]
    head = [m for m in messages if '"media"' not in m][:2]
    media = [m for m in messages if '"media"' in m][:frames]
    async with aiohttp.ClientSession() as session, session.ws_connect(
            bridge.url(f"/streams/{dialect}")) as ws:
        for text in head + media:
            await ws.send_str(text)
        if isinstance(final, bytes):
            await ws.send_bytes(final)
        else:
            await ws.send_str(final)
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE
        return ws.close_code, message.extra or ""


@pytest.mark.parametrize(("final", "close_code"), [
    ("{this is not json", 1002),
    ('{"event":"hangup","streamSid":"MZ"}', 1002),
    (json.dumps({"event": "media", "streamSid": "MZ", "media": {
        "track": "inbound", "chunk": "9", "timestamp": "9", "payload": "%%%"}}), 1007),
    (b"\xff" * 160, 1003),
    ("x" * 70_000, 1009),
])
async def test_bad_input_closes_with_its_code_and_still_delivers_the_transcripts(
        bridge: BridgeProcess, receiver: WebhookReceiver, final: str | bytes,
        close_code: int) -> None:
    call_id = f"CA-bad-{close_code}"
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)}, call_id=call_id)
    # 65 frames = 1.3 s: the first tone and the silence after it
    code, _reason = await media_then(bridge, "twilio", spec, 65, final)
    assert code == close_code
    events = await receiver.wait_for(receiver.ended(call_id))
    mine = [e for e in events if e.data["call_id"] == call_id]
    assert transcripts(mine, "inbound") == [("transcript.final", 1, "tone 400 hertz")]
    assert mine[-1].data["reason"] == "protocol_error"
    warnings = bridge.log_events("closing media connection: peer broke the protocol")
    assert [w["close_code"] for w in warnings if w.get("call_id") == call_id] == [close_code]


async def test_media_before_start_is_refused(bridge: BridgeProcess) -> None:
    frame = json.dumps({"event": "media", "streamSid": "MZ", "sequenceNumber": "2",
                        "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                  "payload": base64.b64encode(b"\xff" * 160).decode()}})
    async with aiohttp.ClientSession() as session, session.ws_connect(
            bridge.url("/streams/twilio")) as ws:
        await ws.send_str(frame)
        message = await ws.receive()
        assert message.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 1002


async def test_a_broken_call_does_not_disturb_another(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    good = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)}, call_id="CA-good")
    bad = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)}, call_id="CA-bad")
    good_call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(good),
                                                speed=4))
    code, _ = await media_then(bridge, "twilio", bad, 30, "{garbage")
    assert code == 1002
    result = await good_call
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-good"))
    events = receiver.of_call("CA-good")
    assert transcripts(events, "inbound") == [("transcript.final", 1, "tone 400 hertz"),
                                              ("transcript.final", 2, "tone 700 hertz")]
    assert transcripts(events, "outbound") == [("transcript.final", 1, "tone 1000 hertz")]


async def test_refused_upstream_reports_an_error_and_keeps_the_media_connection(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(TELNYX_API_KEY="wrong-key")
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)}, call_id="CA-401")
    events = await run_call(bridge, receiver, spec)  # asserts a normal 1000 close
    errors = [e for e in events if e.type == "transcription.error"]
    assert sorted(e.data["leg"] for e in errors) == ["inbound", "outbound"]
    assert {e.data["error"]["status"] for e in errors} == {401}
    assert {e.data["error"]["retryable"] for e in errors} == {False}
    assert {leg["upstream"] for leg in events[-1].data["legs"]} == {"failed"}
    failures = bridge.log_events("speech-to-text session failed; the call continues without "
                                 "transcripts for this leg")
    assert sorted(f["leg"] for f in failures) == ["inbound", "outbound"]
    assert not any("wrong-key" in line for line in bridge.raw_stderr)


async def test_engine_error_frame_becomes_a_transcription_error(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    # The Telnyx (Whisper) engine takes no mulaw: the service answers 40002 and closes.
    bridge = await bridge_factory(CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE="Telnyx")
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-40002")
    events = await run_call(bridge, receiver, spec)
    [error] = [e for e in events if e.type == "transcription.error"]
    assert error.data["error"]["code"] == "40002"
    assert error.data["leg"] == "inbound"


async def test_logs_carry_call_context_and_never_text_audio_or_secrets(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)},
                    call_id="CA-logs")
    await run_call(bridge, receiver, spec)
    summary = await bridge.wait_for_log("call summary", call_id="CA-logs")
    assert summary["reason"] == "stopped"
    assert summary["legs"]["inbound"]["transcripts"] == 2
    assert summary["legs"]["outbound"]["frames"] == len(AGENT) // 2 // 160
    assert summary["webhooks"] == {"delivered": 6}  # started, 3 finals, ended, completed
    everything = "\n".join(bridge.raw_stderr)
    assert "hertz" not in everything
    assert API_KEY not in everything and "whsec_" not in everything
    payload_sample = base64.b64encode(ulaw(CALLER)[1600:1760]).decode()[:40]
    assert payload_sample not in everything


async def test_a_wrong_setting_stops_start_up_with_one_line(
        bridge_factory: BridgeFactory) -> None:
    with pytest.raises(RuntimeError, match="invalid setting CALLBRIDGE_AUDIO_CHUNK_MS") as caught:
        await bridge_factory(CALLBRIDGE_AUDIO_CHUNK_MS="5")
    assert str(caught.value).count("\n") == 1  # "bridge exited:" and the one line


async def test_healthz(bridge: BridgeProcess) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}/healthz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_the_simulate_command_streams_a_wav_file(
        bridge: BridgeProcess, receiver: WebhookReceiver, tmp_path: Path) -> None:
    import sys
    import wave

    from bridge.codecs.resample import resample

    path = tmp_path / "caller.wav"
    with wave.open(str(path), "wb") as wav:  # the caller's audio as a 16 kHz WAV file
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(resample(CALLER, rate_in=8000, rate_out=16000))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "simulate", f"ws://127.0.0.1:{bridge.port}", str(path),
        "--dialect", "telnyx", "--codec", "pcma", "--speed", "0", "--call-id", "v2:cli",
        "--param", "agent=42", stderr=asyncio.subprocess.PIPE)
    _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    events = await receiver.wait_for(receiver.ended("v2:cli"))
    mine = [e for e in events if e.data["call_id"] == "v2:cli"]
    assert transcripts(mine, "inbound") == [("transcript.final", 1, "tone 400 hertz"),
                                            ("transcript.final", 2, "tone 700 hertz")]
    assert mine[0].data["custom_parameters"] == {"agent": "42"}
    assert mine[0].data["encoding"] == "pcma"


async def test_a_dropped_connection_still_finishes_the_legs(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-dropped")
    sender = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                             speed=2))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-dropped" for e in events))
    sender.cancel()  # the provider goes away mid-call, without a stop message
    with pytest.raises(asyncio.CancelledError):
        await sender
    events = await receiver.wait_for(receiver.ended("CA-dropped"))
    mine = [e for e in events if e.data["call_id"] == "CA-dropped"]
    assert mine[-1].data["reason"] == "disconnected"
    finals = transcripts(mine, "inbound")
    assert finals[0] == ("transcript.final", 1, "tone 400 hertz")
    assert [sequence for _, sequence, _ in finals] == list(range(1, len(finals) + 1))
