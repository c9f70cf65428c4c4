"""The interface every speech-to-text engine implements for one call leg.

An engine session is opened with the leg's codec, takes audio chunks, yields normalised
results, and closes gracefully (flushing the last finals) within a bounded time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bridge.errors import InvalidNumber
from bridge.numbers import read_float

# What an engine's frames may say, bounded: a session lasts hours, not weeks; an utterance's
# text is a few hundred words; an error's text a line.
MAX_ENGINE_SECONDS: Final = 7 * 86400.0
MAX_RESULT_CHARS: Final = 20_000
MAX_ERROR_CHARS: Final = 200


def seconds(value: object, *, scale: float = 1.0) -> float | None:
    """A time from an engine (``scale`` 0.001 for milliseconds) in seconds: a finite number
    within a week, else None, and the leg places the result itself."""
    try:
        return read_float(value, field="engine time", low=0,
                          high=MAX_ENGINE_SECONDS / scale) * scale
    except InvalidNumber:
        return None


def confidence(value: object) -> float | None:
    """A 0-1 confidence (clamped), or None when the engine sent none or no number."""
    try:
        number = read_float(value, field="confidence", low=-1e9, high=1e9)
    except InvalidNumber:
        return None
    return min(max(number, 0.0), 1.0)


def text(value: object, limit: int = MAX_RESULT_CHARS) -> str:
    """A text field of an engine's frame: a string, cut to ``limit``; anything else is empty
    (never ``str()`` of a nested structure)."""
    return value[:limit] if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word; times in seconds from the session's first audio."""

    text: str
    start_s: float
    end_s: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class EngineResult:
    """A recognition result as the engine gave it.

    ``start_s``/``end_s`` are seconds from the session's first audio byte when the engine
    reports them; None when it does not (the leg then places the result itself).
    """

    text: str
    is_final: bool
    confidence: float | None
    start_s: float | None = None
    end_s: float | None = None
    words: tuple[Word, ...] = ()


class EngineSession(Protocol):
    """One upstream recognition session of one leg."""

    async def open(self) -> None:
        """Connect. Raises ``UpstreamRefused`` or ``UpstreamUnavailable``."""

    async def send_audio(self, chunk: bytes) -> None:
        """Send one chunk of the leg's audio, in the codec the session was opened with."""

    async def send_audio_many(self, chunks: Sequence[bytes]) -> None:
        """``send_audio`` for every chunk that is ready, in order: one write to the socket
        when the leg is behind, not one per chunk."""

    def results(self) -> AsyncIterator[EngineResult]:
        """Results until the session ends; raises ``UpstreamError`` if it ends in error."""

    async def finish(self) -> None:
        """Say the audio is over: the engine flushes its last results, then the session ends."""

    async def close(self) -> None:
        """Close the connection now (after ``finish`` and its grace period, or on error)."""

