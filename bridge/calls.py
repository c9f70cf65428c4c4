"""Call and Leg: the only place where ingress, codecs, speech-to-text and delivery meet.

A ``Call`` is one media connection. It owns one ``Leg`` per track, created when the track's
first audio arrives; each leg runs one upstream recognition session in the call's task group.
Ingress events are handled synchronously (the media reader never waits); audio flows to each
leg's session through a bounded buffer that drops its oldest chunk, counted, when the upstream
falls behind real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from bridge.codecs.reframe import Reframer
from bridge.compliance.mask import MASKED_ON_RECOVERY, mask_numbers
from bridge.compliance.redact import LegRedactor, Redacted, Released, policy_for
from bridge.config import Settings
from bridge.delivery.retry import Outcome
from bridge.delivery.webhooks import EventSink
from bridge.errors import (
    CLOSE_NORMAL,
    ProtocolViolation,
    UpstreamError,
    UpstreamRefused,
    UpstreamUnavailable,
)
from bridge.events import (
    AudioEncoding,
    AudioFrame,
    Dtmf,
    EventType,
    IngressEvent,
    Mark,
    OutboundEvent,
    ProviderErrorReported,
    StreamStarted,
    StreamStopped,
    Track,
    TranscriptResult,
)
from bridge.metrics import Metrics
from bridge.stt.base import EngineResult, EngineSession
from bridge.stt.engines import Engines
from bridge.stt.reconnect import (
    MAX_RECONNECTS,
    QUICK_FAILURES,
    QUICK_S,
    Decision,
    classify,
    reconnect_delays,
)

log = structlog.get_logger("bridge.calls")


# How long a finished call waits for its webhooks' outcomes before writing its summary.
SUMMARY_WAIT_S: Final = 10.0


class LegState(enum.Enum):
    OPENING = "opening"  # upstream session being opened; audio buffers meanwhile
    STREAMING = "streaming"
    FINISHING = "finishing"  # end of audio sent; waiting for the last finals
    DONE = "done"
    FAILED = "failed"  # upstream refused or lost: audio is discarded, the call goes on


class Leg:
    """One track of a call: its audio pipeline, its upstream session, its transcripts."""

    def __init__(self, call: Call, track: Track, engine: EngineSession) -> None:
        settings = call.settings
        self.call = call
        self.track = track
        self.engine_name = call.engine_name
        self._silence_timeout_s = settings.stt.silence_timeout_s
        self._roll_margin_s = settings.stt.roll_margin_s
        self._roll = False
        self.rolls = 0
        self.failed_over = False
        self.speaker = getattr(settings.speakers, track.value)
        self.engine = engine
        self.state = LegState.OPENING
        self.reframer = Reframer(call.encoding, sample_rate=call.sample_rate,
                                 chunk_ms=settings.audio.chunk_ms,
                                 reorder_window=settings.audio.reorder_window_frames,
                                 max_gap_fill_ms=settings.audio.max_gap_fill_ms)
        self._close_grace_s = settings.stt.close_grace_s
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self.bytes_per_ms = self.reframer.bytes_per_ms
        self._max_buffered = settings.audio.max_buffer_ms * self.bytes_per_ms
        self._wake = asyncio.Event()
        self._audio_ended = False
        self.sent_bytes = 0
        self.chunks_dropped = 0
        self.bytes_discarded = 0
        self.sequence = 0  # finals published so far
        self.partials = 0
        self.finals: list[str] = []
        self.error: UpstreamError | None = None
        self._last_final_end_ms: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.redactor: LegRedactor[TranscriptResult] = LegRedactor(call.policy)
        self.hold_timer: asyncio.Task[None] | None = None
        self.paused = False
        self.pauses: list[list[int | None]] = []  # [start_ms, end_ms] on the leg's clock
        self.bytes_paused = 0
        self._enqueued = 0  # bytes of reframed audio so far, sent or not
        self._replay: deque[tuple[float, bytes]] = deque()  # (upstream ms, chunk) since a final
        self._replay_bytes = 0
        self._max_replay_bytes = settings.stt.replay_ms * self.bytes_per_ms
        self._session_origin_ms = 0.0
        self._session_bytes = 0
        self._results_this_session = 0
        self.reconnects = 0
        self._pause_skips: list[tuple[float, float]] = []  # (upstream ms, ms withheld there)

    # -- media side: synchronous, called for every frame -------------------------------------

    def push(self, frame: AudioFrame) -> None:
        """Add one frame of audio. Never waits."""
        for chunk in self.reframer.push(frame.payload, frame.timestamp_ms):
            self._enqueue(chunk)

    def end_of_audio(self) -> None:
        """No more audio: flush the reframer and let the session finish."""
        if self._audio_ended:
            return
        self._audio_ended = True
        for chunk in self.reframer.flush():
            self._enqueue(chunk)
        self._wake.set()

    def _enqueue(self, chunk: bytes) -> None:
        if self.paused:
            # Withheld from the engine; the clock runs on, so later results map past the gap.
            sent_ms = (self._enqueued - self.bytes_paused) / self.bytes_per_ms
            self._pause_skips.append((sent_ms, len(chunk) / self.bytes_per_ms))
            self.bytes_paused += len(chunk)
            self._enqueued += len(chunk)
            return
        self._enqueued += len(chunk)
        if self.state is LegState.FAILED:
            self.bytes_discarded += len(chunk)
            return
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        while self._buffered > self._max_buffered:
            dropped = self._buffer.popleft()
            self._buffered -= len(dropped)
            if self.chunks_dropped == 0:
                log.warning("upstream is slower than real time; dropping oldest audio",
                            leg=self.track.value, buffer_ms=self._max_buffered // self.bytes_per_ms)
            self.chunks_dropped += 1
        self._wake.set()

    # -- upstream side -----------------------------------------------------------------------

    async def run(self) -> None:
        """Open the session, stream the audio, collect results, close; reconnect when the
        upstream drops.

        A dropped session (network error, a retryable close code) is replaced after a short
        backoff by a new one with the same parameters, which first receives the audio sent
        since the last final again (from a buffer of at most ``stt.replay_ms``); results are
        shifted onto the leg's clock, and finals ending before the last one delivered are
        dropped. Fatal failures end the leg's transcription (a ``transcription.error`` event
        and one log line) but never the call. Cancelling leaves the upstream socket closed
        and the buffered audio unsent.
        """
        structlog.contextvars.bind_contextvars(leg=self.track.value)
        delays = reconnect_delays()
        quick_failures = failures_in_row = 0
        while True:
            loop = asyncio.get_running_loop()
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
                    self.state = LegState.DONE
                    return
                # A long session ended at a pause before the engine's limit: go on in a
                # new one, which gets the audio since the last final first.
                self.rolls += 1
                self.call.metrics.upstream.labels(self.engine_name, "rolled").inc()
                log.info("speech-to-text session rolled over before its limit",
                         leg=self.track.value, engine=self.engine_name)
                self.engine = self.call.open_engine(self.engine_name)
                quick_failures = failures_in_row = 0
                continue
            productive = self._results_this_session > 0
            quick = loop.time() - opened_at < QUICK_S and not productive
            quick_failures = quick_failures + 1 if quick else 0
            failures_in_row = 0 if productive else failures_in_row + 1
            if productive:
                delays = reconnect_delays()  # it worked for a while: start the backoff over
            if (classify(error) is Decision.FATAL or self.state is LegState.FINISHING
                    or quick_failures >= QUICK_FAILURES or failures_in_row > MAX_RECONNECTS):
                if self.state is not LegState.FINISHING and self._fail_over(error):
                    quick_failures = failures_in_row = 0
                    delays = reconnect_delays()
                    continue
                self._fail(error)
                return
            delay = next(delays)
            self.reconnects += 1
            self.call.metrics.upstream.labels(self.engine_name, "reconnected").inc()
            log.warning("speech-to-text session dropped; reconnecting and replaying",
                        leg=self.track.value, error=str(error), retry_in_s=round(delay, 2),
                        replay_ms=round(self._replay_bytes / self.bytes_per_ms))
            await asyncio.sleep(delay)
            self.engine = self.call.open_engine(self.engine_name)

    def _fail_over(self, error: UpstreamError) -> bool:
        """Move the leg to the secondary engine, once; False when there is none."""
        secondary = self.call.secondary_engine
        if secondary is None or self.failed_over or secondary == self.engine_name:
            return False
        self.failed_over = True
        self.call.metrics.upstream.labels(self.engine_name, "failed_over").inc()
        previous, self.engine_name = self.engine_name, secondary
        log.warning("speech-to-text failing over to the secondary engine",
                    leg=self.track.value, engine=previous, to=secondary, error=str(error))
        self.call.on_failover(self, previous, error)
        self.engine = self.call.open_engine(secondary)
        return True

    async def _session(self) -> bool:
        """One upstream session: open, replay, stream until the end of audio (or a roll
        over: then True), finish."""
        self._results_this_session = 0
        self._roll = False
        loop = asyncio.get_running_loop()
        self._session_opened = loop.time()
        self._last_heard = loop.time()
        self._heard_at_bytes = 0
        await self.engine.open()
        self.call.metrics.upstream.labels(self.engine_name, "opened").inc()
        self.state = LegState.STREAMING
        # The new session's audio starts where the replayed audio starts.
        replay = list(self._replay)
        self._session_origin_ms = (replay[0][0] if replay
                                   else self.sent_bytes / self.bytes_per_ms)
        self._session_bytes = 0
        async with asyncio.TaskGroup() as tasks:
            receiver = tasks.create_task(self._receive())
            watchdog = tasks.create_task(self._watch_silence())
            for _, chunk in replay:
                await self.engine.send_audio(chunk)
                self._session_bytes += len(chunk)
            await self._send_until_end()
            watchdog.cancel()
            if not self._roll:
                self.state = LegState.FINISHING
            await self.engine.finish()
            # Some engines close after their last final, others never do: bound the wait.
            await asyncio.wait({receiver}, timeout=self._close_grace_s)
            await self.engine.close()
        return self._roll

    async def _watch_silence(self) -> None:
        """An engine that says nothing for ``stt.silence_timeout_s`` while audio flows to it
        is treated as dropped (off at 0: some engines say nothing in silence)."""
        limit = self._silence_timeout_s
        if limit <= 0:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(limit / 4)
            flowing = (self._session_bytes - self._heard_at_bytes) / self.bytes_per_ms
            if loop.time() - self._last_heard > limit and flowing > limit * 1000:
                raise UpstreamUnavailable(f"the engine sent nothing for {limit:g}s while "
                                          "audio flowed")

    async def _send_until_end(self) -> None:
        while True:
            while self._buffer:
                chunk = self._buffer[0]
                await self.engine.send_audio(chunk)
                self._buffer.popleft()  # only once sent: a drop here replays it
                self._buffered -= len(chunk)
                self._remember(chunk)
                self.sent_bytes += len(chunk)
                self._session_bytes += len(chunk)
            if self._audio_ended or self._roll:
                return
            self._wake.clear()
            await self._wake.wait()

    def _remember(self, chunk: bytes) -> None:
        """Keep sent audio for a replay, at most ``stt.replay_ms`` of it."""
        self._replay.append((self.sent_bytes / self.bytes_per_ms, chunk))
        self._replay_bytes += len(chunk)
        while self._replay_bytes > self._max_replay_bytes and len(self._replay) > 1:
            _, dropped = self._replay.popleft()
            self._replay_bytes -= len(dropped)

    def _forget_until(self, upstream_ms: float) -> None:
        """A final covers the audio up to ``upstream_ms``: it needs no replay."""
        while self._replay:
            start, chunk = self._replay[0]
            if start + len(chunk) / self.bytes_per_ms > upstream_ms:
                break
            self._replay.popleft()
            self._replay_bytes -= len(chunk)

    async def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        async for result in self.engine.results():
            self._results_this_session += 1
            self._last_heard = loop.time()
            self._heard_at_bytes = self._session_bytes
            placed = self._place(result)
            if placed is None:
                continue
            self.call.on_result(self, placed)
            limit = self.call.max_session_s(self.engine_name)
            if placed.is_final and limit and self.state is LegState.STREAMING and \
                    loop.time() - self._session_opened > limit - self._roll_margin_s:
                self._roll = True  # a pause, before the engine's limit: roll over here
                self._wake.set()

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume sending this leg's audio; False when nothing changed."""
        if paused == self.paused:
            return False
        self.paused = paused
        now = self.reframer.position_ms
        if paused:
            self.pauses.append([now, None])
        elif self.pauses:
            self.pauses[-1][1] = now
        return True

    def _to_clock(self, upstream_ms: float) -> int:
        withheld = sum(ms for at, ms in self._pause_skips if at <= upstream_ms)
        return self.reframer.upstream_to_clock_ms(upstream_ms + withheld)

    def _place(self, result: EngineResult) -> TranscriptResult | None:
        """Put a result on the leg's audio clock.

        Engines that give segment times are mapped through the reframer (silence inserted
        for lost frames is part of the upstream's audio, jumps are not). Otherwise the
        segment runs from the previous final's end to the audio sent so far: an upper bound
        that includes the engine's endpointing delay.
        """
        to_clock = self._to_clock
        origin = self._session_origin_ms  # where this session's audio began, upstream ms
        if result.start_s is not None and result.end_s is not None:
            end_upstream = origin + result.end_s * 1000
            start_ms, end_ms = to_clock(origin + result.start_s * 1000), to_clock(end_upstream)
        else:
            end_upstream = origin + self._session_bytes / self.bytes_per_ms
            end_ms = to_clock(end_upstream)
            previous_end = self._last_final_end_ms
            start_ms = to_clock(0) if previous_end is None else previous_end
        start_ms = min(start_ms, end_ms)
        if result.is_final and result.end_s is not None:
            # How long after its audio was sent did the final come (engines that give times)
            behind_ms = origin + self._session_bytes / self.bytes_per_ms - end_upstream
            self.call.metrics.latency.labels(self.engine_name).observe(max(behind_ms, 0) / 1000)
        if result.is_final:
            # Replayed audio recognised again: delivered already. Only engines that give
            # segment times can say so; for the others the replay starts after the last
            # final, so there is nothing to repeat.
            if result.end_s is not None and self._last_final_end_ms is not None \
                    and end_ms <= self._last_final_end_ms and (self.reconnects or self.rolls):
                return None
            self._last_final_end_ms = end_ms
            self._forget_until(end_upstream)
        words = tuple((w.text, to_clock(origin + w.start_s * 1000),
                       to_clock(origin + w.end_s * 1000), w.confidence) for w in result.words)
        return TranscriptResult(result.text, result.is_final, result.confidence, start_ms, end_ms,
                                words)

    def _fail(self, error: UpstreamError) -> None:
        self.call.metrics.upstream.labels(self.engine_name, "failed").inc()
        self.state = LegState.FAILED
        self.error = error
        self.bytes_discarded += self._buffered
        self._buffer.clear()
        self._buffered = 0
        log.error("speech-to-text session failed; the call continues without transcripts "
                  "for this leg", leg=self.track.value, error=str(error),
                  retryable=not isinstance(error, UpstreamRefused))
        self.call.on_leg_error(self, error)

    def summary(self) -> dict[str, Any]:
        stats = self.reframer.stats
        return {
            "leg": self.track.value,
            "speaker": self.speaker,
            "audio_ms": self.reframer.position_ms - (self.reframer.origin_ms or 0),
            "frames": stats.frames,
            "bytes": stats.bytes_in,
            "gaps_filled": stats.gaps_filled,
            "gap_fill_ms": stats.gap_fill_ms,
            "late_frames_dropped": stats.late_dropped,
            "chunks_dropped": self.chunks_dropped,
            "bytes_untranscribed": self.bytes_discarded,  # after a fatal upstream failure
            "transcripts": self.sequence,
            "partials": self.partials,
            "upstream": "failed" if self.state is LegState.FAILED else "ok",
            "reconnects": self.reconnects,
            "engine": self.engine_name,
            "failed_over": self.failed_over,
            "rolls": self.rolls,
            "redaction": {
                "enabled": self.call.policy.enabled,
                "policies": self.call.policy.names(),
                "counts": dict(sorted(self.redactor.totals.items())),
                "paused": [{"start_ms": start, "end_ms": end} for start, end in self.pauses],
            },
        }


def _first(errors: Sequence[BaseException]) -> UpstreamError:
    for error in errors:
        if isinstance(error, UpstreamError):
            return error
        if isinstance(error, BaseExceptionGroup):
            return _first(error.exceptions)
    raise AssertionError("except* matched without an UpstreamError")


class CallState(enum.Enum):
    CONNECTED = "connected"
    STARTED = "started"
    ENDED = "ended"


class Call:
    """One media connection and its legs. Feed it events with ``handle``; end it with ``end``."""

    def __init__(self, *, settings: Settings, sink: EventSink, engines: Engines,
                 tasks: asyncio.TaskGroup,
                 route: Callable[[StreamStarted], tuple[str, ...]] = lambda _: (),
                 path: str = "", metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.policy = policy_for(settings.compliance)
        self._sink = sink
        self._route = route
        self.path = path
        self.metrics = metrics or Metrics()
        self.opened_at = time.time()
        self.media_socket: Any = None  # the aiohttp WebSocketResponse, for hang_up()
        self.end_reason: str | None = None
        self.paused = False
        self.targets: tuple[str, ...] = ()
        self._engines = engines
        self._tasks = tasks
        self.state = CallState.CONNECTED
        self.started: StreamStarted | None = None
        self.legs: dict[Track, Leg] = {}
        self.dtmf_count = 0
        self.provider_errors = 0
        self._opened_at = time.monotonic()
        # Deliveries still in flight, and the outcomes of those that settled: a long call
        # keeps counts, not one future per event.
        self._in_flight: set[asyncio.Future[Outcome]] = set()
        self._outcomes: Counter[str] = Counter()
        self._partials_published = 0
        self._held_stored: set[Track] = set()  # legs with held finals in the outbox

    @property
    def encoding(self) -> AudioEncoding:
        return self._require_started().encoding

    @property
    def sample_rate(self) -> int:
        return self._require_started().sample_rate

    @property
    def call_id(self) -> str | None:
        return self.started.call_id if self.started else None

    def handle(self, event: IngressEvent) -> None:
        """Act on one ingress event. Synchronous: the media reader never waits here."""
        if isinstance(event, AudioFrame):
            leg = self.legs.get(event.track)
            if leg is None:
                leg = self._open_leg(event.track)
            leg.push(event)
        elif isinstance(event, StreamStarted):
            self._start(event)
        elif isinstance(event, StreamStopped):
            for leg in self.legs.values():
                leg.end_of_audio()
        elif isinstance(event, Dtmf):
            # Key presses may be card numbers: counted, never forwarded or logged as digits.
            self.dtmf_count += 1
            if self.settings.compliance.dtmf == "masked":
                self._publish(EventType.DTMF, self.legs.get(event.track),
                              {"leg": event.track.value, "digit": "masked"})
        elif isinstance(event, ProviderErrorReported):
            self.provider_errors += 1
            log.warning("provider reported a stream error", code=event.code, title=event.title)
        elif isinstance(event, Mark):
            # A mark named callbridge:pause / callbridge:resume (optionally :inbound or
            # :outbound) pauses or resumes transcription from the stream itself.
            action, _, track = event.name.removeprefix("callbridge:").partition(":")
            if event.name.startswith("callbridge:") and action in ("pause", "resume"):
                with contextlib.suppress(ValueError):
                    self.set_paused(action == "pause", Track(track) if track else None,
                                    reason="stream")

    def _start(self, event: StreamStarted) -> None:
        self.started = event
        self.metrics.calls_active.labels(event.provider).inc()
        self.targets = self._route(event)
        self.engine_name, self.engine_options = self._engines.for_call(event.custom_parameters,
                                                                       self.path)
        self.state = CallState.STARTED
        structlog.contextvars.bind_contextvars(call_id=event.call_id, stream_id=event.stream_id,
                                               provider=event.provider)
        log.info("call started", encoding=event.encoding.value,
                 tracks=[t.value for t in event.tracks])
        self._publish(EventType.CALL_STARTED, None, {
            "encoding": event.encoding.value,
            "sample_rate": event.sample_rate,
            "tracks": [t.value for t in event.tracks],
            "redaction": self.policy.names(),
        })
        if event.custom_parameters.get("callbridge_paused", "").lower() in ("true", "1", "yes"):
            self.set_paused(True, None, reason="stream")

    async def hang_up(self, reason: str = "ended_by_admin") -> None:
        """Close the media connection; the call then ends as usual with ``reason``."""
        self.end_reason = reason
        if self.media_socket is not None:
            await self.media_socket.close(code=CLOSE_NORMAL, message=b"call ended by the bridge")

    def set_paused(self, paused: bool, track: Track | None, *, reason: str) -> dict[str, bool]:
        """Pause or resume one leg, or the whole call (``track`` None, also legs to come).

        Paused audio is not sent to the engine; the leg's clock keeps running.
        """
        if track is None:
            self.paused = paused
        legs = [leg for t, leg in self.legs.items() if track is None or t is track]
        changed = [leg for leg in legs if leg.set_paused(paused)]
        if track is None or changed:
            event_type = (EventType.TRANSCRIPTION_PAUSED if paused
                          else EventType.TRANSCRIPTION_RESUMED)
            leg = self.legs.get(track) if track is not None else None
            self._publish(event_type, leg, {
                "leg": track.value if track is not None else None, "reason": reason,
                "at_ms": {t.value: other.reframer.position_ms for t, other in self.legs.items()}})
            log.info("transcription paused" if paused else "transcription resumed",
                     leg=track.value if track else "all", reason=reason)
        return {t.value: leg.paused for t, leg in self.legs.items()}

    def open_engine(self, name: str) -> EngineSession:
        """A new upstream session of engine ``name`` for a leg of this call."""
        return self._engines.open(name, self.encoding, self.sample_rate, self.engine_options)

    @property
    def secondary_engine(self) -> str | None:
        return self._engines.secondary

    def max_session_s(self, name: str) -> float:
        return self._engines.max_session_s(name)

    def _open_leg(self, track: Track) -> Leg:
        self.metrics.legs_active.labels(self._require_started().provider).inc()
        leg = Leg(self, track, self.open_engine(self.engine_name))
        self.legs[track] = leg
        if self.paused:
            leg.set_paused(True)
        leg.task = self._tasks.create_task(leg.run(), name=f"leg {track.value}")
        return leg

    def on_result(self, leg: Leg, result: TranscriptResult) -> None:
        """A result from a leg's engine: redact it, then publish it (finals maybe later)."""
        if not result.is_final:
            redacted = leg.redactor.partial(result.text)
            leg.partials += 1
            # A partial carries the sequence number its final will have: it updates in place.
            self._publish_transcript(leg, result, redacted,
                                     leg.sequence + len(leg.redactor.held) + 1)
            return
        self._release(leg, leg.redactor.final(result.text, result))
        if leg.hold_timer is not None:
            leg.hold_timer.cancel()
            leg.hold_timer = None
        if leg.redactor.holding:
            leg.hold_timer = self._tasks.create_task(self._hold_expired(leg))
        self._store_held(leg)

    async def _hold_expired(self, leg: Leg) -> None:
        """A held final waited ``compliance.hold_s`` for the next one: release it."""
        await asyncio.sleep(self.settings.compliance.hold_s)
        leg.hold_timer = None
        self._release(leg, leg.redactor.flush())
        self._store_held(leg)

    def _store_held(self, leg: Leg) -> None:
        """Keep the leg's held finals in the outbox, every number masked, so that a crash
        while they wait loses nothing and writes no digit; each call replaces the last."""
        held = [text for text, _ in leg.redactor.held]
        if not held and leg.track not in self._held_stored:
            return
        self._held_stored.discard(leg.track)
        if held:
            self._held_stored.add(leg.track)
        finals = []
        for n, (text, result) in enumerate(leg.redactor.held, start=1):
            finals.append(self._event(EventType.TRANSCRIPT_FINAL, leg, {
                "sequence": leg.sequence + n,
                "text": mask_numbers(text),
                "is_final": True,
                "confidence": result.confidence,
                "start_ms": result.start_ms,
                "end_ms": result.end_ms,
                "redactions": [{"type": MASKED_ON_RECOVERY, "count": 1}],
            }))
        self._sink.hold(self._require_started().call_id, leg.track.value, finals)

    def _release(self, leg: Leg, released: list[Released[TranscriptResult]]) -> None:
        """Publish released finals in order; one emptied by a number that began in a final
        before it does not go out (it lends its end time to that final when both leave
        together)."""
        ready: list[tuple[TranscriptResult, Redacted]] = []
        for item in released:
            if not item.text:
                if ready:  # its words were the end of a number redacted in the one before
                    previous, redacted = ready[-1]
                    ready[-1] = (replace(previous, end_ms=item.payload.end_ms), redacted)
                continue  # nothing left to say: sequence numbers are given out below
            ready.append((item.payload, item.redacted))
        for result, redacted in ready:
            leg.sequence += 1
            leg.finals.append(redacted.text)
            self._publish_transcript(leg, result, redacted, leg.sequence)

    def _publish_transcript(self, leg: Leg, result: TranscriptResult, redacted: Redacted,
                            sequence: int) -> None:
        self.metrics.transcripts.labels("final" if result.is_final else "partial").inc()
        self._publish(EventType.TRANSCRIPT_FINAL if result.is_final
                      else EventType.TRANSCRIPT_PARTIAL, leg, {
                          "sequence": sequence,
                          "text": redacted.text,
                          "is_final": result.is_final,
                          "confidence": result.confidence,
                          "start_ms": result.start_ms,
                          "end_ms": result.end_ms,
                          "redactions": redacted.summary(),
                          # Word times when the engine gives them, and only for text the
                          # redactor left as it was: words would carry what it removed.
                          **({"words": [{"text": t, "start_ms": s, "end_ms": e,
                                         "confidence": c} for t, s, e, c in result.words]}
                             if result.words and redacted.text == result.text else {}),
                      })

    def on_failover(self, leg: Leg, previous: str, error: UpstreamError) -> None:
        self._publish(EventType.TRANSCRIPTION_FAILOVER, leg, {
            "from": previous, "to": leg.engine_name,
            "error": {"code": error.code, "status": error.status, "message": error.reason}})

    def on_leg_error(self, leg: Leg, error: UpstreamError) -> None:
        self._publish(EventType.TRANSCRIPTION_ERROR, leg, {
            "error": {"code": error.code, "status": error.status, "message": error.reason,
                      "retryable": not isinstance(error, UpstreamRefused)},
        })

    async def end(self, reason: str) -> None:
        """Finish every leg (last audio, last finals), publish ``call.ended``, log the summary.

        Bounded: each leg's session gets its grace period, then the summary waits at most
        ``SUMMARY_WAIT_S`` for webhook outcomes. Cancelling it leaves legs' sessions closed
        and ``call.ended`` unpublished.
        """
        if self.state is CallState.ENDED:
            return
        was_started = self.state is CallState.STARTED
        self.state = CallState.ENDED
        for leg in self.legs.values():
            leg.end_of_audio()
        leg_tasks = [leg.task for leg in self.legs.values() if leg.task is not None]
        if leg_tasks:
            await asyncio.wait(leg_tasks)
        for leg in self.legs.values():
            if leg.hold_timer is not None:
                leg.hold_timer.cancel()
                leg.hold_timer = None
            self._release(leg, leg.redactor.flush())
            self._store_held(leg)
            if leg.paused:
                leg.set_paused(False)  # close the pause interval for the audit
        if not was_started:
            log.info("connection closed before the stream started", reason=reason)
            return
        provider = self._require_started().provider
        metrics = self.metrics
        metrics.calls_active.labels(provider).dec()
        metrics.calls.labels(provider, reason).inc()
        for leg in self.legs.values():
            stats = leg.reframer.stats
            metrics.legs_active.labels(provider).dec()
            metrics.frames.labels(provider).inc(stats.frames)
            metrics.media_bytes.labels(provider).inc(stats.bytes_in)
            metrics.gaps.labels(provider).inc(stats.gaps_filled)
            metrics.chunks_dropped.labels(provider).inc(leg.chunks_dropped)
        duration_ms = int((time.monotonic() - self._opened_at) * 1000)
        legs = [leg.summary() | {"text": " ".join(leg.finals)} for leg in self.legs.values()]
        self._publish(EventType.CALL_ENDED, None, {
            "reason": reason, "duration_ms": duration_ms, "legs": legs,
        })
        outcomes = await self._delivery_outcomes()
        log.info("call summary", reason=reason, duration_ms=duration_ms,
                 legs={leg.track.value: leg.summary() for leg in self.legs.values()},
                 dtmf=self.dtmf_count, provider_errors=self.provider_errors,
                 partials_published=self._partials_published, webhooks=outcomes)

    async def _delivery_outcomes(self) -> dict[str, int]:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=SUMMARY_WAIT_S)
        counts = Counter(self._outcomes)
        for future in self._in_flight:  # still in flight, or settled a moment ago
            settled = future.done() and not future.cancelled()
            counts[future.result().value if settled else "pending"] += 1
        return dict(counts)

    def _settled(self, future: asyncio.Future[Outcome]) -> None:
        self._in_flight.discard(future)
        if not future.cancelled():
            self._outcomes[future.result().value] += 1

    def _publish(self, event_type: EventType, leg: Leg | None, fields: Mapping[str, Any]) -> None:
        event = self._event(event_type, leg, fields)
        outcome = self._sink.publish(event)
        if event_type is EventType.TRANSCRIPT_PARTIAL:
            self._partials_published += 1  # best effort: not waited for
        else:
            self._in_flight.add(outcome)
            outcome.add_done_callback(self._settled)

    def _event(self, event_type: EventType, leg: Leg | None,
               fields: Mapping[str, Any]) -> OutboundEvent:
        """The one place an outgoing event of this call is built."""
        started = self._require_started()
        data: dict[str, Any] = {
            "call_id": started.call_id,
            "stream_id": started.stream_id,
            "provider": started.provider,
            "leg": leg.track.value if leg else None,
            "speaker": leg.speaker if leg else None,
            "custom_parameters": dict(started.custom_parameters),
        }
        data.update(fields)
        return OutboundEvent(
            id=f"msg_{uuid.uuid4().hex}",
            type=event_type,
            timestamp=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            data=data,
            call_id=started.call_id,
            leg=leg.track.value if leg else None,
            targets=self.targets,
        )

    def _require_started(self) -> StreamStarted:
        if self.started is None:
            raise ProtocolViolation("media before the stream's start message")
        return self.started
