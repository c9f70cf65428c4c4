"""One leg's audio, from provider frames to what the engine gets, and back to the clock. Pure.

``LegAudio`` holds, in order:

* the ``Reframer`` (reorder, fill lost frames with silence, cut chunks stamped with their place
  on the leg's clock);
* the pause gate: while paused, chunks are withheld from the engine and the clock runs on;
* a bounded buffer of chunks waiting for the engine: when the upstream falls behind real time,
  the oldest chunk is dropped (counted) rather than stalling the media reader;
* the replay window: chunks sent since the last final (at most ``replay_ms``), sent again to a
  new session after a drop;
* the one clock map: for every chunk sent upstream, where it sits on the leg's clock. Audio
  sent upstream is continuous; the leg's clock is not (a jump over a long hole, a paused span,
  dropped chunks). Each break starts a new segment, so a time in the engine's audio maps onto
  the leg's clock with one lookup.

"Upstream ms" counts audio in the order it was first sent, across sessions: a replayed chunk
keeps its place. No asyncio, no clock, no I/O: the session loop (``bridge.legs.upstream``) asks
for chunks and reports them sent.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from bridge.codecs.reframe import Chunk, Reframer, ReframeStats
from bridge.events import AudioEncoding

# Segments of the clock map kept: older ones are only needed for results about audio long
# past, which engines do not send.
MAX_SEGMENTS: Final = 4096


class ClockMap:
    """Upstream ms -> the leg's clock ms, one segment per continuous run of sent audio."""

    def __init__(self) -> None:
        self._upstream: list[float] = []  # where each segment starts, upstream ms (sorted)
        self._clock: list[float] = []  # where it starts on the leg's clock
        self._end_upstream = 0.0  # the end of the audio sent so far
        self._end_clock = 0.0

    def sent(self, upstream_ms: float, clock_ms: float, duration_ms: float) -> None:
        """Audio of ``duration_ms`` was sent at ``upstream_ms``; it sits at ``clock_ms``."""
        if not self._upstream or clock_ms != self._end_clock or upstream_ms != \
                self._end_upstream:
            self._upstream.append(upstream_ms)
            self._clock.append(clock_ms)
            if len(self._upstream) > MAX_SEGMENTS:
                del self._upstream[0], self._clock[0]
        self._end_upstream = upstream_ms + duration_ms
        self._end_clock = clock_ms + duration_ms

    def to_clock(self, upstream_ms: float) -> int:
        """Where ``upstream_ms`` of sent audio lies on the leg's clock."""
        if not self._upstream:
            return int(upstream_ms)
        n = max(bisect.bisect_right(self._upstream, upstream_ms) - 1, 0)
        return int(self._clock[n] + (upstream_ms - self._upstream[n]))

    def __len__(self) -> int:
        return len(self._upstream)


@dataclass(slots=True)
class AudioCounters:
    """What a leg's summary reports about its audio beyond the reframer's own stats."""

    chunks_dropped: int = 0  # oldest chunks dropped for a slow upstream
    # after a fatal upstream failure, or while waiting for an engine's slot: never transcribed
    bytes_discarded: int = 0
    bytes_paused: int = 0  # withheld while paused
    sent_bytes: int = 0  # sent upstream once (replays not counted)


class LegAudio:
    """One leg's audio pipeline; see the module docstring."""

    def __init__(self, encoding: AudioEncoding, *, sample_rate: int, chunk_ms: int,
                 reorder_window: int, max_gap_fill_ms: int, max_buffer_ms: int,
                 replay_ms: int) -> None:
        self.reframer = Reframer(encoding, sample_rate=sample_rate, chunk_ms=chunk_ms,
                                 reorder_window=reorder_window, max_gap_fill_ms=max_gap_fill_ms)
        self.bytes_per_ms = self.reframer.bytes_per_ms
        self.counters = AudioCounters()
        self.clock = ClockMap()
        self.paused = False
        self.pauses: list[list[int | None]] = []  # [start_ms, end_ms] on the leg's clock
        self.ended = False
        self.discarding = False  # transcription failed for good, or waits for a slot
        # From here on the leg's clock, audio reached an engine that never confirmed it
        # transcribed it (None: every chunk sent was): see ``unconfirmed``.
        self.unconfirmed_from_ms: int | None = None
        # Sees every chunk that is not paused, with its place on the leg's clock, whether or
        # not the engine gets it (the call's observers: talk analytics, the recording).
        self.tap: Callable[[int, bytes], None] | None = None
        self._buffer: deque[Chunk] = deque()
        # When the oldest waiting chunks became ready (caller's clock, seconds): one per chunk
        # of ``_buffer`` from its start; chunks not yet stamped have none.
        self._ready_at: deque[float] = deque()
        self._buffered = 0
        self._max_buffered = max_buffer_ms * self.bytes_per_ms
        self._replay: deque[tuple[float, bytes]] = deque()  # (upstream ms, data) since a final
        self._replay_bytes = 0
        self._max_replay_bytes = replay_ms * self.bytes_per_ms

    # -- the media side: called for every frame ----------------------------------------------

    def push(self, payload: bytes, timestamp_ms: int | None) -> bool:
        """Take one frame; True when a chunk became ready for the engine."""
        return self.take(self.reframer.push(payload, timestamp_ms))

    @property
    def frame_taker(self) -> Callable[[bytes, int | None], Sequence[Chunk]]:
        """What ``push`` does first, as one call for a caller that pushes every frame: the
        reframer's ``push``. Hand what it returns, when not empty, to ``take``."""
        return self.reframer.push

    def take(self, chunks: Sequence[Chunk]) -> bool:
        """Pass the chunks a frame completed through the pause gate to the buffer; True
        when one became ready for the engine."""
        if not chunks:
            return False  # most frames: no chunk completed
        ready = False
        for chunk in chunks:
            ready = self._enqueue(chunk) or ready
        return ready

    def stamp_ready(self, now: float) -> None:
        """The chunks that became ready since the last stamp did so at ``now`` (taken once
        per push that completed a chunk, not per frame): ``sent`` gives it back."""
        ready_at, waiting = self._ready_at, len(self._buffer)
        while len(ready_at) < waiting:
            ready_at.append(now)

    def end(self) -> None:
        """No more audio: the reframer's held frames and last chunk go out."""
        if self.ended:
            return
        self.ended = True
        for chunk in self.reframer.flush():
            self._enqueue(chunk)

    def set_paused(self, paused: bool) -> bool:
        """Withhold (or send again) the leg's audio from the engine; False when unchanged."""
        if paused == self.paused:
            return False
        # The gate acts at this very byte: what waits short of a chunk goes through it as it
        # was when heard (before a pause: to the engine; during one: withheld, counted).
        for chunk in self.reframer.cut_short():
            self._enqueue(chunk)
        self.paused = paused
        now = self.reframer.position_ms
        if paused:
            self.pauses.append([now, None])
        elif self.pauses:
            self.pauses[-1][1] = now
        return True

    def discard(self) -> None:
        """The leg's transcription failed for good (or waits for an engine's slot): what
        waits, and all that follows until ``keep``, is counted as untranscribed and dropped."""
        self.discarding = True
        self.counters.bytes_discarded += self._buffered
        self._buffer.clear()
        self._ready_at.clear()
        self._buffered = 0

    def unconfirmed(self, from_ms: int) -> None:
        """The engine may not have transcribed the audio it got from ``from_ms`` on the
        leg's clock (it failed, or did not close its session after the end of audio, so
        finals may still have been on their way): nothing checked it for spoken numbers."""
        if self.unconfirmed_from_ms is None or from_ms < self.unconfirmed_from_ms:
            self.unconfirmed_from_ms = from_ms

    def keep(self) -> None:
        """Audio from now on goes to the engine again (a leg that waited for an engine's
        slot got one); what was discarded stays counted."""
        self.discarding = False

    def _enqueue(self, chunk: Chunk) -> bool:
        counters = self.counters
        if self.paused:
            counters.bytes_paused += len(chunk.data)
            return False
        if self.tap is not None:
            self.tap(chunk.clock_ms, chunk.data)
        if self.discarding:
            counters.bytes_discarded += len(chunk.data)
            return False
        self._buffer.append(chunk)
        self._buffered += len(chunk.data)
        while self._buffered > self._max_buffered:
            dropped = self._buffer.popleft()
            if self._ready_at:
                self._ready_at.popleft()
            self._buffered -= len(dropped.data)
            counters.chunks_dropped += 1
        return True

    # -- the upstream side -------------------------------------------------------------------

    def ready_chunks(self) -> list[Chunk]:
        """Every chunk waiting for the engine, oldest first (each stays until ``sent``)."""
        return list(self._buffer)

    def sent(self, chunk: Chunk) -> float | None:
        """``chunk`` (from ``ready_chunks``) reached the engine: it leaves the buffer, joins the
        replay window, and is placed on the clock map. Returns when it became ready (see
        ``stamp_ready``), or None when it was never stamped."""
        ready_at = None
        if self._buffer and self._buffer[0] is chunk:
            self._buffer.popleft()
            if self._ready_at:
                ready_at = self._ready_at.popleft()
            self._buffered -= len(chunk.data)
        upstream_ms = self.sent_ms
        duration_ms = len(chunk.data) / self.bytes_per_ms
        self.clock.sent(upstream_ms, chunk.clock_ms, duration_ms)
        self._replay.append((upstream_ms, chunk.data))
        self._replay_bytes += len(chunk.data)
        while self._replay_bytes > self._max_replay_bytes and len(self._replay) > 1:
            _, old = self._replay.popleft()
            self._replay_bytes -= len(old)
        self.counters.sent_bytes += len(chunk.data)
        return ready_at

    def replay(self) -> list[tuple[float, bytes]]:
        """What a new session gets first: the audio sent since the last final."""
        return list(self._replay)

    def forget_until(self, upstream_ms: float) -> None:
        """A final covers the audio up to ``upstream_ms``: it needs no replay."""
        while self._replay:
            start, data = self._replay[0]
            if start + len(data) / self.bytes_per_ms > upstream_ms:
                break
            self._replay.popleft()
            self._replay_bytes -= len(data)

    def to_clock(self, upstream_ms: float) -> int:
        """Where a time in the engine's audio (upstream ms) lies on the leg's clock."""
        return self.clock.to_clock(upstream_ms)

    @property
    def waiting(self) -> bool:
        return bool(self._buffer)

    @property
    def sent_ms(self) -> float:
        return self.counters.sent_bytes / self.bytes_per_ms

    @property
    def replay_ms(self) -> float:
        return self._replay_bytes / self.bytes_per_ms

    @property
    def position_ms(self) -> int:
        """The leg's clock: stream time reached so far."""
        return self.reframer.position_ms

    @property
    def audio_ms(self) -> int:
        return self.reframer.position_ms - (self.reframer.origin_ms or 0)

    @property
    def stats(self) -> ReframeStats:
        return self.reframer.stats
