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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final, Protocol

import structlog

from bridge.admission import LiveCalls
from bridge.compliance.mask import MASKED_ON_RECOVERY, mask_numbers
from bridge.compliance.redact import LegRedactor, Policy, Redacted, Released, policy_for
from bridge.config import Settings
from bridge.delivery.retry import Outcome
from bridge.delivery.webhooks import EventSink
from bridge.errors import (
    CLOSE_NORMAL,
    ProtocolViolation,
    UpstreamError,
    UpstreamRefused,
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
    make_event,
)
from bridge.legs.audio import LegAudio
from bridge.legs.upstream import Upstream, UpstreamHooks, UpstreamState, UpstreamTimers
from bridge.metrics import Metrics
from bridge.stt.base import EngineSession

log = structlog.get_logger("bridge.calls")


# How long a finished call waits for its webhooks' outcomes before writing its summary.
SUMMARY_WAIT_S: Final = 10.0
PROVIDER_ERRORS_LOGGED: Final = 5  # per stream; the rest only counted
# Pause/resume marks a stream may send: each is an event to every target, and an interval
# in the leg's audit.
MAX_STREAM_PAUSES: Final = 200


class Leg:
    """One track of a call: its audio pipeline, its upstream session, its transcripts.

    Built by its call with what it needs; it never holds the call.
    """

    def __init__(self, track: Track, *, settings: Settings, encoding: AudioEncoding,
                 sample_rate: int, engine_name: str, hooks: UpstreamHooks, metrics: Metrics,
                 policy: Policy) -> None:
        self.track = track
        self.speaker = getattr(settings.speakers, track.value)
        self._max_buffer_ms = settings.audio.max_buffer_ms
        audio = settings.audio
        self.audio = LegAudio(encoding, sample_rate=sample_rate,
                              chunk_ms=audio.chunk_ms,
                              reorder_window=audio.reorder_window_frames,
                              max_gap_fill_ms=audio.max_gap_fill_ms,
                              max_buffer_ms=audio.max_buffer_ms,
                              replay_ms=settings.stt.replay_ms)
        stt = settings.stt
        self.upstream = Upstream(self.audio, engine_name, hooks, metrics, leg=track.value,
                                 timers=UpstreamTimers(stt.silence_timeout_s,
                                                       stt.roll_margin_s, stt.close_grace_s))
        self._policy = policy
        self._warned_drops = False
        self.sequence = 0  # finals published so far
        self.partials = 0
        self.finals: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.redactor: LegRedactor[TranscriptResult] = LegRedactor(policy)
        self.hold_timer: asyncio.Task[None] | None = None

    @property
    def engine_name(self) -> str:
        return self.upstream.engine_name

    async def run(self) -> None:
        """The leg's upstream sessions (see ``Upstream.run``)."""
        structlog.contextvars.bind_contextvars(leg=self.track.value)
        await self.upstream.run()

    # -- media side: synchronous, called for every frame -------------------------------------

    def push(self, frame: AudioFrame) -> None:
        """Add one frame of audio. Never waits."""
        audio = self.audio
        if audio.push(frame.payload, frame.timestamp_ms):
            self.upstream.wake()
        if audio.counters.chunks_dropped and not self._warned_drops:
            self._warned_drops = True
            log.warning("upstream is slower than real time; dropping oldest audio",
                        leg=self.track.value, buffer_ms=self._max_buffer_ms)

    def end_of_audio(self) -> None:
        """No more audio: flush the reframer and let the session finish."""
        self.audio.end()
        self.upstream.wake()

    @property
    def paused(self) -> bool:
        return self.audio.paused

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume sending this leg's audio; False when nothing changed."""
        return self.audio.set_paused(paused)

    def summary(self) -> dict[str, Any]:
        audio, upstream = self.audio, self.upstream
        stats = audio.stats
        return {
            "leg": self.track.value,
            "speaker": self.speaker,
            "audio_ms": audio.audio_ms,
            "frames": stats.frames,
            "bytes": stats.bytes_in,
            "gaps_filled": stats.gaps_filled,
            "gap_fill_ms": stats.gap_fill_ms,
            "late_frames_dropped": stats.late_dropped,
            "chunks_dropped": audio.counters.chunks_dropped,
            # after a fatal upstream failure
            "bytes_untranscribed": audio.counters.bytes_discarded,
            "transcripts": self.sequence,
            "partials": self.partials,
            "upstream": "failed" if upstream.state is UpstreamState.FAILED else "ok",
            "reconnects": upstream.reconnects,
            "engine": upstream.engine_name,
            "failed_over": upstream.failed_over,
            "rolls": upstream.rolls,
            "redaction": {
                "enabled": self._policy.enabled,
                "policies": self._policy.names(),
                "counts": dict(sorted(self.redactor.totals.items())),
                "paused": [{"start_ms": start, "end_ms": end}
                           for start, end in audio.pauses],
            },
        }


class EngineCatalog(Protocol):
    """What a call needs of the engines (``bridge.stt.engines.Engines`` in the bridge)."""

    @property
    def secondary(self) -> str | None:
        """The engine a leg fails over to, once."""

    def for_call(self, parameters: Mapping[str, str],
                 path: str = "") -> tuple[str, dict[str, str]]:
        """The engine and its options for a call."""

    def open(self, name: str, encoding: AudioEncoding, sample_rate: int,
             options: Mapping[str, str]) -> EngineSession:
        """A new session of engine ``name``."""

    def max_session_s(self, name: str) -> float:
        """The engine's session limit in seconds (0: none)."""


class CallState(enum.Enum):
    CONNECTED = "connected"
    STARTED = "started"
    ENDED = "ended"


class Call:
    """One media connection and its legs. Feed it events with ``handle``; end it with ``end``."""

    def __init__(self, *, settings: Settings, sink: EventSink, engines: EngineCatalog,
                 tasks: asyncio.TaskGroup,
                 route: Callable[[StreamStarted], tuple[str, ...]] = lambda _: (),
                 path: str = "", metrics: Metrics | None = None,
                 registry: LiveCalls[Call] | None = None) -> None:
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
        # The call's identity: the call id its stream announced, or that id with a suffix
        # when another live stream held it (server.duplicate_call_id = "separate").
        self.key: str | None = None
        self._registry: LiveCalls[Call] = registry if registry is not None else LiveCalls(
            max_calls=settings.server.max_calls, duplicates=settings.server.duplicate_call_id)
        self.legs: dict[Track, Leg] = {}
        self.dtmf_count = 0
        self.provider_errors = 0
        self._stream_pauses = 0
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
        """The id webhooks, the feed and the admin API know the call by (its key)."""
        return self.key

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
            # A peer may send thousands: the first few are logged, the rest counted; none
            # before the stream has started and passed its checks.
            self.provider_errors += 1
            if self.started is not None and self.provider_errors <= PROVIDER_ERRORS_LOGGED:
                log.warning("provider reported a stream error", code=event.code[:40],
                            title=event.title[:200])
            if self.provider_errors == PROVIDER_ERRORS_LOGGED:
                log.warning("further provider errors on this stream are counted, not logged")
        elif isinstance(event, Mark):
            # A mark named callbridge:pause / callbridge:resume (optionally :inbound or
            # :outbound) pauses or resumes transcription from the stream itself.
            action, _, track = event.name.removeprefix("callbridge:").partition(":")
            if event.name.startswith("callbridge:") and action in ("pause", "resume"):
                self._stream_pauses += 1
                if self._stream_pauses > MAX_STREAM_PAUSES:
                    if self._stream_pauses == MAX_STREAM_PAUSES + 1:
                        log.warning("pause and resume marks beyond the limit are ignored",
                                    limit=MAX_STREAM_PAUSES)
                    return
                with contextlib.suppress(ValueError):
                    self.set_paused(action == "pause", Track(track) if track else None,
                                    reason="stream")

    def _start(self, event: StreamStarted) -> None:
        # First: a stream that may not have this call id (or a slot) publishes nothing.
        self.key = self._registry.claim(event.call_id, self)
        self.started = event
        self.metrics.calls_active.labels(event.provider).inc()
        self.targets = self._route(event)
        self.engine_name, self.engine_options = self._engines.for_call(event.custom_parameters,
                                                                       self.path)
        self.state = CallState.STARTED
        structlog.contextvars.bind_contextvars(call_id=self.key, stream_id=event.stream_id,
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
                "at_ms": {t.value: other.audio.position_ms for t, other in self.legs.items()}})
            log.info("transcription paused" if paused else "transcription resumed",
                     leg=track.value if track else "all", reason=reason)
        return {t.value: leg.paused for t, leg in self.legs.items()}

    def open_engine(self, name: str) -> EngineSession:
        """A new upstream session of engine ``name`` for a leg of this call."""
        return self._engines.open(name, self.encoding, self.sample_rate, self.engine_options)

    def _open_leg(self, track: Track) -> Leg:
        started = self._require_started()
        self.metrics.legs_active.labels(started.provider).inc()
        leg: Leg

        def on_result(result: TranscriptResult) -> None:
            self.on_result(leg, result)

        def on_failover(previous: str, to: str, error: UpstreamError) -> None:
            self.on_failover(leg, previous, to, error)

        def on_error(error: UpstreamError) -> None:
            self.on_leg_error(leg, error)

        hooks = UpstreamHooks(open_engine=self.open_engine,
                              max_session_s=self._engines.max_session_s,
                              secondary=self._engines.secondary, on_result=on_result,
                              on_failover=on_failover, on_error=on_error)
        leg = Leg(track, settings=self.settings, encoding=started.encoding,
                  sample_rate=started.sample_rate, engine_name=self.engine_name, hooks=hooks,
                  metrics=self.metrics, policy=self.policy)
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
        self._sink.hold(self.key or self._require_started().call_id, leg.track.value, finals)

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

    def on_failover(self, leg: Leg, previous: str, to: str, error: UpstreamError) -> None:
        self._publish(EventType.TRANSCRIPTION_FAILOVER, leg, {
            "from": previous, "to": to,
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
            stats = leg.audio.stats
            metrics.legs_active.labels(provider).dec()
            metrics.frames.labels(provider).inc(stats.frames)
            metrics.media_bytes.labels(provider).inc(stats.bytes_in)
            metrics.gaps.labels(provider).inc(stats.gaps_filled)
            metrics.chunks_dropped.labels(provider).inc(leg.audio.counters.chunks_dropped)
        duration_ms = int((time.monotonic() - self._opened_at) * 1000)
        legs = [leg.summary() | {"text": " ".join(leg.finals)} for leg in self.legs.values()]
        self._publish(EventType.CALL_ENDED, None, {
            "reason": reason, "duration_ms": duration_ms, "legs": legs,
        })
        # Ended for everyone at once: the admin API and drain stop seeing it now, not once
        # its webhooks' outcomes are known.
        self.release()
        outcomes = await self._delivery_outcomes()
        log.info("call summary", reason=reason, duration_ms=duration_ms,
                 legs={leg.track.value: leg.summary() for leg in self.legs.values()},
                 dtmf=self.dtmf_count, provider_errors=self.provider_errors,
                 partials_published=self._partials_published, webhooks=outcomes)

    def release(self) -> None:
        """Give up the call's key and slot (idempotent; only this call's own)."""
        if self.key is not None:
            self._registry.release(self.key, self)

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
        key = self.key or started.call_id
        data: dict[str, Any] = {
            "call_id": key,
            "stream_id": started.stream_id,
            "provider": started.provider,
            "leg": leg.track.value if leg else None,
            "speaker": leg.speaker if leg else None,
            "custom_parameters": dict(started.custom_parameters),
        }
        if key != started.call_id:
            data["provider_call_id"] = started.call_id
        data.update(fields)
        return make_event(event_type, data, call_id=key, leg=leg.track.value if leg else None,
                          targets=self.targets)

    def _require_started(self) -> StreamStarted:
        if self.started is None:
            raise ProtocolViolation("media before the stream's start message")
        return self.started
