"""Telnyx media streaming (Call Control ``stream_url`` and TeXML ``<Stream>``).

Like Twilio's in shape, with snake_case keys, ``stream_id`` at the top level (not inside
``start``), the codec announced in ``start.media_format.encoding`` as ``PCMU``/``PCMA`` (older
material: ``audio/x-mulaw``), and an ``error`` event. Telnyx documents the error body both as
``payload`` (code as a number) and as ``error`` (code as a string); both are read.
Telnyx's ``start`` names no tracks; each media message says which track it carries.
Telnyx does not guarantee media order: the leg's reorder buffer takes care of it.
"""

from __future__ import annotations

from typing import Any

from bridge.codecs.pcm import swap_l16
from bridge.events import AudioEncoding, ProviderErrorReported
from bridge.ingress.base import JsonMediaDialect, StartKeys, get_object, get_str


class TelnyxDialect(JsonMediaDialect):
    """Sans-I/O parser for Telnyx media streams."""

    name = "telnyx"
    has_error_event = True
    start_keys = StartKeys(call_id="call_control_id", stream_id="stream_id",
                           media_format="media_format", sample_rate="sample_rate",
                           custom_parameters="custom_parameters", default_encoding="PCMU")

    def _audio(self, payload: bytes) -> bytes:
        # Telnyx sends L16 in network byte order (RFC 2586): big-endian.
        return swap_l16(payload) if self.encoding is AudioEncoding.L16 else payload

    def _parse_error(self, message: dict[str, Any]) -> ProviderErrorReported:
        body = message.get("payload")
        if not isinstance(body, dict):
            body = get_object(message, "error")
        return ProviderErrorReported(
            code=get_str(body, "code", default=""),
            title=get_str(body, "title", default=""),
            detail=get_str(body, "detail", default=""),
        )
