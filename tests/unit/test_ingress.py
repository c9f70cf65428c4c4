"""Twilio and Telnyx parsers, driven with literal JSON: no event loop, no sockets."""

import base64
import json

import pytest

from bridge.errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    InvalidNumber,
    InvalidPayload,
    PeerError,
    ProtocolViolation,
    UnsupportedData,
)
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    Dtmf,
    Mark,
    ProviderErrorReported,
    StreamStarted,
    StreamStopped,
    Track,
)
from bridge.ingress import DetectingDialect, make_dialect
from bridge.ingress.telnyx import TelnyxDialect
from bridge.ingress.twilio import TwilioDialect

AUDIO = bytes(range(160))
B64 = base64.b64encode(AUDIO).decode()

TWILIO_CONNECTED = '{"event":"connected","protocol":"Call","version":"1.0.0"}'
TWILIO_START = json.dumps({
    "event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
    "start": {"accountSid": "AC1", "streamSid": "MZ1", "callSid": "CA1",
              "tracks": ["inbound", "outbound"], "customParameters": {"FirstName": "Jane"},
              "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})
TELNYX_START = json.dumps({
    "event": "start", "sequence_number": "1", "stream_id": "32DE",
    "start": {"call_control_id": "v2:T02", "call_session_id": "ff55",
              "media_format": {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}}})


def twilio_media(track: str = "inbound", chunk: object = "2", ts: object = "5",
                 payload: str = B64) -> str:
    return json.dumps({"event": "media", "sequenceNumber": "4", "streamSid": "MZ1",
                       "media": {"track": track, "chunk": chunk, "timestamp": ts,
                                 "payload": payload}})


def started_twilio() -> TwilioDialect:
    dialect = TwilioDialect()
    dialect.receive_text(TWILIO_CONNECTED)
    dialect.receive_text(TWILIO_START)
    dialect.events()
    return dialect


def test_twilio_stream_produces_the_common_events() -> None:
    dialect = TwilioDialect()
    for text in (TWILIO_CONNECTED, TWILIO_START, twilio_media(),
                 twilio_media("outbound", chunk="3", ts="25"),
                 '{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5",'
                 '"dtmf":{"track":"inbound_track","digit":"1"}}',
                 '{"event":"mark","sequenceNumber":"6","streamSid":"MZ1","mark":{"name":"m"}}',
                 '{"event":"stop","sequenceNumber":"7","streamSid":"MZ1",'
                 '"stop":{"accountSid":"AC1","callSid":"CA1"}}'):
        dialect.receive_text(text)
    assert dialect.events() == [
        StreamStarted("twilio", "CA1", "MZ1", AudioEncoding.PCMU, 8000,
                      (Track.INBOUND, Track.OUTBOUND), {"FirstName": "Jane"}),
        AudioFrame(Track.INBOUND, AUDIO, 5, 2),
        AudioFrame(Track.OUTBOUND, AUDIO, 25, 3),
        Dtmf(Track.INBOUND, "1"),
        Mark("m"),
        StreamStopped(),
    ]
    assert dialect.stopped
    assert dialect.events() == []


@pytest.mark.parametrize(("chunk", "ts"), [("7", "140"), (7, 140), (7.0, 140.0)])
def test_counters_may_be_strings_or_numbers(chunk: object, ts: object) -> None:
    dialect = started_twilio()
    dialect.receive_text(twilio_media(chunk=chunk, ts=ts))
    assert dialect.events() == [AudioFrame(Track.INBOUND, AUDIO, 140, 7)]


@pytest.mark.parametrize("counter", ["\u00b2", "-1", "1e3", 4.5, True, "seven", "1" * 5000,
                                     "1" + "0" * 400, 2**53, "\uff11\uff12", "", " "])
def test_a_counter_that_is_not_a_bounded_whole_number_is_invalid(counter: object) -> None:
    dialect = started_twilio()
    with pytest.raises(InvalidNumber) as caught:  # never an undocumented error ("²" is a digit)
        dialect.receive_text(twilio_media(chunk=counter))
    assert caught.value.close_code == CLOSE_INVALID_PAYLOAD
    assert len(str(caught.value)) < 80  # names the field, never echoes the value


def test_telnyx_stream_reads_top_level_stream_id_and_announced_codec() -> None:
    dialect = TelnyxDialect()
    dialect.receive_text('{"event":"connected","version":"1.0.0"}')
    dialect.receive_text(TELNYX_START)
    dialect.receive_text(json.dumps({"event": "media", "sequence_number": "4", "stream_id": "32DE",
                                     "media": {"track": "outbound", "chunk": "2",
                                               "timestamp": "5", "payload": B64}}))
    dialect.receive_text('{"event":"dtmf","stream_id":"32DE","sequence_number":"5",'
                         '"occurred_at":"2025-06-05T08:54:19.698408Z","dtmf":{"digit":"1"}}')
    dialect.receive_text('{"event":"stop","sequence_number":"6","stream_id":"32DE",'
                         '"stop":{"call_control_id":"v2:T02"}}')
    assert dialect.events() == [
        StreamStarted("telnyx", "v2:T02", "32DE", AudioEncoding.PCMA, 8000, (Track.INBOUND,), {}),
        AudioFrame(Track.OUTBOUND, AUDIO, 5, 2),
        Dtmf(Track.INBOUND, "1"),
        StreamStopped(),
    ]


@pytest.mark.parametrize(("spelling", "encoding"), [
    ("PCMU", AudioEncoding.PCMU), ("audio/x-mulaw", AudioEncoding.PCMU),
    ("PCMA", AudioEncoding.PCMA), ("audio/x-alaw", AudioEncoding.PCMA)])
def test_telnyx_codec_in_either_spelling(spelling: str, encoding: AudioEncoding) -> None:
    dialect = TelnyxDialect()
    dialect.receive_text(TELNYX_START.replace('"PCMA"', json.dumps(spelling)))
    [started] = dialect.events()
    assert isinstance(started, StreamStarted) and started.encoding is encoding


@pytest.mark.parametrize("frame", [
    # current guide: "payload" with a numeric code
    '{"event":"error","payload":{"code":100003,"title":"malformed_frame","detail":"bad"},'
    '"stream_id":"32DE"}',
    # older SDK docs: "error" with a string code
    '{"stream_id":"32DE","event":"error","sequence_number":"6",'
    '"error":{"title":"malformed_frame","code":"100003","detail":"bad"}}',
])
def test_telnyx_error_frame_in_both_documented_shapes(frame: str) -> None:
    dialect = TelnyxDialect()
    dialect.receive_text(TELNYX_START)
    dialect.events()
    dialect.receive_text(frame)
    assert dialect.events() == [ProviderErrorReported("100003", "malformed_frame", "bad")]


def test_unsupported_codec_is_refused_with_1003() -> None:
    dialect = TelnyxDialect()
    with pytest.raises(UnsupportedData, match="AMR-WB") as caught:
        dialect.receive_text(TELNYX_START.replace('"PCMA"', '"AMR-WB"'))
    assert caught.value.close_code == CLOSE_UNSUPPORTED_DATA


@pytest.mark.parametrize(("text", "error", "close_code"), [
    ("{not json", ProtocolViolation, CLOSE_PROTOCOL_ERROR),
    ("[1, 2]", ProtocolViolation, CLOSE_PROTOCOL_ERROR),
    ('{"event":"hangup"}', ProtocolViolation, CLOSE_PROTOCOL_ERROR),
    (twilio_media(payload="not base64!!"), InvalidPayload, CLOSE_INVALID_PAYLOAD),
    (twilio_media(track="mixed"), UnsupportedData, CLOSE_UNSUPPORTED_DATA),
    (twilio_media(ts="soon"), InvalidNumber, CLOSE_INVALID_PAYLOAD),
    ('{"event":"media","media":"x"}', ProtocolViolation, CLOSE_PROTOCOL_ERROR),
    (TWILIO_START, ProtocolViolation, CLOSE_PROTOCOL_ERROR),  # a second start
])
def test_bad_input_after_start_raises_a_peer_error_with_its_close_code(
        text: str, error: type[PeerError], close_code: int) -> None:
    dialect = started_twilio()
    with pytest.raises(error) as caught:
        dialect.receive_text(text)
    assert caught.value.close_code == close_code


def test_media_before_start_is_a_protocol_violation() -> None:
    dialect = TwilioDialect()
    dialect.receive_text(TWILIO_CONNECTED)
    with pytest.raises(ProtocolViolation, match="not allowed while awaiting_start"):
        dialect.receive_text(twilio_media())


def test_media_after_stop_is_a_protocol_violation() -> None:
    # Media flows only while streaming: after frames were taken, a stop still closes the way.
    dialect = started_twilio()
    dialect.receive_text(twilio_media())
    dialect.receive_text('{"event":"stop","sequenceNumber":"7","streamSid":"MZ1",'
                         '"stop":{"accountSid":"AC1","callSid":"CA1"}}')
    with pytest.raises(ProtocolViolation, match="not allowed while stopped"):
        dialect.receive_text(twilio_media())
    assert [type(event) for event in dialect.events()] == [AudioFrame, StreamStopped]


def test_binary_frame_on_a_json_dialect_is_unsupported_data() -> None:
    with pytest.raises(UnsupportedData) as caught:
        started_twilio().receive_bytes(b"\xff" * 160)
    assert caught.value.close_code == CLOSE_UNSUPPORTED_DATA


def test_g711_at_another_rate_is_refused() -> None:
    with pytest.raises(UnsupportedData, match="16000 Hz"):
        TwilioDialect().receive_text(TWILIO_START.replace('"sampleRate": 8000',
                                                          '"sampleRate": 16000'))


def test_error_messages_do_not_echo_payloads() -> None:
    dialect = started_twilio()
    with pytest.raises(InvalidPayload) as caught:
        dialect.receive_text(twilio_media(payload="c2VjcmV0!"))
    assert "c2VjcmV0" not in str(caught.value)


@pytest.mark.parametrize(("messages", "name"), [
    ([TWILIO_CONNECTED, TWILIO_START], "twilio"),
    (['{"event":"connected","version":"1.0.0"}', TELNYX_START], "telnyx"),
    ([TELNYX_START], "telnyx"),
])
def test_detection_recognises_the_provider_and_replays_held_messages(
        messages: list[str], name: str) -> None:
    dialect = make_dialect(None)
    assert isinstance(dialect, DetectingDialect)
    for text in messages:
        dialect.receive_text(text)
    assert dialect.name == name
    [started] = dialect.events()
    assert isinstance(started, StreamStarted) and started.provider == name


def test_detection_gives_up_on_an_unrecognisable_peer() -> None:
    dialect = DetectingDialect()
    dialect.receive_text('{"event":"connected"}')
    dialect.receive_text('{"event":"hello"}')
    with pytest.raises(ProtocolViolation, match="cannot recognise"):
        dialect.receive_text('{"event":"hello"}')


def test_detection_refuses_binary_before_the_dialect_is_known() -> None:
    with pytest.raises(UnsupportedData):
        DetectingDialect().receive_bytes(b"\x00")
