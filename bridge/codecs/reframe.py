"""Per-leg audio pipeline: reorder frames, fill lost frames with silence, cut fixed chunks.

Providers send 20 ms frames, each with a presentation timestamp in ms from stream start.
Telnyx does not guarantee their order, and any provider loses a frame now and then. The
``Reframer`` turns that into a gapless byte stream cut into chunks of ``chunk_ms``:

* A frame whose timestamp is where the stream has got to is emitted at once (no added
  latency in the normal case). One that arrives ahead of that point is held, up to
  ``reorder_window`` frames, waiting for the frames before it.
* When the window is full, or at ``flush()``, the earliest held frame is released, and the
  hole before it is filled with codec silence, so the leg's clock stays true. A hole longer
  than ``max_gap_fill_ms`` is filled up to that bound and the clock jumps over the rest; all
  silence filled over a leg stays within the audio received plus ``max_gap_fill_ms``.
* A frame older than the stream's position (a duplicate, or later than the window allowed)
  is dropped and counted.
* Timestamps jitter by a few ms; a difference within ``JITTER_MS`` is no gap and no overlap.
* 16-bit linear PCM frames are cut to whole samples (a trailing odd byte is dropped).

With no gaps the bytes out are exactly the bytes in, in order. Frames without timestamps are
passed through in arrival order. Each chunk carries where its first byte sits on the leg's
clock (``Chunk.clock_ms``); a chunk never spans a jump of the clock (the bytes before a jump
leave as a shorter chunk), so every byte of a chunk is at ``clock_ms`` plus its offset.
Pure code: no clock, no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from bridge.codecs.pcm import bytes_per_ms, silence_byte
from bridge.events import AudioEncoding

JITTER_MS: Final = 10
MIN_CHUNK_MS: Final = 20
MAX_CHUNK_MS: Final = 1000


class Chunk(NamedTuple):
    """A piece of a leg's audio as it goes upstream, and where it starts on the leg's clock."""

    clock_ms: int
    data: bytes


NO_CHUNKS: Final[tuple[Chunk, ...]] = ()


@dataclass(slots=True)
class ReframeStats:
    """Counters for the leg summary and metrics."""

    frames: int = 0
    bytes_in: int = 0
    reordered: int = 0  # frames that were held and released in order
    late_dropped: int = 0  # frames that came after their place had passed
    gaps_filled: int = 0  # holes filled with silence
    gap_fill_ms: int = 0  # total silence inserted
    skipped_ms: int = 0  # clock jumps beyond max_gap_fill_ms


class Reframer:
    """Reorders, gap-fills and chunks one leg's G.711 audio. See the module docstring."""

    def __init__(self, encoding: AudioEncoding, *, sample_rate: int = 8000, chunk_ms: int = 100,
                 reorder_window: int = 5, max_gap_fill_ms: int = 5000) -> None:
        if not MIN_CHUNK_MS <= chunk_ms <= MAX_CHUNK_MS:
            raise ValueError(f"chunk_ms must be {MIN_CHUNK_MS}-{MAX_CHUNK_MS}, got {chunk_ms}")
        self.encoding = encoding
        self.bytes_per_ms = bytes_per_ms(encoding, sample_rate)
        self._width = 2 if encoding is AudioEncoding.L16 else 1  # bytes a sample
        self._silence = bytes([silence_byte(encoding)])
        self.chunk_bytes = chunk_ms * self.bytes_per_ms
        self.reorder_window = reorder_window
        self.max_gap_fill_ms = max_gap_fill_ms
        self.stats = ReframeStats()
        self.origin_ms: int | None = None  # stream time of the leg's first byte
        self._next_sample = 0  # stream time the next byte belongs at, in bytes of audio
        self._held: list[tuple[int, int, bytes]] = []  # heap of (timestamp, arrival, payload)
        self._arrivals = 0
        self._pending = bytearray()  # bytes not yet cut into a chunk
        self._ready: list[Chunk] = []  # cut short at a jump of the clock, not handed out yet

    @property
    def position_ms(self) -> int:
        """The leg's audio clock: stream time reached so far, silence and jumps included."""
        return self._next_sample // self.bytes_per_ms

    def push(self, payload: bytes, timestamp_ms: int | None) -> Sequence[Chunk]:
        """Take one frame; return the chunks that became complete."""
        stats = self.stats
        stats.frames += 1
        size = len(payload)
        stats.bytes_in += size
        # Whole samples only: one stray byte would shift every later 16-bit sample by half,
        # turning the leg into noise for the engine (so nothing in it is redacted) while the
        # bytes still hold the audio for anyone who shifts them back.
        if size % self._width:
            size -= size % self._width
            payload = payload[:size]
        if not size:
            return NO_CHUNKS
        if timestamp_ms is None:
            self._append(payload)
            return self._cut()
        if self.origin_ms is None:
            self.origin_ms = timestamp_ms
            self._next_sample = timestamp_ms * self.bytes_per_ms
        next_ms = self._next_sample // self.bytes_per_ms  # ``position_ms``, without a call
        if timestamp_ms < next_ms - JITTER_MS:
            stats.late_dropped += 1
            return NO_CHUNKS
        if timestamp_ms <= next_ms + JITTER_MS:  # in order: the usual case, ``_append`` inline
            self._pending += payload
            self._next_sample += size
            if self._held:
                self._release_in_order()
        else:
            self._arrivals += 1
            heapq.heappush(self._held, (timestamp_ms, self._arrivals, payload))
            if len(self._held) > self.reorder_window:
                self._release_earliest()
                self._release_in_order()
        if len(self._pending) < self.chunk_bytes and not self._ready:
            return NO_CHUNKS  # most frames: no chunk complete, no call to cut one
        return self._cut()

    def flush(self) -> list[Chunk]:
        """End of stream: release every held frame, and the last, shorter chunk."""
        while self._held:
            self._release_earliest()
            self._release_in_order()
        return self.cut_short()

    def cut_short(self) -> list[Chunk]:
        """The chunks complete now and the bytes short of one as a shorter chunk, so that
        a change of who may hear the leg (a pause, its end) falls between two chunks."""
        chunks = list(self._cut())
        if self._pending:
            chunks.append(Chunk(self._pending_clock_ms(), bytes(self._pending)))
            self._pending.clear()
        return chunks

    def _pending_clock_ms(self) -> int:
        """Where the first pending byte sits on the clock (no jump lies inside pending)."""
        return (self._next_sample - len(self._pending)) // self.bytes_per_ms

    def _append(self, payload: bytes) -> None:
        self._pending += payload
        self._next_sample += len(payload)

    def _release_in_order(self) -> None:
        while self._held and self._held[0][0] <= self.position_ms + JITTER_MS:
            timestamp_ms, _, payload = heapq.heappop(self._held)
            if timestamp_ms < self.position_ms - JITTER_MS:
                self.stats.late_dropped += 1
                continue
            self.stats.reordered += 1
            self._append(payload)

    def _release_earliest(self) -> None:
        timestamp_ms, _, payload = heapq.heappop(self._held)
        gap_ms = timestamp_ms - self.position_ms
        if gap_ms > JITTER_MS:
            # Silence made is bounded by audio received: a peer sending tiny frames far
            # apart cannot make the bridge send an engine minutes of silence per frame.
            budget_ms = (self.stats.bytes_in // self.bytes_per_ms + self.max_gap_fill_ms
                         - self.stats.gap_fill_ms)
            fill_ms = max(min(gap_ms, self.max_gap_fill_ms, budget_ms), 0)
            self.stats.gaps_filled += 1
            self.stats.gap_fill_ms += fill_ms
            self._append(self._silence * (fill_ms * self.bytes_per_ms))
            if gap_ms > fill_ms:
                self._record_skip(gap_ms - fill_ms)
        self._append(payload)

    def _record_skip(self, skip_ms: int) -> None:
        if self._pending:  # what came before the jump leaves on its own
            self._ready.append(Chunk(self._pending_clock_ms(), bytes(self._pending)))
            self._pending.clear()
        self.stats.skipped_ms += skip_ms
        self._next_sample += skip_ms * self.bytes_per_ms

    def _cut(self) -> Sequence[Chunk]:
        size = self.chunk_bytes
        if len(self._pending) < size and not self._ready:
            return NO_CHUNKS  # most frames: nothing allocated
        if len(self._pending) == size and not self._ready:
            # The usual cut: whole frames fill exactly one chunk. One copy, no list built.
            chunk = Chunk(self._pending_clock_ms(), bytes(self._pending))
            self._pending.clear()
            return (chunk,)
        ready, self._ready = self._ready, []
        count = len(self._pending) // size
        if count:
            start = self._pending_clock_ms()
            view = bytes(self._pending[: count * size])
            del self._pending[: count * size]
            step = size // self.bytes_per_ms
            ready += [Chunk(start + i * step, view[i * size:(i + 1) * size])
                      for i in range(count)]
        return ready
