"""Plivo Audio Streams.

No ``connected`` message, and often no ``stop`` (the socket just closes). Counters are JSON
numbers; ``media.timestamp`` is Unix time in ms (only differences matter to the leg). The
codec comes from ``start.mediaFormat``: ``audio/x-mulaw`` at 8 kHz, or ``audio/x-l16`` at
8 or 16 kHz (Plivo's XML default is L16: raw little-endian samples). ``extra_headers``
(``k=v;k2=v2``) become the call's custom parameters. Playback acknowledgements
(``playedStream``, also seen as ``played``, and ``clearedAudio``) are ignored.
"""

from __future__ import annotations

from typing import Any

from bridge.events import StreamStarted
from bridge.ingress.base import (
    JsonMediaDialect,
    flat_parameters,
    get_encoding,
    get_id,
    get_object,
    get_sample_rate,
    get_tracks,
)


def parse_extra_headers(value: object) -> dict[str, str]:
    """``"userId=12345;sessionId=abc"`` (or an object) as a flat mapping."""
    if isinstance(value, dict):
        return flat_parameters(value.items())
    if not isinstance(value, str):
        return {}
    pairs = (item.partition("=") for item in value.replace(",", ";").split(";"))
    return flat_parameters((k.strip(), v.strip()) for k, sep, v in pairs if sep and k.strip())


class PlivoDialect(JsonMediaDialect):
    """Sans-I/O parser for Plivo Audio Streams."""

    name = "plivo"
    ignored_events = frozenset({"playedStream", "played", "clearedAudio"})

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        start = get_object(message, "start")
        media_format = get_object(start, "mediaFormat", required=False)
        return StreamStarted(
            provider=self.name,
            call_id=get_id(start, "callId"),
            stream_id=get_id(start, "streamId", default=message.get("streamId")),
            encoding=get_encoding(media_format.get("encoding", "audio/x-l16")),
            sample_rate=get_sample_rate(media_format, "sampleRate"),
            tracks=get_tracks(start, ["inbound"]),
            custom_parameters=parse_extra_headers(message.get("extra_headers")),
        )
