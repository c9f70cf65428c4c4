"""Who may make a bridge look a live feed up in the cluster's Redis: a bridge on a real
``redis-server``, asked for feeds without the admin token or a well-formed live token."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import _cluster_env
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

FORGED_SIGNATURE = "A" * 43
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
