#!/usr/bin/env python3
"""The cluster's calls: Redis memory per listed call, the cost of publishing and listing, and
the round trip of an admin action sent to the instance holding a call.

Starts a real ``redis-server`` on 127.0.0.1 (no persistence) and two cluster members in this
process, ``a`` and ``b``. ``a`` publishes ``--calls`` live calls shaped like the bridge's
(two legs each); the script measures the hash's memory (``MEMORY USAGE``), the time of a
whole rewrite (what each heartbeat does), the time ``b`` takes to list them, and
``--actions`` pause commands from ``b`` to ``a`` one after another (publish, the owner's
reply, ``BLPOP``), p50/p99.

    PYTHONPATH=. python bench/cluster_calls.py [--calls 1000] [--actions 500]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bridge.cluster.calls import ClusterCalls, Command, Reply
from bridge.cluster.member import ClusterMember
from bridge.config import ClusterSettings, Secret
from tests.support.redis_server import RedisServer

TOKEN = "bench-admin-token-0123456789"  # noqa: S105 - the benchmark's own, for signing


def summary(n: int) -> dict[str, Any]:
    """A call as ``GET /calls`` shows it (``bridge.web.admin._call_view``), two legs."""
    leg = {"speaker": "caller", "audio_ms": 183_400, "transcripts": 42, "upstream": "ok",
           "engine": "telnyx"}
    return {"call_id": f"CA{n:032x}", "provider": "twilio", "stream_id": f"MZ{n:032x}",
            "state": "started", "engine": "telnyx", "duration_s": 183.4, "paused": False,
            "legs": {"inbound": leg, "outbound": {**leg, "speaker": "agent"}},
            "opened_at": time.time() - 183.4}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(calls: int, actions: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        async with RedisServer(Path(directory)) as redis_server:
            await run(redis_server, calls, actions)


async def run(redis_server: RedisServer, calls: int, actions: int) -> None:
    def settings(instance: str) -> ClusterSettings:
        return ClusterSettings(redis_url=Secret(redis_server.url), instance_id=instance,
                               heartbeat_s=60, takeover_s=180)

    summaries = {f"CA{n:032x}": summary(n) for n in range(calls)}

    async def pause(command: Command) -> Reply:
        return Reply(200, {"call_id": command.call_key, "paused": {"inbound": True},
                           "call_paused": False})

    async with (ClusterMember(settings("a")) as member_a,
                ClusterMember(settings("b")) as member_b,
                ClusterCalls(member_a, summaries=lambda: summaries, updated=asyncio.Event(),
                             admin_token=TOKEN, perform=pause) as calls_a,
                ClusterCalls(member_b, summaries=dict, updated=asyncio.Event(),
                             admin_token=TOKEN) as calls_b):
        async with asyncio.timeout(10):
            await calls_a.listening.wait()
        rewrites = []
        for _ in range(20):
            started = time.perf_counter()
            await calls_a.publish_all()
            rewrites.append(time.perf_counter() - started)
        memory = int(await redis_server.command("MEMORY", "USAGE", calls_a.own_key,
                                                "SAMPLES", "0"))
        listings = []
        for _ in range(20):
            started = time.perf_counter()
            listed, _ = await calls_b.elsewhere()
            listings.append(time.perf_counter() - started)
        assert len(listed) == calls
        round_trips = []
        for n in range(actions):
            started = time.perf_counter()
            reply = await calls_b.send("a", "pause", f"CA{n % calls:032x}", None)
            round_trips.append(time.perf_counter() - started)
            assert reply.status == 200
    print(f"python {platform.python_version()}, redis-server on 127.0.0.1, {calls} calls")
    print(f"redis memory of the calls' hash: {memory} bytes, {memory / calls:.0f} per call")
    print(f"rewrite of the hash (each heartbeat): median "
          f"{statistics.median(rewrites) * 1000:.1f} ms, max {max(rewrites) * 1000:.1f} ms")
    print(f"listing from another instance: median "
          f"{statistics.median(listings) * 1000:.1f} ms, max {max(listings) * 1000:.1f} ms")
    print(f"admin action round trip ({actions}, one at a time): p50 "
          f"{percentile(round_trips, 0.5) * 1000:.2f} ms, p99 "
          f"{percentile(round_trips, 0.99) * 1000:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=500)
    options = parser.parse_args()
    asyncio.run(main(options.calls, options.actions))
