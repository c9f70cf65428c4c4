"""Twilio Media Streams (and the Twilio-compatible streams that copy it).

Messages: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``; JSON text only.
Counters (``sequenceNumber``, ``chunk``, ``timestamp``) are JSON strings in Twilio's own
traffic and numbers in some compatible platforms: both are accepted. The media format is
always µ-law 8 kHz for Twilio, but the announced ``mediaFormat`` is honoured all the same.
DTMF names its track ``inbound_track``; it is normalised like media tracks.
"""

from __future__ import annotations

from bridge.ingress.base import JsonMediaDialect, StartKeys


class TwilioDialect(JsonMediaDialect):
    """Sans-I/O parser for Twilio Media Streams."""

    name = "twilio"
    start_keys = StartKeys(call_id="callSid", stream_id="streamSid", media_format="mediaFormat",
                           sample_rate="sampleRate", custom_parameters="customParameters",
                           default_encoding="audio/x-mulaw")
