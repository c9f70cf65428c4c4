"""Exotel Stream and Voicebot applets.

Twilio's shape in snake_case (``stream_sid``, ``call_sid``, ``sequence_number``), every
number as a string (``"sample_rate": "8000"``), and audio as base64 16-bit linear PCM
(``audio/x-raw``, little-endian) at 8 kHz by default, 16 or 24 kHz on request. Media
carries no track: Exotel streams the caller only.
"""

from __future__ import annotations

from bridge.ingress.base import JsonMediaDialect, StartKeys


class ExotelDialect(JsonMediaDialect):
    """Sans-I/O parser for Exotel streams."""

    name = "exotel"
    start_keys = StartKeys(call_id="call_sid", stream_id="stream_sid", media_format="media_format",
                           sample_rate="sample_rate", custom_parameters="custom_parameters",
                           default_encoding="audio/x-raw")
