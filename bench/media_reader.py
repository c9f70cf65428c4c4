#!/usr/bin/env python3
"""CPU per media message in the media reader: aiohttp's queue and heartbeat against the
direct hand-off (``bridge.web.media_socket.MediaSocket``).

A real aiohttp server on 127.0.0.1 parses Twilio media messages with the bridge's own
parser; each message's events are counted and dropped (no call, no upstream), so the figure
is the reading path alone. A client in a child process (pinned to another core when there is
one) opens ``--connections`` WebSockets and sends one 20 ms media message on each per round,
a round every ``--interval-ms``, so each message mostly arrives in a read of its own, as on a
bridge with many calls. The server's CPU (``time.process_time``) is taken from the first
media message to the last; the modes alternate, best of ``--repeat``:

    taskset -c 1 python bench/media_reader.py --connections 200 --rounds 250 --repeat 3
    taskset -c 1 python bench/media_reader.py --loop uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
from typing import Any

from aiohttp import WSMsgType, web
from websockets.client import ClientProtocol
from websockets.uri import parse_uri

from bridge.events import AudioFrame
from bridge.ingress import make_dialect
from bridge.web.media_socket import MediaSocket, direct_reading_available

MODES = ("queue", "direct")


class Counter:
    """Media frames parsed, and the CPU time from the first to the last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.frames = 0
        self.started_cpu = 0.0
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def add(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, AudioFrame):
                if self.frames == 0:
                    self.started_cpu = time.process_time()
                self.frames += 1
                if self.frames == self.expected and not self.done.done():
                    self.done.set_result(time.process_time() - self.started_cpu)


async def queued(request: web.Request) -> web.WebSocketResponse:
    """The reader as it was: aiohttp's queue, ``async for``, a 30 s heartbeat."""
    counter: Counter = request.app["counter"]
    ws = web.WebSocketResponse(heartbeat=30.0)
    await ws.prepare(request)
    parser = make_dialect("twilio")
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            parser.receive_text(message.data)
            counter.add(parser.events())
    return ws


async def direct(request: web.Request) -> web.WebSocketResponse:
    """Messages handed to the parser from aiohttp's frame reader; idle check on a timer."""
    counter: Counter = request.app["counter"]
    ws = MediaSocket()
    await ws.prepare(request)
    parser = make_dialect("twilio")

    def handle(kind: WSMsgType, data: Any) -> bool:
        parser.receive_text(data)
        counter.add(parser.events())
        return False

    ws.hand_to(handle)
    watch = asyncio.create_task(ws.watch_idle(15.0))
    try:
        async for _message in ws:
            pass
    finally:
        watch.cancel()
    return ws


def messages(stream: int, rounds: int) -> list[str]:
    payload = base64.b64encode(b"\xff" * 160).decode()
    sid = f"MZ{stream:06d}"
    out = [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
           json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid, "start": {
               "streamSid": sid, "callSid": f"CA{stream:06d}", "accountSid": "AC0",
               "tracks": ["inbound"], "customParameters": {}, "mediaFormat": {
                   "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})]
    for n in range(rounds):
        out.append(json.dumps({"event": "media", "sequenceNumber": str(n + 2),
                               "streamSid": sid, "media": {
                                   "track": "inbound", "chunk": str(n + 1),
                                   "timestamp": str(n * 20), "payload": payload}}))
    return out


async def client(url: str, connections: int, rounds: int, interval_s: float) -> None:
    """Open the connections, send the start messages, then one media message per
    connection per round. Frames are built (and masked) before the clock starts."""
    streams = []
    for stream in range(connections):
        protocol = ClientProtocol(parse_uri(url))
        reader, writer = await asyncio.open_connection("127.0.0.1", parse_uri(url).port)
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        while not protocol.events_received():
            protocol.receive_data(await reader.read(65536))
        frames = []
        for text in messages(stream, rounds):
            protocol.send_text(text.encode())
            frames.append(b"".join(protocol.data_to_send()))
        streams.append((reader, writer, frames))
    for _reader, writer, frames in streams:
        writer.write(frames[0] + frames[1])
    await asyncio.sleep(0.5)
    for n in range(2, rounds + 2):
        for _reader, writer, frames in streams:
            writer.write(frames[n])
        await asyncio.sleep(interval_s)
    await asyncio.sleep(1.0)
    for _reader, writer, _frames in streams:
        writer.close()


async def measure(mode: str, options: argparse.Namespace) -> float:
    """CPU seconds per media message of one run in ``mode``."""
    app = web.Application()
    counter = Counter(options.connections * options.rounds)
    app["counter"] = counter
    app.router.add_get("/media", direct if mode == "direct" else queued)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--client", f"ws://127.0.0.1:{port}/media",
        "--connections", str(options.connections), "--rounds", str(options.rounds),
        "--interval-ms", str(options.interval_ms))
    try:
        cpu = await asyncio.wait_for(counter.done, timeout=120)
    finally:
        await child.wait()
        await runner.cleanup()
    return cpu / counter.expected


async def main(options: argparse.Namespace) -> None:
    if not direct_reading_available():
        raise SystemExit("aiohttp lacks the reader API MediaSocket needs")
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(options.repeat):
        for mode in MODES:
            results[mode].append(await measure(mode, options))
    print(f"{options.connections} connections x {options.rounds} messages, a round every "
          f"{options.interval_ms} ms, {options.loop}; server CPU per media message, "
          f"best of {options.repeat}")
    best = {mode: min(values) for mode, values in results.items()}
    for mode in MODES:
        runs = ", ".join(f"{v * 1e6:.1f}" for v in results[mode])
        print(f"  {mode:7} {best[mode] * 1e6:6.1f} us  (runs: {runs})")
    print(f"  direct/queue: {best['direct'] / best['queue']:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=250)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the server's event loop (the bridge runs uvloop when installed)")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.client:
        cores = os.sched_getaffinity(0)
        others = set(range(os.cpu_count() or 1)) - cores
        if others:
            os.sched_setaffinity(0, others)
        asyncio.run(client(options.client, options.connections, options.rounds,
                           options.interval_ms / 1000))
    elif options.loop == "uvloop":
        import uvloop

        uvloop.run(main(options))
    else:
        asyncio.run(main(options))
