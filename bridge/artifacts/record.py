"""The call's transcript as it was published: every final of every leg, in order. Pure.

``TranscriptRecord`` is a call observer: it keeps the event data of each published final
(already redacted, exactly as the webhooks carried it), with the leg's speaker, for the
transcript files and ``call.completed``. It is bounded: past ``max_finals`` it counts what it
no longer keeps, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bridge.calls import CallObserver
from bridge.compliance.redact import Redacted
from bridge.events import Track, TranscriptResult

# About 50 hours of speech at one final every 3 s per leg: more is not a call.
MAX_FINALS: Final = 60_000


class TranscriptRecord(CallObserver):
    """The published finals of one call; see the module docstring."""

    def __init__(self, speakers: Mapping[Track, str], *, max_finals: int = MAX_FINALS,
                 keep_words: bool = True) -> None:
        self._speakers = dict(speakers)
        self._keep_words = keep_words
        self._max_finals = max_finals
        self.finals: list[dict[str, Any]] = []  # event data, plus "leg" and "speaker"
        self.dropped = 0  # finals past max_finals, not kept

    def final(self, track: Track, result: TranscriptResult, redacted: Redacted,
              fields: Mapping[str, Any] | None) -> None:
        if fields is None:
            return  # emptied by redaction: it was never published
        if len(self.finals) >= self._max_finals:
            self.dropped += 1
            return
        line = {"leg": track.value, "speaker": self._speakers.get(track, track.value), **fields}
        if not self._keep_words:
            line.pop("words", None)
        self.finals.append(line)

    def conversation(self) -> list[dict[str, Any]]:
        """Every kept final of both legs, ordered by start time on the call's clock (then by
        leg and sequence, so that the order is the same every time)."""
        return sorted(self.finals, key=lambda f: (f["start_ms"], f["leg"], f["sequence"]))
