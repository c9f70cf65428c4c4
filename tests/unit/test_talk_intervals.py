"""The span maths of talk analytics without audio: the bounded span list, set operations
checked against plain sets of milliseconds, and the figures from known spans."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.analytics.intervals import (
    FIRST_COARSE_GAP_MS,
    Span,
    SpanList,
    interruptions,
    intersect,
    longest_ms,
    subtract,
    total_ms,
    union,
)
from bridge.analytics.talk import LegTalk, talk_figures
from bridge.events import Track


def as_ms(spans: list[Span]) -> set[int]:
    return {ms for start, end in spans for ms in range(start, end)}


def is_canonical(spans: list[Span]) -> bool:
    """Sorted, each non-empty, apart from the next (touching spans are one)."""
    return all(s < e for s, e in spans) and all(
        spans[n][1] < spans[n + 1][0] for n in range(len(spans) - 1))


@st.composite
def span_lists(draw: st.DrawFn) -> list[Span]:
    """A canonical list of spans within 0-300 ms."""
    edges = sorted(draw(st.sets(st.integers(0, 300), max_size=12)))
    spans = list(zip(edges[::2], edges[1::2], strict=False))
    return union(spans)


@given(span_lists(), span_lists())
def test_set_operations_agree_with_sets_of_milliseconds(a: list[Span], b: list[Span]) -> None:
    for result, expected in ((union(a, b), as_ms(a) | as_ms(b)),
                             (intersect(a, b), as_ms(a) & as_ms(b)),
                             (subtract(a, b), as_ms(a) - as_ms(b))):
        assert as_ms(result) == expected
        assert is_canonical(result)
        assert total_ms(result) == len(expected)


def test_touching_spans_are_one_and_the_longest_is_found() -> None:
    assert union([(0, 10), (20, 30)], [(10, 20)]) == [(0, 30)]
    assert longest_ms([(0, 10), (50, 80), (90, 100)]) == 30
    assert longest_ms([]) == 0


def test_a_span_list_joins_what_overlaps_or_touches_and_ignores_empty_spans() -> None:
    spans = SpanList()
    spans.add(0, 100)
    spans.add(100, 150)  # touches
    spans.add(120, 140)  # inside
    spans.add(300, 300)  # empty
    spans.add(400, 500)
    assert spans.spans() == [(0, 150), (400, 500)]
    assert spans.end_ms == 500 and len(spans) == 2 and spans.join_ms == 0


def test_a_full_span_list_fills_its_shortest_gaps_and_says_by_how_much() -> None:
    spans = SpanList(max_spans=8)
    for n in range(8):  # 100 ms of speech every 300 ms: gaps of 200 ms
        spans.add(300 * n, 300 * n + 100)
    assert len(spans) == 8 and spans.join_ms == 0
    spans.add(2400, 2500)  # the ninth span: the list coarsens
    assert spans.join_ms == FIRST_COARSE_GAP_MS
    assert spans.spans() == [(0, 2500)]
    spans.add(2800, 2900)  # a gap beyond join_ms stays a gap
    spans.add(3000, 3100)  # one within it is filled
    assert spans.spans() == [(0, 2500), (2800, 3100)]


def test_a_span_list_stays_bounded_whatever_it_is_given() -> None:
    spans = SpanList(max_spans=64)
    for n in range(100_000):
        spans.add(10 * n, 10 * n + 5)
    assert len(spans) <= 64
    assert spans.join_ms > 0
    assert spans.spans()[0][0] == 0 and spans.end_ms == 999_995


def test_interruptions_count_starts_inside_the_others_speech_after_the_minimum() -> None:
    caller = [(0, 2000), (5000, 6000)]
    agent = [(200, 1000),  # 200 ms into the caller's speech: too soon
             (1500, 2500),  # 1500 ms in: an interruption
             (2600, 3000),  # the caller has stopped: none
             (5300, 5400)]  # 300 ms in, exactly the minimum: an interruption
    assert interruptions(agent, caller, after_ms=300) == 2
    assert interruptions(caller, agent, after_ms=300) == 0
    assert interruptions(agent, [], after_ms=300) == 0


def figures(**legs: list[Span]) -> dict[str, object]:
    """The figures of two legs (inbound ``caller``, outbound ``agent``) heard 0-10 s."""
    return talk_figures(
        [LegTalk(Track.INBOUND, "caller", legs["caller"], 30),
         LegTalk(Track.OUTBOUND, "agent", legs["agent"], 10)],
        heard=[(0, 10_000)], paused=legs.get("paused", []), interruption_after_ms=300)


def test_figures_of_a_known_conversation() -> None:
    # Caller 0.5-3.5 s and 6-8 s; agent 3-5 s (cuts in after 2.5 s of the caller).
    result = figures(caller=[(500, 3500), (6000, 8000)], agent=[(3000, 5000)])
    assert result["measured_ms"] == 10_000
    assert result["overtalk_ms"] == 500
    assert result["interruptions"] == 1
    assert result["silence_ms"] == 500 + 1000 + 2000  # before, between, after
    assert result["longest_silence_ms"] == 2000
    assert result["legs"] == {
        "inbound": {"speaker": "caller", "talk_ms": 5000, "talk_ratio": 0.714, "words": 30,
                    "words_per_minute": 360.0, "interruptions": 0},
        "outbound": {"speaker": "agent", "talk_ms": 2000, "talk_ratio": 0.286, "words": 10,
                     "words_per_minute": 300.0, "interruptions": 1}}


def test_paused_time_is_neither_silence_nor_measured() -> None:
    # The caller was paused 5.5-9 s (card entry): its 3.5 s of silence around 6-8 s are not
    # silence of the call, and the measured time loses the pause.
    result = figures(caller=[(500, 3500)], agent=[(3000, 5000)], paused=[(5500, 9000)])
    assert result["measured_ms"] == 10_000 - 3500
    assert result["longest_silence_ms"] == 1000  # 9-10 s; 5-5.5 s is shorter
    assert result["silence_ms"] == 500 + 500 + 1000


def test_one_leg_has_no_overtalk_or_interruptions_and_no_talk_has_no_ratio() -> None:
    result = talk_figures([LegTalk(Track.MIXED, "call", [], 0)], heard=[(0, 4000)],
                          paused=[], interruption_after_ms=300)
    assert result["overtalk_ms"] is None and result["interruptions"] is None
    assert result["legs"] == {"mixed": {"speaker": "call", "talk_ms": 0, "talk_ratio": None,
                                        "words": 0, "words_per_minute": None,
                                        "interruptions": None}}
    assert result["longest_silence_ms"] == 4000


@pytest.mark.parametrize(("talk_ms", "pace"), [(999, None), (1000, 180.0)])
def test_pace_needs_a_second_of_talk(talk_ms: int, pace: float | None) -> None:
    result = talk_figures([LegTalk(Track.INBOUND, "caller", [(0, talk_ms)], 3)],
                          heard=[(0, 2000)], paused=[], interruption_after_ms=300)
    legs = result["legs"]
    assert legs["inbound"]["words_per_minute"] == pace


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 40)), max_size=200),
       st.integers(2, 16))
def test_a_span_list_covers_all_it_was_given_sorted_and_within_its_bound(
        steps: list[tuple[int, int]], max_spans: int) -> None:
    """Spans added in time order (each a gap after the last start, then a length): the list
    stays canonical and bounded, covers every millisecond given, and covers nothing else
    while it is exact (``join_ms`` 0); coarsened, it covers only gaps shorter than
    ``join_ms``."""
    spans = SpanList(max_spans=max_spans)
    given_spans: list[Span] = []
    start = 0
    for gap, length in steps:
        start += gap
        spans.add(start, start + length)
        given_spans.append((start, start + length))
    kept = spans.spans()
    assert is_canonical(kept) and len(kept) <= max_spans
    exact = union(*[[span] for span in given_spans])
    assert as_ms(exact) <= as_ms(kept)
    if spans.join_ms == 0:
        assert kept == exact
    else:
        assert all(end - start < spans.join_ms for start, end in subtract(kept, exact))
