#!/usr/bin/env python3
"""What latency accounting costs, in process: per chunk and per final, tracing off and on.

* Per chunk: a leg's audio path as the bridge runs it (100 ms chunks of G.711 pushed as
  20 ms frames, each chunk taken and reported sent), without and with what
  ``frame_to_upstream`` adds (one clock read when a push completes a chunk, one when it is
  sent, one tally observation). Tracing adds nothing per chunk.
* Per final: what a final's times cost on its way from the redactor to the webhook
  (``Stages.track``, ``stored``, ``posting``, ``settled``) with tracing off (what every
  bridge pays), and on (the utterance span and its children made and handed to a
  ``BatchSpanProcessor`` whose exporter discards them, so the network is not measured).

CPU time (``time.process_time``), best of ``--repeat`` runs. Pin it to one core:

    PYTHONPATH=. taskset -c 1 python bench/tracing.py
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.events import AudioEncoding
from bridge.legs.audio import LegAudio
from bridge.stages import Stages, StageTally, Timing

FRAME = b"\x7f" * 160  # 20 ms of G.711 µ-law


def best(run: Callable[[], None], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        run()
        times.append(time.process_time() - start)
    return min(times)


def chunks(n_chunks: int, measured: bool) -> Callable[[], None]:
    def run() -> None:
        audio = LegAudio(AudioEncoding.PCMU, sample_rate=8000, chunk_ms=100, reorder_window=4,
                         max_gap_fill_ms=1000, max_buffer_ms=5000, replay_ms=10_000)
        tally = StageTally()
        monotonic = time.monotonic
        timestamp = 0
        for _ in range(n_chunks):
            for _ in range(5):
                ready = audio.push(FRAME, timestamp)
                timestamp += 20
            if ready and measured:
                audio.stamp_ready(monotonic())
            for chunk in audio.ready_chunks():
                ready_at = audio.sent(chunk)
                if measured and ready_at is not None:
                    tally.observe(monotonic() - ready_at)
            audio.forget_until(audio.sent_ms)  # a final now and then keeps the replay short
    return run


def finals(n_finals: int, stages: Stages, parent: object | None = None) -> Callable[[], None]:
    def run() -> None:
        now = time.monotonic()
        for n in range(n_finals):
            timing = Timing(now, engine_s=0.2, parent=parent)
            timing.released_at = now
            event_id = f"msg_{n}"
            stages.track(event_id, timing)
            stages.stored(event_id, now + 0.001)
            stages.posting(event_id, now + 0.002)
            stages.settled(event_id, now + 0.003, 200)
    return run


def traced(n_finals: int, repeat: int) -> float:
    """Best CPU time of ``n_finals`` finals with tracing on, spans discarded on export."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from bridge.tracing import Tracing

    class Discard(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=Resource.create({"service.name": "callbridge"}))
    provider.add_span_processor(BatchSpanProcessor(Discard(), max_queue_size=1 << 20))
    tracing = Tracing(provider)
    leg = tracing.leg_span(call_id="CA1", leg="inbound", engine="telnyx", dialect="twilio")
    try:
        return best(finals(n_finals, Stages(tracing), leg), repeat)
    finally:
        leg.end()
        provider.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--finals", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    # Alternated, so that a neighbour's load on the machine falls on both alike.
    plain = measured = float("inf")
    for _ in range(args.repeat):
        plain = min(plain, best(chunks(args.chunks, measured=False), 1))
        measured = min(measured, best(chunks(args.chunks, measured=True), 1))
    per = 1e6 / args.chunks
    print(f"per chunk (100 ms, 5 frames), {args.chunks} chunks, best of {args.repeat}:")
    print(f"  audio path alone                   {plain * per:7.2f} us")
    print(f"  with frame_to_upstream measured    {measured * per:7.2f} us "
          f"(+{(measured - plain) * per:.2f} us; tracing adds nothing per chunk)")

    off = best(finals(args.finals, Stages()), args.repeat)
    print(f"per final, {args.finals} finals, best of {args.repeat}:")
    print(f"  stage times, tracing off           {off * 1e6 / args.finals:7.2f} us")
    try:
        on = traced(args.finals, args.repeat)
    except ImportError:
        print("  tracing on: the otel extra is not installed (pip install 'callbridge[otel]')")
        return
    print(f"  stage times, tracing on (5 spans)  {on * 1e6 / args.finals:7.2f} us "
          "(made and queued; export runs on the processor's thread)")


if __name__ == "__main__":
    main()
