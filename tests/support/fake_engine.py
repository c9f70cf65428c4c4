"""A scripted speech-to-text engine and a recording event sink, for driving a ``Call`` in
process: what the engine received is recorded, and it answers by a script.

The engine says one final per ``utterance_ms`` of audio it received, with segment times (as
Deepgram and AssemblyAI give them) and the text ``"<n>"`` counting its finals, or the texts of
``finals`` in turn. It can refuse to open, or drop after a number of bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from bridge.delivery.retry import Outcome
from bridge.errors import EngineAtCapacity, UpstreamRefused, UpstreamUnavailable
from bridge.events import AudioEncoding, OutboundEvent
from bridge.stt.base import EngineResult, EngineSession


@dataclass
class EngineScript:
    """How sessions of one engine behave, and what they all received."""

    utterance_ms: int = 500
    finals: list[str] = field(default_factory=list)  # texts in turn, then "<n>"
    timed: bool = True  # segment times, or none (like Telnyx)
    refuse: bool = False  # every open refused (a bad key)
    full_for_opens: int = 0  # the first opens refused as a service at capacity does (429)
    opens: int = 0  # open attempts, refused ones included
    drop_after_bytes: list[int] = field(default_factory=list)  # per session, in turn
    sessions: list[FakeSession] = field(default_factory=list)
    spoken: int = 0  # finals said so far, across sessions


class FakeSession:
    """One session of a scripted engine."""

    def __init__(self, script: EngineScript, encoding: AudioEncoding, sample_rate: int) -> None:
        self.script = script
        self.bytes_per_ms = (2 if encoding is AudioEncoding.L16 else 1) * sample_rate // 1000
        self.received = bytearray()
        self.hand_overs: list[int] = []  # chunks per call: 1 for send_audio, n for send_audio_many
        self.finished = False
        self.dropped = False
        self._drop_at = script.drop_after_bytes.pop(0) if script.drop_after_bytes else None
        self._results: asyncio.Queue[EngineResult | Exception | None] = asyncio.Queue()
        self._said_until = 0  # bytes covered by finals

    async def open(self) -> None:
        self.script.opens += 1
        if self.script.opens <= self.script.full_for_opens:
            raise EngineAtCapacity("too many concurrent sessions", status=429)
        if self.script.refuse:
            raise UpstreamRefused("the engine refused the key", code="40001", status=401)
        self.script.sessions.append(self)

    async def send_audio(self, chunk: bytes) -> None:
        self.hand_overs.append(1)
        await self._take(chunk)

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        self.hand_overs.append(len(chunks))
        for chunk in chunks:
            await self._take(chunk)

    async def _take(self, chunk: bytes) -> None:
        if self.dropped:
            return  # a dropped socket takes nothing more (sends to it are quiet)
        if self._drop_at is not None and len(self.received) + len(chunk) > self._drop_at:
            self._results.put_nowait(UpstreamUnavailable("dropped", code="1006"))
            self.dropped = True
            return
        self.received += chunk
        utterance = self.script.utterance_ms * self.bytes_per_ms
        while len(self.received) - self._said_until >= utterance:
            self._say(self._said_until, self._said_until + utterance)

    def _say(self, start: int, end: int) -> None:
        script = self.script
        script.spoken += 1
        text = script.finals.pop(0) if script.finals else str(script.spoken)
        times = (start / self.bytes_per_ms / 1000, end / self.bytes_per_ms / 1000)
        self._results.put_nowait(EngineResult(text, True, 0.9, *(times if script.timed
                                                                 else (None, None))))
        self._said_until = end

    async def results(self) -> AsyncIterator[EngineResult]:
        while True:
            item = await self._results.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def finish(self) -> None:
        self.finished = True
        if len(self.received) > self._said_until:
            self._say(self._said_until, len(self.received))
        self._results.put_nowait(None)

    async def close(self) -> None:
        self._results.put_nowait(None)


class FakeEngines:
    """The engines a call may use, each following its script."""

    def __init__(self, scripts: Mapping[str, EngineScript], primary: str = "telnyx",
                 secondary: str | None = None) -> None:
        self.scripts = dict(scripts)
        self.primary = primary
        self.secondary = secondary

    def for_call(self, parameters: Mapping[str, str],
                 path: str = "") -> tuple[str, dict[str, str]]:
        return self.primary, {}

    def open(self, name: str, encoding: AudioEncoding, sample_rate: int,
             options: Mapping[str, str]) -> EngineSession:
        return FakeSession(self.scripts[name], encoding, sample_rate)

    def max_session_s(self, name: str) -> float:
        return 0.0


class RecordingSink:
    """Keeps every published event; each is delivered at once."""

    def __init__(self) -> None:
        self.events: list[OutboundEvent] = []
        self.held: dict[tuple[str, str], list[OutboundEvent]] = {}  # what the outbox would keep

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        self.held[(call_id, leg)] = list(finals)

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        self.events.append(event)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.set_result(Outcome.DELIVERED)
        return future

    def of_type(self, kind: str) -> list[OutboundEvent]:
        return [e for e in self.events if e.type == kind]


class WaitingSink(RecordingSink):
    """A recording sink that can be waited on."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Condition()

    def publish(self, event: OutboundEvent) -> asyncio.Future[Outcome]:
        future = super().publish(event)
        asyncio.get_running_loop().create_task(self._notify())
        return future

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, kind: str, count: int, within_s: float = 10) -> None:
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: len(self.of_type(kind)) >= count)
