#!/usr/bin/env python3
"""CPU per leg-second of the PCI-safe recording: spooling while calls run, rendering after.

Feeds ``--legs`` legs (two per call) of G.711 audio in 100 ms chunks, all calls interleaved
as a live process sees them, into ``CallRecording`` observers spooling to a temporary
directory, with a reported key press and a redacted final per call; then renders every
call (in-band DTMF detection, silencing, stereo WAV) one after the other. Prints the CPU
time per second of leg audio for each half, and what 1,000 legs in real time would take.

    python bench/recording.py                    # 1,000 legs of 20 s each
    python bench/recording.py --legs 200 --seconds 60 --format flac
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import structlog

from bridge.artifacts.recording import CallRecording
from bridge.codecs import g711
from bridge.compliance.redact import CREDIT_CARD, Redacted
from bridge.config import ArtifactsSettings
from bridge.events import AudioEncoding, Track, TranscriptResult

SAMPLES = Path(__file__).resolve().parents[1] / "bridge" / "samples" / "support_call"
CHUNK_MS = 100


def python_goertzel_ms_per_second() -> float:
    """The same eight-frequency Goertzel as bridge/compliance/dtmf.py, one Python loop per
    sample: the cost the numpy version avoids (ms of CPU per second of audio)."""
    rate, block = 8000, 205
    coefficients = [2 * math.cos(2 * math.pi * f / rate)
                    for f in (697, 770, 852, 941, 1209, 1336, 1477, 1633)]
    audio = np.frombuffer(g711.decode_ulaw((SAMPLES / "caller.ulaw").read_bytes()),
                          dtype="<i2")[:rate * 5].tolist()
    started = time.process_time()
    for at in range(0, len(audio) - block, block // 2):
        frame = audio[at:at + block]
        for c in coefficients:
            s1 = s2 = 0.0
            for x in frame:
                s1, s2 = x + c * s1 - s2, s1
    return (time.process_time() - started) / 5 * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20, help="audio per leg")
    parser.add_argument("--format", choices=("wav", "flac", "opus"), default="wav")
    args = parser.parse_args()
    # One line per rendered recording would be most of the output.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    calls = args.legs // 2
    legs = {Track.INBOUND: (SAMPLES / "caller.ulaw").read_bytes(),
            Track.OUTBOUND: (SAMPLES / "agent.ulaw").read_bytes()}
    chunk = CHUNK_MS * 8
    settings = ArtifactsSettings(recording=True, recording_format=args.format)
    spool = Path(tempfile.mkdtemp(prefix="callbridge-bench-"))
    try:
        recordings = [CallRecording(spool_dir=spool, name=f"call{n}",
                                    encoding=AudioEncoding.PCMU, sample_rate=8000,
                                    settings=settings) for n in range(calls)]
        card = Redacted("my card is [credit_card]", Counter({CREDIT_CARD: 1}), [(11, 30)])
        result = TranscriptResult("my card is 4111 1111 1111 1111", True, 0.9, 4000, 7000)
        started = time.process_time()
        for at_ms in range(0, args.seconds * 1000, CHUNK_MS):
            for n, recording in enumerate(recordings):
                for track, audio in legs.items():
                    offset = ((at_ms + n * 340) * 8) % (len(audio) - chunk)
                    recording.audio(track, at_ms, audio[offset:offset + chunk])
                if at_ms == 5000:
                    recording.dtmf(Track.INBOUND, at_ms)
                    recording.final(Track.INBOUND, result, card, {"text": card.text})
        spooling = time.process_time() - started
        started = time.process_time()
        rendered = 0
        for recording in recordings:
            rendered += len(await recording.artifacts())
        rendering = time.process_time() - started
    finally:
        shutil.rmtree(spool)
    leg_seconds = calls * 2 * args.seconds
    spool_us = spooling / leg_seconds * 1e6
    render_us = rendering / leg_seconds * 1e6
    print(f"{calls * 2} legs x {args.seconds} s ({leg_seconds} leg-seconds), "
          f"{args.format}, {rendered} recordings")
    print(f"spooling:  {spooling:.2f} s CPU = {spool_us:.1f} us per leg-second")
    print(f"rendering: {rendering:.2f} s CPU = {render_us:.1f} us per leg-second "
          "(in a thread after each call)")
    print(f"1,000 legs in real time: {(spool_us + render_us) * 1000 / 1e6 * 100:.1f} % of "
          "one core")
    print(f"Goertzel as a Python loop per sample: {python_goertzel_ms_per_second():.2f} ms "
          "per leg-second (detection alone)")


if __name__ == "__main__":
    asyncio.run(main())
