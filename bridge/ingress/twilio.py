"""Twilio Media Streams (and the Twilio-compatible streams that copy it).

Messages: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; JSON text only.
Counters (``sequenceNumber``, ``chunk``, ``timestamp``) are JSON strings in Twilio's own
traffic and numbers in some compatible platforms: both are accepted. The media format is
always µ-law 8 kHz for Twilio, but the announced ``mediaFormat`` is honoured all the same.
DTMF names its track ``inbound_track``; it is normalised like media tracks.
"""

from __future__ import annotations

from typing import Any

from bridge.events import StreamStarted
from bridge.ingress.base import (
    JsonMediaDialect,
    get_counter,
    get_encoding,
    get_object,
    get_parameters,
    get_str,
    get_tracks,
)


class TwilioDialect(JsonMediaDialect):
    """Sans-I/O parser for Twilio Media Streams."""

    name = "twilio"

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        start = get_object(message, "start")
        media_format = get_object(start, "mediaFormat", required=False)
        return StreamStarted(
            provider=self.name,
            call_id=get_str(start, "callSid"),
            stream_id=get_str(start, "streamSid", default=message.get("streamSid")),
            encoding=get_encoding(media_format.get("encoding", "audio/x-mulaw")),
            sample_rate=get_counter(media_format, "sampleRate") or 8000,
            tracks=get_tracks(start, ["inbound"]),
            custom_parameters=get_parameters(start.get("customParameters")),
        )
