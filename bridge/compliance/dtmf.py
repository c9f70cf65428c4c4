"""In-band DTMF detection: where key-press tones sound in 16-bit PCM. Pure.

Some providers send key presses only in the audio, never as events, so a recording that must
not keep card numbers keyed on the phone looks for the tones themselves. A key press is one
row tone (697, 770, 852, 941 Hz) plus one column tone (1209, 1336, 1477, 1633 Hz) (ITU-T
Q.23). The detector measures the eight frequencies with the Goertzel algorithm over blocks
of 205 samples at 8 kHz (25.6 ms, the classic block length: every DTMF frequency falls near
a bin centre), taken every half block so that a 40 ms tone, the shortest ITU-T Q.24 asks a
receiver to accept, fills at least one block. A block holds a digit when:

* the strongest row and column tones each reach ``MIN_TONE_AMPLITUDE`` (about -35 dBm0 at
  G.711's scale: quieter than the -25 dBm0 a receiver must accept);
* the twist between them is within ``MAX_NORMAL_TWIST_DB`` (row louder) or
  ``MAX_REVERSE_TWIST_DB`` (column louder): wider than a receiver's 8 and 4 dB, since a
  recording had rather silence a little more than keep a digit;
* every other tone of each group is ``MIN_PEAK_RATIO_DB`` below the strongest one;
* the two tones hold ``MIN_TONE_SHARE`` of the block's energy: speech and noise spread
  theirs over many frequencies.

Blocks too quiet to hold a tone that loud are skipped; the Goertzel recurrence runs over all
the others at once (numpy arrays of frequencies x blocks), so a second of audio costs about a
hundred microseconds, not the ten milliseconds a Python loop per sample takes
(bench/README.md). No I/O, no clock: samples in, digit spans out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

ROWS: Final = (697.0, 770.0, 852.0, 941.0)
COLUMNS: Final = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS: Final = ("123A", "456B", "789C", "*0#D")  # KEYS[row][column]
BLOCK_AT_8K: Final = 205
MIN_TONE_AMPLITUDE: Final = 400.0  # of a 16-bit sample: a -35 dBm0 tone in G.711
MAX_NORMAL_TWIST_DB: Final = 8.0
MAX_REVERSE_TWIST_DB: Final = 8.0
MIN_PEAK_RATIO_DB: Final = 6.0
MIN_TONE_SHARE: Final = 0.6
# Where each tone is measured, relative to its nominal frequency: a sender may be 1.5 % off
# (a receiver must accept that, ITU-T Q.24) and keyboards and cheap phones go further, while
# one Goertzel bin of a 25.6 ms block is 39 Hz wide, 2.4 % of 1633 Hz: at the nominal
# frequency alone, a tone 1.5 % off loses most of its measured power and is missed. Probes
# 1.5 % apart keep every tone within 3.5 % of nominal near one; the strongest probe counts.
FREQUENCY_PROBES: Final = (-0.03, -0.015, 0.0, 0.015, 0.03)

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class ToneSpan:
    """A key press heard in the audio: ``digit`` sounds over samples [start, end)."""

    digit: str
    start: int
    end: int


class DtmfDetector:
    """Finds DTMF digits in mono 16-bit PCM at ``sample_rate``; see the module docstring."""

    def __init__(self, sample_rate: int) -> None:
        if sample_rate < 4000:
            raise ValueError("DTMF needs a sample rate of at least 4000 Hz")
        self.sample_rate = sample_rate
        self.block = max(round(BLOCK_AT_8K * sample_rate / 8000), 16)
        self.hop = self.block // 2
        frequencies = np.array([f * (1 + probe) for f in ROWS + COLUMNS
                                for probe in FREQUENCY_PROBES])
        self._coefficients = 2.0 * np.cos(2.0 * math.pi * frequencies / sample_rate)
        # A sine of amplitude A over N samples gives a Goertzel power of (A * N / 2) ** 2.
        self._min_power = (MIN_TONE_AMPLITUDE * self.block / 2) ** 2

    def blocks(self, samples: Samples) -> list[str | None]:
        """The digit of each block (``hop`` samples apart, ``block`` long), or None."""
        if len(samples) < self.block:
            return []
        windows = np.lib.stride_tricks.sliding_window_view(samples, self.block)[::self.hop]
        digits: list[str | None] = [None] * len(windows)
        energy = np.einsum("ij,ij->i", windows, windows, dtype=np.float64)
        # A single-frequency power is at most N times the block's energy (Cauchy-Schwarz):
        # a block quieter than this holds no tone loud enough, and is not measured.
        loud = np.flatnonzero(energy >= self._min_power / self.block)
        if not len(loud):
            return digits
        # Row n of ``frames`` is sample n of every loud block: the recurrence walks the rows.
        frames = np.ascontiguousarray(windows[loud].T, dtype=np.float64)  # (block, loud)
        powers = self._goertzel(frames)  # (loud, 8)
        energy = energy[loud]
        rows, columns = powers[:, :4], powers[:, 4:]
        row, column = rows.argmax(axis=1), columns.argmax(axis=1)
        picked = np.arange(len(powers))
        row_power, column_power = rows[picked, row], columns[picked, column]
        peak = 10 ** (-MIN_PEAK_RATIO_DB / 10)
        others_quiet = ((rows <= (row_power * peak)[:, None]).sum(axis=1) == 3) & (
            (columns <= (column_power * peak)[:, None]).sum(axis=1) == 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            twist_db = 10 * np.log10(row_power / column_power)
        held = ((row_power >= self._min_power) & (column_power >= self._min_power)
                & (twist_db <= MAX_NORMAL_TWIST_DB) & (-twist_db <= MAX_REVERSE_TWIST_DB)
                & others_quiet
                # A tone's Goertzel power times 2 / N is its energy in the block.
                & ((row_power + column_power) * 2 / self.block >= MIN_TONE_SHARE * energy))
        for n in np.flatnonzero(held).tolist():
            digits[int(loud[n])] = KEYS[int(row[n])][int(column[n])]
        return digits

    def find(self, samples: Samples) -> list[ToneSpan]:
        """Every key press in ``samples``: runs of blocks holding the same digit, merged."""
        spans: list[ToneSpan] = []
        for n, digit in enumerate(self.blocks(samples)):
            if digit is None:
                continue
            start, end = n * self.hop, n * self.hop + self.block
            last = spans[-1] if spans else None
            if last is not None and last.digit == digit and start <= last.end:
                spans[-1] = ToneSpan(digit, last.start, end)
            else:
                spans.append(ToneSpan(digit, start, end))
        return spans

    def _goertzel(self, frames: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Each block's power at the eight frequencies (the strongest of each one's probes):
        (blocks, 8)."""
        coefficients = self._coefficients[:, None]
        s1 = np.zeros((len(self._coefficients), frames.shape[1]))
        s2, s0 = np.zeros_like(s1), np.empty_like(s1)
        for row in frames:  # s[n] = x[n] + c * s[n-1] - s[n-2], for all blocks at once
            np.multiply(coefficients, s1, out=s0)
            s0 -= s2
            s0 += row
            s2, s1, s0 = s1, s0, s2
        power: npt.NDArray[np.float64] = s1 * s1 + s2 * s2 - coefficients * s1 * s2
        strongest: npt.NDArray[np.float64] = power.reshape(
            len(ROWS + COLUMNS), len(FREQUENCY_PROBES), -1).max(axis=1)
        return strongest.T
