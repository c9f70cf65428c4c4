#!/usr/bin/env python3
"""Durable delivery: throughput, added latency, and the event loop's worst stall.

Runs the bridge's dispatcher (SQLite outbox on local disk) in this process and a webhook
receiver in a child process on 127.0.0.1. Phase 1 publishes a burst of finals across many
calls and measures events per second until all are acknowledged. Phase 2 publishes at a
steady rate, like live calls do, and measures the time from ``publish`` to the receiver
having the POST (p50/p99). Throughout, a 5 ms ticker measures how late the event loop runs
(media reading would be delayed by as much).

    python bench/outbox.py [--burst 5000] [--rate 200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bridge.config import OutboxSettings, Secret, Settings, WebhookSettings
from bridge.delivery.dispatcher import DurableDispatcher
from bridge.events import EventType, OutboundEvent, make_event
from bridge.observability import configure_logging

RECEIVER = r"""
import asyncio, json, sys, time
from aiohttp import web
seen = []
async def hook(request):
    body = await request.json()
    seen.append(time.monotonic() - body["data"]["published_at"])
    return web.Response(status=204)
async def report(request):
    return web.json_response(seen)
async def main():
    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/report", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""
SECRET = "whsec_" + "Y2FsbGJyaWRnZS1iZW5jaC1zZWNyZXQtMzItYnl0ZXMh"


def event(n: int, call: int) -> OutboundEvent:
    return make_event(EventType.TRANSCRIPT_FINAL,
                      {"call_id": f"CA{call}", "leg": "inbound", "sequence": n,
                       "text": "a final transcript of ordinary length for a call",
                       "published_at": time.monotonic()},
                      call_id=f"CA{call}", leg="inbound", targets=("default",))


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(0.005)
        stalls.append(time.monotonic() - before - 0.005)


async def main(burst: int, rate: int, seconds: float) -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RECEIVER, stdout=asyncio.subprocess.PIPE)
    assert receiver.stdout is not None
    port = int(await receiver.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    folder = tempfile.mkdtemp(prefix="callbridge-bench-")
    settings = Settings(
        webhooks=WebhookSettings(urls=(url,), secret=Secret(SECRET), allow_private_networks=True,
                                 max_in_flight=16),
        outbox=OutboxSettings(path=str(Path(folder) / "outbox.db")))
    stalls: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(ticker(stalls, stop))
    try:
        async with aiohttp.ClientSession() as http, DurableDispatcher(settings, http) as hub:
            calls = 100
            start = time.monotonic()
            outcomes = []
            for n in range(burst):
                outcomes.append(hub.publish(event(n // calls + 1, n % calls)))
                if n % calls == calls - 1:
                    await asyncio.sleep(0)  # one final per call at a time, as calls produce them
            await asyncio.gather(*outcomes)
            elapsed = time.monotonic() - start
            burst_stall = max(stalls)
            print(f"burst: {burst} finals over {calls} calls delivered in {elapsed:.2f} s = "
                  f"{burst / elapsed:.0f} events/s; loop stall max {burst_stall * 1000:.1f} ms")
            stalls.clear()
            async with http.get(f"http://127.0.0.1:{port}/report") as response:
                skip = len(await response.json())
            outcomes = []
            interval = 1 / rate
            begin = time.monotonic()
            for n in range(int(rate * seconds)):
                delay = begin + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                outcomes.append(hub.publish(event(n // calls + 1, 1000 + n % calls)))
            await asyncio.gather(*outcomes)
            async with http.get(f"http://127.0.0.1:{port}/report") as response:
                latencies = sorted((await response.json())[skip:])
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
            print(f"steady: {rate} events/s for {seconds:g} s: publish -> receiver p50 "
                  f"{p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1] * 1000:.1f} ms; "
                  f"loop stall p99 {sorted(stalls)[int(0.99 * (len(stalls) - 1))] * 1000:.1f} ms,"
                  f" max {max(stalls) * 1000:.1f} ms")
    finally:
        stop.set()
        await tick
        receiver.terminate()
        await receiver.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    configure_logging("warning", "console")
    asyncio.run(main(options.burst, options.rate, options.seconds))
