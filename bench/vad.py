#!/usr/bin/env python3
"""Talk analytics' cost: CPU per leg-second of the observer at 1,000 legs' worth of audio.

Feeds ``--legs`` legs of ``--seconds`` of audio each, in ``--chunk-ms`` chunks as the
bridge's reframer cuts them (100 ms by default), round robin across the legs as a live
process would, through one ``TalkAnalytics`` observer per two-leg call, all in this process
on one core. Audio: the shipped sample call (espeak-ng speech with its pauses, µ-law, about
half of it speech), each leg starting at its own offset. Prints CPU time (``process_time``)
per leg-second for, in turn:

1. decoding µ-law to 16-bit PCM alone (``audioop``);
2. the detector alone on decoded frames (``webrtcvad``);
3. the whole observer: decode, frames, detector, smoothing, spans (what a call pays);
4. the legs' ``LegVoice`` alone, with 30 ms frames and with 20 ms frames;
5. ``figures()`` once per call at the end, as ``call.ended`` and the admin view ask.

    PYTHONPATH=. python bench/vad.py --legs 1000 --seconds 30
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import webrtcvad

from bridge.analytics.talk import TalkAnalytics
from bridge.analytics.voice import LegVoice
from bridge.codecs import g711
from bridge.config import AnalyticsSettings
from bridge.events import AudioEncoding, Track


def sample_audio() -> bytes:
    sample = resources.files("bridge.samples").joinpath("support_call")
    return sample.joinpath("caller.ulaw").read_bytes() + sample.joinpath("agent.ulaw").read_bytes()


def leg_chunks(audio: bytes, legs: int, seconds: int, chunk_ms: int) -> list[list[bytes]]:
    """For each leg, its chunks: the sample from the leg's own offset, looped."""
    size = chunk_ms * 8
    total = seconds * 8000
    loop = audio * (total // len(audio) + 2)
    out = []
    for leg in range(legs):
        start = (leg * 7919 * 8) % len(audio)  # a prime stride: legs differ
        data = loop[start:start + total]
        out.append([data[n:n + size] for n in range(0, total, size)])
    return out


def cpu(fn: Any) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


class FakeLeg:
    """What ``figures`` reads of a call's leg: its speaker and its pauses (none here)."""

    def __init__(self, speaker: str) -> None:
        self.speaker = speaker
        self.audio = type("Audio", (), {"pauses": [], "position_ms": 0})()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--legs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--chunk-ms", type=int, default=100)
    args = parser.parse_args()
    legs, seconds, chunk_ms = args.legs - args.legs % 2, args.seconds, args.chunk_ms
    leg_seconds = legs * seconds
    chunks = leg_chunks(sample_audio(), legs, seconds, chunk_ms)
    per_round = list(zip(*chunks, strict=True))  # one chunk of every leg, as time passes
    print(f"{legs} legs x {seconds} s of audio in {chunk_ms} ms chunks = {leg_seconds} "
          f"leg-seconds; Python {sys.version.split()[0]}, webrtcvad-wheels "
          f"{webrtcvad.__version__}")

    def decode_only() -> None:
        for row in per_round:
            for data in row:
                g711.decode_ulaw(data)

    decoded = [[g711.decode_ulaw(data) for data in leg] for leg in chunks[:100]]

    def detector_only() -> None:
        # 100 legs' worth, scaled below: decoded audio of every leg would not fit in memory.
        for leg in decoded:
            vad = webrtcvad.Vad(2)
            pcm = b"".join(leg)
            for offset in range(0, len(pcm) - 479, 480):
                vad.is_speech(pcm[offset:offset + 480], 8000)

    settings = AnalyticsSettings()

    def observers() -> tuple[float, list[TalkAnalytics]]:
        calls = [TalkAnalytics(settings, AudioEncoding.PCMU, 8000) for _ in range(legs // 2)]

        def run() -> None:
            tracks = (Track.INBOUND, Track.OUTBOUND)
            for n, row in enumerate(per_round):
                clock = n * chunk_ms
                for leg, data in enumerate(row):
                    calls[leg // 2].audio(tracks[leg % 2], clock, data)

        return cpu(run), calls

    def voices(frame_ms: int) -> float:
        """The legs' detectors alone (no observer around them), with frames of frame_ms."""
        legs_voices = [LegVoice(AudioEncoding.PCMU, 8000, frame_ms=frame_ms)
                       for _ in range(legs)]

        def run() -> None:
            for n, row in enumerate(per_round):
                clock = n * chunk_ms
                for voice, data in zip(legs_voices, row, strict=True):
                    voice.audio(clock, data)

        return cpu(run)

    def per_leg_second(seconds_cpu: float, scale: float = 1.0) -> str:
        return f"{seconds_cpu * scale / leg_seconds * 1000:.4f} ms"

    print(f"1. decode µ-law only:            {per_leg_second(cpu(decode_only))} per leg-second")
    print(f"2. detector only (30 ms frames): "
          f"{per_leg_second(cpu(detector_only), legs / len(decoded))} per leg-second")
    whole, calls = observers()
    print(f"3. whole observer, 30 ms frames: {per_leg_second(whole)} per leg-second "
          f"= {whole / seconds:.3f} of a core for {legs} legs in real time")
    for frame_ms in (30, 20):
        alone = voices(frame_ms)
        print(f"4. LegVoice alone, {frame_ms} ms frames: {per_leg_second(alone)} per "
              f"leg-second = {alone / seconds:.3f} of a core")
    fake_call: Any = type("Call", (), {"legs": {Track.INBOUND: FakeLeg("caller"),
                                                Track.OUTBOUND: FakeLeg("agent")}})()
    figures_cpu = cpu(lambda: [call.figures(fake_call) for call in calls])
    print(f"5. figures() per call:           {figures_cpu / len(calls) * 1e6:.0f} µs")
    sample = calls[0].figures(fake_call)
    talk = [sample["legs"][t]["talk_ms"] for t in ("inbound", "outbound")]
    print(f"   first call: talk {talk} ms of {seconds * 1000} ms per leg")


if __name__ == "__main__":
    main()
