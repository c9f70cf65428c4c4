#!/usr/bin/env python3
"""CPU per audio chunk sent to an engine: websockets' ``ClientConnection.send`` against the
bridge's own writer (``bridge.stt.transport``).

A sink in a child process (pinned to another core with ``--sink-cpu``) accepts WebSocket
connections and discards what arrives. The writer sends ``--chunks`` chunks of ``--size``
bytes over ``--sockets`` connections, round robin (as many legs would), yielding to the
loop every ``--batch`` chunks so the transport flushes as it would under load. CPU time
is this process's ``time.process_time``; the figure is the median of ``--runs``.

    taskset -c 1 python bench/upstream_writer.py --sink-cpu 0

``--many N`` also measures ``send_audio_many`` with N chunks per call (a leg that fell
behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from bridge.stt.transport import open_engine_connection

Send = Callable[[int, bytes], Awaitable[None]]


async def sink(port: int) -> None:
    async def discard(connection: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            async for _ in connection:
                pass

    async with serve(discard, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


async def measure(send: Send, options: argparse.Namespace, chunk: bytes) -> float:
    """CPU seconds per chunk for one run."""
    sockets = options.sockets
    start = time.process_time()
    for index in range(options.chunks):
        await send(index % sockets, chunk)
        if index % options.batch == options.batch - 1:
            await asyncio.sleep(0)
    return (time.process_time() - start) / options.chunks


async def run_old(options: argparse.Namespace, url: str, chunk: bytes) -> list[float]:
    connections = [await connect(url, compression=None, origin=None, write_limit=64 * 1024)
                   for _ in range(options.sockets)]

    async def send(index: int, data: bytes) -> None:
        await connections[index].send(data)

    try:
        return [await measure(send, options, chunk) for _ in range(options.runs)]
    finally:
        for connection in connections:
            await connection.close()


async def run_new(options: argparse.Namespace, url: str, chunk: bytes,
                  many: int = 1) -> list[float]:
    connections = [await open_engine_connection(
        url, {}, user_agent="bench", open_timeout=5, ping_interval=20, ping_timeout=20,
        close_timeout=2, max_size=2**20, max_queue=64, write_limit=64 * 1024)
        for _ in range(options.sockets)]

    async def send(index: int, data: bytes) -> None:
        await connections[index].send_audio(data)

    async def send_many(index: int, data: bytes) -> None:
        await connections[index].send_audio_many([data] * many)

    try:
        if many == 1:
            return [await measure(send, options, chunk) for _ in range(options.runs)]
        # Each call carries ``many`` chunks: the figure stays per chunk.
        runs = []
        for _ in range(options.runs):
            runs.append(await measure(send_many, options, chunk) / many)
        return runs
    finally:
        for connection in connections:
            await connection.close()


def report(name: str, runs: list[float]) -> None:
    median = statistics.median(runs)
    best = min(runs)
    print(f"{name:<34} median {median * 1e6:7.2f} us/chunk   best {best * 1e6:7.2f}   "
          f"runs {len(runs)}")


async def run_all(options: argparse.Namespace, url: str) -> None:
    chunk = os.urandom(options.size)
    print(f"{options.chunks} chunks of {options.size} B over {options.sockets} sockets, "
          f"median of {options.runs} runs, pid {os.getpid()}")
    report("websockets ClientConnection.send", await run_old(options, url, chunk))
    report("bridge send_audio", await run_new(options, url, chunk))
    if options.many > 1:
        report(f"bridge send_audio_many ({options.many})",
               await run_new(options, url, chunk, options.many))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=800, help="bytes per chunk (100 ms mulaw)")
    parser.add_argument("--sockets", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--many", type=int, default=5)
    parser.add_argument("--port", type=int, default=9311)
    parser.add_argument("--sink-cpu", type=int, default=None)
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.sink:
        asyncio.run(sink(options.port))
        return
    command = [sys.executable, __file__, "--sink", "--port", str(options.port)]
    if options.sink_cpu is not None:
        command = ["taskset", "-c", str(options.sink_cpu), *command]
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script, fixed arguments
        command, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        asyncio.run(run_all(options, f"ws://127.0.0.1:{options.port}/"))
    finally:
        child.terminate()
        child.wait()


if __name__ == "__main__":
    main()
