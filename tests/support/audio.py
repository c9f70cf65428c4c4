"""Synthetic telephone audio for tests: tones and silence, G.711-encoded."""

from __future__ import annotations

import math
import struct
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

RATE = 8000


def pcm_tone(freq_hz: float, ms: int, amplitude: int = 8000) -> bytes:
    samples = RATE * ms // 1000
    return b"".join(struct.pack("<h", int(amplitude * math.sin(2 * math.pi * freq_hz * n / RATE)))
                    for n in range(samples))


def pcm_silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


def pcm_program(*parts: tuple[str, int] | tuple[str, int, float]) -> bytes:
    """``("tone", ms, hz)`` and ``("silence", ms)`` parts joined into 16-bit PCM."""
    out = b""
    for part in parts:
        if part[0] == "tone":
            out += pcm_tone(part[2], part[1])  # type: ignore[misc]
        else:
            out += pcm_silence(part[1])
    return out


def ulaw(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


def alaw(pcm: bytes) -> bytes:
    return audioop.lin2alaw(pcm, 2)
