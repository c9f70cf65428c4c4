"""One leg's voice activity: its audio judged by the WebRTC VAD and kept as speech spans. Pure.

``LegVoice`` takes the leg's audio chunks as the call's observers get them (codec bytes and
their place on the leg's clock, paused audio never), decodes G.711 to 16-bit PCM, cuts
``FRAME_MS`` frames and asks the WebRTC voice-activity detector whether each one is speech.
It keeps no audio: only two bounded ``SpanList``s, where the leg spoke and where it was heard.

Frame decisions are smoothed before they become speech:

* a run of speech goes on across unvoiced frames until ``hangover_ms`` of them in a row, so
  the short stops between words and syllables are not silence; the run ends where its last
  voiced frame ends (the hangover bridges gaps, it is not counted as talk);
* a run with less than ``min_speech_ms`` of voiced frames is dropped: a click, a cough, a
  line's noise before the detector has adapted to it.

The detector works at 8, 16, 32 or 48 kHz; audio at another rate (L16 at 24 kHz) is
resampled to 16 kHz first. A jump of the leg's clock (a pause, a hole in the stream longer
than the bridge fills) ends the run in progress and the frame being cut: no span crosses it.

No asyncio, no clock, no I/O; the detector is C code that takes a few microseconds a frame.
"""

from __future__ import annotations

from typing import Final

import webrtcvad

from bridge.analytics.intervals import MAX_SPANS, Span, SpanList, union
from bridge.codecs import g711
from bridge.codecs.pcm import bytes_per_ms
from bridge.events import AudioEncoding

# 30 ms is the longest frame the detector takes: a third fewer calls than 20 ms for the same
# audio (bench/vad.py), and finer than the ±150 ms the figures are good to anyway.
FRAME_MS: Final = 30
FRAME_LENGTHS: Final = (10, 20, 30)  # what the detector takes
VAD_RATES: Final = (8000, 16000, 32000, 48000)
RESAMPLED_RATE: Final = 16000
AGGRESSIVENESS: Final = range(4)  # the detector's modes: 0 keeps most audio as speech, 3 least


def takes_rate(sample_rate: int) -> bool:
    """Whether a leg at ``sample_rate`` can be judged (directly, or resampled to 16 kHz)."""
    return 8000 <= sample_rate <= 48000 and sample_rate % 1000 == 0


class LegVoice:
    """Speech spans of one leg from its audio; see the module docstring."""

    def __init__(self, encoding: AudioEncoding, sample_rate: int, *, aggressiveness: int = 2,
                 hangover_ms: int = 300, min_speech_ms: int = 150,
                 max_spans: int = MAX_SPANS, frame_ms: int = FRAME_MS) -> None:
        if aggressiveness not in AGGRESSIVENESS:
            raise ValueError("aggressiveness must be 0, 1, 2 or 3")
        if frame_ms not in FRAME_LENGTHS:
            raise ValueError("frame_ms must be 10, 20 or 30")
        if not takes_rate(sample_rate):
            raise ValueError(f"{sample_rate} Hz: the detector needs 8-48 kHz in whole kHz")
        self._encoding = encoding
        self._in_rate = sample_rate
        self._rate = sample_rate if sample_rate in VAD_RATES else RESAMPLED_RATE
        self._resample_state: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._bytes_per_ms = bytes_per_ms(encoding, sample_rate)
        self._frame_ms = frame_ms
        self._frame_bytes = self._rate * frame_ms // 1000 * 2
        self._vad = webrtcvad.Vad(aggressiveness)
        self._hangover_ms = hangover_ms
        self._min_speech_ms = min_speech_ms
        self.speech = SpanList(max_spans=max_spans)  # where the leg spoke
        self.heard = SpanList(max_spans=max_spans)  # where its audio came (not paused)
        self._pcm = bytearray()  # decoded audio short of a whole frame
        self._frame_at = 0  # where the first byte of _pcm sits on the leg's clock
        self._expected: int | None = None  # where the next chunk starts if none is missing
        self._run_start: int | None = None  # the run of speech in progress
        self._run_end = 0  # where its last voiced frame ends
        self._run_voiced_ms = 0
        self.frames = 0  # frames judged

    def audio(self, clock_ms: int, data: bytes) -> None:
        """A chunk of the leg's codec bytes at ``clock_ms`` on the leg's clock."""
        if not data:
            return
        duration_ms = len(data) // self._bytes_per_ms
        # Within a millisecond is no jump: chunks of odd sizes land a fraction off.
        if self._expected is None or abs(clock_ms - self._expected) > 1:
            self._break()
            self._frame_at = clock_ms
        self._expected = clock_ms + duration_ms
        self.heard.add(clock_ms, clock_ms + duration_ms)
        pcm = self._decode(data)
        buffered = self._pcm
        buffered += pcm
        size = self._frame_bytes
        whole = len(buffered) - len(buffered) % size
        if not whole:
            return
        view = memoryview(buffered)
        is_speech = self._vad.is_speech
        rate = self._rate
        try:
            for offset in range(0, whole, size):
                self._decide(is_speech(view[offset:offset + size], rate))
        finally:
            view.release()
        del buffered[:whole]

    def end(self) -> None:
        """No more audio: the run in progress ends where its speech did."""
        self._break()
        self._expected = None

    def spans(self) -> list[Span]:
        """Where the leg spoke, including the run in progress once it counts as speech."""
        spoken = self.speech.spans()
        if self._run_start is not None and self._run_voiced_ms >= self._min_speech_ms:
            return union(spoken, [(self._run_start, self._run_end)])
        return spoken

    def _decode(self, data: bytes) -> bytes:
        if self._encoding is AudioEncoding.L16:
            pcm = data[: len(data) - len(data) % 2]
        else:
            pcm = g711.decode(self._encoding, data)
        if self._rate != self._in_rate:
            pcm, self._resample_state = g711.audioop.ratecv(
                pcm, 2, 1, self._in_rate, self._rate, self._resample_state)
        return pcm

    def _decide(self, voiced: bool) -> None:
        at = self._frame_at
        self._frame_at = end = at + self._frame_ms
        self.frames += 1
        if voiced:
            if self._run_start is None:
                self._run_start = at
                self._run_voiced_ms = 0
            self._run_end = end
            self._run_voiced_ms += self._frame_ms
        elif self._run_start is not None and end - self._run_end >= self._hangover_ms:
            self._close_run()

    def _close_run(self) -> None:
        if self._run_start is not None and self._run_voiced_ms >= self._min_speech_ms:
            self.speech.add(self._run_start, self._run_end)
        self._run_start = None

    def _break(self) -> None:
        """The audio stops or jumps: no run and no frame crosses the jump."""
        self._close_run()
        self._pcm.clear()
        self._resample_state = None
