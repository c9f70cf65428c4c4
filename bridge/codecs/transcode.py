"""Decoding the compressed codecs some providers stream (Telnyx: G.722, Opus), one RTP
payload at a time, to 16-bit mono PCM. FFmpeg's decoders through PyAV (the optional
``callbridge[codecs]`` extra); AMR-WB is not decoded (its RTP payload needs
depacketising first), so it is refused with the setting to change.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.errors import UnsupportedData

# Announced name -> (FFmpeg decoder, output rate or None for the announced rate)
DECODERS: Final = {"g722": ("g722", 16000), "opus": ("opus", None)}


def decoder_available() -> bool:
    try:
        import av  # noqa: F401  (probing only)
    except ImportError:
        return False
    return True


class PacketDecoder:
    """Decodes one leg's packets; keep one per track (decoders carry state)."""

    def __init__(self, codec: str, announced_rate: int) -> None:
        name = codec.lower()
        if name not in DECODERS:
            raise UnsupportedData(f"media encoding {codec!r} is not decoded by callbridge: ask "
                                  "the provider for PCMU, PCMA or L16 (Telnyx: stream_codec)")
        if not decoder_available():
            raise UnsupportedData(f"decoding {codec} needs PyAV: pip install "
                                  "'callbridge[codecs]', or ask the provider for PCMU, PCMA or "
                                  "L16 (Telnyx: stream_codec)")
        import av

        decoder, rate = DECODERS[name]
        self.rate: int = rate or (announced_rate if announced_rate in (8000, 16000) else 16000)
        self._av: Any = av
        context: Any = av.CodecContext.create(decoder, "r")
        self._context = context
        self._context.sample_rate = 16000 if name == "g722" else self.rate
        self._context.layout = "mono"
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        self.undecodable = 0

    def decode(self, payload: bytes) -> bytes:
        """PCM for one payload; an undecodable packet yields nothing (counted), like a lost
        one: the leg fills the hole with silence."""
        out = bytearray()
        try:
            for frame in self._context.decode(self._av.Packet(payload)):
                for pcm in self._resampler.resample(frame):
                    out += bytes(pcm.planes[0])[: pcm.samples * 2]
        except self._av.FFmpegError:
            self.undecodable += 1
            return b""
        return bytes(out)
