"""The call: the only place where ingress, legs and delivery meet.

A ``Call`` is one media connection. It dispatches the stream's ingress events, creates one
``Leg`` per track when the track's first audio arrives (each leg's sessions run in the call's
task group), builds and publishes the call's events, and writes its summary. Ingress events
are handled synchronously: the media reader never waits. Dependencies point one way: the
call uses legs (``bridge.legs``), legs never see the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import structlog

from bridge.admission import LiveCalls
from bridge.analytics.alerts import LegAlerts, compile_rules
from bridge.analytics.sentiment import SentimentScorer, shared_scorer
from bridge.compliance.redact import Redacted, policy_for
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
from bridge.legs.leg import Leg
from bridge.legs.transcripts import LegTranscripts
from bridge.legs.upstream import EngineSlots, UpstreamHooks
from bridge.metrics import Metrics
from bridge.stages import Timing
from bridge.stt.base import EngineSession

log = structlog.get_logger("bridge.calls")


# How long a finished call waits for its webhooks' outcomes before writing its summary.
SUMMARY_WAIT_S: Final = 10.0
PROVIDER_ERRORS_LOGGED: Final = 5  # per stream; the rest only counted
# Pause/resume marks a stream may send: each is an event to every target, and an interval
# in the leg's audit.
MAX_STREAM_PAUSES: Final = 200


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


class CallObserver:
    """Follows one call for what comes after it: talk analytics, the recording, transcripts.

    The call feeds it from the media reader and its legs' transcript stages, synchronously:
    each method must be quick and must not raise. Every default does nothing.
    """

    def audio(self, track: Track, clock_ms: int, data: bytes) -> None:
        """A chunk of the leg's audio (codec bytes) at ``clock_ms`` on the leg's clock.
        Paused audio never comes here."""

    def dtmf(self, track: Track, clock_ms: int) -> None:
        """A key press the stream reported, at the leg's clock position when it came."""

    def final(self, track: Track, result: TranscriptResult, redacted: Redacted,
              fields: Mapping[str, Any] | None) -> None:
        """A final left the leg's redactor: published with event data ``fields``, or
        emptied by a number that began in the final before it (None)."""

    def ended(self, call: Call) -> Mapping[str, Any]:
        """The call ended and its legs are flushed: fields to add to ``call.ended``."""
        return {}


class AfterCall(Protocol):
    """What the bridge does with a call besides its events (``bridge.artifacts`` in the
    bridge): the observers each started call gets, and the work once it ended."""

    def observers(self, call: Call) -> list[CallObserver]:
        """The observers of a call whose stream just started."""

    async def finish(self, call: Call, observers: list[CallObserver],
                     ended: Mapping[str, Any]) -> None:
        """The call ended and ``call.ended`` is published with data ``ended``: keep what
        is to be kept."""


def _overriding(observers: list[CallObserver], method: str) -> list[CallObserver]:
    """The observers whose class does something in ``method`` (not the no-op default)."""
    default = getattr(CallObserver, method)
    return [o for o in observers if getattr(type(o), method) is not default]


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
                 registry: LiveCalls[Call] | None = None,
                 slots: EngineSlots | None = None, after: AfterCall | None = None) -> None:
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
        # The engines' concurrency limits, shared by every call of the process (None: none).
        self._slots = slots
        self._after = after
        self.observers: list[CallObserver] = []
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
        # Phrase alerts ([[alerts]]) and sentiment (analytics.sentiment), shared by every
        # call of the process: compiled and loaded once.
        self._alert_rules = compile_rules(settings.alerts)
        self._sentiment: SentimentScorer | None = (
            shared_scorer() if settings.analytics.sentiment else None)
        self.alerts_published = 0

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
            if self.observers and self.started is not None:
                pressed = self.legs.get(event.track)
                clock_ms = (pressed.audio.position_ms if pressed is not None else
                            max((leg.audio.position_ms for leg in self.legs.values()),
                                default=0))
                for observer in self.observers:
                    observer.dtmf(event.track, clock_ms)
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
        if self._after is not None:
            self.observers = self._after.observers(self)
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
        alerts: LegAlerts

        stages = self.metrics.stages

        def publish(kind: EventType, fields: Mapping[str, Any], timing: Timing | None) -> None:
            is_final = kind is EventType.TRANSCRIPT_FINAL
            self.metrics.transcripts.labels("final" if is_final else "partial").inc()
            if is_final and timing is not None:
                timing.released_at = now = time.monotonic()
                stages.redaction_hold.observe(now - timing.received_at)
            self._publish(kind, leg, fields, timing)
            if alerts:  # right behind the transcript that triggered them, in rule order
                for alert in alerts.check(fields, is_final=is_final):
                    self.alerts_published += 1
                    self._publish(EventType.CALL_ALERT, leg, alert)

        def hold(finals: list[dict[str, Any]]) -> None:
            self._sink.hold(self.key or started.call_id, track.value,
                            [self._event(EventType.TRANSCRIPT_FINAL, leg, f) for f in finals])

        # Only the observers that want them get finals and audio: most calls' chunks then
        # cost one call, or none.
        hearing = _overriding(self.observers, "final")
        listening = _overriding(self.observers, "audio")

        def released(result: TranscriptResult, redacted: Redacted,
                     fields: Mapping[str, Any] | None) -> None:
            for observer in hearing:
                observer.final(track, result, redacted, fields)

        scorer = self._sentiment
        transcripts = LegTranscripts(self.policy, hold_s=self.settings.compliance.hold_s,
                                     publish=publish, hold=hold,
                                     released=released if hearing else None,
                                     annotate=scorer.fields if scorer is not None else None)

        def on_failover(previous: str, to: str, error: UpstreamError) -> None:
            self.on_failover(leg, previous, to, error)

        def on_error(error: UpstreamError) -> None:
            self.on_leg_error(leg, error)

        hooks = UpstreamHooks(open_engine=self.open_engine,
                              max_session_s=self._engines.max_session_s,
                              secondary=self._engines.secondary, on_result=transcripts.result,
                              on_failover=on_failover, on_error=on_error, slots=self._slots)
        leg = Leg(track, settings=self.settings, encoding=started.encoding,
                  sample_rate=started.sample_rate, engine_name=self.engine_name, hooks=hooks,
                  transcripts=transcripts, metrics=self.metrics, policy=self.policy)
        alerts = LegAlerts(self._alert_rules, track=track.value, speaker=leg.speaker)
        if stages.tracing is not None:
            leg.traced(stages.tracing.leg_span(call_id=self.key or started.call_id,
                                               leg=track.value, engine=leg.engine_name,
                                               dialect=started.provider))
        self.legs[track] = leg
        if len(listening) == 1:
            only = listening[0]

            def tap_one(clock_ms: int, data: bytes) -> None:
                only.audio(track, clock_ms, data)
            leg.audio.tap = tap_one
        elif listening:
            def tap(clock_ms: int, data: bytes) -> None:
                for observer in listening:
                    observer.audio(track, clock_ms, data)
            leg.audio.tap = tap
        if self.paused:
            leg.set_paused(True)
        leg.task = self._tasks.create_task(leg.run(), name=f"leg {track.value}")
        return leg

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
            leg.transcripts.flush()
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
        legs = [leg.summary() | {"text": " ".join(leg.transcripts.finals)}
                for leg in self.legs.values()]
        ended: dict[str, Any] = {"reason": reason, "duration_ms": duration_ms, "legs": legs}
        for observer in self.observers:
            ended.update(observer.ended(self))
        self._publish(EventType.CALL_ENDED, None, ended)
        # Ended for everyone at once: the admin API and drain stop seeing it now, not once
        # its webhooks' outcomes are known.
        self.release()
        if self._after is not None:
            await self._after.finish(self, self.observers, ended)
        outcomes = await self._delivery_outcomes()
        log.info("call summary", reason=reason, duration_ms=duration_ms,
                 legs={leg.track.value: leg.summary() for leg in self.legs.values()},
                 dtmf=self.dtmf_count, alerts=self.alerts_published,
                 provider_errors=self.provider_errors,
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

    def publish(self, event_type: EventType, fields: Mapping[str, Any],
                track: Track | None = None) -> None:
        """Publish one event of this call (of one of its legs with ``track``) to its targets,
        like the call's own: the after-call work and the alerts use it."""
        self._publish(event_type, self.legs.get(track) if track is not None else None, fields)

    def _publish(self, event_type: EventType, leg: Leg | None, fields: Mapping[str, Any],
                 timing: Timing | None = None) -> None:
        event = self._event(event_type, leg, fields, timing)
        outcome = self._sink.publish(event)
        if event_type is EventType.TRANSCRIPT_PARTIAL:
            self._partials_published += 1  # best effort: not waited for
        else:
            self._in_flight.add(outcome)
            outcome.add_done_callback(self._settled)

    def _event(self, event_type: EventType, leg: Leg | None,
               fields: Mapping[str, Any], timing: Timing | None = None) -> OutboundEvent:
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
                          targets=self.targets, timing=timing)

    def _require_started(self) -> StreamStarted:
        if self.started is None:
            raise ProtocolViolation("media before the stream's start message")
        return self.started
