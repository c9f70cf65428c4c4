"""Hostile input to the parsers: every shape ends as a documented ``PeerError`` with its close
code, never as a RecursionError, ValueError, TypeError or OverflowError (an internal error)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_UNSUPPORTED_DATA,
    InvalidNumber,
    PeerError,
)
from bridge.events import ProviderErrorReported, StreamStarted
from bridge.ingress import make_dialect
from bridge.ingress.audiohook import AudioHookDialect
from bridge.ingress.auth import check_audiohook
from bridge.numbers import read_count, read_float, read_int

SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_json(depth: int) -> str:
    """JSON nested ``depth`` objects deep (built as text: encoders stop far earlier)."""
    return '{"a":' * depth + '"x"' + "}" * depth


def twilio_start(**start: Any) -> str:
    body = {"streamSid": "MZ1", "callSid": "CA1", "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}
    body.update(start)
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1",
                       "start": body})


def refused(name: str | None, *frames: str | bytes, query: dict[str, str] | None = None
            ) -> PeerError:
    dialect = make_dialect(name, query)

    def feed(frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            dialect.receive_bytes(frame)
        else:
            dialect.receive_text(frame)

    for frame in frames[:-1]:
        feed(frame)
    with pytest.raises(PeerError) as caught:
        feed(frames[-1])
    return caught.value


def test_custom_parameters_nested_a_thousand_deep() -> None:
    start = twilio_start(customParameters={"deep": "HERE"}).replace('"HERE"', nested_json(1000))
    assert refused("twilio", start).close_code == CLOSE_PROTOCOL_ERROR
    assert refused(None, start).close_code == CLOSE_PROTOCOL_ERROR
    jambonz = '{"callSid": "c1", "sampleRate": 8000, "extra": ' + nested_json(1000) + "}"
    assert refused("jambonz", jambonz).close_code == CLOSE_PROTOCOL_ERROR


def test_too_many_or_too_long_custom_parameters() -> None:
    many = {f"p{n}": "v" for n in range(1000)}
    assert refused("twilio", twilio_start(customParameters=many)).close_code == 1002
    long = {"p": "v" * 100_000}
    assert refused("twilio", twilio_start(customParameters=long)).close_code == 1002


@pytest.mark.parametrize("rate", ["9" * 5000, "1" + "0" * 400, "\u00b2", "8000.5", -8000])
def test_sample_rates_that_are_not_bounded_numbers(rate: object) -> None:
    start = twilio_start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": rate})
    assert isinstance(refused("twilio", start), InvalidNumber)


@pytest.mark.parametrize("encoding", ["L16@abc", "L16@\u00b2", "L16@" + "9" * 5000, "L16@-1h"])
def test_signalwire_rate_spellings_that_are_not_numbers(encoding: str) -> None:
    start = twilio_start(mediaFormat={"encoding": encoding})
    error = refused("signalwire", start)
    assert error.close_code in (CLOSE_INVALID_PAYLOAD, CLOSE_UNSUPPORTED_DATA)


@pytest.mark.parametrize(("name", "metadata", "query"), [
    ("jambonz", {"callSid": "c1", "sampleRate": "\u00b2", "mixType": "mono"}, None),
    ("jambonz", {"callSid": "c1", "sampleRate": "9" * 5000, "mixType": "mono"}, None),
    ("jambonz", {"callSid": "c1", "sampleRate": 8000, "mixType": {"x": 1}}, None),
    ("audiofork", {"sampleRate": "\u00b2"}, None),
    ("audiofork", "free text metadata", {"rate": "\u00b2"}),
    ("vonage", {"event": "websocket:connected", "content-type": "audio/l16;rate=\u00b2"}, None),
])
def test_binary_dialect_rates_and_modes(name: str, metadata: object,
                                        query: dict[str, str] | None) -> None:
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    error = refused(name, text, query=query)
    assert error.close_code in (CLOSE_INVALID_PAYLOAD, CLOSE_UNSUPPORTED_DATA)


def test_binary_metadata_call_ids_and_dtmf_of_any_shape() -> None:
    dialect = make_dialect("jambonz")
    dialect.receive_text(json.dumps({"callSid": nested(50), "sampleRate": 8000}))
    started = dialect.events()[0]
    assert isinstance(started, StreamStarted)
    assert len(started.call_id) <= 256  # an object for an id: the connection's own id
    vonage = make_dialect("vonage")
    vonage.receive_text(json.dumps({"event": "websocket:connected",
                                    "content-type": "audio/l16;rate=8000"}))
    vonage.receive_text('{"event": "websocket:dtmf", "digit": ' + nested_json(1000) + "}")
    assert [type(e).__name__ for e in vonage.events()] == ["StreamStarted"]


def audiohook_open(media: object, **parameters: Any) -> str:
    return json.dumps({"version": "2", "id": SESSION, "type": "open", "seq": 1,
                       "serverseq": 0, "position": "PT0S",
                       "parameters": {"organizationId": "o", "conversationId": "c",
                                      "media": media, **parameters}})


@pytest.mark.parametrize("media", [
    [{"type": "audio", "format": "PCMU", "channels": [{"x": 1}], "rate": 8000}],
    [{"type": "audio", "format": {"x": 1}, "channels": ["external"], "rate": 8000}],
    [{"type": "audio", "format": ["PCMU"], "channels": [["external"]], "rate": 8000}],
])
def test_audiohook_media_with_objects_where_names_belong(media: object) -> None:
    error = refused("audiohook", audiohook_open(media))
    assert error.close_code == CLOSE_UNSUPPORTED_DATA


def test_audiohook_ids_and_errors_of_any_shape() -> None:
    offer = [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]
    dialect = AudioHookDialect()
    deep = nested_json(1000)
    refusal = refused("audiohook", audiohook_open(offer, conversationId="C").replace('"C"', deep))
    assert refusal.close_code == CLOSE_PROTOCOL_ERROR
    dialect.receive_text(audiohook_open(offer, participant={"id": "P"}).replace('"P"', deep))
    dialect.receive_text(json.dumps({"version": "2", "id": SESSION, "type": "error", "seq": 2,
                                     "parameters": {"code": "C", "message": "m" * 100_000}})
                         .replace('"C"', deep))
    reported = dialect.events()[-1]
    assert isinstance(reported, ProviderErrorReported)
    assert reported.detail == "m" * 200


@pytest.mark.parametrize("discarded", ["PT" + "9" * 400 + "S", "PT1e400S", "P1D", "\u00b2"])
def test_audiohook_durations_that_are_not_bounded(discarded: str) -> None:
    offer = [{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}]
    error = refused("audiohook", audiohook_open(offer), json.dumps({
        "version": "2", "id": SESSION, "type": "discarded", "seq": 2,
        "parameters": {"start": "PT0S", "discarded": discarded}}))
    assert isinstance(error, InvalidNumber)


@pytest.mark.parametrize("value", ['"\u00b2"', '"abc"', '"1' + "0" * 400 + '"', '"-5"'])
@pytest.mark.parametrize("param", ["created", "expires"])
def test_audiohook_signature_times_that_are_not_numbers(param: str, value: str) -> None:
    components = '("@request-target" "@authority" "audiohook-organization-id" ' \
        '"audiohook-session-id" "audiohook-correlation-id" "x-api-key")'
    params = {"created": "1700000000", "expires": "1700000010"}
    params[param] = value
    header = (f'sig1={components};keyid="k";nonce="{"n" * 22}";alg="hmac-sha256";'
              f'created={params["created"]};expires={params["expires"]}')
    headers = {"x-api-key": "k", "signature-input": header, "signature": "sig1=:AAAA:"}
    problem = check_audiohook({"k": b"secret-secret-secret"}, target="/streams/audiohook",
                              authority="h", headers=headers, now=1700000001)
    assert problem is not None


@pytest.mark.parametrize("value", [True, None, [1], "0x10", "1e3", "\u0661", "+", "", "1.5",
                                   float("inf"), float("nan"), 10**30])
def test_read_int_refuses_what_is_not_a_bounded_integer(value: object) -> None:
    with pytest.raises(InvalidNumber):
        read_int(value, field="f", low=0, high=10**12)


@pytest.mark.parametrize(("value", "expected"), [(" 42 ", 42), (7, 7), (7.0, 7), ("-3", -3)])
def test_read_int_accepts_integers_as_peers_send_them(value: object, expected: int) -> None:
    assert read_int(value, field="f", low=-10, high=100) == expected


# Every form a counter may take, hostile ones included: ``read_count`` must answer each exactly
# as ``read_int`` does, since the media path reads its counters with it.
COUNTER_FORMS: list[object] = [
    "0", "7", "0007", "12345678901234567890", "123456789012345678901", "1" * 5000, " 42 ",
    "+5", "-1", "-0", "", " ", "\u00b2", "\u0661", "\uff11", "1e3", "0x10", "1.5", "1_000",
    "9007199254740991", "9007199254740992", 0, 7, -1, 2**53 - 1, 2**53, 10**400, True, False,
    7.0, 7.5, -2.0, float("inf"), float("nan"), None, [1], {"n": 1}, b"12"]


@pytest.mark.parametrize("high", [10, 2**53 - 1])
@pytest.mark.parametrize("value", COUNTER_FORMS)
def test_read_count_answers_every_form_as_read_int_does(value: object, high: int) -> None:
    try:
        expected: int | InvalidNumber = read_int(value, field="f", low=0, high=high)
    except InvalidNumber as refused:
        expected = refused
    if isinstance(expected, InvalidNumber):
        with pytest.raises(InvalidNumber) as caught:
            read_count(value, field="f", high=high)
        assert str(caught.value) == str(expected)
    else:
        assert read_count(value, field="f", high=high) == expected


@pytest.mark.parametrize("value", ["inf", "nan", "1e3", "1" * 30, float("nan"), "\u00b2", "1.",
                                   10**400])
def test_read_float_refuses_what_is_not_a_bounded_decimal(value: object) -> None:
    with pytest.raises(InvalidNumber):
        read_float(value, field="f", low=0, high=10**9)


def test_read_float_accepts_decimals() -> None:
    assert read_float("12.25", field="f", low=0, high=100) == 12.25
    assert read_float(3, field="f", low=0, high=100) == 3.0


def test_audiohook_echoes_only_the_documented_fields_of_the_media_it_takes() -> None:
    deep = nested_json(1000)
    offer = '[{"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000, ' \
            '"extra": ' + deep + "}]"
    dialect = AudioHookDialect()
    dialect.receive_text(audiohook_open("MEDIA").replace('"MEDIA"', offer))
    opened = json.loads(dialect.to_send()[0])
    assert opened["parameters"]["media"] == [{"type": "audio", "format": "PCMU",
                                              "channels": ["external"], "rate": 8000}]
