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


def pcm_voice(f0_hz: int, ms: int, amplitude: int = 6000) -> bytes:
    """A stand-in for voiced speech: a buzz at ``f0_hz`` with its harmonics up to 3.6 kHz,
    falling as 1/k, like the glottal source of a vowel. The WebRTC voice-activity detector
    takes it for speech from its first frame to its last, where it may take a steady pure
    tone for noise after a few frames. ``f0_hz`` must divide 8000 (one period is repeated).
    """
    if RATE % f0_hz:
        raise ValueError("f0_hz must divide 8000")
    period = RATE // f0_hz
    harmonics = [k for k in range(1, 64) if f0_hz * k < 3600]
    one = b"".join(struct.pack("<h", int(amplitude * 0.5 * sum(
        math.sin(2 * math.pi * k * n / period) / k for k in harmonics))) for n in range(period))
    samples = RATE * ms // 1000
    return (one * (samples // period + 1))[: 2 * samples]


def pcm_silence(ms: int) -> bytes:
    return b"\x00\x00" * (RATE * ms // 1000)


def pcm_program(*parts: tuple[str, int] | tuple[str, int, float]) -> bytes:
    """``("tone", ms, hz)``, ``("voice", ms, f0)`` and ``("silence", ms)`` parts joined into
    16-bit PCM."""
    out = b""
    for part in parts:
        if part[0] == "tone":
            out += pcm_tone(part[2], part[1])  # type: ignore[misc]
        elif part[0] == "voice":
            out += pcm_voice(int(part[2]), part[1])  # type: ignore[misc]
        else:
            out += pcm_silence(part[1])
    return out


def ulaw(pcm: bytes) -> bytes:
    return audioop.lin2ulaw(pcm, 2)


def alaw(pcm: bytes) -> bytes:
    return audioop.lin2alaw(pcm, 2)
