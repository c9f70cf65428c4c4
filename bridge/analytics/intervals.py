"""Time spans on a leg's clock: the bounded list a leg's speech is kept in, and their maths. Pure.

A span is ``(start_ms, end_ms)`` with ``start_ms < end_ms``, end exclusive. Every function here
takes and returns lists of spans that are sorted and disjoint (``SpanList.spans()`` gives such a
list; so does every function below), and never looks at a clock.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

Span = tuple[int, int]

# Spans one list keeps before it coarsens: 4,096 turns is over an hour of lively speech, and
# the list weighs 64 KiB at most (two 64-bit integers a span).
MAX_SPANS: Final = 4096
# The first gap a coarsening list fills; each further coarsening doubles it.
FIRST_COARSE_GAP_MS: Final = 250


class SpanList:
    """Sorted, disjoint spans added in time order, kept as a flat array and bounded.

    ``add`` joins a span to the last one when they overlap or touch. Past ``max_spans`` the
    list coarsens: every gap shorter than ``join_ms`` (250 ms at first, doubling each time) is
    filled, until the list is at most half full, and later spans are joined across such gaps
    too. ``join_ms`` tells what a caller's figures are worth: 0 while the list is exact.
    """

    def __init__(self, *, max_spans: int = MAX_SPANS) -> None:
        if max_spans < 2:
            raise ValueError("max_spans must be at least 2")
        self._max_spans = max_spans
        self._flat = array("q")  # start, end, start, end, ...
        self.join_ms = 0

    def add(self, start_ms: int, end_ms: int) -> None:
        """Add a span that starts no earlier than the last one; any part of it before the
        last one's end is already covered and is not counted twice."""
        flat = self._flat
        if flat:
            last_end = flat[-1]
            if start_ms <= last_end or start_ms - last_end < self.join_ms:
                if end_ms > last_end:
                    flat[-1] = end_ms
                return
        if end_ms <= start_ms:
            return
        flat.append(start_ms)
        flat.append(end_ms)
        if len(flat) > 2 * self._max_spans:
            self._coarsen()

    def _coarsen(self) -> None:
        while len(self._flat) > self._max_spans:  # more than half full (two numbers a span)
            self.join_ms = max(self.join_ms * 2, FIRST_COARSE_GAP_MS)
            joined = array("q")
            for start, end in self:
                if joined and (start <= joined[-1] or start - joined[-1] < self.join_ms):
                    joined[-1] = max(joined[-1], end)
                else:
                    joined.append(start)
                    joined.append(end)
            self._flat = joined

    def spans(self) -> list[Span]:
        return list(self)

    @property
    def end_ms(self) -> int | None:
        """Where the last span ends (None: no span yet)."""
        return self._flat[-1] if self._flat else None

    def __iter__(self) -> Iterator[Span]:
        flat = self._flat
        return iter(zip(flat[::2], flat[1::2], strict=True))

    def __len__(self) -> int:
        return len(self._flat) // 2


def total_ms(spans: Iterable[Span]) -> int:
    """The time the spans cover."""
    return sum(end - start for start, end in spans)


def longest_ms(spans: Iterable[Span]) -> int:
    """The longest span (0 for none)."""
    return max((end - start for start, end in spans), default=0)


def union(*lists: Sequence[Span]) -> list[Span]:
    """The time any of the lists covers; spans that touch become one."""
    merged: list[Span] = []
    for start, end in heapq.merge(*lists):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def intersect(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """The time both lists cover."""
    both: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        start = max(a[i][0], b[j][0])
        end = min(a[i][1], b[j][1])
        if start < end:
            both.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return both


def subtract(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """The time ``a`` covers and ``b`` does not."""
    left: list[Span] = []
    j = 0
    for start, end in a:
        while j < len(b) and b[j][1] <= start:
            j += 1
        k = j
        while start < end and k < len(b) and b[k][0] < end:
            if b[k][0] > start:
                left.append((start, b[k][0]))
            start = max(start, b[k][1])
            k += 1
        if start < end:
            left.append((start, end))
    return left


def interruptions(starts_of: Sequence[Span], over: Sequence[Span], *, after_ms: int) -> int:
    """How many spans of ``starts_of`` begin inside a span of ``over`` that had already lasted
    at least ``after_ms``: one party starting to speak while the other has been speaking."""
    count = 0
    j = 0
    for start, _end in starts_of:
        while j < len(over) and over[j][1] <= start:
            j += 1
        if j < len(over) and over[j][0] + after_ms <= start:
            count += 1
    return count
