"""Linear PCM helpers and per-codec sizes: what a millisecond of a leg's audio weighs."""

from __future__ import annotations

from typing import Final

from bridge.codecs.g711 import SILENCE_BYTE, audioop
from bridge.events import AudioEncoding

L16_RATES: Final = (8000, 16000, 24000)


def bytes_per_ms(encoding: AudioEncoding, sample_rate: int) -> int:
    """Bytes per millisecond: one byte a sample for G.711, two for 16-bit linear PCM."""
    width = 2 if encoding is AudioEncoding.L16 else 1
    return sample_rate // 1000 * width


def silence_byte(encoding: AudioEncoding) -> int:
    """The byte that repeated is silence in this codec (zero for linear PCM)."""
    return 0 if encoding is AudioEncoding.L16 else SILENCE_BYTE[encoding]


def swap_l16(data: bytes) -> bytes:
    """Big-endian (network order) 16-bit samples to little-endian, or back."""
    return audioop.byteswap(data[: len(data) - len(data) % 2], 2)


def split_stereo(data: bytes, width: int = 2) -> tuple[bytes, bytes]:
    """Interleaved two-channel samples -> (first channel, second channel)."""
    data = data[: len(data) - len(data) % (2 * width)]
    return audioop.tomono(data, width, 1, 0), audioop.tomono(data, width, 0, 1)
