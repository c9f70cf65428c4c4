"""DTMF key-press tones for tests: the row and column sines of a key (ITU-T Q.23)."""

from __future__ import annotations

import numpy as np

from bridge.compliance.dtmf import COLUMNS, KEYS, ROWS

FULL_SCALE_DBM0 = 3.17  # a full-scale sine in G.711 (ITU-T G.711)


def dtmf_tone(digit: str, ms: int, *, rate: int = 8000, row_db: float = -7.0,
              column_db: float = -7.0) -> np.ndarray:
    """``digit``'s tone for ``ms`` at ``rate``: each sine at the given dBm0 (about -7 dBm0
    is a telephone's usual level)."""
    row = next(n for n, keys in enumerate(KEYS) if digit in keys)
    column = KEYS[row].index(digit)
    n = np.arange(rate * ms // 1000)

    def amplitude(dbm0: float) -> float:
        return float(32767 * 10 ** ((dbm0 - FULL_SCALE_DBM0) / 20))

    tone = (amplitude(row_db) * np.sin(2 * np.pi * ROWS[row] * n / rate)
            + amplitude(column_db) * np.sin(2 * np.pi * COLUMNS[column] * n / rate))
    return np.asarray(tone.round().clip(-32768, 32767), dtype=np.int16)
