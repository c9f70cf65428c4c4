"""The interface every speech-to-text engine implements for one call leg.

An engine session is opened with the leg's codec, takes audio chunks, yields normalised
results, and closes gracefully (flushing the last finals) within a bounded time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


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

    def results(self) -> AsyncIterator[EngineResult]:
        """Results until the session ends; raises ``UpstreamError`` if it ends in error."""

    async def finish(self) -> None:
        """Say the audio is over: the engine flushes its last results, then the session ends."""

    async def close(self) -> None:
        """Close the connection now (after ``finish`` and its grace period, or on error)."""

