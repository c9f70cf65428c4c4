"""Sink mode for the speech-to-text emulators, for load tests: audio timed, never kept.

A sink session does no recognition. It takes audio as fast as it comes, notes how late each
message arrives against the audio's own clock, and says when a final is due (one per N
seconds of audio). Each engine's emulator wraps it in that engine's framing: what it says
first, the shape of its finals (with word times where the engine gives them), how it ends.
The measuring is here once so that every engine's figures mean the same thing, and it is
cheap because the sink shares a core with the load generator.

``GET /stats`` on a sink's port answers ``SinkStats.report()`` as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

STATS_PATH = "/stats"
# What every sink final says: plain words, no digits, so no redaction policy holds it back.
FINAL_WORDS = ("thanks", "for", "calling", "how", "can", "i", "help")


@dataclass
class SinkStats:
    """What sink mode measured, over every session."""

    sessions: int = 0
    closed: int = 0
    bytes: int = 0
    finals: int = 0
    lags_ms: array[float] = field(default_factory=lambda: array("f"))

    def report(self) -> dict[str, Any]:
        lags = sorted(self.lags_ms)

        def at(q: float) -> float | None:
            return round(lags[min(len(lags) - 1, int(q * len(lags)))], 1) if lags else None
        return {"sessions": self.sessions, "closed": self.closed, "bytes": self.bytes,
                "messages": len(lags), "finals": self.finals,
                "lag_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0)}}

    def respond(self, connection: ServerConnection, request: Request) -> Response | None:
        """The ``/stats`` answer, or None for any other path (a handshake goes on)."""
        if request.path != STATS_PATH:
            return None
        return connection.respond(HTTPStatus.OK, json.dumps(self.report()))


class SinkClock:
    """One session's measure: each audio message's lateness, and when a final is due.

    A message's offset is its arrival time minus the audio time it completes; its lag is how
    much later that is than the first message's offset (never below zero): how far the
    client fell behind real time after its first chunk, whatever the fixed delay of the path
    and of opening the session. Lags join the shared ``SinkStats`` at ``end()``.
    """

    def __init__(self, stats: SinkStats, bytes_per_s: int, final_every_s: float) -> None:
        self._stats = stats
        self._bytes_per_s = bytes_per_s
        self._every = final_every_s * bytes_per_s
        self._next_final = self._every
        self._final_end_s = 0.0
        self._offsets = array("d")
        self.received = 0
        stats.sessions += 1

    def take(self, size: int) -> tuple[float, float] | None:
        """Note an audio message of ``size`` bytes; when a final is due, the audio span it
        covers (start, end) in seconds from the session's first byte, else None."""
        self.received += size
        self._offsets.append(time.monotonic() - self.received / self._bytes_per_s)
        if not self._every or self.received < self._next_final:
            return None
        self._next_final += self._every
        start, self._final_end_s = self._final_end_s, self.received / self._bytes_per_s
        self._stats.finals += 1
        return start, self._final_end_s

    def end(self) -> None:
        """The session is over: its lags join the totals."""
        offsets = self._offsets
        if offsets:
            first = offsets[0]
            self._stats.lags_ms.extend(max(0.0, offset - first) * 1000
                                       for offset in offsets[1:])
        self._stats.bytes += self.received
        self._stats.closed += 1


def spread_words(start_s: float, end_s: float) -> list[tuple[str, float, float]]:
    """``FINAL_WORDS`` spread evenly over the span: (word, start, end) in seconds."""
    step = (end_s - start_s) / len(FINAL_WORDS)
    return [(word, start_s + n * step, start_s + (n + 1) * step)
            for n, word in enumerate(FINAL_WORDS)]


def command_line(engine: str, *, port: int, api_key: str,
                 sink_only: bool = True) -> argparse.Namespace:
    """The options of ``python -m tests.support.<emulator>``, as ``bench/load.py`` runs it."""
    parser = argparse.ArgumentParser(description=f"Run the {engine} emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--api-key", default=api_key)
    parser.add_argument("--sink", action="store_true", required=sink_only,
                        help="take audio without recognising it; measure its lateness")
    parser.add_argument("--final-every-s", type=float, default=0.0,
                        help="in sink mode, send a final per this many seconds of audio")
    return parser.parse_args()


async def serve_on_port(handler: Callable[[ServerConnection], Awaitable[None]],
                        check: Callable[[ServerConnection, Request], Response | None],
                        port: int) -> Server:
    """An emulator's server as a load test needs it: a fixed port, room for thousands of
    connections arriving at once, no compression."""
    return await serve(handler, "127.0.0.1", port, process_request=check, max_size=2**20,
                       compression=None, backlog=4096)
