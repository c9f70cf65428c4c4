"""Media-stream dialects: one sans-I/O parser per provider, and recognition of the dialect.

``DIALECTS`` maps the endpoint name (``/streams/<name>``) to its parser class.
``DetectingDialect`` serves ``/streams``: it reads the first messages until one says which
provider is talking, then hands everything to that provider's parser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from bridge.errors import ProtocolViolation, UnsupportedData
from bridge.events import IngressEvent
from bridge.ingress.audiohook import AudioHookDialect
from bridge.ingress.bandwidth import BandwidthDialect
from bridge.ingress.base import JsonMediaDialect, parse_json_object
from bridge.ingress.binary import (
    AudioForkDialect,
    BinaryMediaDialect,
    JambonzDialect,
    VonageDialect,
)
from bridge.ingress.exotel import ExotelDialect
from bridge.ingress.plivo import PlivoDialect
from bridge.ingress.signalwire import SignalWireDialect
from bridge.ingress.telnyx import TelnyxDialect
from bridge.ingress.twilio import TwilioDialect

DIALECTS: Final[dict[str, type[JsonMediaDialect]]] = {
    "twilio": TwilioDialect,
    "telnyx": TelnyxDialect,
    "plivo": PlivoDialect,
    "signalwire": SignalWireDialect,
    "exotel": ExotelDialect,
    "bandwidth": BandwidthDialect,
}

# How many undecided messages we hold before giving up on recognising the peer.
MAX_UNDECIDED_MESSAGES: Final = 3


def recognise(message: dict[str, Any]) -> type[JsonMediaDialect] | None:
    """Name the dialect a message belongs to, or None when it could be either.

    Bandwidth keys its messages ``eventType``; Plivo sends ``extra_headers`` and ``callId``;
    Exotel spells ``stream_sid``; Twilio (and SignalWire, which copies it) ``streamSid``,
    ``sequenceNumber`` and ``"protocol": "Call"``; Telnyx ``stream_id``. A bare
    ``{"event":"connected"}`` is undecided.
    """
    start = message.get("start")
    if not isinstance(start, dict):
        start = {}
    if "eventType" in message:
        return BandwidthDialect
    if "extra_headers" in message or "callId" in start or "streamId" in message:
        return PlivoDialect
    if "stream_sid" in message or "call_sid" in start:
        return ExotelDialect
    if "streamSid" in message or "sequenceNumber" in message or "protocol" in message:
        return TwilioDialect
    if "stream_id" in message or "sequence_number" in message:
        return TelnyxDialect
    return None


class DetectingDialect:
    """Recognises the provider from its first messages, then delegates to its parser.

    Vonage's ``websocket:connected`` is recognised too (its binary audio follows).
    """

    def __init__(self, connection_id: str | None = None) -> None:
        self._pending: list[dict[str, Any]] = []
        self._connection_id = connection_id
        self.inner: JsonMediaDialect | BinaryMediaDialect | None = None

    @property
    def name(self) -> str:
        return self.inner.name if self.inner is not None else "unknown"

    @property
    def stopped(self) -> bool:
        return self.inner is not None and self.inner.stopped

    def receive_text(self, text: str) -> None:
        if self.inner is not None:
            self.inner.receive_text(text)
            return
        message = parse_json_object(text)
        if message.get("event") == "websocket:connected":
            self.inner = VonageDialect(None, self._connection_id)
            self.inner.receive_text(text)
            return
        self._pending.append(message)
        dialect = recognise(message)
        if dialect is None:
            if len(self._pending) >= MAX_UNDECIDED_MESSAGES:
                raise ProtocolViolation("cannot recognise the media-stream dialect")
            return
        inner = dialect()
        self.inner = inner
        pending, self._pending = self._pending, []
        for held in pending:
            inner.receive_message(held)

    def receive_bytes(self, data: bytes) -> None:
        if self.inner is None:
            raise UnsupportedData("binary frame before the media-stream dialect is known")
        self.inner.receive_bytes(data)

    @property
    def may_reply(self) -> bool:
        return self.inner is not None and self.inner.may_reply

    def events(self) -> list[IngressEvent]:
        return self.inner.events() if self.inner is not None else []

    def to_send(self) -> Sequence[str]:
        return self.inner.to_send() if self.inner is not None else ()


BINARY_DIALECTS: Final[dict[str, type[BinaryMediaDialect]]] = {
    "vonage": VonageDialect,
    "audiofork": AudioForkDialect,
    "jambonz": JambonzDialect,
}
# WebSocket subprotocols the bridge echoes when a client offers them.
SUBPROTOCOLS: Final = (AudioForkDialect.subprotocol, JambonzDialect.subprotocol)

MediaDialect = JsonMediaDialect | DetectingDialect | BinaryMediaDialect | AudioHookDialect


def make_dialect(name: str | None, query: Mapping[str, str] | None = None,
                 connection_id: str | None = None) -> MediaDialect:
    """A parser for ``/streams/<name>``; ``None`` for the recognising ``/streams`` endpoint."""
    if name is None:
        return DetectingDialect(connection_id)
    if name == "audiohook":
        return AudioHookDialect()
    if name in BINARY_DIALECTS:
        return BINARY_DIALECTS[name](query, connection_id)
    return DIALECTS[name]()
