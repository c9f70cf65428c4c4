#!/usr/bin/env python3
"""What keeping a live call's transcript in the outbox costs per final, three ways.

The outbox (SQLite, WAL, ``synchronous=NORMAL``, on local disk) in this process, no event
loop and no network: calls are started, their finals stored in batches as the writer does
under load, each delivered at once to one target, then the calls end. Per way, the time
per final (store + delivery, the call's end included) and the bytes the calls in progress
hold in the file just before they end:

* ``none``: no transcript kept (the outbox before ``call.completed``);
* ``lines``: each final's transcript line in ``live_finals`` (what the bridge does);
* ``rows``: delivered final events kept until their call ends, then deleted (the
  alternative: the rebuild would read the stored bodies).

    python bench/outbox_transcript.py [--calls 200] [--finals 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bridge.delivery.outbox import Outbox, StoredEvent
from bridge.delivery.writer import record
from bridge.events import EventType, make_event

BATCH = 64  # events per transaction: what the writer takes at once under load
WORDS = ["so", "I", "was", "calling", "about", "the", "bill", "I", "got", "this", "month",
         "it", "seems", "too", "high"]


def call_event(kind: EventType, call: str, leg: str | None = None,
               speaker: str | None = None, **data: object) -> StoredEvent:
    made = make_event(kind, {"call_id": call, "stream_id": "MZ", "provider": "twilio",
                             "leg": leg, "speaker": speaker,
                             "custom_parameters": {"queue": "billing"}, **data},
                      call_id=call, leg=leg, targets=("a",))
    return record(made, ("a",))


def final(call: str, sequence: int) -> StoredEvent:
    start = sequence * 3000
    return call_event(EventType.TRANSCRIPT_FINAL, call, leg="inbound", speaker="caller",
                      sequence=sequence, text=" ".join(WORDS), is_final=True,
                      confidence=0.92, start_ms=start, end_ms=start + 2800, redactions=[],
                      words=[{"text": w, "start_ms": start + 200 * n,
                              "end_ms": start + 200 * n + 180, "confidence": 0.9}
                             for n, w in enumerate(WORDS)])


def run(way: str, calls: int, finals: int, directory: Path) -> tuple[float, int]:
    path = directory / f"{way}.db"
    # "rows": retention keeps delivered events; each call's are deleted when it ends.
    outbox = Outbox(path, retention_days=1.0 if way == "rows" else 0.0)
    names = [f"CA{n:05d}" for n in range(calls)]
    started = [call_event(EventType.CALL_STARTED, c) for c in names]
    said = [final(c, s) for s in range(1, finals + 1) for c in names]  # calls interleaved
    if way == "none":
        said = [replace(f, adds=replace(f.adds, line=None)) if f.adds else f for f in said]
    ended = [call_event(EventType.CALL_ENDED, c, reason="stopped") for c in names]
    begin = time.perf_counter()
    for batch_start in range(0, len(started), BATCH):
        outbox.store(started[batch_start:batch_start + BATCH])
    for batch_start in range(0, len(said), BATCH):
        outbox.store(said[batch_start:batch_start + BATCH])
        due, _ = outbox.due_heads("a", time.time(), 10_000)
        for item in due:  # one head per call; the rest on the next rounds
            outbox.mark_delivered(item.event_seq, "a", 204)
    while True:
        due, _ = outbox.due_heads("a", time.time(), 10_000)
        if not due:
            break
        for item in due:
            outbox.mark_delivered(item.event_seq, "a", 204)
    outbox.checkpoint()
    held = path.stat().st_size  # the calls in progress and what they keep
    for batch_start in range(0, len(ended), BATCH):
        chunk = ended[batch_start:batch_start + BATCH]
        outbox.store(chunk)
        if way == "rows":
            with outbox._transaction():  # the alternative's work at each call's end
                outbox.db.executemany("DELETE FROM events WHERE call_id=?",
                                      [(e.call_id,) for e in chunk])
    elapsed = time.perf_counter() - begin
    outbox.close()
    return elapsed / len(said), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--finals", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} cores; {args.calls} calls x {args.finals} finals, "
          f"{args.rounds} rounds (median)")
    ways = ("none", "lines", "rows")
    per_final: dict[str, list[float]] = {way: [] for way in ways}
    sizes: dict[str, list[int]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way in ways:  # interleaved: a busy moment of the machine hits every way
            with tempfile.TemporaryDirectory() as directory:
                cost, size = run(way, args.calls, args.finals, Path(directory))
            per_final[way].append(cost)
            sizes[way].append(size)
    for way in ways:
        print(f"{way:6} {statistics.median(per_final[way]) * 1e6:8.1f} us per final   "
              f"file before the calls end {statistics.median(sizes[way]) / 1024:8.0f} KiB")


if __name__ == "__main__":
    main()
