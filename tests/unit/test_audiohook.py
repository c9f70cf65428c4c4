"""AudioHook, played as Genesys plays it: every reply field checked, sans-I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.errors import InvalidNumber, ProtocolViolation, UnsupportedData
from bridge.events import AudioEncoding, AudioFrame, StreamStarted, StreamStopped, Track
from bridge.ingress.audiohook import AudioHookDialect, parse_duration_ms

SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
OFFERS = [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
           "rate": 8000},
          {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000},
          {"type": "audio", "format": "PCMU", "channels": ["internal"], "rate": 8000}]


class Client:
    """Builds client messages with a running seq, like the reference client."""

    def __init__(self, dialect: AudioHookDialect) -> None:
        self.dialect = dialect
        self.seq = 0

    def send(self, kind: str, parameters: dict[str, Any] | None = None,
             **extra: Any) -> list[dict[str, Any]]:
        self.seq += 1
        message = {"version": "2", "id": SESSION, "type": kind, "seq": self.seq,
                   "serverseq": self.dialect.server_seq, "position": "PT0S",
                   "parameters": parameters if parameters is not None else {}, **extra}
        self.dialect.receive_text(json.dumps(message))
        return [json.loads(reply) for reply in self.dialect.to_send()]


def open_message(conversation: str = "6a4d5b1c-2f0e-4c1a-9d2b-8e7f6a5b4c3d",
                 media: list[dict[str, Any]] = OFFERS) -> dict[str, Any]:
    return {"organizationId": "d7934305-0972-4844-938e-9060eef73d05",
            "conversationId": conversation,
            "participant": {"id": "p-1", "ani": "+13175551212", "aniName": "John",
                            "dnis": "+13175550000"},
            "media": media, "language": "en-US", "customConfig": {"queue": "billing"}}


def test_a_whole_session() -> None:
    dialect = AudioHookDialect()
    client = Client(dialect)
    [opened] = client.send("open", open_message())
    assert opened == {"version": "2", "id": SESSION, "type": "opened", "seq": 1, "clientseq": 1,
                      "parameters": {"media": [OFFERS[0]]}}  # the stereo offer, unmodified
    [started] = dialect.events()
    assert started == StreamStarted(
        "audiohook", "6a4d5b1c-2f0e-4c1a-9d2b-8e7f6a5b4c3d", SESSION, AudioEncoding.PCMU, 8000,
        (Track.INBOUND, Track.OUTBOUND),
        {"organizationId": "d7934305-0972-4844-938e-9060eef73d05", "participantId": "p-1",
         "queue": "billing"})  # the caller's number is not passed on

    dialect.receive_bytes(bytes([1, 2] * 800))  # 100 ms, interleaved external/internal
    frames = dialect.events()
    assert frames == [AudioFrame(Track.INBOUND, b"\x01" * 800, 0, None),
                      AudioFrame(Track.OUTBOUND, b"\x02" * 800, 0, None)]

    [pong] = client.send("ping", {"rtt": "PT0.05S"})
    assert (pong["type"], pong["seq"], pong["clientseq"], pong["parameters"]) == (
        "pong", 2, 2, {})

    dialect.pause()
    [pause] = dialect.to_send()
    assert json.loads(pause)["type"] == "pause" and json.loads(pause)["seq"] == 3
    assert client.send("paused") == [] and dialect.paused
    dialect.resume()
    dialect.to_send()
    assert client.send("resumed", {"start": "PT0.2S", "discarded": "PT1.5S"}) == []
    assert not dialect.paused
    dialect.receive_bytes(bytes([3, 4] * 80))
    resumed_frames = dialect.events()
    assert resumed_frames[0].timestamp_ms == 100 + 1500

    assert client.send("discarded", {"start": "PT1.72S", "discarded": "PT0.5S"}) == []
    [updated] = client.send("update", {"language": "de-DE"})
    assert updated["type"] == "updated" and updated["clientseq"] == client.seq

    [closed] = client.send("close", {"reason": "end"})
    assert (closed["type"], closed["parameters"]) == ("closed", {})
    assert dialect.events() == [StreamStopped()] and dialect.stopped
    seqs = [r["seq"] for r in (opened, pong, updated, closed)]
    assert seqs == sorted(seqs)


def test_the_connection_probe_is_answered_and_makes_no_call() -> None:
    dialect = AudioHookDialect()
    client = Client(dialect)
    [opened] = client.send("open", open_message("00000000-0000-0000-0000-000000000000"))
    assert opened["type"] == "opened" and opened["parameters"]["media"] == [OFFERS[0]]
    dialect.receive_bytes(b"\xff" * 320)
    [closed] = client.send("close", {"reason": "end"})
    assert closed["type"] == "closed"
    assert dialect.events() == []


def test_an_inverted_channel_order_is_echoed_and_honoured() -> None:
    inverted = [{"type": "audio", "format": "PCMU", "channels": ["internal", "external"],
                 "rate": 8000}]
    dialect = AudioHookDialect()
    [opened] = Client(dialect).send("open", open_message(media=inverted))
    assert opened["parameters"]["media"] == inverted
    started = dialect.events()[0]
    assert isinstance(started, StreamStarted)
    assert started.tracks == (Track.OUTBOUND, Track.INBOUND)
    dialect.receive_bytes(bytes([7, 9] * 4))
    assert dialect.events() == [AudioFrame(Track.OUTBOUND, b"\x07" * 4, 0, None),
                                AudioFrame(Track.INBOUND, b"\x09" * 4, 0, None)]


def test_mono_l16_and_unusable_offers() -> None:
    l16 = [{"type": "audio", "format": "L16", "channels": ["external"], "rate": 8000}]
    dialect = AudioHookDialect()
    Client(dialect).send("open", open_message(media=l16))
    started = dialect.events()[0]
    assert isinstance(started, StreamStarted) and started.encoding is AudioEncoding.L16
    with pytest.raises(UnsupportedData):
        Client(AudioHookDialect()).send("open", open_message(
            media=[{"type": "audio", "format": "OPUS", "channels": ["external"],
                    "rate": 48000}]))


@pytest.mark.parametrize("bad", [
    {"version": "1", "id": SESSION, "type": "open", "seq": 1, "parameters": {}},
    {"version": "2", "id": SESSION, "type": "open", "seq": 2, "parameters": {}},
    {"version": "2", "id": SESSION, "type": "ping", "seq": 1},
    {"version": "2", "id": SESSION, "type": "ping", "seq": 1, "parameters": {}},
])
def test_bad_messages_fail_closed(bad: dict[str, Any]) -> None:
    with pytest.raises(ProtocolViolation):
        AudioHookDialect().receive_text(json.dumps(bad))


def test_audio_before_open_is_refused() -> None:
    with pytest.raises(ProtocolViolation):
        AudioHookDialect().receive_bytes(b"\xff" * 160)


@pytest.mark.parametrize(("text", "ms"), [("PT0S", 0), ("PT12.34S", 12340), ("PT1M2.5S", 62500),
                                          ("PT1H", 3600000), (None, None), (12, None)])
def test_durations(text: object, ms: int | None) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["12", "PT", "PT" + "9" * 400 + "S", "PT\u0661S", "PT1S ",
                                  "PT200H", "PT1.5.5S"])
def test_malformed_or_unbounded_durations_are_invalid(text: str) -> None:
    with pytest.raises(InvalidNumber):
        parse_duration_ms(text)
