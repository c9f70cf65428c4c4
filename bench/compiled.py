#!/usr/bin/env python3
"""CPU of the hottest pure-Python per-frame functions, to compare a compiled build of them.

Times, in this process, each function the bridge calls for every media message:

- ``parse``: the Twilio dialect's ``receive_text`` then ``events()`` on a media message
  (``bridge/ingress/base.py``, ``twilio.py``, with ``bridge/numbers.py`` under it);
- ``parse_floor``: only the C that parsing calls, ``orjson.loads`` and ``a2b_base64`` of the
  payload, the part no compiler of ours can shrink;
- ``counter``: ``get_counter`` alone on a media object's string timestamp (``numbers.py``);
- ``reframe``: ``Reframer.push`` of a 20 ms µ-law frame, 100 ms chunks
  (``bridge/codecs/reframe.py``);
- ``leg_audio``: ``LegAudio.push`` of the same frames, each chunk taken off as the sender does
  (``bridge/legs/audio.py`` over the reframer).

``--root`` imports ``bridge`` from another copy of the source tree, such as one where some
modules were compiled with mypyc; run the plain tree and the compiled one in turn, pinned to
one core, several times, and compare the best figures:

    taskset -c 1 python bench/compiled.py --root /tmp/compiled-plain
    taskset -c 1 python bench/compiled.py --root /tmp/compiled-all

Each stage runs ``--repeat`` times over ``--frames`` frames; the best and the median are
printed in µs per call.
"""

from __future__ import annotations

import argparse
import binascii
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson


def per_call(repeat: int, count: int, run: Callable[[], None]) -> tuple[float, float]:
    """Best and median µs per call over ``repeat`` runs of ``count`` calls."""
    results = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()
        run()
        results.append((time.process_time() - start) / count * 1e6)
    return min(results), statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the source tree to import bridge from")
    parser.add_argument("--frames", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    # Imported here, after --root is on the path, so that its bridge is the one measured.
    from bridge.codecs.reframe import Reframer
    from bridge.events import AudioEncoding, Track
    from bridge.ingress.base import get_counter
    from bridge.ingress.twilio import TwilioDialect
    from bridge.legs.audio import LegAudio
    from bridge.simulate import CallSpec, build_call

    frames = args.frames
    audio = bytes(range(256)) * (frames * 160 // 256 + 1)
    messages = [text for _, text in build_call(CallSpec("twilio", AudioEncoding.PCMU, {
        Track.INBOUND: audio[:frames * 160]}))]
    media = [text for text in messages if text.startswith('{"event":"media"')]
    head = messages[:messages.index(media[0])]  # connected and start
    payload = audio[:160]
    media_object = {"track": "inbound", "chunk": "12", "timestamp": "123456",
                    "payload": "AAAA"}

    def parse() -> None:
        dialect = TwilioDialect()
        for text in head:
            dialect.receive_text(text)
        dialect.events()
        for text in media:
            dialect.receive_text(text)
            dialect.events()

    def parse_floor() -> None:
        for text in media:
            binascii.a2b_base64(orjson.loads(text)["media"]["payload"], strict_mode=True)

    def counter() -> None:
        for _ in range(frames):
            get_counter(media_object, "timestamp")

    def reframe() -> None:
        reframer = Reframer(AudioEncoding.PCMU, chunk_ms=100)
        for n in range(frames):
            reframer.push(payload, n * 20)

    def leg_audio() -> None:
        leg = LegAudio(AudioEncoding.PCMU, sample_rate=8000, chunk_ms=100, reorder_window=5,
                       max_gap_fill_ms=5000, max_buffer_ms=10_000, replay_ms=10_000)
        for n in range(frames):
            if leg.push(payload, n * 20):
                leg.stamp_ready(0.0)
                for chunk in leg.ready_chunks():
                    leg.sent(chunk)

    print(f"bridge from {args.root}; {len(media)} media messages, {frames} frames")
    for name, run, count in (("parse", parse, len(media)),
                             ("parse_floor", parse_floor, len(media)), ("counter", counter, frames),
                             ("reframe", reframe, frames), ("leg_audio", leg_audio, frames)):
        best, median = per_call(args.repeat, count, run)
        print(f"{name:11s} best {best:6.3f} µs   median {median:6.3f} µs")


if __name__ == "__main__":
    main()
