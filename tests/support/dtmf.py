"""DTMF key-press tones for tests: the row and column sines of a key (ITU-T Q.23)."""

from __future__ import annotations

import numpy as np

from bridge.compliance.dtmf import COLUMNS, KEYS, ROWS

FULL_SCALE_DBM0 = 3.17  # a full-scale sine in G.711 (ITU-T G.711)


def dtmf_tone(digit: str, ms: int, *, rate: int = 8000, row_db: float = -7.0,
              column_db: float = -7.0, deviation: float = 0.0) -> np.ndarray:
    """``digit``'s tone for ``ms`` at ``rate``: each sine at the given dBm0 (about -7 dBm0
    is a telephone's usual level), both ``deviation`` (a fraction) off their nominal
    frequencies, as a sender's oscillator may be."""
    row = next(n for n, keys in enumerate(KEYS) if digit in keys)
    column = KEYS[row].index(digit)
    n = np.arange(rate * ms // 1000)

    def amplitude(dbm0: float) -> float:
        return float(32767 * 10 ** ((dbm0 - FULL_SCALE_DBM0) / 20))

    scale = 1 + deviation
    tone = (amplitude(row_db) * np.sin(2 * np.pi * ROWS[row] * scale * n / rate)
            + amplitude(column_db) * np.sin(2 * np.pi * COLUMNS[column] * scale * n / rate))
    return np.asarray(tone.round().clip(-32768, 32767), dtype=np.int16)
