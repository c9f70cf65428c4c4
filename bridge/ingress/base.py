"""What every media dialect shares: the stream state table and JSON field readers.

A dialect is sans-I/O: ``receive_text()``/``receive_bytes()`` take what the socket delivered,
``events()`` hands back the decoded events, ``to_send()`` the replies to write (none for the
one-way dialects). No asyncio, no clock, no aiohttp: tests drive it with literal strings.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from bridge.codecs.pcm import L16_RATES
from bridge.errors import InvalidPayload, ProtocolViolation, UnsupportedData
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    Dtmf,
    IngressEvent,
    Mark,
    ProviderErrorReported,
    StreamStarted,
    StreamStopped,
    Track,
)
from bridge.numbers import read_count, read_int


class StreamState(enum.Enum):
    """Where a media stream is in its life."""

    AWAITING_START = "awaiting_start"  # connected (or nothing) seen; start must come next
    STREAMING = "streaming"  # start seen: media, dtmf and mark flow
    STOPPED = "stopped"  # stop seen: nothing but the close may follow


class Step(enum.Enum):
    """The kinds of message that move a stream through its states."""

    CONNECTED = "connected"
    START = "start"
    MEDIA = "media"  # media, dtmf and mark
    STOP = "stop"
    ERROR = "error"  # provider-reported error frames are legal at any time


# (state, step) -> next state. A pair not listed is a protocol violation.
TRANSITIONS: Final[Mapping[tuple[StreamState, Step], StreamState]] = {
    (StreamState.AWAITING_START, Step.CONNECTED): StreamState.AWAITING_START,
    (StreamState.AWAITING_START, Step.START): StreamState.STREAMING,
    (StreamState.AWAITING_START, Step.ERROR): StreamState.AWAITING_START,
    (StreamState.STREAMING, Step.MEDIA): StreamState.STREAMING,
    (StreamState.STREAMING, Step.STOP): StreamState.STOPPED,
    (StreamState.STREAMING, Step.ERROR): StreamState.STREAMING,
    (StreamState.STOPPED, Step.ERROR): StreamState.STOPPED,
}

G711_SAMPLE_RATE: Final = 8000

# Announced media formats we decode, in every spelling the providers use
# (Telnyx documents "PCMU" today and "audio/x-mulaw" in older material).
ENCODINGS: Final[Mapping[str, AudioEncoding]] = {
    "pcmu": AudioEncoding.PCMU,
    "audio/x-mulaw": AudioEncoding.PCMU,
    "mulaw": AudioEncoding.PCMU,
    "ulaw": AudioEncoding.PCMU,
    "pcma": AudioEncoding.PCMA,
    "audio/x-alaw": AudioEncoding.PCMA,
    "alaw": AudioEncoding.PCMA,
    "l16": AudioEncoding.L16,
    "audio/x-l16": AudioEncoding.L16,
    "audio/l16": AudioEncoding.L16,
    "linear16": AudioEncoding.L16,
    "audio/x-raw": AudioEncoding.L16,  # Exotel: 16-bit linear PCM
    "audio/pcmu": AudioEncoding.PCMU,  # Bandwidth
    "audio/pcma": AudioEncoding.PCMA,
}
# Codecs a provider may announce that the bridge does not decode, and what to change.
UNDECODED: Final = {"g722", "opus", "amr-wb", "amr_wb", "g729"}


def parse_json_object(text: str) -> dict[str, Any]:
    """Parse one text frame that must be a JSON object."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolViolation("malformed JSON in a text frame") from None
    if not isinstance(value, dict):
        raise ProtocolViolation("a text frame is JSON but not an object")
    return value


def get_object(message: Mapping[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    """Read a nested object; a missing optional object reads as empty."""
    value = message.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise ProtocolViolation(f"field {key!r} must be an object")
    return value


def get_str(message: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    """Read a string field; numbers are accepted and converted (providers vary)."""
    value = message.get(key, default)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(read_int(value, field=key, low=-MAX_COUNTER, high=MAX_COUNTER))
    raise ProtocolViolation(f"field {key!r} must be a string")


MAX_ID: Final = 256


def get_id(message: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    """Read an identifier (a call or stream id): 1-256 printable characters.

    Ids go into every webhook, log line and admin URL, so a peer may not make them huge or
    put control characters in them.
    """
    value = get_str(message, key, default=default)
    if not 0 < len(value) <= MAX_ID or not value.isprintable():
        raise ProtocolViolation(f"field {key!r} must be 1-{MAX_ID} printable characters")
    return value


def short_text(value: object, limit: int = MAX_ID) -> str:
    """A short text field: strings and numbers as text, cut to ``limit``; anything else
    (objects, lists, nesting of any depth) reads as empty, never as ``str()`` of a peer's
    structure."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int) and not isinstance(value, bool) and -MAX_COUNTER <= value <= \
            MAX_COUNTER:
        return str(value)[:limit]
    return ""


# Counters and timestamps are exact in a float up to 2**53: the leg's clock does float math.
MAX_COUNTER: Final = 2**53 - 1
MAX_SAMPLE_RATE: Final = 192_000


def get_counter(message: Mapping[str, Any], key: str, *, high: int = MAX_COUNTER) -> int | None:
    """Read a counter or timestamp that arrives as a JSON string or a number; absent is None.

    Strict and bounded (``bridge.numbers.read_int``): ``"²"``, thousands of digits or 10**400
    are refused with ``InvalidNumber`` (close 1007), never left to overflow a clock later.
    """
    value = message.get(key)
    if value is None:
        return None
    return read_count(value, field=key, high=high)


def get_sample_rate(media_format: Mapping[str, Any], key: str) -> int:
    """The announced sample rate (8 kHz when not announced); ``check_rate`` judges it."""
    rate = get_counter(media_format, key, high=MAX_SAMPLE_RATE)
    return rate or G711_SAMPLE_RATE


TRACK_NAMES: Final[Mapping[str, Track]] = {
    "inbound": Track.INBOUND, "inbound_track": Track.INBOUND,
    "outbound": Track.OUTBOUND, "outbound_track": Track.OUTBOUND,
}


def get_track(value: object, *, default: Track = Track.INBOUND) -> Track:
    """Normalise a track name: ``inbound``, ``inbound_track`` -> INBOUND, likewise outbound."""
    if value is None:
        return default
    if isinstance(value, str):
        track = TRACK_NAMES.get(value) or TRACK_NAMES.get(value.lower())
        if track is not None:
            return track
    raise UnsupportedData(f"unsupported track {str(value)[:40]!r}")


def get_encoding(value: object) -> AudioEncoding:
    """Map an announced media format onto a codec we decode (parameters after ';' ignored)."""
    name = value.split(";", 1)[0].strip().lower() if isinstance(value, str) else ""
    if name in ENCODINGS:
        return ENCODINGS[name]
    if name in UNDECODED:
        raise UnsupportedData(f"media encoding {value!r} is not decoded by callbridge: ask the "
                              "provider for PCMU, PCMA or L16 (Telnyx: stream_codec)")
    raise UnsupportedData(f"unsupported media encoding {str(value)[:40]!r}: PCMU, PCMA and "
                          "L16 are accepted")


def check_rate(encoding: AudioEncoding, sample_rate: int) -> None:
    """G.711 exists at 8 kHz only; linear PCM is accepted at 8, 16 and 24 kHz."""
    allowed = L16_RATES if encoding is AudioEncoding.L16 else (G711_SAMPLE_RATE,)
    if sample_rate not in allowed:
        raise UnsupportedData(f"{encoding.name} at {sample_rate} Hz: accepted rates are "
                              f"{', '.join(str(r) for r in allowed)}")


MAX_PARAMETERS: Final = 128
MAX_PARAMETER_NAME: Final = 256
MAX_PARAMETER_VALUE: Final = 4096


def flat_parameters(items: Iterable[tuple[object, object]]) -> dict[str, str]:
    """Name/value pairs as the flat str->str mapping calls carry; a value that is not a string
    is kept as its compact JSON.

    Bounded: at most ``MAX_PARAMETERS`` entries, names and values of bounded length, and JSON
    values no deeper than orjson encodes (it refuses deep nesting), so a hostile stream's
    parameters cannot exhaust the stack or bloat every webhook.
    """
    params: dict[str, str] = {}
    for name, raw in items:
        if len(params) >= MAX_PARAMETERS:
            raise ProtocolViolation(f"more than {MAX_PARAMETERS} custom parameters")
        key = str(name) if not isinstance(name, str) else name
        if isinstance(raw, str):
            value = raw
        else:
            try:
                value = orjson.dumps(raw).decode()
            except orjson.JSONEncodeError:
                raise ProtocolViolation(f"custom parameter {key[:40]!r} cannot be kept "
                                        "(nested too deep, or a number out of range)") from None
        if len(key) > MAX_PARAMETER_NAME or len(value) > MAX_PARAMETER_VALUE:
            raise ProtocolViolation(f"custom parameter {key[:40]!r} is too long (names up to "
                                    f"{MAX_PARAMETER_NAME}, values up to {MAX_PARAMETER_VALUE} "
                                    "characters)")
        params[key] = value
    return params


def get_parameters(value: object) -> dict[str, str]:
    """Custom parameters as a flat str->str mapping (an object, or a list of name/value pairs)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return flat_parameters(value.items())
    if isinstance(value, list):
        pairs = []
        for item in value:
            if not isinstance(item, dict) or "name" not in item:
                raise ProtocolViolation("custom parameters must be name/value pairs")
            pairs.append((item["name"], item.get("value", "")))
        return flat_parameters(pairs)
    raise ProtocolViolation("custom parameters must be an object")


def decode_payload(value: object) -> bytes:
    """Decode a base64 media payload strictly: stray characters are an error, not skipped."""
    if not isinstance(value, str):
        raise ProtocolViolation("media payload must be a base64 string")
    try:
        # Strict mode refuses what validate=True refuses and more (data after padding), in C,
        # without b64decode's regular-expression pass.
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise InvalidPayload("media payload is not valid base64") from None


@dataclass(frozen=True, slots=True)
class StartKeys:
    """The key names of a dialect's ``start`` message."""

    call_id: str
    stream_id: str  # read at the top level first, then inside ``start``
    media_format: str
    sample_rate: str
    custom_parameters: str
    default_encoding: str


NO_REPLIES: Final[tuple[str, ...]] = ()


class SansIoStream:
    """What every dialect shares: its state, the decoded events, the replies to write."""

    name: str = "stream"
    # Whether ``to_send`` can ever have replies: the media reader asks only then.
    may_reply: bool = False

    def __init__(self) -> None:
        self.state = StreamState.AWAITING_START
        # Whether a media message is legal now and leaves the state as it is: read from
        # ``TRANSITIONS`` at each move, so that each media message costs no table lookup.
        self._media_stays = False
        self._events: list[IngressEvent] = []
        self._replies: list[str] = []

    @property
    def stopped(self) -> bool:
        """True once the provider said the stream is over."""
        return self.state is StreamState.STOPPED

    def _advance(self, step: Step, event_name: str) -> None:
        """Take ``step`` if ``TRANSITIONS`` allows it: the only place a stream's state moves."""
        next_state = TRANSITIONS.get((self.state, step))
        if next_state is None:
            raise ProtocolViolation(f"{event_name!r} event is not allowed while {self.state.value}")
        self.state = next_state
        self._media_stays = TRANSITIONS.get((next_state, Step.MEDIA)) is next_state

    def events(self) -> list[IngressEvent]:
        """Hand over the events decoded since the last call."""
        events, self._events = self._events, []
        return events

    def to_send(self) -> Sequence[str]:
        """Replies to write to the peer (only AudioHook has any)."""
        if not self._replies:
            return NO_REPLIES
        replies, self._replies = self._replies, []
        return replies


class JsonMediaDialect(SansIoStream):
    """Base of the JSON dialects: the message table and the common readers."""

    name: str = "json"

    def receive_text(self, text: str) -> None:
        """Feed one text frame. Raises a ``PeerError`` for anything we cannot accept."""
        self._dispatch(parse_json_object(text))

    def receive_message(self, message: dict[str, Any]) -> None:
        """Feed one already parsed message (used by dialect detection)."""
        self._dispatch(message)

    def receive_bytes(self, data: bytes) -> None:
        """JSON dialects never carry binary frames."""
        raise UnsupportedData(f"binary frame on the {self.name} dialect, which is JSON text only")


    def _dispatch(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "media":  # first: by far the most frequent message
            if not self._media_stays:
                self._advance(Step.MEDIA, event)
            media = message.get("media")
            if type(media) is not dict:  # exactly a dict, as orjson makes them
                media = get_object(message, "media")  # refuses it, or accepts a subclass
            # The usual spellings by one lookup; ``get_track`` judges any other (or none).
            raw_track = media.get("track")
            track = TRACK_NAMES.get(raw_track) if type(raw_track) is str else None
            if track is None:
                track = get_track(raw_track)
            payload = decode_payload(media.get("payload"))
            if self._converts_audio:
                payload = self._track_audio(track, payload)
            # ``get_counter`` inline: two calls fewer on every media message.
            timestamp = media.get("timestamp")
            if timestamp is not None:
                timestamp = read_count(timestamp, field="timestamp", high=MAX_COUNTER)
            chunk = media.get("chunk")
            if chunk is not None:
                chunk = read_count(chunk, field="chunk", high=MAX_COUNTER)
            self._events.append(AudioFrame(track, payload, timestamp, chunk))
        elif event == "start":
            self._advance(Step.START, event)
            self._accept_start(message)
        elif event == "dtmf":
            self._advance(Step.MEDIA, event)
            dtmf = get_object(message, "dtmf")
            self._events.append(Dtmf(track=get_track(dtmf.get("track")),
                                     digit=get_str(dtmf, "digit")))
        elif event == "mark":
            self._advance(Step.MEDIA, event)
            self._events.append(Mark(name=get_str(get_object(message, "mark"), "name")))
        elif event == "stop":
            self._advance(Step.STOP, event)
            self._events.append(StreamStopped())
        elif event == "connected":
            self._advance(Step.CONNECTED, event)
        elif event == "error" and self.has_error_event:
            self._advance(Step.ERROR, event)
            self._events.append(self._parse_error(message))
        elif event in self.ignored_events:
            pass  # acknowledgements of what a bidirectional stream sent: nothing to do
        else:
            raise ProtocolViolation(f"unknown event {str(event)[:40]!r}")

    def _accept_start(self, message: dict[str, Any]) -> None:
        started = self._parse_start(message)
        check_rate(started.encoding, started.sample_rate)
        self.encoding = started.encoding
        self._events.append(started)

    has_error_event = False
    ignored_events: frozenset[str] = frozenset()
    encoding: AudioEncoding = AudioEncoding.PCMU
    # False while neither ``_audio`` nor ``_track_audio`` is overridden: payloads are kept as
    # decoded, without two calls per media message that would return them unchanged.
    _converts_audio = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._converts_audio = (cls._audio is not JsonMediaDialect._audio
                               or cls._track_audio is not JsonMediaDialect._track_audio)

    def _audio(self, payload: bytes) -> bytes:
        """Bring a payload to the bridge's form (dialects with big-endian L16 swap it)."""
        return payload

    def _track_audio(self, track: Track, payload: bytes) -> bytes:
        """Like ``_audio``, for dialects whose decoding keeps state per track."""
        return self._audio(payload)
    # Where each dialect keeps the start message's facts.
    start_keys: StartKeys

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        keys = self.start_keys
        start = get_object(message, "start")
        media_format = get_object(start, keys.media_format, required=False)
        return StreamStarted(
            provider=self.name,
            call_id=get_id(start, keys.call_id),
            stream_id=get_id(message, keys.stream_id, default=start.get(keys.stream_id)),
            encoding=get_encoding(media_format.get("encoding", keys.default_encoding)),
            sample_rate=get_sample_rate(media_format, keys.sample_rate),
            tracks=get_tracks(start, ["inbound"]),
            custom_parameters=get_parameters(start.get(keys.custom_parameters)),
        )

    def _parse_error(self, message: dict[str, Any]) -> ProviderErrorReported:
        raise NotImplementedError


def get_tracks(start: Mapping[str, Any], default: list[str]) -> tuple[Track, ...]:
    """Read the announced track list of a ``start`` message."""
    tracks = start.get("tracks") or default
    if not isinstance(tracks, list):
        raise ProtocolViolation("field 'tracks' must be a list")
    return tuple(get_track(t) for t in tracks)
