"""The PCI-safe recording end to end: a call in which a card number is spoken and keyed,
recorded through ``callbridge serve``, and proven from the stored audio."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge.codecs import g711
from bridge.compliance.dtmf import DtmfDetector
from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support.assemblyai import AssemblyAIEmulator
from tests.support.dtmf import dtmf_tone
from tests.support.receiver import WebhookReceiver
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

RATE = 8000
CALL_MS = 11000
# What the caller's leg carries, in ms on the call's clock (20 ms frames, so every edge is
# on a frame). The emulator hears an utterance in each loud stretch and says its script line.
SPEECH_1 = (500, 1500)  # "hello I would like to pay my bill"
CARD_SPOKEN = (2500, 4000)  # a tone burst standing for the digits read out
TONE_1 = (5000, 5080, "4")  # keyed, in-band only
TONE_2 = (6000, 6100, "1")  # keyed, in-band only
EVENT_AT = 7500  # keyed, reported as a stream event only (the provider kept the tone out)
PAUSE = (8000, 9000)  # paused by marks: loud audio here must never be recorded
SPEECH_2 = (9500, 10500)  # "thank you goodbye"
SCRIPT = ["hello I would like to pay my bill", "my card number is 4111 1111 1111 1111",
          "uh huh", "okay", "thank you goodbye"]
MARGIN_MS = 250  # bridge.artifacts.recording.REDACTION_MARGIN_MS
EVENT_WINDOW = (-1000, 500)  # DTMF_EVENT_BEFORE_MS, DTMF_EVENT_AFTER_MS
TONE_REACH_MS = 26 + 100  # one detection block, then DTMF_TONE_MARGIN_MS


def samples(ms: int) -> int:
    return ms * RATE // 1000


def voice(rng: np.random.Generator, ms: int, hz: float) -> np.ndarray:
    """A loud, speech-like stretch: a tone with noise over it (never a DTMF pair)."""
    n = np.arange(samples(ms))
    wave_ = 6000 * np.sin(2 * np.pi * hz * n / RATE) + rng.normal(0, 1500, len(n))
    return np.asarray(wave_.clip(-32000, 32000), dtype=np.int16)


def caller_audio() -> np.ndarray:
    rng = np.random.default_rng(17)
    # Between utterances, line noise too quiet for the emulator to call it speech.
    audio = rng.normal(0, 60, samples(CALL_MS)).astype(np.int16)
    for (start, end), hz in ((SPEECH_1, 400), (CARD_SPOKEN, 600), (PAUSE, 450),
                             (SPEECH_2, 500)):
        audio[samples(start):samples(end)] = voice(rng, end - start, hz)
    for start, end, digit in (TONE_1, TONE_2):
        audio[samples(start):samples(end)] = dtmf_tone(digit, end - start)
    return audio


def agent_audio() -> np.ndarray:
    return np.random.default_rng(5).normal(0, 60, samples(CALL_MS)).astype(np.int16)


def ulaw_of(audio: np.ndarray) -> bytes:
    return g711.encode_ulaw(audio.astype("<i2").tobytes())


def decoded(data: bytes) -> np.ndarray:
    return np.frombuffer(g711.decode_ulaw(data), dtype="<i2").astype(np.int16)


def read_stereo(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)


def spans_mask(spans: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(samples(CALL_MS), dtype=bool)
    for start, end in spans:
        mask[samples(max(start, 0)):samples(min(end, CALL_MS))] = True
    return mask


def recording_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"CALLBRIDGE_ARTIFACTS_ENABLED": "true",
            "CALLBRIDGE_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
            "CALLBRIDGE_ARTIFACTS_RECORDING": "true",
            "CALLBRIDGE_ARTIFACTS_SPOOL_DIR": str(tmp_path / "spool"),
            "CALLBRIDGE_TELNYX_TRANSCRIPTION_ENGINE": "Deepgram",
            # 20 ms chunks, as the frames come: a pause mark cuts exactly at its frame.
            "CALLBRIDGE_AUDIO_CHUNK_MS": "20",
            # Streamed faster than real time: the engine must still hear every chunk.
            "CALLBRIDGE_AUDIO_MAX_BUFFER_MS": "60000", **extra}


async def stored_recording(bridge: BridgeProcess, tmp_path: Path, call_id: str) -> Path:
    """The call's recording as the artifact store keeps it (one folder per call)."""
    stored = await bridge.wait_for_log("call artifacts stored", within_s=30)
    assert stored["call_id"] == call_id
    [name] = [n for n in stored["artifacts"] if n.startswith("recording.")]
    return tmp_path / "artifacts" / call_id / str(name)


def call_messages(spec: CallSpec) -> list[tuple[float, str]]:
    """The call's messages with the pause marks and the key-press event at their times."""
    messages = build_call(spec)

    def at(ms: int) -> int:  # before the first frame of either leg at ``ms``
        return next(n for n, (_, text) in enumerate(messages)
                    if '"media"' in text and json.loads(text)["media"]["timestamp"] == str(ms))

    def message(event: str, body: dict[str, str]) -> str:
        return json.dumps({"event": event, "streamSid": spec.stream_id, "sequenceNumber": "1",
                           event: body})

    for ms, text in sorted([
            (PAUSE[0], message("mark", {"name": "callbridge:pause"})),
            (PAUSE[1], message("mark", {"name": "callbridge:resume"})),
            (EVENT_AT, message("dtmf", {"track": "inbound_track", "digit": "5"}))],
            reverse=True):
        messages.insert(at(ms), (ms / 1000, text))
    return messages


async def test_a_card_spoken_and_keyed_is_silence_in_the_recording_and_the_rest_is_exact(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = SCRIPT
    stt.with_times = True  # segment times, no word times: whole utterances are silenced
    bridge = await bridge_factory(**recording_env(tmp_path))
    caller, agent = caller_audio(), agent_audio()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw_of(caller),
                                                   Track.OUTBOUND: ulaw_of(agent)},
                    call_id="CA-recorded")
    result = await stream_call(bridge.url("/streams/twilio"), call_messages(spec), speed=0)
    assert result.close_code == 1000
    rendered = await bridge.wait_for_log("recording rendered", within_s=30)
    events = await receiver.wait_for(receiver.ended("CA-recorded"))

    # The engine heard the card, and the redactor took it out of the transcript.
    finals = [e.data for e in events if e.type == "transcript.final"]
    assert [f["text"] for f in finals] == [
        "hello I would like to pay my bill", "my card number is [credit_card]", "uh huh", "okay",
        "thank you goodbye"]
    card = finals[1]
    assert (card["start_ms"], card["end_ms"]) == CARD_SPOKEN
    assert rendered["tones"] == 2 and rendered["format"] == "wav"

    path = await stored_recording(bridge, tmp_path, "CA-recorded")
    assert path.name == "recording.wav" and path.stat().st_mode & 0o777 == 0o600  # private
    assert list((tmp_path / "spool").iterdir()) == []  # the spool files are gone
    stereo = read_stereo(path)
    assert len(stereo) == samples(CALL_MS)
    left, right = stereo[:, 0], stereo[:, 1]

    # 1. No key press can be heard anywhere, on either channel.
    detector = DtmfDetector(RATE)
    assert detector.find(decoded(ulaw_of(caller))) != []  # the input had them
    assert detector.find(left.copy()) == [] and detector.find(right.copy()) == []

    # 2. What must be silence is: the spoken card (the whole utterance: the engine gave no
    # word times), each tone, the reported press (both channels), the pause (both legs).
    card_span = (CARD_SPOKEN[0] - MARGIN_MS, CARD_SPOKEN[1] + MARGIN_MS)
    tones = [(start, end) for start, end, _ in (TONE_1, TONE_2)]
    event = (EVENT_AT + EVENT_WINDOW[0], EVENT_AT + EVENT_WINDOW[1])
    must_left = spans_mask([card_span, *tones, event, PAUSE])
    must_right = spans_mask([*tones, event, PAUSE])
    assert not left[must_left].any() and not right[must_right].any()

    # 3. Everything else is the input, sample for sample: only a tone's detector reach
    # around it may be silenced too.
    reach = [(start - TONE_REACH_MS, end + TONE_REACH_MS) for start, end in tones]
    may_left = must_left | spans_mask(reach)
    may_right = must_right | spans_mask(reach)
    expected_left, expected_right = decoded(ulaw_of(caller)), decoded(ulaw_of(agent))
    assert np.array_equal(left[~may_left], expected_left[~may_left])
    assert np.array_equal(right[~may_right], expected_right[~may_right])
    assert np.array_equal(left[SPEECH_2[0] * 8:SPEECH_2[1] * 8],
                          expected_left[SPEECH_2[0] * 8:SPEECH_2[1] * 8])
    # And the silenced stretches are only those: the log's count matches the masks.
    assert rendered["silenced_ms"]["inbound"] <= int(may_left.sum()) // 8 + 1


async def test_recording_is_off_by_default_and_stale_spools_go_at_start(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    stale = spool / "CA-crashed-0123.inbound.spool"
    stale.write_bytes(b"\xff" * 800)
    os.chmod(stale, 0o600)
    off = await bridge_factory(CALLBRIDGE_ARTIFACTS_SPOOL_DIR=str(spool))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw_of(agent_audio())},
                    call_id="CA-not-recorded")
    assert (await stream_call(off.url("/streams/twilio"), build_call(spec), speed=0)
            ).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-not-recorded"))
    assert off.log_events("recording rendered") == []
    # Removed at start, recording on or not (tests/e2e/test_recording_gaps.py).
    removed = await off.wait_for_log("removed spool files a crash left behind")
    assert removed["files"] == 1 and not stale.exists()


async def test_flac_recordings_hold_the_same_audio(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    av = pytest.importorskip("av", reason="FLAC needs the codecs extra")
    bridge = await bridge_factory(**recording_env(
        tmp_path, CALLBRIDGE_ARTIFACTS_RECORDING_FORMAT="flac"))
    agent = agent_audio()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.OUTBOUND: ulaw_of(agent)},
                    call_id="CA-flac")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=0)
    rendered = await bridge.wait_for_log("recording rendered", within_s=30)
    assert rendered["format"] == "flac"
    with av.open(str(await stored_recording(bridge, tmp_path, "CA-flac"))) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
        assert container.streams.audio[0].sample_rate == RATE
    stereo = np.concatenate([f.reshape(-1, 2) for f in frames])
    assert np.array_equal(stereo[:, 1], decoded(ulaw_of(agent)))  # lossless, on the right
    assert not stereo[:, 0].any()  # no caller leg: silence on the left


async def test_with_word_times_only_the_words_of_the_number_are_silenced(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    # AssemblyAI gives word times (the emulator spreads a turn's words evenly over it), and
    # takes audio no faster than real time: this call lasts its 4.5 s.
    text = "my card is 4111 1111 1111 1111 thanks"
    async with AssemblyAIEmulator(script=[text]) as assemblyai:
        bridge = await bridge_factory(**recording_env(
            tmp_path, CALLBRIDGE_STT_ENGINE="assemblyai", ASSEMBLYAI_API_KEY="test-assemblyai-key",
            CALLBRIDGE_ASSEMBLYAI_URL=assemblyai.url))
        rng = np.random.default_rng(23)
        caller = rng.normal(0, 60, samples(4500)).astype(np.int16)
        spoken = (500, 3700)
        caller[samples(spoken[0]):samples(spoken[1])] = voice(rng, spoken[1] - spoken[0], 600)
        spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw_of(caller)},
                        call_id="CA-words")
        await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=0)
        events = await receiver.wait_for(receiver.ended("CA-words"))
    [final] = [e.data for e in events if e.type == "transcript.final"]
    assert final["text"] == "My card is [credit_card] thanks."
    assert (final["start_ms"], final["end_ms"]) == spoken
    # Eight words of 400 ms each: the four groups of digits are words 4-7 (1700-3300 ms).
    silenced = (1700 - MARGIN_MS, 3300 + MARGIN_MS)
    left = read_stereo(await stored_recording(bridge, tmp_path, "CA-words"))[:, 0]
    expected = decoded(ulaw_of(caller))
    must = spans_mask([silenced])[:len(left)]
    assert not left[must].any()
    assert np.array_equal(left[~must], expected[~must])  # "my card is" and the rest, exact


async def test_a_leg_the_engine_never_heard_is_silent_in_the_recording(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    # The engine refuses the key: nothing checked the caller's words for card numbers.
    bridge = await bridge_factory(**recording_env(tmp_path, TELNYX_API_KEY="wrong-key"))
    caller = caller_audio()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw_of(caller)},
                    call_id="CA-unheard")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=0)
    rendered = await bridge.wait_for_log("recording rendered", within_s=30)
    events = await receiver.wait_for(receiver.ended("CA-unheard"))
    assert any(e.type == "transcription.error" for e in events)
    warning = bridge.log_events("recording: legs not all transcribed are silent")
    assert [line["legs"] for line in warning] == [["inbound"]]
    stereo = read_stereo(await stored_recording(bridge, tmp_path, "CA-unheard"))
    assert len(stereo) == samples(CALL_MS) and not stereo.any()
    assert rendered["silenced_ms"] == {"inbound": CALL_MS}
