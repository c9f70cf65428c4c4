"""Compressed test audio, made with FFmpeg's encoders through PyAV: the encoder's packets."""

from __future__ import annotations

from typing import Any

import av


def encode_packets(pcm: bytes, codec: str, rate: int) -> list[bytes]:
    """16-bit mono PCM at ``rate`` -> the encoder's packets (what RTP would carry)."""
    context: Any = av.CodecContext.create(codec, "w")
    context.sample_rate = rate
    context.layout = "mono"
    context.format = "s16" if codec == "g722" else "flt"
    if codec != "g722":
        context.bit_rate = 32000
    resampler = av.AudioResampler(format=context.format.name, layout="mono", rate=rate)
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    fifo = av.AudioFifo()
    for converted in resampler.resample(frame):
        fifo.write(converted)
    size = context.frame_size or rate // 50
    packets: list[bytes] = []
    while (chunk := fifo.read(size)) is not None:
        packets += [bytes(p) for p in context.encode(chunk)]
    packets += [bytes(p) for p in context.encode(None)]
    return packets
