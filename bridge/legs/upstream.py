"""One leg's speech-to-text sessions: open, send, receive, reconnect, fail over, roll over.

``Upstream`` runs a leg's sessions one after another against ``bridge/stt/<engine>.py``. It is
given the leg's audio (``LegAudio``), a way to open an engine session by name, the engine to
fail over to, where to ask for room within the engines' concurrency limits (``EngineSlots``),
metrics, and callbacks for what it produces (results placed on the leg's clock, a failover, a
fatal error or a wait for a slot). It never sees the call.

Engine limits: a leg holds one slot of its engine from its first session to its end, across
reconnects and roll-overs; failing over gives the slot back and takes one of the secondary.
A full engine (every slot in use, or the service answering HTTP 429) sends the leg to the
secondary if that one has room; otherwise the leg waits, its audio discarded, and tries again
with backoff (``bridge.stt.reconnect.capacity_delays``) for as long as the call lasts.

Its states and their legal steps are one table, ``TRANSITIONS``; ``_step`` is the only place
that changes the state. Reconnecting follows the pure policy of ``bridge.stt.reconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from bridge.errors import EngineAtCapacity, UpstreamError, UpstreamRefused, UpstreamUnavailable
from bridge.events import TranscriptResult
from bridge.legs.audio import LegAudio
from bridge.metrics import Metrics
from bridge.stages import Timing
from bridge.stt.base import EngineResult, EngineSession
from bridge.stt.reconnect import (
    MAX_RECONNECTS,
    QUICK_FAILURES,
    QUICK_S,
    Decision,
    capacity_delays,
    classify,
    reconnect_delays,
)
from bridge.stt.slots import LocalEngineSlots

log = structlog.get_logger("bridge.legs")


class UpstreamState(enum.Enum):
    OPENING = "opening"  # a session is being opened; audio buffers meanwhile
    STREAMING = "streaming"
    FINISHING = "finishing"  # end of audio sent; waiting for the last finals
    DONE = "done"
    FAILED = "failed"  # refused or lost for good: audio is discarded, the call goes on
    WAITING = "waiting"  # every engine the leg may use is full: audio is discarded meanwhile


class Step(enum.Enum):
    OPENED = "opened"
    AUDIO_ENDED = "audio_ended"  # every chunk sent, the engine told to finish
    DROPPED = "dropped"  # the session ended early: reconnect, fail over or roll over
    CLOSED = "closed"  # the last session ended after the end of audio
    FAILED = "failed"
    NO_SLOT = "no_slot"  # no engine the leg may use has room
    SLOT_TAKEN = "slot_taken"  # a slot freed up while waiting


_S = UpstreamState
TRANSITIONS: Final[Mapping[tuple[UpstreamState, Step], UpstreamState]] = {
    (_S.OPENING, Step.OPENED): _S.STREAMING,
    (_S.OPENING, Step.DROPPED): _S.OPENING,  # the open failed: another try
    (_S.OPENING, Step.FAILED): _S.FAILED,
    (_S.OPENING, Step.NO_SLOT): _S.WAITING,
    (_S.WAITING, Step.SLOT_TAKEN): _S.OPENING,
    (_S.WAITING, Step.CLOSED): _S.DONE,  # the audio ended while no slot was free
    (_S.STREAMING, Step.AUDIO_ENDED): _S.FINISHING,
    (_S.STREAMING, Step.DROPPED): _S.OPENING,
    (_S.STREAMING, Step.FAILED): _S.FAILED,
    (_S.FINISHING, Step.CLOSED): _S.DONE,
    (_S.FINISHING, Step.FAILED): _S.FAILED,
}


class IllegalStep(AssertionError):
    """A step the table does not allow: a bug in this module, never the peer's doing."""


class EngineSlot(Protocol):
    """A leg's place within one engine's concurrency limit, held while its sessions run."""

    @property
    def engine(self) -> str:
        """The engine this slot belongs to."""

    def release(self) -> None:
        """Give the place back. Idempotent; never waits (stores are told in the background
        of their owner, not here)."""


class EngineSlots(Protocol):
    """Where legs ask for room within the engines' ``max_streams``: counted in this process
    (``bridge.stt.slots``) or across a cluster (``bridge.cluster.engine_slots``)."""

    async def acquire(self, engine: str) -> EngineSlot | None:
        """A slot of ``engine``, or None when every one is in use. Never raises: a store
        that cannot be reached is its implementation's to work around."""


@dataclass(frozen=True, slots=True)
class UpstreamHooks:
    """What a leg's upstream is given by its owner."""

    open_engine: Callable[[str], EngineSession]  # a new session of the named engine
    max_session_s: Callable[[str], float]  # an engine's session limit (0: none)
    secondary: str | None  # the engine to fail over to, once
    on_result: Callable[[TranscriptResult], None]  # placed on the leg's clock
    on_failover: Callable[[str, str, UpstreamError], None]  # from, to, why
    # Transcription of the leg failed for good, or (EngineAtCapacity, once per leg) it waits
    # for a slot of a full engine and starts when one frees.
    on_error: Callable[[UpstreamError], None]
    slots: EngineSlots | None = None  # None: no limits of ours (the service's 429 still is)


@dataclass(frozen=True, slots=True)
class UpstreamTimers:
    silence_timeout_s: float = 0.0  # 0: off
    roll_margin_s: float = 300.0
    close_grace_s: float = 2.0


class Upstream:
    """The session loop of one leg; see the module docstring."""

    def __init__(self, audio: LegAudio, engine_name: str, hooks: UpstreamHooks,
                 metrics: Metrics, *, leg: str, timers: UpstreamTimers) -> None:
        self.audio = audio
        self.engine_name = engine_name
        self._hooks = hooks
        self._metrics = metrics
        self._leg = leg
        self._timers = timers
        self.engine = hooks.open_engine(engine_name)
        self.state = UpstreamState.OPENING
        self.error: UpstreamError | None = None
        self.reconnects = 0
        self.rolls = 0
        self.failed_over = False
        self.capacity_waits = 0  # times the leg found every engine it may use full
        self.ended_waiting = False  # the audio ended while the leg waited for a slot
        # Without limits of ours, slots are still taken (and never refused): a service that
        # answers 429 makes the leg wait with the same backoff.
        self._slots: EngineSlots = hooks.slots or LocalEngineSlots({})
        self._slot: EngineSlot | None = None
        self._waiting_since: float | None = None  # since the leg found its engines full
        self._full_engine: str | None = None  # the service itself said 429 to this one
        self._capacity_delays: Iterator[float] | None = None
        self._capacity_reported = False
        self._wake = asyncio.Event()
        self._roll = False
        self._results_this_session = 0
        self._session_origin_ms = 0.0
        self._session_bytes = 0
        self._session_opened = 0.0
        self._last_heard = 0.0
        self._heard_at_bytes = 0
        self._last_final_end_ms: int | None = None
        self.trace_parent: object | None = None  # the leg's trace span, when tracing is on

    def _step(self, step: Step) -> None:
        following = TRANSITIONS.get((self.state, step))
        if following is None:
            raise IllegalStep(f"{step.value} while {self.state.value}")
        self.state = following

    def wake(self) -> None:
        """Audio is waiting (or has ended): the sender goes on."""
        self._wake.set()

    async def run(self) -> None:
        """Open the session, stream the audio, collect results, close; reconnect when the
        upstream drops.

        A dropped session (network error, a retryable close code) is replaced after a short
        backoff by a new one with the same parameters, which first receives the audio sent
        since the last final again (from a buffer of at most ``stt.replay_ms``); results are
        shifted onto the leg's clock, and finals ending before the last one delivered are
        dropped. Fatal failures end the leg's transcription (``on_error`` and one log line)
        but never the call. Engine limits: see the module docstring. Cancelling leaves the
        upstream socket closed, the buffered audio unsent and the engine's slot released.
        """
        try:
            await self._run()
        finally:
            self._release_slot()

    async def _run(self) -> None:
        delays = reconnect_delays()
        quick_failures = failures_in_row = 0
        loop = asyncio.get_running_loop()
        while True:
            if not await self._take_slot():
                return
            opened_at = loop.time()
            error: UpstreamError | None = None
            rolled = False
            try:
                rolled = await self._session()
            except* UpstreamError as group:
                error = _first(group.exceptions)
            finally:
                await self.engine.close()
            if error is None:
                if not rolled:
                    self._step(Step.CLOSED)
                    return
                # A long session ended at a pause before the engine's limit: go on in a
                # new one, which gets the audio since the last final first.
                self._step(Step.DROPPED)
                self.rolls += 1
                self._count("rolled")
                log.info("speech-to-text session rolled over before its limit",
                         leg=self._leg, engine=self.engine_name)
                self.engine = self._hooks.open_engine(self.engine_name)
                quick_failures = failures_in_row = 0
                continue
            productive = self._results_this_session > 0
            quick = loop.time() - opened_at < QUICK_S and not productive
            quick_failures = quick_failures + 1 if quick else 0
            failures_in_row = 0 if productive else failures_in_row + 1
            if productive:
                delays = reconnect_delays()  # it worked for a while: start the backoff over
            finishing = self.state is UpstreamState.FINISHING
            if isinstance(error, EngineAtCapacity) and not finishing:
                # The service is full whatever our count says (others share the account):
                # the slot goes back, and the leg waits or takes the secondary.
                self._step(Step.DROPPED)
                self._release_slot()
                self._full_engine = self.engine_name
                self.engine = self._hooks.open_engine(self.engine_name)
                quick_failures = failures_in_row = 0
                continue
            if (classify(error) is Decision.FATAL or finishing
                    or quick_failures >= QUICK_FAILURES or failures_in_row > MAX_RECONNECTS):
                if not finishing and self._fail_over(error):
                    quick_failures = failures_in_row = 0
                    delays = reconnect_delays()
                    continue
                self._fail(error)
                return
            self._step(Step.DROPPED)
            delay = next(delays)
            self.reconnects += 1
            self._count("reconnected")
            log.warning("speech-to-text session dropped; reconnecting and replaying",
                        leg=self._leg, error=str(error), retry_in_s=round(delay, 2),
                        replay_ms=round(self.audio.replay_ms))
            await asyncio.sleep(delay)
            self.engine = self._hooks.open_engine(self.engine_name)

    def _count(self, event: str) -> None:
        self._metrics.upstream.labels(self.engine_name, event).inc()

    def _fail_over(self, error: UpstreamError) -> bool:
        """Move the leg to the secondary engine, once; False when there is none."""
        secondary = self._hooks.secondary
        if secondary is None or self.failed_over or secondary == self.engine_name:
            return False
        self._step(Step.DROPPED)
        self._release_slot()  # the primary's; the secondary's is taken before it opens
        self.failed_over = True
        self._count("failed_over")
        previous, self.engine_name = self.engine_name, secondary
        log.warning("speech-to-text failing over to the secondary engine",
                    leg=self._leg, engine=previous, to=secondary, error=str(error))
        self._hooks.on_failover(previous, secondary, error)
        self.engine = self._hooks.open_engine(secondary)
        return True

    async def _take_slot(self) -> bool:
        """Hold a slot of the leg's engine before a session opens (a held one is kept);
        False when the audio ended while no engine had room.

        A full engine sends the leg to the secondary when that one has room (a failover,
        once); otherwise the leg discards its audio and tries again with backoff until a
        slot frees or the audio ends. ``on_error`` hears of the first wait only.
        """
        if self._slot is not None:
            return True
        if self._capacity_delays is None:
            self._capacity_delays = capacity_delays()
        skip, self._full_engine = self._full_engine, None
        loop = asyncio.get_running_loop()
        first_round = True
        while True:
            candidates = [self.engine_name]
            secondary = self._hooks.secondary
            if secondary is not None and not self.failed_over and secondary != self.engine_name:
                candidates.append(secondary)
            for name in candidates:
                slot = None if name == skip else await self._slots.acquire(name)
                if slot is None:
                    if first_round:
                        self._metrics.engine_full.labels(name).inc()
                    continue
                self._slot = slot
                if name != self.engine_name:
                    self._switch_for_capacity(name)
                if self.state is UpstreamState.WAITING:
                    self._step(Step.SLOT_TAKEN)
                    self.audio.keep()
                return True
            skip, first_round = None, False
            if self.state is not UpstreamState.WAITING:
                self._step(Step.NO_SLOT)
                self.audio.discard()
                self.capacity_waits += 1
                if self._waiting_since is None:
                    self._waiting_since = loop.time()
                if not self._capacity_reported:
                    # Once per leg: a service that keeps answering 429 is one story.
                    self._capacity_reported = True
                    log.warning("every engine this leg may use is at its concurrency limit; "
                                "the leg waits for a slot, its audio untranscribed meanwhile",
                                leg=self._leg, engines=candidates)
                    self._hooks.on_error(EngineAtCapacity(
                        f"{' and '.join(candidates)} at the concurrency limit; transcription "
                        "starts when a session frees"))
            if await self._audio_ends_within(next(self._capacity_delays)):
                self._step(Step.CLOSED)
                self.ended_waiting = True
                return False

    def _switch_for_capacity(self, secondary: str) -> None:
        """The primary is full and the secondary has room: the leg moves there, for good."""
        previous, self.engine_name = self.engine_name, secondary
        self.failed_over = True
        self._count("failed_over")
        log.warning("speech-to-text engine at its concurrency limit; the leg takes the "
                    "secondary engine", leg=self._leg, engine=previous, to=secondary)
        self._hooks.on_failover(previous, secondary, EngineAtCapacity(
            f"{previous} at the concurrency limit"))
        self.engine = self._hooks.open_engine(secondary)

    async def _audio_ends_within(self, delay: float) -> bool:
        """Whether the leg's audio ends in the next ``delay`` seconds (it wakes us then)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                while not self.audio.ended:
                    self._wake.clear()
                    await self._wake.wait()
        return self.audio.ended

    def _release_slot(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None

    def _unconfirmed(self) -> None:
        """The audio after the last final went to an engine that never confirmed it
        transcribed it: the leg's audio says from where (a recording silences it)."""
        last = self._last_final_end_ms
        self.audio.unconfirmed(last if last is not None else self.audio.to_clock(0))

    def _fail(self, error: UpstreamError) -> None:
        self._unconfirmed()
        self._count("failed")
        self._step(Step.FAILED)
        self.error = error
        self.audio.discard()
        log.error("speech-to-text session failed; the call continues without transcripts "
                  "for this leg", leg=self._leg, error=str(error),
                  retryable=not isinstance(error, UpstreamRefused))
        self._hooks.on_error(error)

    async def _session(self) -> bool:
        """One upstream session: open, replay, stream until the end of audio (or a roll
        over: then True), finish."""
        self._results_this_session = 0
        self._roll = False
        loop = asyncio.get_running_loop()
        self._session_opened = self._last_heard = loop.time()
        self._heard_at_bytes = 0
        await self.engine.open()
        self._capacity_delays = None  # the engine took us: its next refusal starts over
        if self._waiting_since is not None:
            log.info("a session of a full engine freed up: the leg transcribes from here",
                     leg=self._leg, engine=self.engine_name,
                     waited_s=round(loop.time() - self._waiting_since, 1))
            self._waiting_since = None
        self._count("opened")
        self._step(Step.OPENED)
        # The new session's audio starts where the replayed audio starts.
        replay = self.audio.replay()
        self._session_origin_ms = replay[0][0] if replay else self.audio.sent_ms
        self._session_bytes = 0
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(self._receive())
            watchdog = tasks.create_task(self._watch_silence())
            for _, data in replay:
                await self.engine.send_audio(data)
                self._session_bytes += len(data)
            await self._send_until_end()
            watchdog.cancel()
            if not self._roll:
                self._step(Step.AUDIO_ENDED)
            await self.engine.finish()
            # Some engines close after their last final, others never do: bound the wait.
            done, _ = await asyncio.wait({receiver}, timeout=self._timers.close_grace_s)
            if not done and not self._roll:
                self._unconfirmed()  # its last finals may have been on their way
            await self.engine.close()
        return self._roll

    async def _watch_silence(self) -> None:
        """An engine that says nothing for ``stt.silence_timeout_s`` while audio flows to it
        is treated as dropped (off at 0: some engines say nothing in silence)."""
        limit = self._timers.silence_timeout_s
        if limit <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(limit / 4)
            flowing = (self._session_bytes - self._heard_at_bytes) / self.audio.bytes_per_ms
            if loop.time() - self._last_heard > limit and flowing > limit * 1000:
                raise UpstreamUnavailable(f"the engine sent nothing for {limit:g}s while "
                                          "audio flowed")

    async def _send_until_end(self) -> None:
        audio = self.audio
        latency = self._metrics.stages.frame_to_upstream
        while True:
            ready = audio.ready_chunks()
            if ready:
                if len(ready) == 1:
                    await self.engine.send_audio(ready[0].data)
                else:
                    # A leg that fell behind hands every ready chunk over in one write.
                    await self.engine.send_audio_many([each.data for each in ready])
                for each in ready:
                    ready_at = audio.sent(each)  # only once sent: a drop before this replays it
                    if ready_at is not None:
                        latency.observe(time.monotonic() - ready_at)
                    self._session_bytes += len(each.data)
                continue  # more may have come while the socket took these
            if audio.ended or self._roll:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        async for result in self.engine.results():
            received_at = time.monotonic()
            self._results_this_session += 1
            self._last_heard = loop.time()
            self._heard_at_bytes = self._session_bytes
            placed = self._place(result, received_at)
            if placed is None:
                continue
            self._hooks.on_result(placed)
            limit = self._hooks.max_session_s(self.engine_name)
            if placed.is_final and limit and self.state is UpstreamState.STREAMING and \
                    loop.time() - self._session_opened > limit - self._timers.roll_margin_s:
                self._roll = True  # a pause, before the engine's limit: roll over here
                self._wake.set()

    def _place(self, result: EngineResult, received_at: float) -> TranscriptResult | None:
        """Put a result on the leg's audio clock.

        Engines that give segment times are mapped through the clock map (silence inserted
        for lost frames is part of the upstream's audio, jumps are not). Otherwise the
        segment runs from the previous final's end to the audio sent so far: an upper bound
        that includes the engine's endpointing delay.
        """
        to_clock = self.audio.to_clock
        origin = self._session_origin_ms  # where this session's audio began, upstream ms
        session_end = origin + self._session_bytes / self.audio.bytes_per_ms
        if result.start_s is not None and result.end_s is not None:
            end_upstream = origin + result.end_s * 1000
            start_ms, end_ms = to_clock(origin + result.start_s * 1000), to_clock(end_upstream)
        else:
            end_upstream = session_end
            end_ms = to_clock(end_upstream)
            previous_end = self._last_final_end_ms
            start_ms = to_clock(0) if previous_end is None else previous_end
        start_ms = min(start_ms, end_ms)
        engine_s = None
        if result.is_final and result.end_s is not None:
            # How long after its audio was sent did the final come (engines that give times)
            engine_s = max(session_end - end_upstream, 0) / 1000
            self._metrics.latency.labels(self.engine_name).observe(engine_s)
        if result.is_final:
            # Replayed audio recognised again: delivered already. Only engines that give
            # segment times can say so; for the others the replay starts after the last
            # final, so there is nothing to repeat.
            if result.end_s is not None and self._last_final_end_ms is not None \
                    and end_ms <= self._last_final_end_ms and (self.reconnects or self.rolls):
                return None
            self._last_final_end_ms = end_ms
            self.audio.forget_until(end_upstream)
        words = tuple((w.text, to_clock(origin + w.start_s * 1000),
                       to_clock(origin + w.end_s * 1000), w.confidence) for w in result.words)
        return TranscriptResult(result.text, result.is_final, result.confidence, start_ms, end_ms,
                                words, Timing(received_at, engine_s=engine_s,
                                              parent=self.trace_parent))


def _first(errors: Sequence[BaseException]) -> UpstreamError:
    for error in errors:
        if isinstance(error, UpstreamError):
            return error
        if isinstance(error, BaseExceptionGroup):
            return _first(error.exceptions)
    raise AssertionError("except* matched without an UpstreamError")
