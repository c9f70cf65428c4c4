"""Linear PCM conversions: any WAV-style PCM to 16-bit mono at a target rate."""

from __future__ import annotations

from bridge.codecs.g711 import audioop


def to_mono_16bit(pcm: bytes, *, sample_width: int, channels: int) -> bytes:
    """Convert interleaved PCM of 1-4 bytes per sample to 16-bit mono (channels averaged)."""
    if sample_width == 1:
        # 8-bit WAV is unsigned; audioop works on signed samples.
        pcm = audioop.bias(pcm, 1, -128)
    if sample_width != 2:
        pcm = audioop.lin2lin(pcm, sample_width, 2)
    if channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    elif channels != 1:
        raise ValueError(f"{channels} channels: only mono and stereo are supported")
    return pcm


def resample(pcm: bytes, *, rate_in: int, rate_out: int) -> bytes:
    """Resample 16-bit mono PCM (audioop's filtered rate conversion)."""
    if rate_in == rate_out:
        return pcm
    converted, _state = audioop.ratecv(pcm, 2, 1, rate_in, rate_out, None)
    return converted
