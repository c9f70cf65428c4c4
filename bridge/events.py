"""The domain vocabulary: what a media stream says, and what the bridge tells webhooks.

Every ingress dialect produces the same immutable events (``IngressEvent``), with audio already
decoded from base64 into bytes and track names already normalised to ``inbound``/``outbound``.
Nothing downstream of ``bridge.ingress`` knows which provider sent an event.

What the bridge sends is an ``OutboundEvent``, made only by ``make_event``: its id, timestamp
and JSON body are fixed there once, and the outbox, the webhook POSTs and the live feed all
use that same body.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from bridge.stages import Timing


class AudioEncoding(enum.StrEnum):
    """Codecs a leg can carry. The value is the name used in logs and webhook data."""

    PCMU = "pcmu"  # G.711 µ-law
    PCMA = "pcma"  # G.711 A-law
    L16 = "l16"  # 16-bit linear PCM, little-endian once inside the bridge


class Track(enum.StrEnum):
    """A call leg's direction, as both Twilio and Telnyx name their tracks."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    MIXED = "mixed"  # both parties in one channel (Vonage, mixed forks)


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """The stream's metadata: ids, codec and the custom parameters the call was set up with."""

    provider: str
    call_id: str
    stream_id: str
    encoding: AudioEncoding
    sample_rate: int
    tracks: tuple[Track, ...]
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


class AudioFrame(NamedTuple):
    """One media message: raw codec bytes of one track.

    ``timestamp_ms`` is the provider's presentation time from stream start, when it sends one;
    ``chunk`` is its per-message counter. Both are used to reorder and to detect lost frames.
    Immutable like the other events, but a named tuple rather than a frozen dataclass: one is
    made for every media message (fifty a second per leg), and a tuple is built in one step
    where a frozen dataclass sets each field through ``object.__setattr__``.
    """

    track: Track
    payload: bytes
    timestamp_ms: int | None
    chunk: int | None


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key press reported by the provider."""

    track: Track
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """The echo of a mark (bidirectional streams only)."""

    name: str


@dataclass(frozen=True, slots=True)
class StreamStopped:
    """The provider ended the stream: no more media follows."""


@dataclass(frozen=True, slots=True)
class ProviderErrorReported:
    """The provider reported an error on the stream (Telnyx ``error`` frames)."""

    code: str
    title: str
    detail: str


IngressEvent = StreamStarted | AudioFrame | Dtmf | Mark | StreamStopped | ProviderErrorReported


@dataclass(frozen=True, slots=True)
class TranscriptResult:
    """A recognition result from an engine, placed on the leg's audio clock."""

    text: str
    is_final: bool
    confidence: float | None
    start_ms: int
    end_ms: int
    words: tuple[tuple[str, int, int, float | None], ...] = ()  # (text, start, end, conf.)
    # When it reached each stage of the bridge: in memory only, never in an event's body.
    timing: Timing | None = field(default=None, compare=False, repr=False)


class EventType(enum.StrEnum):
    """Webhook event types."""

    CALL_STARTED = "call.started"
    TRANSCRIPT_PARTIAL = "transcript.partial"
    TRANSCRIPT_FINAL = "transcript.final"
    CALL_ENDED = "call.ended"
    CALL_COMPLETED = "call.completed"  # after call.ended: the whole transcript
    TRANSCRIPTION_ERROR = "transcription.error"
    TRANSCRIPTION_FAILOVER = "transcription.failover"
    TRANSCRIPTION_PAUSED = "transcription.paused"
    TRANSCRIPTION_RESUMED = "transcription.resumed"
    DTMF = "dtmf"
    CALL_ALERT = "call.alert"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundEvent:
    """One webhook event. ``id`` is the Standard Webhooks ``webhook-id``: stable across retries.

    ``body`` is the exact JSON that is signed, posted and shown on the live feed, encoded once
    when the event is made; build events with ``make_event`` so that it always matches
    ``type``, ``timestamp`` and ``data``. ``call_id`` and ``leg`` repeat what ``data`` says,
    for routing and logging without reading it; ``targets`` names the webhook targets the
    call was routed to.
    """

    id: str
    type: EventType
    timestamp: str
    data: Mapping[str, object]
    call_id: str
    leg: str | None = None
    targets: tuple[str, ...] = ()
    body: bytes
    # The result's times (``bridge.stages``), for latency metrics and traces: in memory only.
    timing: Timing | None = field(default=None, compare=False, repr=False)


def make_event(event_type: EventType, data: Mapping[str, object], *, call_id: str,
               leg: str | None = None, targets: tuple[str, ...] = (),
               timing: Timing | None = None) -> OutboundEvent:
    """A new outgoing event: a fresh ``webhook-id``, the time now (UTC, milliseconds) and
    its body encoded once. ``data`` must not change afterwards: the body is already built."""
    timestamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return OutboundEvent(id=f"msg_{uuid.uuid4().hex}", type=event_type, timestamp=timestamp,
                         data=data, call_id=call_id, leg=leg, targets=targets,
                         body=encode_body(event_type, timestamp, data), timing=timing)


def encode_body(event_type: EventType, timestamp: str, data: Mapping[str, object]) -> bytes:
    """The webhook body: ``{"type", "timestamp", "data"}`` as compact UTF-8 JSON."""
    body = {"type": str(event_type), "timestamp": timestamp, "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
