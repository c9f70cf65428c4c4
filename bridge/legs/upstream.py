"""One leg's speech-to-text sessions: open, send, receive, reconnect, fail over, roll over.

``Upstream`` runs a leg's sessions one after another against ``bridge/stt/<engine>.py``. It is
given the leg's audio (``LegAudio``), a way to open an engine session by name, the engine to
fail over to, metrics, and callbacks for what it produces (results placed on the leg's
clock, a failover, a fatal error). It never sees the call.

Its states and their legal steps are one table, ``TRANSITIONS``; ``_step`` is the only place
that changes the state. Reconnecting follows the pure policy of ``bridge.stt.reconnect``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog

from bridge.errors import UpstreamError, UpstreamRefused, UpstreamUnavailable
from bridge.events import TranscriptResult
from bridge.legs.audio import LegAudio
from bridge.metrics import Metrics
from bridge.stt.base import EngineResult, EngineSession
from bridge.stt.reconnect import (
    MAX_RECONNECTS,
    QUICK_FAILURES,
    QUICK_S,
    Decision,
    classify,
    reconnect_delays,
)

log = structlog.get_logger("bridge.legs")


class UpstreamState(enum.Enum):
    OPENING = "opening"  # a session is being opened; audio buffers meanwhile
    STREAMING = "streaming"
    FINISHING = "finishing"  # end of audio sent; waiting for the last finals
    DONE = "done"
    FAILED = "failed"  # refused or lost for good: audio is discarded, the call goes on


class Step(enum.Enum):
    OPENED = "opened"
    AUDIO_ENDED = "audio_ended"  # every chunk sent, the engine told to finish
    DROPPED = "dropped"  # the session ended early: reconnect, fail over or roll over
    CLOSED = "closed"  # the last session ended after the end of audio
    FAILED = "failed"


_S = UpstreamState
TRANSITIONS: Final[Mapping[tuple[UpstreamState, Step], UpstreamState]] = {
    (_S.OPENING, Step.OPENED): _S.STREAMING,
    (_S.OPENING, Step.DROPPED): _S.OPENING,  # the open failed: another try
    (_S.OPENING, Step.FAILED): _S.FAILED,
    (_S.STREAMING, Step.AUDIO_ENDED): _S.FINISHING,
    (_S.STREAMING, Step.DROPPED): _S.OPENING,
    (_S.STREAMING, Step.FAILED): _S.FAILED,
    (_S.FINISHING, Step.CLOSED): _S.DONE,
    (_S.FINISHING, Step.FAILED): _S.FAILED,
}


class IllegalStep(AssertionError):
    """A step the table does not allow: a bug in this module, never the peer's doing."""


@dataclass(frozen=True, slots=True)
class UpstreamHooks:
    """What a leg's upstream is given by its owner."""

    open_engine: Callable[[str], EngineSession]  # a new session of the named engine
    max_session_s: Callable[[str], float]  # an engine's session limit (0: none)
    secondary: str | None  # the engine to fail over to, once
    on_result: Callable[[TranscriptResult], None]  # placed on the leg's clock
    on_failover: Callable[[str, str, UpstreamError], None]  # from, to, why
    on_error: Callable[[UpstreamError], None]  # transcription of the leg failed for good


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
        self._wake = asyncio.Event()
        self._roll = False
        self._results_this_session = 0
        self._session_origin_ms = 0.0
        self._session_bytes = 0
        self._session_opened = 0.0
        self._last_heard = 0.0
        self._heard_at_bytes = 0
        self._last_final_end_ms: int | None = None

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
        but never the call. Cancelling leaves the upstream socket closed and the buffered
        audio unsent.
        """
        delays = reconnect_delays()
        quick_failures = failures_in_row = 0
        loop = asyncio.get_running_loop()
        while True:
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
        self.failed_over = True
        self._count("failed_over")
        previous, self.engine_name = self.engine_name, secondary
        log.warning("speech-to-text failing over to the secondary engine",
                    leg=self._leg, engine=previous, to=secondary, error=str(error))
        self._hooks.on_failover(previous, secondary, error)
        self.engine = self._hooks.open_engine(secondary)
        return True

    def _fail(self, error: UpstreamError) -> None:
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
            await asyncio.wait({receiver}, timeout=self._timers.close_grace_s)
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
        while True:
            while (chunk := audio.next_chunk()) is not None:
                await self.engine.send_audio(chunk.data)
                audio.sent(chunk)  # only once sent: a drop before this replays it
                self._session_bytes += len(chunk.data)
            if audio.ended or self._roll:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        async for result in self.engine.results():
            self._results_this_session += 1
            self._last_heard = loop.time()
            self._heard_at_bytes = self._session_bytes
            placed = self._place(result)
            if placed is None:
                continue
            self._hooks.on_result(placed)
            limit = self._hooks.max_session_s(self.engine_name)
            if placed.is_final and limit and self.state is UpstreamState.STREAMING and \
                    loop.time() - self._session_opened > limit - self._timers.roll_margin_s:
                self._roll = True  # a pause, before the engine's limit: roll over here
                self._wake.set()

    def _place(self, result: EngineResult) -> TranscriptResult | None:
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
        if result.is_final and result.end_s is not None:
            # How long after its audio was sent did the final come (engines that give times)
            behind_ms = session_end - end_upstream
            self._metrics.latency.labels(self.engine_name).observe(max(behind_ms, 0) / 1000)
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
                                words)


def _first(errors: Sequence[BaseException]) -> UpstreamError:
    for error in errors:
        if isinstance(error, UpstreamError):
            return error
        if isinstance(error, BaseExceptionGroup):
            return _first(error.exceptions)
    raise AssertionError("except* matched without an UpstreamError")
