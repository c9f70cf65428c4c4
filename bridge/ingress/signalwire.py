"""SignalWire (Compatibility/cXML) Media Streams: Twilio's messages, with a choice of codec.

SignalWire's ``codec`` attribute picks PCMU (default), PCMA, ``L16``, ``L16@16000h`` or
``L16@24000h``; the stream announces it in ``start.mediaFormat``, which is what is decoded,
in either spelling (``audio/x-l16`` with ``sampleRate``, or ``L16@16000h``). L16 is taken in
network byte order, as RTP's L16 is (the codec names are RTP's).
"""

from __future__ import annotations

from typing import Any

from bridge.codecs.pcm import swap_l16
from bridge.events import AudioEncoding, StreamStarted
from bridge.ingress.base import MAX_SAMPLE_RATE, get_object
from bridge.ingress.twilio import TwilioDialect
from bridge.numbers import read_int


class SignalWireDialect(TwilioDialect):
    """Sans-I/O parser for SignalWire media streams."""

    name = "signalwire"

    def _parse_start(self, message: dict[str, Any]) -> StreamStarted:
        media_format = get_object(get_object(message, "start"), "mediaFormat", required=False)
        encoding = media_format.get("encoding")
        if isinstance(encoding, str) and "@" in encoding:  # "L16@16000h"
            codec, _, rate = encoding.partition("@")
            media_format["encoding"] = codec
            media_format["sampleRate"] = read_int(rate.rstrip("hHz") or 8000,
                                                  field="mediaFormat.encoding rate",
                                                  low=1, high=MAX_SAMPLE_RATE)
        return super()._parse_start(message)

    def _audio(self, payload: bytes) -> bytes:
        return swap_l16(payload) if self.encoding is AudioEncoding.L16 else payload
