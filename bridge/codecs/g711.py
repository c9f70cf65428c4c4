"""G.711 µ-law and A-law (ITU-T G.711), 8 kHz, one byte per sample.

The conversions are C code from ``audioop``: the standard library's module up to Python 3.12
and its maintained port ``audioop-lts`` from 3.13 (same import name).
"""

from __future__ import annotations

import warnings
from typing import Final

from bridge.events import AudioEncoding

with warnings.catch_warnings():
    # The standard module warns of its removal in 3.13; audioop-lts replaces it there.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["BYTES_PER_MS", "SAMPLE_RATE", "SILENCE_BYTE", "audioop", "decode", "decode_alaw",
           "decode_ulaw", "encode", "encode_alaw", "encode_ulaw", "silence"]

SAMPLE_RATE: Final = 8000
BYTES_PER_MS: Final = SAMPLE_RATE // 1000  # one byte per sample

# The code word for a zero sample: what a gap is filled with, so it decodes to silence.
SILENCE_BYTE: Final[dict[AudioEncoding, int]] = {
    AudioEncoding.PCMU: 0xFF,
    AudioEncoding.PCMA: 0xD5,
}


def decode_ulaw(data: bytes) -> bytes:
    """µ-law bytes to 16-bit little-endian linear PCM."""
    return audioop.ulaw2lin(data, 2)


def encode_ulaw(pcm: bytes) -> bytes:
    """16-bit little-endian linear PCM to µ-law bytes."""
    return audioop.lin2ulaw(pcm, 2)


def decode_alaw(data: bytes) -> bytes:
    """A-law bytes to 16-bit little-endian linear PCM."""
    return audioop.alaw2lin(data, 2)


def encode_alaw(pcm: bytes) -> bytes:
    """16-bit little-endian linear PCM to A-law bytes."""
    return audioop.lin2alaw(pcm, 2)


def decode(encoding: AudioEncoding, data: bytes) -> bytes:
    """Decode G.711 of either law to 16-bit linear PCM."""
    return decode_ulaw(data) if encoding is AudioEncoding.PCMU else decode_alaw(data)


def encode(encoding: AudioEncoding, pcm: bytes) -> bytes:
    """Encode 16-bit linear PCM to G.711 of either law."""
    return encode_ulaw(pcm) if encoding is AudioEncoding.PCMU else encode_alaw(pcm)


def silence(encoding: AudioEncoding, duration_ms: int) -> bytes:
    """``duration_ms`` of codec silence."""
    return bytes([SILENCE_BYTE[encoding]]) * (duration_ms * BYTES_PER_MS)
