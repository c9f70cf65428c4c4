"""Captions from any instance, and the consumers' event stream: two bridges sharing a real
``redis-server``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis

from bridge.events import Track
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import ADMIN, _cluster_env
from tests.support.admin import start_call
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import Received, WebhookReceiver
from tests.support.redis_server import RedisServer
from tests.support.speech import AGENT_LIVE, CALLER_LIVE, SCRIPT, SPEECH
from tests.support.sse import SseEvent, read_events
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

EVENTS_MD = Path(__file__).resolve().parents[2] / "docs" / "events.md"


@asynccontextmanager
async def feed(bridge: BridgeProcess, call_id: str, token: str = ADMIN,
               last_event_id: str | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}/calls/{call_id}/events",
            params={"token": token}, headers=headers) as response:
        yield response


async def numbered(response: aiohttp.ClientResponse, count: int | None = None
                   ) -> list[SseEvent]:
    """The stream's numbered events until ``call.ended`` (or the ``count``-th)."""
    assert response.status == 200, await response.text()
    events = []
    async with asyncio.timeout(30):
        async for event in read_events(response):
            if event.id is None:
                continue
            events.append(event)
            if event.event == "call.ended" or len(events) == count:
                break
    return events


async def token_from(bridge: BridgeProcess, call_id: str) -> str:
    status, body = await bridge.http("POST", f"/calls/{call_id}/token", ADMIN)
    assert status == 200, body
    token: str = json.loads(body)["token"]
    return token


async def feed_in_redis(redis: RedisServer, call_id: str) -> None:
    """Until the instance holding the call has written its feed's first frame to Redis (and
    with it, in one transaction, the feed's identity)."""
    first = await redis.command("XREAD", "BLOCK", "20000", "STREAMS",
                                f"callbridge:feed:{call_id}", "0-0")
    assert first, "no feed in Redis within 20 s"


async def two_bridges(bridge_factory: BridgeFactory, redis: RedisServer, tmp_path: Path,
                      **extra: str) -> tuple[BridgeProcess, BridgeProcess]:
    a = await bridge_factory(**_cluster_env(redis, tmp_path, "a", **extra))
    b = await bridge_factory(**_cluster_env(redis, tmp_path, "b", **extra))
    return a, b


async def test_captions_read_through_another_instance_are_the_holders_webhooks_in_order(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    a, b = await two_bridges(bridge_factory, redis_server, tmp_path)
    call = start_call(a, "CA-anywhere", {Track.INBOUND: ulaw(CALLER_LIVE),
                                         Track.OUTBOUND: ulaw(AGENT_LIVE)})
    await feed_in_redis(redis_server, "CA-anywhere")
    async with feed(b, "CA-anywhere") as through_b, feed(a, "CA-anywhere") as on_a:
        seen_on_b, seen_on_a = await asyncio.gather(numbered(through_b), numbered(on_a))
    assert (await call).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-anywhere"))

    # call.completed, which may follow by now, is for webhooks only.
    hooks = [h for h in receiver.of_call("CA-anywhere") if h.type != "call.completed"]
    assert [e.data for e in seen_on_b] == [h.body.decode() for h in hooks]
    assert [e.event for e in seen_on_b] == [h.type for h in hooks]
    assert [e.id for e in seen_on_b] == [str(n) for n in range(1, len(hooks) + 1)]
    assert [(e.id, e.event, e.data) for e in seen_on_a] == \
        [(e.id, e.event, e.data) for e in seen_on_b]
    assert sum(e.event == "transcript.final" for e in seen_on_b) == 3


async def test_late_joiners_resume_and_tokens_work_on_either_instance(
        bridge_factory: BridgeFactory, redis_server: RedisServer, stt: TelnyxSttEmulator,
        receiver: WebhookReceiver, tmp_path: Path) -> None:
    stt.script = list(SCRIPT)
    a, b = await two_bridges(bridge_factory, redis_server, tmp_path,
                             CALLBRIDGE_TELNYX_INTERIM_RESULTS="true",
                             CALLBRIDGE_LIVE_RETAIN_S="30")
    call = start_call(a, "CA-roam", {Track.INBOUND: ulaw(SPEECH)})
    await feed_in_redis(redis_server, "CA-roam")
    # a token issued by B opens the feed on A, and A's the feed on B
    from_b, from_a = await token_from(b, "CA-roam"), await token_from(a, "CA-roam")
    async with feed(a, "CA-roam", from_b) as response:
        first_part = await numbered(response, count=2)
    async with feed(b, "CA-roam", from_a,
                    last_event_id=first_part[-1].id) as response:
        rest = await numbered(response)
    assert (await call).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-roam"))

    # a viewer joining on B after the end gets the backlog: every event but the partials
    # a later final of their leg superseded, and the rest are the webhooks' bodies
    async with feed(b, "CA-roam", from_a) as response:
        late = await numbered(response)
    # call.completed is for webhooks only: viewers saw every final as it came.
    hooks = [h for h in receiver.of_call("CA-roam")
             if h.type not in ("transcript.partial", "call.completed")]
    assert [e.data for e in late] == [h.body.decode() for h in hooks]
    assert not any(e.event == "transcript.partial" for e in late)

    # resuming on B after reading part on A: what came after, in order, nothing twice
    assert [e.id for e in first_part] == ["1", "2"]
    resumed = [int(e.id or 0) for e in rest]
    assert resumed == sorted(set(resumed)) and resumed[0] > 2
    assert [(e.id, e.data) for e in rest if e.event != "transcript.partial"] == \
        [(e.id, e.data) for e in late if int(e.id or 0) > 2]
    assert any(e.event == "transcript.partial" for e in rest)  # followed live, partials too

    # a token for another call, or none, opens nothing on B
    other = "1000000000." + from_a.partition(".")[2]
    for token in (other, "guess"):
        async with feed(b, "CA-roam", token) as response:
            assert response.status == 401
    async with feed(b, "CA-nowhere") as response:
        assert response.status == 404


async def test_an_ended_calls_feed_expires_after_retain_s(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    a = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a",
                                            CALLBRIDGE_LIVE_RETAIN_S="30"))
    call = start_call(a, "CA-expiring", {Track.INBOUND: ulaw(CALLER_LIVE)})
    await feed_in_redis(redis_server, "CA-expiring")
    live_ttl = int(await redis_server.command("TTL", "callbridge:feed-info:CA-expiring"))
    assert live_ttl > 3600  # a live call's feed is not about to expire
    assert (await call).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-expiring"))
    b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"))
    async with feed(b, "CA-expiring") as response:  # through Redis, to call.ended
        assert (await numbered(response))[-1].event == "call.ended"
    for key in ("callbridge:feed:CA-expiring", "callbridge:feed-info:CA-expiring"):
        assert 0 < int(await redis_server.command("TTL", key)) <= 30, key


def completed(call_id: str) -> Callable[[list[Received]], bool]:
    return lambda events: any(e.type == "call.completed" and e.data["call_id"] == call_id
                              for e in events)


def consumer_from_docs() -> str:
    """The event stream consumer that docs/events.md shows, as it shows it."""
    section = EVENTS_MD.read_text().split("## The event stream (cluster mode)", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    return found.group(1)


async def test_the_documented_consumer_reads_every_event_once_taking_over_stale_ones(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stream = "callbridge:events"
    a = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a",
                                            CALLBRIDGE_CLUSTER_EVENTS_STREAM=stream))
    hooks = await _whole_call(a, receiver, "CA-consumed")

    # Another consumer of the group took the first two entries and crashed long ago.
    await redis_server.command("XGROUP", "CREATE", stream, "agent-assist", "0")
    taken = await redis_server.command("XREADGROUP", "GROUP", "agent-assist", "crashed",
                                       "COUNT", "2", "STREAMS", stream, ">")
    stale_ids = re.findall(r"^\d+-\d+$", taken, re.M)
    assert len(stale_ids) == 2
    await redis_server.command("XCLAIM", stream, "agent-assist", "crashed", "0", *stale_ids,
                               "IDLE", "600000")

    script = tmp_path / "consumer.py"
    script.write_text(consumer_from_docs())
    env = {**os.environ, "REDIS_URL": redis_server.url, "STREAM": stream}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    printed: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while len(printed) <= len(hooks):
                line = await process.stdout.readline()
                assert line, (await process.stderr.read()).decode() if process.stderr else ""
                printed.append(line.decode().rstrip("\n"))
                if len(printed) == len(hooks):
                    # One more entry: handled in turn, so once it is printed every entry
                    # before it has been acknowledged.
                    last = await redis_server.command(
                        "XADD", stream, "*", "type", "test.done", "id", "msg_done",
                        "call_id", "-", "body", '{"type":"test.done","data":{}}')
    finally:
        process.kill()
        await process.communicate()

    assert printed == [f"{h.type} {h.webhook_id} {h.data.get('text', '')}" for h in hooks] + \
        ["test.done msg_done "]
    pending = await redis_server.command("XPENDING", stream, "agent-assist", "-", "+", "100")
    assert set(re.findall(r"^\d+-\d+$", pending, re.M)) <= {last}  # the stale ones too


async def _whole_call(bridge: BridgeProcess, receiver: WebhookReceiver, call_id: str
                      ) -> list[Received]:
    call = start_call(bridge, call_id, {Track.INBOUND: ulaw(CALLER_LIVE)})
    assert (await call).close_code == 1000
    await receiver.wait_for(completed(call_id))
    return receiver.of_call(call_id)


async def test_events_made_while_redis_is_away_reach_it_in_order_when_it_is_back(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    stream = "callbridge:events"
    async with RedisServer(tmp_path / "aof", appendonly=True) as server:
        a = await bridge_factory(**_cluster_env(server, tmp_path, "a",
                                                CALLBRIDGE_CLUSTER_EVENTS_STREAM=stream))
        four_words = pcm_program(*[part for _ in range(4) for part in
                                   (("silence", 700), ("tone", 500, 600))], ("silence", 500))
        call = start_call(a, "CA-outage", {Track.INBOUND: ulaw(four_words)})

        def finals(count: int) -> Callable[[list[Received]], bool]:
            return lambda events: sum(e.type == "transcript.final"
                                      and e.data["call_id"] == "CA-outage"
                                      for e in events) >= count
        await receiver.wait_for(finals(1))
        await server.stop()  # an orderly stop: what Redis had is in its append-only file
        await receiver.wait_for(finals(3))  # these were made while Redis was away
        await a.wait_for_log("redis unreachable: cluster state degraded; calls go on and "
                             "events are kept locally until it is back")
        await server.start()
        assert (await call).close_code == 1000
        await receiver.wait_for(completed("CA-outage"))
        await a.wait_for_log("redis reachable again: cluster state restored")

        b = await bridge_factory(**_cluster_env(server, tmp_path, "b"))
        async with feed(b, "CA-outage") as response:
            through_b = await numbered(response)
        hooks = receiver.of_call("CA-outage")
        shown = [h for h in hooks if h.type != "call.completed"]  # for webhooks only
        assert [e.data for e in through_b] == [h.body.decode() for h in shown]
        assert [e.id for e in through_b] == [str(n) for n in range(1, len(shown) + 1)]

        client = redis.Redis.from_url(server.url)
        try:
            entries: Any = await client.xrange(stream)  # [(id, {field: value})]
        finally:
            await client.aclose()
        assert [fields[b"id"].decode() for _, fields in entries] == \
            [h.webhook_id for h in hooks]
        assert [fields[b"body"] for _, fields in entries] == [h.body for h in hooks]


async def test_sigterm_ends_the_streams_of_calls_held_elsewhere_at_once(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = await two_bridges(bridge_factory, redis_server, tmp_path)
    long_call = ulaw(CALLER_LIVE) * 6
    call = start_call(a, "CA-held-elsewhere", {Track.INBOUND: long_call})
    await feed_in_redis(redis_server, "CA-held-elsewhere")
    async with feed(b, "CA-held-elsewhere") as response:
        assert response.status == 200
        events = read_events(response)
        first = await anext(events)
        assert first.event == "token"
        b.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):  # well before keepalive_s (15 s) would wake it
            rest = [event async for event in events]
        assert await b.process.wait() == 0
    assert all(e.event != "call.ended" for e in rest)  # the call itself goes on, on A
    status, _ = await a.http("GET", "/calls/CA-held-elsewhere", ADMIN)
    assert status == 200
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
