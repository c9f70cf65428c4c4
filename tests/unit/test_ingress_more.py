"""The further dialects' parsers, from literal messages: no event loop, no sockets."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.codecs.pcm import split_stereo, swap_l16
from bridge.errors import PeerError, ProtocolViolation, UnsupportedData
from bridge.events import AudioEncoding, AudioFrame, Dtmf, StreamStarted, StreamStopped, Track
from bridge.ingress import DetectingDialect, make_dialect, recognise
from bridge.ingress.bandwidth import BandwidthDialect
from bridge.ingress.binary import AudioForkDialect, JambonzDialect, VonageDialect
from bridge.ingress.exotel import ExotelDialect
from bridge.ingress.plivo import PlivoDialect, parse_extra_headers
from bridge.ingress.signalwire import SignalWireDialect
from bridge.ingress.telnyx import TelnyxDialect

PCM = bytes(range(1, 65))  # 32 little-endian samples
B64 = base64.b64encode(PCM).decode()

PLIVO_START = json.dumps({
    "event": "start", "sequenceNumber": 1,
    "start": {"callId": "c-1", "streamId": "s-1", "accountId": "MA", "tracks": ["inbound"],
              "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}},
    "extra_headers": "userId=12345;sessionId=abc-xyz"})


def test_plivo_start_media_and_acknowledgements_in_both_spellings() -> None:
    dialect = PlivoDialect()
    dialect.receive_text(PLIVO_START)
    dialect.receive_text(json.dumps({
        "event": "media", "sequenceNumber": 2, "streamId": "s-1",
        "media": {"track": "inbound", "timestamp": "1705312200000", "chunk": 41,
                  "payload": B64}}))
    dialect.receive_text('{"event":"playedStream","streamId":"s-1","name":"x"}')
    dialect.receive_text('{"event":"played","streamId":"s-1","name":"x"}')
    dialect.receive_text('{"event":"clearedAudio","streamId":"s-1"}')
    dialect.receive_text('{"event":"dtmf","streamId":"s-1","dtmf":{"digit":"5"}}')
    assert dialect.events() == [
        StreamStarted("plivo", "c-1", "s-1", AudioEncoding.L16, 16000, (Track.INBOUND,),
                      {"userId": "12345", "sessionId": "abc-xyz"}),
        AudioFrame(Track.INBOUND, PCM, 1705312200000, 41),
        Dtmf(Track.INBOUND, "5"),
    ]


@pytest.mark.parametrize(("value", "expected"), [
    ("a=1;b=2", {"a": "1", "b": "2"}), ("a=1,b=2", {"a": "1", "b": "2"}),
    ({"a": 1}, {"a": "1"}), ("garbage", {}), (None, {})])
def test_plivo_extra_headers(value: object, expected: dict[str, str]) -> None:
    assert parse_extra_headers(value) == expected


@pytest.mark.parametrize(("encoding", "rate"), [("L16@16000h", 16000), ("L16@24000h", 24000),
                                                ("audio/x-l16", 8000)])
def test_signalwire_codec_spellings_and_network_byte_order(encoding: str, rate: int) -> None:
    dialect = SignalWireDialect()
    media_format = {"encoding": encoding}
    if "@" not in encoding:
        media_format["sampleRate"] = rate  # type: ignore[assignment]
    dialect.receive_text(json.dumps({"event": "start", "streamSid": "MZ", "start": {
        "streamSid": "MZ", "callSid": "CA", "mediaFormat": media_format}}))
    dialect.receive_text(json.dumps({"event": "media", "streamSid": "MZ", "media": {
        "track": "inbound", "chunk": "1", "timestamp": "0",
        "payload": base64.b64encode(swap_l16(PCM)).decode()}}))
    started, frame = dialect.events()
    assert isinstance(started, StreamStarted)
    assert (started.encoding, started.sample_rate) == (AudioEncoding.L16, rate)
    assert isinstance(frame, AudioFrame) and frame.payload == PCM


def test_telnyx_l16_arrives_big_endian_and_is_swapped() -> None:
    dialect = TelnyxDialect()
    dialect.receive_text(json.dumps({"event": "start", "stream_id": "S", "start": {
        "call_control_id": "v2:x", "media_format": {"encoding": "L16", "sample_rate": 16000}}}))
    dialect.receive_text(json.dumps({"event": "media", "stream_id": "S", "media": {
        "track": "inbound", "chunk": "1", "timestamp": "0",
        "payload": base64.b64encode(swap_l16(PCM)).decode()}}))
    _, frame = dialect.events()
    assert isinstance(frame, AudioFrame) and frame.payload == PCM


@pytest.mark.parametrize("codec", ["AMR-WB", "G729"])
def test_codecs_not_decoded_say_what_to_change(codec: str) -> None:
    with pytest.raises(UnsupportedData, match="stream_codec"):
        TelnyxDialect().receive_text(json.dumps({"event": "start", "stream_id": "S", "start": {
            "call_control_id": "v2:x", "media_format": {"encoding": codec,
                                                        "sample_rate": 16000}}}))


def test_exotel_snake_case_strings_and_no_track() -> None:
    dialect = ExotelDialect()
    dialect.receive_text('{"event":"connected"}')
    dialect.receive_text(json.dumps({"event": "start", "sequence_number": "1",
                                     "stream_sid": "ex", "start": {
        "stream_sid": "ex", "call_sid": "call", "account_sid": "acc",
        "custom_parameters": {"a": "b"},
        "media_format": {"encoding": "audio/x-raw", "sample_rate": "24000", "bit_rate": "16"}}}))
    dialect.receive_text(json.dumps({"event": "media", "sequence_number": "3", "stream_sid": "ex",
                                     "media": {"chunk": "2", "timestamp": "200",
                                               "payload": B64}}))
    dialect.receive_text('{"event":"dtmf","stream_sid":"ex","dtmf":{"digit":"5","duration":"100"}}')
    dialect.receive_text('{"event":"stop","sequence_number":"9","stream_sid":"ex","stop":{}}')
    assert dialect.events() == [
        StreamStarted("exotel", "call", "ex", AudioEncoding.L16, 24000, (Track.INBOUND,),
                      {"a": "b"}),
        AudioFrame(Track.INBOUND, PCM, 200, 2), Dtmf(Track.INBOUND, "5"), StreamStopped()]


def test_bandwidth_event_type_and_named_tracks() -> None:
    dialect = BandwidthDialect()
    dialect.receive_text(json.dumps({"eventType": "start", "metadata": {
        "accountId": "99", "callId": "c-bw", "streamId": "s-bw", "tracks": [
            {"name": "inbound", "mediaFormat": {"encoding": "audio/PCMU", "sampleRate": 8000}},
            {"name": "outbound", "mediaFormat": {"encoding": "audio/PCMU", "sampleRate": 8000}}]},
        "streamParams": {"k": "v"}}))
    dialect.receive_text('{"eventType":"media","track":"outbound","payload":"' + B64 + '"}')
    dialect.receive_text('{"eventType":"stop","metadata":{}}')
    assert dialect.events() == [
        StreamStarted("bandwidth", "c-bw", "s-bw", AudioEncoding.PCMU, 8000,
                      (Track.INBOUND, Track.OUTBOUND), {"k": "v"}),
        AudioFrame(Track.OUTBOUND, PCM, None, None), StreamStopped()]
    with pytest.raises(ProtocolViolation):
        BandwidthDialect().receive_text('{"event":"start"}')


def test_vonage_mixed_leg_headers_and_dtmf() -> None:
    dialect = VonageDialect(connection_id="conn")
    dialect.receive_text(json.dumps({"event": "websocket:connected",
                                     "content-type": "audio/l16;rate=16000", "uuid": "u-1",
                                     "lang": "en"}))
    dialect.receive_bytes(PCM)
    dialect.receive_text('{"event":"websocket:dtmf","digit":"5","duration":260}')
    assert dialect.events() == [
        StreamStarted("vonage", "u-1", "conn", AudioEncoding.L16, 16000, (Track.MIXED,),
                      {"uuid": "u-1", "lang": "en"}),
        AudioFrame(Track.MIXED, PCM, None, None), Dtmf(Track.MIXED, "5")]


def test_stereo_frames_split_into_caller_and_callee() -> None:
    dialect = JambonzDialect(connection_id="conn")
    dialect.receive_text('{"callSid":"jb","sampleRate":8000,"mixType":"stereo"}')
    dialect.receive_bytes(PCM)
    _, first, second = dialect.events()
    left, right = split_stereo(PCM)
    assert first == AudioFrame(Track.INBOUND, left, None, None)
    assert second == AudioFrame(Track.OUTBOUND, right, None, None)


def test_audiofork_reads_mode_from_metadata_or_the_url() -> None:
    by_url = AudioForkDialect({"mix": "stereo", "rate": "16k"}, "c")
    by_url.receive_text("any metadata at all")
    [started] = by_url.events()
    assert isinstance(started, StreamStarted)
    assert (started.tracks, started.sample_rate) == ((Track.INBOUND, Track.OUTBOUND), 16000)
    assert started.custom_parameters == {"metadata": "any metadata at all"}
    by_json = AudioForkDialect({}, "c")
    by_json.receive_text('{"mixType":"mixed","sampleRate":8000,"callId":"fs"}')
    [started] = by_json.events()
    assert isinstance(started, StreamStarted) and started.tracks == (Track.MIXED,)


@pytest.mark.parametrize(("dialect", "text"), [
    (VonageDialect(), '{"event":"hello"}'),
    (VonageDialect(), '{"event":"websocket:connected","content-type":"audio/pcmu"}'),
    (JambonzDialect(), "not json"),
    (JambonzDialect(), '{"sampleRate":44100}'),
    (JambonzDialect(), '{"mixType":"quad"}'),
])
def test_binary_dialects_refuse_bad_metadata(dialect: VonageDialect | JambonzDialect,
                                             text: str) -> None:
    with pytest.raises(PeerError):
        dialect.receive_text(text)


def test_vonage_refuses_audio_before_its_metadata() -> None:
    with pytest.raises(PeerError):
        VonageDialect().receive_bytes(b"\x00\x00")


def test_jambonz_refuses_stereo_audio_that_is_not_whole_samples() -> None:
    dialect = JambonzDialect()
    dialect.receive_text('{"mixType":"stereo"}')  # good metadata: accepted
    with pytest.raises(PeerError):
        dialect.receive_bytes(b"\x00\x00\x00")


@pytest.mark.parametrize(("message", "name"), [
    ({"eventType": "start"}, "bandwidth"),
    (json.loads(PLIVO_START), "plivo"),
    ({"event": "start", "stream_sid": "x"}, "exotel"),
    ({"event": "start", "streamSid": "x"}, "twilio"),
    ({"event": "start", "stream_id": "x"}, "telnyx"),
])
def test_recognition_by_key_spelling(message: dict[str, object], name: str) -> None:
    dialect = recognise(message)
    assert dialect is not None and dialect.name == name


def test_vonage_is_recognised_on_the_common_endpoint() -> None:
    dialect = make_dialect(None, connection_id="c")
    assert isinstance(dialect, DetectingDialect)
    dialect.receive_text('{"event":"websocket:connected","content-type":"audio/l16;rate=8000"}')
    dialect.receive_bytes(PCM)
    started, frame = dialect.events()
    assert isinstance(started, StreamStarted) and started.provider == "vonage"
    assert isinstance(frame, AudioFrame)
