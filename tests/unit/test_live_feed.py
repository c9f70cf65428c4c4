"""The live feed's numbering, backlog, viewers and tokens, without a server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from bridge.delivery.retry import Outcome
from bridge.events import EventType, OutboundEvent, make_event
from bridge.web.feed import LiveFeed, LiveFeeds, LiveTee, LiveTokens

ADMIN = "admin-token-for-tests-0123456789"


def event(kind: EventType, leg: str | None = "inbound", text: str = "", sequence: int = 1,
          call_id: str = "CA1") -> OutboundEvent:
    return make_event(kind, {"call_id": call_id, "leg": leg, "text": text, "sequence": sequence},
                      call_id=call_id, leg=leg)


def feed(backlog_bytes: int = 65536, viewer_buffer: int = 16) -> LiveFeed:
    return LiveFeed("CA1", backlog_bytes=backlog_bytes, viewer_buffer=viewer_buffer)


def texts(frames: object) -> list[str]:
    return [json.loads(f.data)["data"]["text"] for f in frames]  # type: ignore[attr-defined]


def test_frames_carry_the_webhook_body_and_increasing_ids() -> None:
    live = feed()
    viewer = live.watch(0)
    first = event(EventType.TRANSCRIPT_FINAL, text="hello")
    live.publish(first)
    live.publish(event(EventType.TRANSCRIPT_PARTIAL, text="how", sequence=2))
    frames = list(viewer.frames)
    assert [f.id for f in frames] == [1, 2]
    assert frames[0].data == first.body
    assert frames[0].encode() == b"id: 1\nevent: transcript.final\ndata: " + \
        first.body + b"\n\n"


def test_a_late_viewer_gets_the_finals_and_only_the_latest_partial_of_each_leg() -> None:
    live = feed()
    live.publish(event(EventType.CALL_STARTED, leg=None))
    live.publish(event(EventType.TRANSCRIPT_PARTIAL, text="hel"))
    live.publish(event(EventType.TRANSCRIPT_PARTIAL, text="hello"))
    live.publish(event(EventType.TRANSCRIPT_PARTIAL, leg="outbound", text="hi"))
    live.publish(event(EventType.TRANSCRIPT_FINAL, text="hello there"))
    live.publish(event(EventType.TRANSCRIPT_PARTIAL, text="and", sequence=2))
    viewer = live.watch(0)
    assert [f.kind for f in viewer.frames] == [
        EventType.CALL_STARTED, EventType.TRANSCRIPT_PARTIAL, EventType.TRANSCRIPT_FINAL,
        EventType.TRANSCRIPT_PARTIAL]
    assert texts(viewer.frames) == ["", "hi", "hello there", "and"]
    assert [f.id for f in viewer.frames] == [1, 4, 5, 6]


def test_resuming_after_an_id_skips_what_the_viewer_already_has() -> None:
    live = feed()
    for n in range(1, 6):
        live.publish(event(EventType.TRANSCRIPT_FINAL, text=f"final {n}", sequence=n))
    assert texts(live.watch(3).frames) == ["final 4", "final 5"]
    assert list(live.watch(5).frames) == []


def test_the_backlog_keeps_the_newest_events_within_its_byte_budget() -> None:
    one = len(event(EventType.TRANSCRIPT_FINAL, text="final 1").body)
    live = feed(backlog_bytes=3 * one)
    for n in range(1, 10):
        live.publish(event(EventType.TRANSCRIPT_FINAL, text=f"final {n}", sequence=n))
    assert texts(live.watch(0).frames) == ["final 7", "final 8", "final 9"]


def test_a_viewer_that_falls_behind_is_cut_off_and_others_carry_on() -> None:
    live = feed(viewer_buffer=16)
    slow, quick = live.watch(0), live.watch(0)
    for n in range(1, 18):
        live.publish(event(EventType.TRANSCRIPT_FINAL, text=f"final {n}", sequence=n))
        quick.frames.clear()  # this one keeps up
    assert slow.overflowed and slow.closed
    assert not quick.closed
    assert live.viewers == {quick} and live.cut_off == 1


async def test_a_viewer_waits_for_events_then_ends_with_the_feed() -> None:
    live = feed()
    viewer = live.watch(0)
    assert await viewer.take(0.01) == []  # a quiet spell
    waiting = asyncio.ensure_future(viewer.take(10))
    await asyncio.sleep(0)
    live.publish(event(EventType.TRANSCRIPT_FINAL, text="hello"))
    assert texts(await waiting) == ["hello"]
    live.publish(event(EventType.CALL_ENDED, leg=None))
    live.end()
    assert [f.kind for f in await viewer.take(10)] == [EventType.CALL_ENDED]
    assert viewer.closed and await viewer.take(10) == []
    late = live.watch(0)  # an ended feed replays its backlog, then closes
    assert late.closed and [f.kind for f in late.frames] == [EventType.TRANSCRIPT_FINAL,
                                                             EventType.CALL_ENDED]


class Sink:
    def __init__(self) -> None:
        self.events: list[OutboundEvent] = []

    def hold(self, call_id: str, leg: str, finals: Sequence[OutboundEvent]) -> None:
        """Held finals go to the outbox, never to a feed: nothing to record here."""

    def publish(self, published: OutboundEvent) -> asyncio.Future[Outcome]:
        self.events.append(published)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        future.set_result(Outcome.DELIVERED)
        return future


async def test_a_new_stream_never_joins_another_streams_feed() -> None:
    feeds = LiveFeeds(backlog_bytes=65536, viewer_buffer=16, retain_s=0)
    sink = Sink()
    first, second = LiveTee(sink, feeds), LiveTee(sink, feeds)
    first.publish(event(EventType.CALL_STARTED, leg=None))
    old = feeds.get("CA1")
    assert old is not None
    viewer = old.watch(0)
    first.close()
    assert viewer.closed and old.ended  # the stream's end is its feed's end
    second.publish(event(EventType.CALL_STARTED, leg=None))  # later, under the same key
    new = feeds.get("CA1")
    assert new is not None and new is not old and not new.ended
    assert [f.id for f in new.watch(0).frames] == [1]  # nothing of the first stream's
    second.close()
    await asyncio.sleep(0.01)  # retained for retain_s (0 here), then forgotten
    assert feeds.get("CA1") is None


def test_a_token_opens_one_call_until_it_expires() -> None:
    tokens = LiveTokens(ADMIN)
    token, expires = tokens.issue("CA1", now=1000.0, ttl_s=60)
    assert expires == 1060
    assert tokens.check("CA1", token, now=1059.0)
    assert not tokens.check("CA1", token, now=1061.0)
    assert not tokens.check("CA2", token, now=1001.0)
    assert not LiveTokens(ADMIN + "x").check("CA1", token, now=1001.0)


@pytest.mark.parametrize("forged", [
    "", ".", "abc", "9999999999.", "9999999999.AAAA", "-1.AAAA", "1e99.AAAA",
    "99999999999999999999.AAAA"])
def test_forged_tokens_are_refused(forged: str) -> None:
    assert not LiveTokens(ADMIN).check("CA1", forged, now=1000.0)
    assert not LiveTokens(ADMIN).well_formed(forged, now=1000.0)


def test_a_token_is_well_formed_until_it_expires_whatever_it_was_issued_for() -> None:
    tokens = LiveTokens(ADMIN)
    token, _ = tokens.issue("CA1", now=1000.0, ttl_s=60)
    assert tokens.well_formed(token, now=1059.0) and not tokens.well_formed(token, now=1061.0)
    # well formed, not valid: what lets a request look its feed up, before ``check``
    assert LiveTokens(ADMIN + "x").well_formed(token, now=1001.0)
    assert not tokens.well_formed(token + "A", now=1001.0)
    assert not tokens.well_formed(token[:-1] + "=", now=1001.0)


def test_a_token_for_a_later_expiry_cannot_be_made_from_an_earlier_one() -> None:
    tokens = LiveTokens(ADMIN)
    token, expires = tokens.issue("CA1", now=1000.0, ttl_s=60)
    signature = token.partition(".")[2]
    assert not tokens.check("CA1", f"{expires + 3600}.{signature}", now=1001.0)
