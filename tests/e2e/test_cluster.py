"""Cluster mode end to end: bridges sharing a real ``redis-server``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import BridgeFactory
from tests.support.redis_server import RedisServer

ADMIN = "cluster-admin-token-0123456789"


def _cluster_env(redis: RedisServer, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    return {"CALLBRIDGE_REDIS_URL": redis.url, "CALLBRIDGE_CLUSTER_INSTANCE_ID": name,
            "CALLBRIDGE_CLUSTER_HEARTBEAT_S": "0.2", "CALLBRIDGE_CLUSTER_TAKEOVER_S": "2",
            "CALLBRIDGE_OUTBOX_PATH": str(tmp_path / f"{name}.db"),
            "CALLBRIDGE_SERVER_ADMIN_TOKEN": ADMIN, **extra}


async def test_redis_away_is_reported_once_and_calls_go_on(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    bridge = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"))
    status, body = await bridge.http("GET", "/readyz")
    assert status == 200 and json.loads(body)["degraded"] == []
    assert json.loads(body)["instance"] == "a"

    await redis_server.kill()
    await bridge.wait_for_log("redis unreachable: cluster state degraded; calls go on and "
                              "events are kept locally until it is back")
    status, body = await bridge.http("GET", "/readyz")
    assert status == 200 and json.loads(body)["degraded"]
    _, metrics = await bridge.http("GET", "/metrics")
    assert "callbridge_cluster_redis_up 0.0" in metrics

    await redis_server.start()
    await bridge.wait_for_log("redis reachable again: cluster state restored")
    assert len(bridge.log_events("redis unreachable: cluster state degraded; calls go on and "
                                 "events are kept locally until it is back")) == 1
    status, body = await bridge.http("GET", "/readyz")
    assert json.loads(body)["degraded"] == []
