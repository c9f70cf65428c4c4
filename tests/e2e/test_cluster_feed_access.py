"""Who may look a live feed up in the cluster's Redis, and whose frames a shared feed holds:
bridges on a real ``redis-server``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.events import Track
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import _cluster_env
from tests.e2e.test_cluster_feeds import feed, feed_in_redis, numbered, token_from
from tests.support.admin import start_call
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.redis_server import RedisServer
from tests.support.speech import AGENT_LIVE, caller

pytestmark = pytest.mark.e2e

FORGED_SIGNATURE = "A" * 43
INTRUDER = pcm_program(("silence", 200), ("tone", 500, 1500), ("silence", 500))
INTRUDER_SAYS = "tone 1500 hertz"
NOT_SHARED = "live feed not shared: another instance's live stream holds its call id in " \
    "Redis; viewers of this call must connect to this instance"
AWAY = "redis unreachable: cluster state degraded; calls go on and events are kept locally " \
    "until it is back"


async def events(bridge: BridgeProcess, **query: str) -> int:
    """The status of a feed request with ``query`` (the live token goes in ``token``)."""
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}/calls/CA-nobody/events",
            params=query) as response:
        return response.status


async def test_feed_requests_without_credentials_are_refused_before_redis_is_asked(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    bridge = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"))
    # Redis away: a request that reached it would be told 503, one refused first 401.
    await redis_server.kill()
    await bridge.wait_for_log(AWAY)
    expired = f"{int(time.time()) - 5}.{FORGED_SIGNATURE}"
    for query in ({}, {"token": ""}, {"token": "junk"}, {"token": expired},
                  {"token": f"{int(time.time()) + 60}.short"}):
        assert await events(bridge, **query) == 401, query
    status, _ = await bridge.http("GET", "/calls/CA-nobody/events", "wrong-admin-token")
    assert status == 401

    # A token of the right form is checked once its feed is known: here, Redis must answer.
    unexpired = f"{int(time.time()) + 60}.{FORGED_SIGNATURE}"
    assert await events(bridge, token=unexpired) == 503
    await redis_server.start()
    await bridge.wait_for_log("redis reachable again: cluster state restored")
    assert await events(bridge, token=unexpired) == 401


async def test_a_second_stream_under_a_live_calls_id_never_shows_in_its_captions(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    holder = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"))
    intruder = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"))
    viewer = await bridge_factory(**_cluster_env(redis_server, tmp_path, "c"))
    # The victim's call stays open a while after its words; the second stream announcing
    # its call id on another instance says something the victim never does.
    victim = start_call(holder, "CA-same", {Track.INBOUND: ulaw(caller(("silence", 6000))),
                                            Track.OUTBOUND: ulaw(AGENT_LIVE)})
    await feed_in_redis(redis_server, "CA-same")
    token = await token_from(viewer, "CA-same")
    async with feed(viewer, "CA-same", token) as through_viewer, \
            feed(holder, "CA-same") as on_holder:
        reading = asyncio.gather(numbered(through_viewer), numbered(on_holder))
        second = start_call(intruder, "CA-same", {Track.INBOUND: ulaw(INTRUDER)})
        assert (await second).close_code == 1000
        assert (await victim).close_code == 1000
        seen_through_viewer, seen_on_holder = await reading

    assert [(e.id, e.event, e.data) for e in seen_through_viewer] == \
        [(e.id, e.event, e.data) for e in seen_on_holder]
    assert seen_through_viewer[-1].event == "call.ended"
    assert not any(INTRUDER_SAYS in e.data for e in seen_through_viewer)
    assert len(intruder.log_events(NOT_SHARED)) == 1
    _, metrics = await intruder.http("GET", "/metrics")
    assert "callbridge_live_feeds_unshared_total 1.0" in metrics
    # ... while the second stream's words did reach its webhooks.
    await receiver.wait_for(lambda events: any(INTRUDER_SAYS.encode() in h.body
                                               for h in events))
