"""Media-stream dialects: one sans-I/O parser per provider, and recognition of the dialect.

``DIALECTS`` maps the endpoint name (``/streams/<name>``) to its parser class.
``DetectingDialect`` serves ``/streams``: it reads the first messages until one says which
provider is talking, then hands everything to that provider's parser.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.errors import ProtocolViolation, UnsupportedData
from bridge.events import IngressEvent
from bridge.ingress.base import JsonMediaDialect, parse_json_object
from bridge.ingress.telnyx import TelnyxDialect
from bridge.ingress.twilio import TwilioDialect

DIALECTS: Final[dict[str, type[JsonMediaDialect]]] = {
    "twilio": TwilioDialect,
    "telnyx": TelnyxDialect,
}

# How many undecided messages we hold before giving up on recognising the peer.
MAX_UNDECIDED_MESSAGES: Final = 3


def recognise(message: dict[str, Any]) -> type[JsonMediaDialect] | None:
    """Name the dialect a message belongs to, or None when it could be either.

    Twilio spells keys in camelCase (``streamSid``, ``sequenceNumber``) and says
    ``"protocol": "Call"`` on ``connected``; Telnyx uses snake_case (``stream_id``,
    ``sequence_number``). A bare ``{"event":"connected","version":...}`` is undecided.
    """
    if "streamSid" in message or "sequenceNumber" in message or "protocol" in message:
        return TwilioDialect
    if "stream_id" in message or "sequence_number" in message:
        return TelnyxDialect
    return None


class DetectingDialect:
    """Recognises the provider from its first messages, then delegates to its parser."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] = []
        self.inner: JsonMediaDialect | None = None

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
        self._pending.append(message)
        dialect = recognise(message)
        if dialect is None:
            if len(self._pending) >= MAX_UNDECIDED_MESSAGES:
                raise ProtocolViolation("cannot recognise the media-stream dialect")
            return
        self.inner = dialect()
        pending, self._pending = self._pending, []
        for held in pending:
            self.inner.receive_message(held)

    def receive_bytes(self, data: bytes) -> None:
        if self.inner is None:
            raise UnsupportedData("binary frame before the media-stream dialect is known")
        self.inner.receive_bytes(data)

    def events(self) -> list[IngressEvent]:
        return self.inner.events() if self.inner is not None else []

    def to_send(self) -> list[str]:
        return self.inner.to_send() if self.inner is not None else []


MediaDialect = JsonMediaDialect | DetectingDialect


def make_dialect(name: str | None) -> MediaDialect:
    """A parser for ``/streams/<name>``; ``None`` for the recognising ``/streams`` endpoint."""
    if name is None:
        return DetectingDialect()
    return DIALECTS[name]()
