"""Genesys Cloud AudioHook (protocol version 2): the server side of the session.

Genesys is the client: it sends ``open`` with the media it offers; the server must answer
``opened`` at once, echoing exactly one offered media entry unmodified; then binary audio
flows (PCMU or L16 at 8 kHz, channels interleaved in the order the chosen entry lists them:
``external`` is the customer, ``internal`` the agent, and an inverted order is honoured).
Every message carries ``version``, ``id`` (the session), ``type``, ``seq`` (per sender, from
1) and ``parameters`` (always, even empty); server messages add ``clientseq`` (the last
client ``seq`` seen), client messages ``serverseq`` and ``position`` (ISO-8601 duration).

Handled: ``open`` (the connection probe with an all-zero conversation id is answered like
any other, and makes no call), ``ping`` -> ``pong``, ``pause``/``paused``,
``resume``/``resumed``, ``discarded`` (the audio position jumps: the leg's clock with it),
``update`` -> ``updated``, ``error``, ``close`` -> ``closed``. The dialect is sans-I/O:
replies are collected in ``to_send()``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from bridge.codecs.pcm import split_stereo
from bridge.errors import InvalidNumber, ProtocolViolation, UnsupportedData
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    ProviderErrorReported,
    StreamStarted,
    StreamStopped,
    Track,
)
from bridge.ingress.base import (
    MAX_ID,
    SansIoStream,
    Step,
    StreamState,
    flat_parameters,
    parse_json_object,
    short_text,
)

PROBE_CONVERSATION: Final = "00000000-0000-0000-0000-000000000000"
CHANNEL_TRACKS: Final = {"external": Track.INBOUND, "internal": Track.OUTBOUND}
FORMATS: Final = {"PCMU": AudioEncoding.PCMU, "L16": AudioEncoding.L16}
# Bounded on purpose: a few digits per part (a day of audio is 86400 s), so a peer's
# "PT<400 digits>S" is refused as malformed instead of overflowing the clock.
_PART: Final = r"([0-9]{1,6}(?:\.[0-9]{1,9})?)"
DURATION: Final = re.compile(rf"PT(?:{_PART}H)?(?:{_PART}M)?(?:{_PART}S)?", re.ASCII)
MAX_DURATION_MS: Final = 7 * 86400 * 1000


def parse_duration_ms(value: object) -> int | None:
    """``"PT12.34S"`` (ISO-8601 duration, hours and minutes too) in milliseconds."""
    if not isinstance(value, str):
        return None
    match = DURATION.fullmatch(value)
    if match is None or value == "PT":
        raise InvalidNumber("AudioHook duration", "not an ISO-8601 duration like PT12.5S")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    ms = round((hours * 3600 + minutes * 60 + seconds) * 1000)
    if ms > MAX_DURATION_MS:
        raise InvalidNumber("AudioHook duration", "longer than a week")
    return ms


def choose_media(offers: object) -> dict[str, Any]:
    """The offer to accept: both channels if offered, else one; PCMU before L16; 8 kHz."""
    if not isinstance(offers, list) or not offers:
        raise ProtocolViolation("open offers no media")
    usable = [m for m in offers if isinstance(m, dict) and m.get("type") == "audio"
              and isinstance(m.get("format"), str) and m["format"] in FORMATS
              and m.get("rate") == 8000
              and isinstance(m.get("channels"), list) and m["channels"]
              and all(isinstance(c, str) and c in CHANNEL_TRACKS for c in m["channels"])
              and len(set(m["channels"])) == len(m["channels"])]
    if not usable:
        raise UnsupportedData("no offered media is PCMU or L16 at 8000 Hz")
    best = max(usable, key=lambda m: (len(m["channels"]), m["format"] == "PCMU"))
    # Echoed as offered: these are all of a media entry's documented fields, and nothing
    # else a client put in it (of any size or depth) is sent back.
    return {"type": "audio", "format": best["format"], "channels": list(best["channels"]),
            "rate": 8000}


class AudioHookDialect(SansIoStream):
    """Sans-I/O AudioHook server session."""

    name = "audiohook"
    may_reply = True  # opened, pong, closed

    def __init__(self) -> None:
        super().__init__()
        self.session_id = ""
        self.server_seq = 0
        self.client_seq = 0
        self.probe = False
        self.paused = False
        self.media: dict[str, Any] = {}
        self._tracks: tuple[Track, ...] = ()
        self._width = 1
        self._samples = 0  # per channel: the audio position


    # -- client messages ---------------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        message = parse_json_object(text)
        kind = message.get("type")
        seq = message.get("seq")
        if message.get("version") != "2" or not isinstance(kind, str):
            raise ProtocolViolation("not an AudioHook version 2 message")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq != self.client_seq + 1:
            raise ProtocolViolation(f"client seq {seq!r} out of order (expected "
                                    f"{self.client_seq + 1})")
        self.client_seq = seq
        parameters = message.get("parameters")
        if not isinstance(parameters, dict):
            raise ProtocolViolation("an AudioHook message without parameters")
        if kind == "open":
            self._open(message, parameters)
            return
        if self.state is StreamState.AWAITING_START:
            raise ProtocolViolation(f"{kind!r} before open")
        if kind == "ping":
            self._reply("pong", {})
        elif kind == "close":
            self._reply("closed", {})
            self._stop()
        elif kind == "paused":
            self.paused = True
        elif kind == "resumed":
            self.paused = False
            self._skip(parse_duration_ms(parameters.get("discarded")))
        elif kind == "discarded":
            self._skip(parse_duration_ms(parameters.get("discarded")))
        elif kind == "update":
            self._reply("updated", {})
        elif kind == "error":
            self._events.append(ProviderErrorReported(
                short_text(parameters.get("code"), 40), "audiohook error",
                short_text(parameters.get("message"), 200)))
        else:
            raise ProtocolViolation(f"unknown AudioHook message {kind[:30]!r}")

    def _open(self, message: dict[str, Any], parameters: dict[str, Any]) -> None:
        if self.state is not StreamState.AWAITING_START:
            raise ProtocolViolation("a second open")
        session = message.get("id")
        if not isinstance(session, str) or not session or len(session) > MAX_ID:
            raise ProtocolViolation("open without a session id (of at most 256 characters)")
        self.session_id = session
        self.media = choose_media(parameters.get("media"))
        channels = self.media["channels"]
        self._tracks = tuple(CHANNEL_TRACKS[c] for c in channels)
        encoding = FORMATS[self.media["format"]]
        self._width = 2 if encoding is AudioEncoding.L16 else 1
        conversation = parameters.get("conversationId")
        if not isinstance(conversation, str) or not 0 < len(conversation) <= MAX_ID or \
                not conversation.isprintable():
            raise ProtocolViolation("open needs a conversationId of 1-256 printable characters")
        self.probe = conversation == PROBE_CONVERSATION
        self._reply("opened", {"media": [self.media]})
        self._advance(Step.START, "open")
        if self.probe:
            return  # the connection probe: answered, but it is no call
        custom = parameters.get("customConfig")
        participant = parameters.get("participant")
        params: dict[str, str] = {"organizationId": short_text(parameters.get("organizationId"))}
        if isinstance(participant, dict) and participant.get("id"):
            params["participantId"] = short_text(participant["id"])
        if isinstance(custom, dict):
            params.update(flat_parameters(custom.items()))
        self._events.append(StreamStarted(self.name, conversation, session, encoding, 8000,
                                          self._tracks, params))

    def receive_bytes(self, data: bytes) -> None:
        if self.state is not StreamState.STREAMING:
            raise ProtocolViolation("audio outside an open AudioHook session")
        channels = len(self._tracks)
        if len(data) % (channels * self._width):
            raise UnsupportedData("an audio frame that is not whole samples for every channel")
        timestamp = self._samples // 8
        self._samples += len(data) // (channels * self._width)
        if self.probe:
            return
        if channels == 1:
            self._events.append(AudioFrame(self._tracks[0], data, timestamp, None))
            return
        if self._width == 1:
            first, second = data[0::2], data[1::2]
        else:
            first, second = split_stereo(data)
        self._events.append(AudioFrame(self._tracks[0], first, timestamp, None))
        self._events.append(AudioFrame(self._tracks[1], second, timestamp, None))

    # -- server messages ---------------------------------------------------------------------

    def pause(self) -> None:
        """Ask the client to pause the audio (it answers ``paused``)."""
        self._reply("pause", {})

    def resume(self) -> None:
        self._reply("resume", {})

    def disconnect(self, reason: str = "completed") -> None:
        """Ask the client to end the session (it then sends ``close``)."""
        self._reply("disconnect", {"reason": reason})

    def _reply(self, kind: str, parameters: dict[str, Any]) -> None:
        self.server_seq += 1
        self._replies.append(json.dumps({
            "version": "2", "id": self.session_id, "type": kind, "seq": self.server_seq,
            "clientseq": self.client_seq, "parameters": parameters}))

    def _skip(self, discarded_ms: int | None) -> None:
        if discarded_ms:
            self._samples += discarded_ms * 8  # the audio clock keeps the discarded span

    def _stop(self) -> None:
        self._advance(Step.STOP, "close")
        if not self.probe:
            self._events.append(StreamStopped())

    @property
    def position_ms(self) -> int:
        return self._samples // 8
