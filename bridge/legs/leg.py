"""A leg: one track of a call, its audio, its upstream sessions and its transcripts.

The call builds it with what it needs (settings, the codec, the engine to start with, the
hooks its sessions report through, its transcript stage) and feeds it frames; the leg never
holds the call.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from bridge.compliance.redact import Policy
from bridge.config import Settings
from bridge.events import AudioEncoding, AudioFrame, Track
from bridge.legs.audio import LegAudio
from bridge.legs.transcripts import LegTranscripts
from bridge.legs.upstream import Upstream, UpstreamHooks, UpstreamState, UpstreamTimers
from bridge.metrics import Metrics

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = structlog.get_logger("bridge.legs")


class Leg:
    """One track of a call: its audio pipeline, its upstream session, its transcripts.

    Built by its call with what it needs; it never holds the call.
    """

    def __init__(self, track: Track, *, settings: Settings, encoding: AudioEncoding,
                 sample_rate: int, engine_name: str, hooks: UpstreamHooks,
                 transcripts: LegTranscripts, metrics: Metrics, policy: Policy) -> None:
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
        self.transcripts = transcripts
        # The reframer's push, bound once: the frame goes there without a call through
        # ``LegAudio.push`` (fifty frames a second, one chunk in five).
        self._reframe = self.audio.frame_taker
        self._policy = policy
        self._warned_drops = False
        self.task: asyncio.Task[None] | None = None
        self._span: Span | None = None  # the leg's trace span, when tracing is on

    def traced(self, span: Span) -> None:
        """Trace the leg's session under ``span``, which ends with the leg."""
        self._span = span
        self.upstream.trace_parent = span

    @property
    def engine_name(self) -> str:
        return self.upstream.engine_name

    async def run(self) -> None:
        """The leg's upstream sessions (see ``Upstream.run``)."""
        structlog.contextvars.bind_contextvars(leg=self.track.value)
        try:
            await self.upstream.run()
        finally:
            if self._span is not None:
                self._span.end()

    # -- media side: synchronous, called for every frame -------------------------------------

    def push(self, frame: AudioFrame) -> None:
        """Add one frame of audio. Never waits."""
        chunks = self._reframe(frame.payload, frame.timestamp_ms)
        if not chunks:
            return  # most frames: no chunk completed, nothing more to do
        audio = self.audio
        if not audio.take(chunks):
            return
        audio.stamp_ready(time.monotonic())  # once per chunk, for frame_to_upstream
        self.upstream.wake()
        if audio.counters.chunks_dropped and not self._warned_drops:  # drops happen here only
            self._warned_drops = True
            log.warning("upstream is slower than real time; dropping oldest audio",
                        leg=self.track.value, buffer_ms=self._max_buffer_ms)

    def end_of_audio(self) -> None:
        """No more audio: flush the reframer and let the session finish."""
        self.audio.end()
        self.audio.stamp_ready(time.monotonic())
        self.upstream.wake()

    @property
    def paused(self) -> bool:
        return self.audio.paused

    def set_paused(self, paused: bool) -> bool:
        """Pause or resume sending this leg's audio; False when nothing changed."""
        changed = self.audio.set_paused(paused)
        if self.audio.waiting:
            self.audio.stamp_ready(time.monotonic())
            self.upstream.wake()  # the audio heard before a pause, cut short, goes now
        return changed

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
            "transcripts": self.transcripts.sequence,
            "partials": self.transcripts.partials,
            "upstream": ("failed" if upstream.state is UpstreamState.FAILED
                         else "engine_capacity" if upstream.ended_waiting else "ok"),
            "engine_capacity_waits": upstream.capacity_waits,
            "reconnects": upstream.reconnects,
            "engine": upstream.engine_name,
            "failed_over": upstream.failed_over,
            "rolls": upstream.rolls,
            "redaction": {
                "enabled": self._policy.enabled,
                "policies": self._policy.names(),
                "counts": self.transcripts.redaction_counts,
                "paused": [{"start_ms": start, "end_ms": end}
                           for start, end in audio.pauses],
            },
        }
