#!/usr/bin/env python3
"""The media hot path in process: CPU per media message from a Twilio text frame to a chunk.

Streams ``--calls`` two-track Twilio calls of ``--seconds`` of the shipped sample call (both
tracks, 20 ms frames, the text frames exactly as ``bridge.simulate`` sends them) through, in
turn:

1. ``parse``: the Twilio dialect alone (``receive_text`` then ``events()``), per message;
2. ``call``: the dialect and a real ``Call`` (``handle``: legs, reframer, pause gate, buffer),
   with the scripted engine of ``tests/support/fake_engine.py`` taking the chunks, and no
   call observers;
3. ``call+talk``: the same with the talk analytics observer on every call, as
   ``analytics.talk`` (on by default) runs it;
4. ``reader``: as ``call``, each message handed in as the media endpoint hands it from
   aiohttp's frame reader (``_StreamReader.receive`` inside the connection's context): the
   stream token and start checks, the dialect, the call.

Calls are interleaved message by message, as a busy process sees them, and the loop is given
a turn every ``--batch`` messages so that the legs' senders run as they would behind the
media reader. CPU is ``time.process_time`` of the whole run divided by the media messages;
each stage runs ``--repeat`` times and the median and best are printed. Pin it to one core:

    taskset -c 1 .venv/bin/python bench/hot_path.py --calls 20 --seconds 20 --repeat 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import functools
import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import WSMsgType, web
from aiohttp.test_utils import make_mocked_request

from bridge.analytics.talk import talk_observer
from bridge.artifacts.service import AfterCallService
from bridge.calls import Call
from bridge.config import Settings
from bridge.events import AudioEncoding, Track
from bridge.ingress.twilio import TwilioDialect
from bridge.simulate import CallSpec, build_call
from bridge.web.keys import SETTINGS
from bridge.web.media import _StreamReader
from tests.support.fake_engine import EngineScript, FakeEngines, RecordingSink


def sample_audio(seconds: int, offset: int) -> bytes:
    """``seconds`` of the shipped sample call (µ-law), from its own offset, looped."""
    sample = resources.files("bridge.samples").joinpath("support_call")
    audio = sample.joinpath("caller.ulaw").read_bytes() + sample.joinpath(
        "agent.ulaw").read_bytes()
    total = seconds * 8000
    loop = audio * (total // len(audio) + 2)
    start = (offset * 7919 * 8) % len(audio)
    return loop[start:start + total]


def interleaved(calls: int, seconds: int) -> list[list[str]]:
    """Each call's messages in sending order."""
    out = []
    for n in range(calls):
        spec = CallSpec("twilio", AudioEncoding.PCMU, {
            Track.INBOUND: sample_audio(seconds, 2 * n),
            Track.OUTBOUND: sample_audio(seconds, 2 * n + 1)})
        out.append([text for _, text in build_call(spec)])
    return out


def media_count(streams: list[list[str]]) -> int:
    return sum(text.startswith('{"event":"media"') for s in streams for text in s)


def run_parse(streams: list[list[str]]) -> float:
    parsers = [TwilioDialect() for _ in streams]
    longest = max(len(s) for s in streams)
    start = time.process_time()
    for i in range(longest):
        for parser, messages in zip(parsers, streams, strict=True):
            if i < len(messages):
                parser.receive_text(messages[i])
                parser.events()
    return time.process_time() - start


async def run_call(streams: list[list[str]], *, talk: bool, batch: int) -> float:
    settings = Settings()
    after = AfterCallService([talk_observer] if talk else [])
    longest = max(len(s) for s in streams)
    async with asyncio.TaskGroup() as tasks:
        calls = [Call(settings=settings, sink=RecordingSink(),
                      engines=FakeEngines({"telnyx": EngineScript(utterance_ms=5000)}),
                      tasks=tasks, after=after) for _ in streams]
        parsers = [TwilioDialect() for _ in streams]
        start = time.process_time()
        sent = 0
        for i in range(longest):
            for call, parser, messages in zip(calls, parsers, streams, strict=True):
                if i < len(messages):
                    parser.receive_text(messages[i])
                    for event in parser.events():
                        call.handle(event)
                    sent += 1
                    if sent % batch == 0:
                        await asyncio.sleep(0)
        await asyncio.gather(*(call.end("stopped") for call in calls))
        elapsed = time.process_time() - start
    return elapsed


async def run_reader(streams: list[list[str]], *, batch: int) -> float:
    settings = Settings()
    app = web.Application()
    app[SETTINGS] = settings
    request = make_mocked_request("GET", "/streams/twilio", app=app)
    after = AfterCallService([])
    longest = max(len(s) for s in streams)
    async with asyncio.TaskGroup() as tasks, asyncio.timeout(None) as deadline:
        calls = [Call(settings=settings, sink=RecordingSink(),
                      engines=FakeEngines({"telnyx": EngineScript(utterance_ms=5000)}),
                      tasks=tasks, after=after) for _ in streams]
        contexts = [contextvars.copy_context() for _ in streams]
        handlers = [functools.partial(context.run, _StreamReader(
            request, "twilio", TwilioDialect(), call, deadline, lambda: None).receive)
            for call, context in zip(calls, contexts, strict=True)]
        text = WSMsgType.TEXT
        start = time.process_time()
        sent = 0
        for i in range(longest):
            for handle, messages in zip(handlers, streams, strict=True):
                if i < len(messages):
                    handle(text, messages[i])
                    sent += 1
                    if sent % batch == 0:
                        await asyncio.sleep(0)
        await asyncio.gather(*(call.end("stopped") for call in calls))
        elapsed = time.process_time() - start
    return elapsed


def measure(name: str, repeat: int, frames: int, run: Callable[[], float]) -> None:
    results = []
    for _ in range(repeat):
        gc.collect()
        results.append(run() / frames * 1e6)
    print(f"{name:10s} median {statistics.median(results):6.2f} µs/frame   "
          f"best {min(results):6.2f}   runs {' '.join(f'{r:.2f}' for r in results)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50,
                        help="messages between two turns of the event loop")
    parser.add_argument("--stages", default="parse,call,call+talk,reader")
    args = parser.parse_args()
    # The calls' start and summary lines are not what is measured.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    streams = interleaved(args.calls, args.seconds)
    frames = media_count(streams)
    print(f"{args.calls} two-track calls x {args.seconds} s: {frames} media messages "
          f"({frames / args.calls / args.seconds / 2:.0f} per leg-second)")
    stages = args.stages.split(",")
    if "parse" in stages:
        measure("parse", args.repeat, frames, lambda: run_parse(streams))
    if "call" in stages:
        measure("call", args.repeat, frames,
                lambda: asyncio.run(run_call(streams, talk=False, batch=args.batch)))
    if "call+talk" in stages:
        measure("call+talk", args.repeat, frames,
                lambda: asyncio.run(run_call(streams, talk=True, batch=args.batch)))
    if "reader" in stages:
        measure("reader", args.repeat, frames,
                lambda: asyncio.run(run_reader(streams, batch=args.batch)))


if __name__ == "__main__":
    main()
