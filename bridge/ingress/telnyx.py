"""Telnyx media streaming (Call Control ``stream_url`` and TeXML ``<Stream>``).

Like Twilio's in shape, with snake_case keys, ``stream_id`` at the top level (not inside
``start``), the codec announced in ``start.media_format.encoding`` as ``PCMU``/``PCMA`` (older
material: ``audio/x-mulaw``), and an ``error`` event. Telnyx documents the error body both as
``payload`` (code as a number) and as ``error`` (code as a string); both are read.
Telnyx does not guarantee media order: the leg's reorder buffer takes care of it.
"""

from __future__ import annotations

from typing import Any

from bridge.events import ProviderErrorReported, StreamStarted
from bridge.ingress.base import (
    JsonMediaDialect,
    get_counter,
    get_encoding,
    get_object,
    get_parameters,
    get_str,
    get_tracks,
)


class TelnyxDialect(JsonMediaDialect):
    """Sans-I/O parser for Telnyx media streams."""

    name = "telnyx"
    has_error_event = True

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        start = get_object(message, "start")
        media_format = get_object(start, "media_format", required=False)
        return StreamStarted(
            provider=self.name,
            call_id=get_str(start, "call_control_id"),
            stream_id=get_str(message, "stream_id", default=start.get("stream_id")),
            encoding=get_encoding(media_format.get("encoding", "PCMU")),
            sample_rate=get_counter(media_format, "sample_rate") or 8000,
            # Telnyx's start names no tracks; media says which one each frame belongs to.
            tracks=get_tracks(start, ["inbound"]),
            custom_parameters=get_parameters(start.get("custom_parameters")),
        )

    def _parse_error(self, message: dict[str, Any]) -> ProviderErrorReported:
        body = message.get("payload")
        if not isinstance(body, dict):
            body = get_object(message, "error")
        return ProviderErrorReported(
            code=get_str(body, "code", default=""),
            title=get_str(body, "title", default=""),
            detail=get_str(body, "detail", default=""),
        )
