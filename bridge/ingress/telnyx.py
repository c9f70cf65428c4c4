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
from bridge.codecs.transcode import DECODERS, PacketDecoder
from bridge.events import AudioEncoding, ProviderErrorReported, StreamStarted, Track
from bridge.ingress.base import (
    JsonMediaDialect,
    StartKeys,
    get_object,
    get_sample_rate,
    short_text,
)


class TelnyxDialect(JsonMediaDialect):
    """Sans-I/O parser for Telnyx media streams."""

    name = "telnyx"
    has_error_event = True
    start_keys = StartKeys(call_id="call_control_id", stream_id="stream_id",
                           media_format="media_format", sample_rate="sample_rate",
                           custom_parameters="custom_parameters", default_encoding="PCMU")

    _decoders: dict[Track, PacketDecoder] | None = None

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        media_format = get_object(get_object(message, "start"), "media_format", required=False)
        codec = short_text(media_format.get("encoding")).lower()
        if codec in DECODERS:
            # G.722 and Opus are decoded here, per track, and the legs carry L16.
            rate = get_sample_rate(media_format, "sample_rate")
            probe = PacketDecoder(codec, rate)
            self._decoders = {}
            self._codec = (codec, rate)
            media_format["encoding"] = "L16"
            media_format["sample_rate"] = probe.rate
        return super()._parse_start(message)

    def _accept_start(self, message: dict[str, Any]) -> None:
        super()._accept_start(message)
        # G.711 is kept as it came: no call per media message to return it unchanged.
        self._converts_audio = self._decoders is not None or self.encoding is AudioEncoding.L16

    def _track_audio(self, track: Track, payload: bytes) -> bytes:
        if self._decoders is not None:
            decoder = self._decoders.get(track)
            if decoder is None:
                decoder = self._decoders[track] = PacketDecoder(*self._codec)
            return decoder.decode(payload)
        # Telnyx sends L16 in network byte order (RFC 2586): big-endian.
        return swap_l16(payload) if self.encoding is AudioEncoding.L16 else payload

    def _parse_error(self, message: dict[str, Any]) -> ProviderErrorReported:
        body = message.get("payload")
        if not isinstance(body, dict):
            body = get_object(message, "error")
        return ProviderErrorReported(
            code=short_text(body.get("code"), 40),
            title=short_text(body.get("title"), 200),
            detail=short_text(body.get("detail"), 200),
        )
