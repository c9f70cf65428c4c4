#!/usr/bin/env python3
"""How many legs one recognition core sustains in real time, measured through the server.

Starts the embedded recognizer with one worker process, streams N legs of the sample call
at once at real-time pace (20 ms messages; each caller/agent pair starts 1.7 s after the
previous one, as calls do not all speak in step), and measures each final's latency: from the
moment the utterance's last audio was sent to the moment its final arrived (this includes
the 600 ms endpointing silence). A load holds when every leg gets all its finals and the
95th percentile latency stays under 2 s. With --partials the legs ask for interim results
(a re-decode of the utterance so far per ``local_stt.partial_every_ms`` of new speech).

Pin it to one core so "legs per core" means what it says (the event loop, the streaming
clients and the worker then share that core, which makes the figure a floor):

    taskset -c 1 python bench/local_capacity.py [--model M] [--partials] [--legs 4 8 12 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bridge.config import LocalSttSettings
from bridge.stt.local import recognizer
from bridge.stt.local.protocol import PATH
from bridge.stt.local.server import create_stt_app

SAMPLE = Path(__file__).resolve().parents[1] / "bridge" / "samples" / "support_call"
FRAME = 160


async def leg(url: str, audio: bytes, start: float) -> tuple[list[float], int]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        async def read() -> int:
            finals = 0
            async for message in ws:
                frame = json.loads(message.data)
                if "errors" in frame:
                    print(f"  error frame: {frame['errors'][0]['code']}", flush=True)
                elif frame.get("is_final"):
                    finals += 1
                    audio_end = frame["start_time"] + frame["duration"]
                    latencies.append(time.monotonic() - (start + audio_end))
            return finals
        reader = asyncio.create_task(read())
        for n, offset in enumerate(range(0, len(audio), FRAME)):
            delay = start + n * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send_bytes(audio[offset:offset + FRAME])
        await ws.send_str('{"type":"CloseStream"}')
        finals = await reader
    return latencies, finals


async def run(legs: int, url: str) -> bool:
    tracks = [(SAMPLE / "caller.ulaw").read_bytes(), (SAMPLE / "agent.ulaw").read_bytes()]
    expected = {0: 3, 1: 4}
    # Legs start staggered, as calls do: in step, every leg's utterance would end at once.
    start = time.monotonic() + 0.5
    stagger = 1.7
    results = await asyncio.gather(*(leg(url, tracks[i % 2], start + (i // 2) * stagger)
                                     for i in range(legs)))
    latencies = sorted(x for lat, _ in results for x in lat)
    complete = all(finals == expected[i % 2] for i, (_, finals) in enumerate(results))
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    held = complete and p95 < 2.0
    print(f"legs={legs:3}  finals complete={complete}  latency p50={p50:.2f}s "
          f"p95={p95:.2f}s max={latencies[-1]:.2f}s  {'held' if held else 'FELL BEHIND'}",
          flush=True)
    return held


async def main(legs: list[int], model: str, partials: bool) -> None:
    settings = LocalSttSettings(model=model, workers=1, max_sessions=1000)
    runner = web.AppRunner(create_stt_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}{PATH}?input_format=mulaw&sample_rate=8000"
    if partials:
        url += "&interim_results=true"
    every = f"every {settings.partial_every_ms} ms" if partials else "off"
    print(f"model={model} partials={every} load={os.getloadavg()[0]:.2f}", flush=True)
    try:
        for count in legs:
            if not await run(count, url):
                break
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--legs", type=int, nargs="+", default=[4, 8, 12, 16, 20])
    parser.add_argument("--model", choices=recognizer.MODELS, default=recognizer.WHISPER)
    parser.add_argument("--partials", action="store_true", help="ask for interim results")
    args = parser.parse_args()
    asyncio.run(main(args.legs, args.model, args.partials))
