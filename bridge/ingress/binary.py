"""The binary dialects: one text frame of metadata, then raw 16-bit linear PCM frames.

* Vonage Voice API: ``{"event":"websocket:connected","content-type":"audio/l16;rate=16000",
  ...the caller's headers}``, then binary frames of the call's mixed audio (one leg);
  ``websocket:dtmf`` text messages for key presses.
* FreeSWITCH ``mod_audio_fork`` (subprotocol ``audio.drachtio.org``): the first text frame is
  whatever metadata the fork was started with; the mode and rate are chosen on the fork's
  command line, so they are read from the metadata when it is JSON (``mixType``,
  ``sampleRate``) or else from the stream URL's query (``?mix=stereo&rate=16000``).
* jambonz ``listen`` (subprotocol ``audio.jambonz.org``): a JSON text frame with the call's
  attributes, ``sampleRate`` and ``mixType`` (``mono``, ``mixed``, ``stereo``).

``stereo`` carries two channels, interleaved sample by sample: the first is the caller
(``inbound``), the second the callee (``outbound``); each becomes its own leg. ``mono`` is
the caller alone; ``mixed`` both parties in one channel. Samples are little-endian.
Frames carry no timestamps: they are taken in arrival order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from bridge.codecs.pcm import L16_RATES, split_stereo
from bridge.errors import ProtocolViolation, UnsupportedData
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    Dtmf,
    StreamStarted,
    Track,
)
from bridge.ingress.base import (
    MAX_SAMPLE_RATE,
    SansIoStream,
    Step,
    StreamState,
    check_rate,
    flat_parameters,
    parse_json_object,
    short_text,
)
from bridge.numbers import read_int

MIX_TRACKS = {"mono": (Track.INBOUND,), "mixed": (Track.MIXED,),
              "stereo": (Track.INBOUND, Track.OUTBOUND)}


def _rate(value: object) -> int:
    """A sample rate as the binary dialects write it: ``16000``, ``"16000"``, ``"16k"``,
    ``"16000hz"``; a number under 100 is in kHz."""
    if isinstance(value, str):
        value = value.strip().lower().removesuffix("hz").removesuffix("k")
    number = read_int(value, field="sample rate", low=1, high=MAX_SAMPLE_RATE)
    return number * 1000 if number < 100 else number


class BinaryMediaDialect(SansIoStream):
    """Shared by the binary dialects: metadata first, then PCM frames split into legs."""

    name = "binary"

    def __init__(self, query: Mapping[str, str] | None = None,
                 connection_id: str | None = None) -> None:
        super().__init__()
        self.query = dict(query or {})
        self.connection_id = connection_id or uuid.uuid4().hex
        self._tracks: tuple[Track, ...] = ()

    def receive_text(self, text: str) -> None:
        if self.state is StreamState.AWAITING_START:
            started = self._parse_metadata(text)
            check_rate(started.encoding, started.sample_rate)
            self._tracks = started.tracks
            self._advance(Step.START, "metadata")
            self._events.append(started)
        else:
            self._later_text(text)

    def receive_bytes(self, data: bytes) -> None:
        if self.state is not StreamState.STREAMING:
            raise ProtocolViolation(f"audio before the {self.name} metadata message")
        if len(data) % (2 * len(self._tracks)):
            raise UnsupportedData("a binary frame that is not whole 16-bit samples "
                                  f"for {len(self._tracks)} channel(s)")
        if len(self._tracks) == 2:
            first, second = split_stereo(data)
            self._events.append(AudioFrame(self._tracks[0], first, None, None))
            self._events.append(AudioFrame(self._tracks[1], second, None, None))
        else:
            self._events.append(AudioFrame(self._tracks[0], data, None, None))

    def _parse_metadata(self, text: str) -> StreamStarted:
        raise NotImplementedError

    def _later_text(self, text: str) -> None:
        """Text after the metadata: nothing by default (``send_text`` payloads and such)."""

    def _started(self, call_id: str, rate: int, mix: str,
                 parameters: Mapping[str, Any]) -> StreamStarted:
        if mix not in MIX_TRACKS:
            raise UnsupportedData(f"mix type {mix[:20]!r}: expected mono, mixed or stereo")
        if rate not in L16_RATES:
            raise UnsupportedData(f"L16 at {rate} Hz: accepted rates are 8000, 16000, 24000")
        return StreamStarted(
            provider=self.name,
            call_id=call_id if call_id.isprintable() and call_id else self.connection_id,
            stream_id=self.connection_id, encoding=AudioEncoding.L16, sample_rate=rate,
            tracks=MIX_TRACKS[mix],
            custom_parameters=flat_parameters(parameters.items()))


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        return parse_json_object(text)
    except ProtocolViolation:
        raise ProtocolViolation(f"the {what} is not a JSON object") from None


class VonageDialect(BinaryMediaDialect):
    """Vonage Voice API WebSocket endpoint: one mixed leg."""

    name = "vonage"
    id_keys = ("call_id", "uuid", "conversation_uuid", "callId")

    def _parse_metadata(self, text: str) -> StreamStarted:
        message = _json_object(text, "websocket:connected message")
        if message.get("event") != "websocket:connected":
            raise ProtocolViolation("the first Vonage message must be websocket:connected")
        content_type = message.get("content-type", "")
        if not isinstance(content_type, str) or not content_type.lower().startswith(
                "audio/l16"):
            raise UnsupportedData(f"content-type {str(content_type)[:40]!r}: expected audio/l16")
        rate = _rate(content_type.lower().partition("rate=")[2] or 8000)
        headers = {k: v for k, v in message.items() if k not in ("event", "content-type")}
        call_id = next((short_text(headers[k]) for k in self.id_keys if k in headers), "")
        return self._started(call_id, rate, "mixed", headers)

    def _later_text(self, text: str) -> None:
        message = _json_object(text, "Vonage message")
        if message.get("event") == "websocket:dtmf":
            digit = message.get("digit")
            if short_text(digit):
                self._events.append(Dtmf(Track.MIXED, short_text(digit, 8)))


class AudioForkDialect(BinaryMediaDialect):
    """FreeSWITCH mod_audio_fork."""

    name = "audiofork"
    subprotocol = "audio.drachtio.org"

    def _parse_metadata(self, text: str) -> StreamStarted:
        try:
            metadata = parse_json_object(text)
        except ProtocolViolation:  # metadata may be any text: kept as one parameter
            metadata = {"metadata": text[:1024]} if text else {}
        mix = short_text(metadata.get("mixType", self.query.get("mix", "mono"))).lower()
        rate = _rate(metadata.get("sampleRate", self.query.get("rate", 8000)))
        call_id = short_text(metadata.get("callId") or metadata.get("uuid"))
        return self._started(call_id, rate, mix, metadata)


class JambonzDialect(BinaryMediaDialect):
    """jambonz listen."""

    name = "jambonz"
    subprotocol = "audio.jambonz.org"

    def _parse_metadata(self, text: str) -> StreamStarted:
        metadata = _json_object(text, "jambonz listen metadata")
        mix = short_text(metadata.get("mixType", "mono")).lower()
        rate = _rate(metadata.get("sampleRate", 8000))
        call_id = short_text(metadata.get("callSid") or metadata.get("call_sid"))
        parameters = {k: v for k, v in metadata.items() if k not in ("sampleRate", "mixType")}
        return self._started(call_id, rate, mix, parameters)
