"""Cut a stream of 16-bit PCM into utterances on silence. Pure: no clock, no I/O.

Audio is judged in 20 ms blocks: a block is voiced when its RMS passes an adaptive threshold
(a few times the running noise floor, never below ``min_rms``). An utterance starts at the
first voiced block, with ``preroll_ms`` of audio before it so word onsets are not clipped,
and ends after ``endpointing_ms`` of unvoiced blocks (or at ``max_utterance_ms``). An
utterance with less than ``min_speech_ms`` of voiced audio (a click, a cough) is discarded.
With ``partial_every_ms`` set, the utterance so far is offered for a partial result each
time that much more speech has arrived.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bridge.codecs.g711 import audioop

BLOCK_MS = 20


@dataclass(frozen=True, slots=True)
class Segment:
    """A complete utterance (``final``) or the utterance so far, for a partial result.

    Times are ms from the stream's first sample; ``end_ms`` is the end of the last speech.
    """

    pcm: bytes
    start_ms: int
    end_ms: int
    final: bool


class Segmenter:
    """See the module docstring."""

    def __init__(self, sample_rate: int, *, endpointing_ms: int = 600, min_rms: int = 200,
                 preroll_ms: int = 200, min_speech_ms: int = 100,
                 max_utterance_ms: int = 15000, partial_every_ms: int | None = None) -> None:
        self.rate = sample_rate
        self.block_bytes = sample_rate * BLOCK_MS // 1000 * 2
        self.endpointing_ms = max(endpointing_ms, BLOCK_MS)
        self.min_rms = min_rms
        self.min_speech_ms = min_speech_ms
        self.max_utterance_ms = max_utterance_ms
        self.partial_every_ms = partial_every_ms
        self._pending = bytearray()
        self._preroll: deque[bytes] = deque(maxlen=max(preroll_ms // BLOCK_MS, 1))
        self._keep_preroll = preroll_ms > 0
        self._noise = float(min_rms) / 4
        self._blocks_seen = 0
        self._utterance = bytearray()
        self._start_ms = 0
        self._last_voiced_end_ms = 0
        self._voiced_ms = 0
        self._silent_ms = 0
        self._since_partial_ms = 0

    @property
    def in_utterance(self) -> bool:
        return bool(self._utterance)

    def feed(self, pcm: bytes) -> list[Segment]:
        """Take PCM (any length); return what became ready, in order."""
        self._pending += pcm
        out: list[Segment] = []
        size = self.block_bytes
        while len(self._pending) >= size:
            block = bytes(self._pending[:size])
            del self._pending[:size]
            segment = self._block(block)
            if segment is not None:
                out.append(segment)
        return out

    def flush(self) -> list[Segment]:
        """End of audio (or a forced endpoint): the utterance in progress, if any."""
        if self._pending and self.in_utterance:
            self._utterance += self._pending
        self._pending.clear()
        segment = self._finish()
        return [segment] if segment is not None else []

    def _block(self, block: bytes) -> Segment | None:
        block_start_ms = self._blocks_seen * BLOCK_MS
        self._blocks_seen += 1
        rms = audioop.rms(block, 2)
        voiced = rms >= max(self.min_rms, self._noise * 4)
        if not voiced:
            # Track the noise floor from unvoiced blocks only, slowly.
            self._noise = 0.95 * self._noise + 0.05 * rms
        if not self.in_utterance:
            if not voiced:
                if self._keep_preroll:
                    self._preroll.append(block)
                return None
            preroll = b"".join(self._preroll)
            self._preroll.clear()
            self._utterance += preroll + block
            self._start_ms = block_start_ms - len(preroll) * BLOCK_MS // self.block_bytes
            self._voiced_ms = BLOCK_MS
            self._since_partial_ms = BLOCK_MS
            self._silent_ms = 0
            self._last_voiced_end_ms = block_start_ms + BLOCK_MS
            return None
        self._utterance += block
        if voiced:
            self._voiced_ms += BLOCK_MS
            self._since_partial_ms += BLOCK_MS
            self._silent_ms = 0
            self._last_voiced_end_ms = block_start_ms + BLOCK_MS
        else:
            self._silent_ms += BLOCK_MS
        length_ms = len(self._utterance) * BLOCK_MS // self.block_bytes
        if self._silent_ms >= self.endpointing_ms or length_ms >= self.max_utterance_ms:
            return self._finish()
        if (voiced and self.partial_every_ms is not None
                and self._since_partial_ms >= self.partial_every_ms):
            self._since_partial_ms = 0
            return Segment(bytes(self._utterance), self._start_ms, self._last_voiced_end_ms,
                           final=False)
        return None

    def _finish(self) -> Segment | None:
        if not self.in_utterance:
            return None
        utterance = Segment(bytes(self._utterance), self._start_ms, self._last_voiced_end_ms,
                            final=True)
        self._utterance.clear()
        self._silent_ms = self._since_partial_ms = 0
        enough = self._voiced_ms >= self.min_speech_ms
        self._voiced_ms = 0
        return utterance if enough else None
