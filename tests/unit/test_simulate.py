"""The simulate client's pure parts: loading audio and building a provider's messages."""

import json
import wave
from pathlib import Path

import pytest

from bridge.codecs import g711
from bridge.events import AudioEncoding, Track
from bridge.ingress.telnyx import TelnyxDialect
from bridge.ingress.twilio import TwilioDialect
from bridge.simulate import CallSpec, build_call, health_url, load_audio, stream_url
from tests.support.audio import pcm_tone


def write_wav(path: Path, pcm: bytes, rate: int, channels: int = 1) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def test_a_wav_at_any_rate_becomes_8_khz_g711(tmp_path: Path) -> None:
    samples = pcm_tone(440, 500)  # 4000 samples...
    path = tmp_path / "a.wav"
    # ... written as 16 kHz stereo: 250 ms of audio
    stereo = b"".join(samples[i:i + 2] * 2 for i in range(0, len(samples), 2))
    write_wav(path, stereo, 16000, channels=2)
    audio = load_audio(path, AudioEncoding.PCMA)
    assert abs(len(audio) - 2000) <= 2  # 250 ms of 16 kHz frames -> 2000 samples at 8 kHz


def test_raw_g711_is_taken_as_is_or_transcoded_by_its_extension(tmp_path: Path) -> None:
    ulaw = g711.encode(AudioEncoding.PCMU, pcm_tone(300, 100))
    (tmp_path / "x.ulaw").write_bytes(ulaw)
    (tmp_path / "x.raw").write_bytes(ulaw)
    assert load_audio(tmp_path / "x.ulaw", AudioEncoding.PCMU) == ulaw
    assert load_audio(tmp_path / "x.raw", AudioEncoding.PCMU) == ulaw
    alaw = load_audio(tmp_path / "x.ulaw", AudioEncoding.PCMA)
    assert alaw == g711.encode(AudioEncoding.PCMA, g711.decode(AudioEncoding.PCMU, ulaw))
    with pytest.raises(ValueError, match=r"expected \.wav"):
        load_audio(tmp_path / "x.mp3", AudioEncoding.PCMU)


@pytest.mark.parametrize(("dialect", "parser"), [("twilio", TwilioDialect),
                                                 ("telnyx", TelnyxDialect)])
def test_built_messages_parse_back_into_the_same_audio(dialect: str, parser: type) -> None:
    inbound, outbound = bytes(range(256)) * 3, bytes(reversed(range(256))) * 2
    encoding = AudioEncoding.PCMU
    spec = CallSpec(dialect, encoding, {Track.INBOUND: inbound, Track.OUTBOUND: outbound},
                    call_id="C1", stream_id="S1", custom_parameters={"k": "v"},
                    first_timestamp_ms=102)
    messages = build_call(spec)
    times = [at for at, _ in messages]
    assert times == sorted(times)
    assert json.loads(messages[-1][1])["event"] == "stop"
    dialect_parser = parser()
    for _, text in messages:
        dialect_parser.receive_text(text)
    events = dialect_parser.events()
    started = events[0]
    assert (started.call_id, started.stream_id, dict(started.custom_parameters)) == (
        "C1", "S1", {"k": "v"})
    frames = events[1:-1]
    assert b"".join(f.payload for f in frames if f.track is Track.INBOUND) == inbound
    assert b"".join(f.payload for f in frames if f.track is Track.OUTBOUND) == outbound
    assert frames[0].timestamp_ms == 102


def test_stream_url_adds_the_dialect_path_only_to_a_bare_address() -> None:
    assert stream_url("ws://127.0.0.1:8080", "telnyx") == "ws://127.0.0.1:8080/streams/telnyx"
    assert stream_url("wss://h.example/streams", "twilio") == "wss://h.example/streams"
    with pytest.raises(ValueError, match="ws://"):
        stream_url("127.0.0.1:8080", "twilio")


def test_the_health_check_goes_to_the_bridge_behind_the_media_url() -> None:
    assert health_url("ws://127.0.0.1:8080") == "http://127.0.0.1:8080/healthz"
    assert health_url("wss://h.example/streams/twilio") == "https://h.example/healthz"
    assert health_url("ws://[::1]:8080/streams") == "http://[::1]:8080/healthz"
    with pytest.raises(ValueError, match="ws://"):
        health_url("http://127.0.0.1:8080")
