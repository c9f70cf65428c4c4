"""The live feed on a real server: tokens, order, redaction, resuming, and the drain."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from bridge.events import Track
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support.admin import TOKEN, start_call, token_for
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import AGENT_LIVE, CALLER_LIVE, SCRIPT, SPEECH, leaked
from tests.support.sse import SseEvent, read_events
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e


@asynccontextmanager
async def feed(bridge: BridgeProcess, path: str,
               headers: dict[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}{path}", headers=headers or {}) as response:
        yield response


async def until_ended(response: aiohttp.ClientResponse) -> list[SseEvent]:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = []
    async with asyncio.timeout(30):
        async for event in read_events(response):
            events.append(event)
            if event.event == "call.ended":
                break
    return events


async def test_the_feed_streams_partials_and_finals_in_order_redacted_as_webhooks_are(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver) -> None:
    stt.script = list(SCRIPT)
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN,
                                  CALLBRIDGE_TELNYX_INTERIM_RESULTS="true")
    call = start_call(bridge, "CA-live", {Track.INBOUND: ulaw(SPEECH)})
    await bridge.wait_for_log("call started", call_id="CA-live")
    issued = await token_for(bridge, "CA-live")
    assert issued["captions_url"] == f"/captions/CA-live#token={issued['token']}"
    async with feed(bridge, issued["events_url"]) as response:
        events = await until_ended(response)
    assert (await call).close_code == 1000

    assert events[0].event == "token"  # a fresh token, for reconnecting later: it works
    async with feed(bridge, f"/calls/CA-live/events?token={events[0].data}") as response:
        assert response.status == 200  # the ended call's feed is kept for reconnecting
    numbered = [e for e in events if e.id is not None]
    assert [int(e.id or 0) for e in numbered] == sorted({int(e.id or 0) for e in numbered})
    assert numbered[0].event == "call.started" and numbered[-1].event == "call.ended"
    assert all(e.body["type"] == e.event for e in numbered)
    transcripts = [e.body["data"] for e in numbered if e.event.startswith("transcript.")]
    finals = [t for t in transcripts if t["is_final"]]
    assert [f["sequence"] for f in finals] == [1, 2, 3]
    assert any(not t["is_final"] for t in transcripts)
    for n, final in enumerate(finals):  # a final's partials come before it, none after
        later = transcripts[transcripts.index(final) + 1:]
        assert not any(t["sequence"] == n + 1 and not t["is_final"] for t in later)
    for event in numbered:
        assert leaked(event.data) == [], event.data

    # each final is the very body its webhook carried
    await receiver.wait_for(receiver.ended("CA-live"))
    hooks = {e.body.decode() for e in receiver.of_call("CA-live")}
    for event in numbered:
        if event.event != "transcript.partial":
            assert event.data in hooks, event.event


async def test_a_viewer_joining_late_or_resuming_gets_what_it_missed(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    call = start_call(bridge, "CA-late", {Track.INBOUND: ulaw(CALLER_LIVE),
                                          Track.OUTBOUND: ulaw(AGENT_LIVE)})
    await receiver.wait_for(lambda events: sum(
        e.type == "transcript.final" and e.data["call_id"] == "CA-late" for e in events) >= 2)
    token = (await token_for(bridge, "CA-late"))["token"]
    async with feed(bridge, f"/calls/CA-late/events?token={token}") as response:
        everything = await until_ended(response)
    assert (await call).close_code == 1000
    finals = [e.body["data"]["text"] for e in everything if e.event == "transcript.final"]
    assert sorted(finals) == ["tone 1000 hertz", "tone 400 hertz", "tone 700 hertz"]

    # the call has ended; its feed stays a while for reconnecting viewers
    numbered = [e for e in everything if e.id is not None]
    middle = numbered[len(numbered) // 2]
    async with feed(bridge, f"/calls/CA-late/events?token={token}",
                    {"Last-Event-ID": middle.id or ""}) as response:
        rest = await until_ended(response)
    assert [e.id for e in rest if e.id] == [e.id for e in numbered[len(numbered) // 2 + 1:]]


async def test_feed_access_needs_a_token_for_that_call(bridge_factory: BridgeFactory,
                                                      receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    calls = [start_call(bridge, call_id, {Track.INBOUND: ulaw(CALLER_LIVE)})
             for call_id in ("CA-one", "CA-two")]
    for call_id in ("CA-one", "CA-two"):
        await bridge.wait_for_log("call started", call_id=call_id)
    other = (await token_for(bridge, "CA-two"))["token"]
    expired = "1000000000." + other.partition(".")[2]
    for query in ("", f"?token={other}", f"?token={expired}", "?token=guess"):
        async with feed(bridge, f"/calls/CA-one/events{query}") as response:
            assert response.status == 401, query
    async with feed(bridge, "/calls/CA-one/events",
                    {"Authorization": "Bearer wrong-token-0123456789"}) as response:
        assert response.status == 401
    # the admin token opens any feed, as a header or (for EventSource) in the query
    async with feed(bridge, "/calls/CA-one/events",
                    {"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200
    async with feed(bridge, f"/calls/CA-one/events?token={TOKEN}") as response:
        assert response.status == 200
    assert (await bridge.http("POST", "/calls/CA-one/token", None))[0] == 401
    assert (await bridge.http("POST", "/calls/CA-none/token", TOKEN))[0] == 404
    assert (await bridge.http("POST", "/calls/CA-one/token", TOKEN, ttl_s="0"))[0] == 400
    assert (await bridge.http("POST", "/calls/CA-one/token", TOKEN, ttl_s="100000"))[0] == 400
    short = json.loads((await bridge.http("POST", "/calls/CA-one/token", TOKEN,
                                          ttl_s="60"))[1])
    assert short["expires_at"] <= time.time() + 61
    async with feed(bridge, f"/calls/CA-none/events?token={TOKEN}") as response:
        assert response.status == 404
    for call in calls:
        assert (await call).close_code == 1000
    # no token, and no transcript text, reaches the logs
    logged = "\n".join(bridge.raw_stderr)
    assert other.partition(".")[2] not in logged and TOKEN not in logged
    assert "tone 400" not in logged


async def test_without_an_admin_token_there_is_no_feed_and_no_page(
        bridge: BridgeProcess) -> None:
    for method, path in (("GET", "/calls/CA-x/events"), ("GET", "/captions/CA-x"),
                         ("POST", "/calls/CA-x/token")):
        assert (await bridge.http(method, path))[0] == 404, path


async def test_the_pages_are_self_contained_and_locked_down(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    async with aiohttp.ClientSession() as session:
        for path in ("/captions/CA-x", "/calls"):
            async with session.get(f"http://127.0.0.1:{bridge.port}{path}",
                                   headers={"Accept": "text/html"}) as response:
                assert response.status == 200
                page = await response.text()
                policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "connect-src 'self'" in policy
            nonce = policy.split("'nonce-", 1)[1].split("'", 1)[0]
            assert f'<script nonce="{nonce}">' in page and f'<style nonce="{nonce}">' in page
            assert "http://" not in page and "https://" not in page  # no CDN, nothing remote
            assert "innerHTML" not in page  # text from calls is only ever set as text
    status, body = await bridge.http("GET", "/calls", TOKEN)  # the API still answers JSON
    assert status == 200 and json.loads(body) == {"calls": []}


async def test_sigterm_ends_the_feed_with_the_calls_shutdown(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN,
                                  CALLBRIDGE_SERVER_DRAIN_S="0.5")
    long_call = ulaw(CALLER_LIVE) * 5
    call = start_call(bridge, "CA-drain-live", {Track.INBOUND: long_call})
    await bridge.wait_for_log("call started", call_id="CA-drain-live")
    async with feed(bridge, f"/calls/CA-drain-live/events?token={TOKEN}") as response:
        await receiver.wait_for(lambda events: any(
            e.type == "transcript.final" and e.data["call_id"] == "CA-drain-live"
            for e in events))
        bridge.process.send_signal(signal.SIGTERM)
        events = await until_ended(response)
    assert events[-1].body["data"]["reason"] == "shutdown"
    assert any(e.event == "transcript.final" for e in events)
    await call
    assert await bridge.process.wait() == 0
