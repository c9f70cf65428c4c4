"""Cluster delivery end to end: an instance lost for good, Redis restarted, a Sentinel
failover; real ``redis-server`` processes and real ``callbridge serve`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as redis

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, StreamResult, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import _cluster_env
from tests.support.audio import ulaw
from tests.support.outbox_file import query
from tests.support.receiver import Received, WebhookReceiver
from tests.support.redis_server import RedisSentinel, RedisServer
from tests.support.speech import caller

pytestmark = pytest.mark.e2e

# Two short utterances, then a long one: a SIGKILL during it lands between finals.
CALLER_THEN_LONG = caller(("silence", 400), ("tone", 3000, 900))
# Four finals, the third after a long utterance, so Redis can be away in between.
FOUR_FINALS = caller(("silence", 400), ("tone", 2500, 900), ("silence", 600),
                     ("tone", 500, 1000), ("silence", 600))
# Retries stay short however long Redis is away, so the receiver's return is seen at once.
FAST_RETRIES = {"CALLBRIDGE_WEBHOOKS_RETRY_SCHEDULE_S": "0.3"}


@pytest.fixture(params=[True, False], ids=["aof", "no-persistence"])
async def redis_aof(tmp_path: Path, request: pytest.FixtureRequest,
                    ) -> AsyncIterator[RedisServer]:
    """A real ``redis-server``, with its append-only file on (``everysec``) or, to show that
    a copy lost with Redis's data is made again, without persistence."""
    async with RedisServer(tmp_path / "redis-aof", appendonly=request.param) as server:
        yield server


def _call(bridge: BridgeProcess, call_id: str, audio: bytes) -> asyncio.Task[StreamResult]:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(audio)}, call_id=call_id)
    return asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))


async def _mirrored(bridge: BridgeProcess, since: int, within_s: float = 20) -> None:
    """Until the bridge's mirror reports an empty backlog in a log line after ``since``."""
    def caught_up() -> bool:
        return any(line.get("event") == "outbox mirrored" and line.get("backlog") == 0
                   for line in bridge.logs[since:])
    async with asyncio.timeout(within_s), bridge.changed:
        await bridge.changed.wait_for(caught_up)


async def _metric(bridge: BridgeProcess, name: str) -> float:
    _, text = await bridge.http("GET", "/metrics")
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))


def _stored_ids(bridge: BridgeProcess, call_id: str) -> list[str]:
    return [str(line["webhook_id"]) for line in bridge.log_events("event stored")
            if line.get("call_id") == call_id]


async def _copied_ids(server: RedisServer, instance: str) -> list[str]:
    """The webhook ids in an instance's copy in Redis, in the outbox's order."""
    client = redis.Redis.from_url(server.url)
    try:
        fields = await client.hgetall(f"callbridge:outbox:{instance}")
    finally:
        await client.aclose()
    return [json.loads(fields[seq])["id"] for seq in sorted(fields, key=int)]


async def _replicated(primary: RedisServer, replicas: int) -> None:
    """Until ``replicas`` replicas have synchronised with ``primary`` (a write, then WAIT)."""
    client = redis.Redis.from_url(primary.url)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.set("test:probe", "1")
            pipe.execute_command("WAIT", replicas, 20_000)
            acked = (await pipe.execute())[-1]
        assert acked >= replicas, "the replica did not synchronise"
    finally:
        await client.aclose()


def _delete_outbox(directory: Path, name: str) -> None:
    for path in directory.glob(f"{name}*"):
        path.unlink()


def _completed(call_id: str) -> Callable[[list[Received]], bool]:
    return lambda events: any(e.type == "call.completed" and e.data["call_id"] == call_id
                              for e in events)


def _sequences(events: list[Received]) -> list[tuple[str, object]]:
    return [(e.type, e.data.get("sequence")) for e in events]


async def test_a_lost_instance_s_finals_are_delivered_once_by_a_survivor(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, redis_server: RedisServer,
        tmp_path: Path) -> None:
    receiver.fail_statuses = [503] * 100_000  # the receiver is down while the call runs
    a = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"))
    b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b",
                                            CALLBRIDGE_CLUSTER_EVENTS_STREAM="events"))
    call = _call(a, "CA-lost", CALLER_THEN_LONG)
    await a.wait_for_log("event stored", event_type="transcript.final", call_id="CA-lost",
                         occurrence=2)
    await a.wait_for_log("webhook attempt failed; will retry", call_id="CA-lost")
    await _mirrored(a, since=len(a.logs))
    assert await _metric(a, "callbridge_cluster_outbox_backlog") == 0
    accepted = _stored_ids(a, "CA-lost")
    assert len(accepted) == 3  # call.started and two finals

    os.kill(a.process.pid, signal.SIGKILL)
    await a.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    _delete_outbox(tmp_path, "a.db")  # the machine is gone, and its disk with it
    receiver.fail_statuses.clear()  # the receiver is back

    taken = await b.wait_for_log("lost instance taken over: its undelivered events are "
                                 "delivered from here and its calls ended", instance="a")
    assert taken["events"] == 3 and taken["calls"] == 1
    assert await _metric(b, "callbridge_cluster_takeovers_total") == 1
    await receiver.wait_for(receiver.ended("CA-lost"), within_s=30)
    events = receiver.of_call("CA-lost")
    assert _sequences(events) == [("call.started", None), ("transcript.final", 1),
                                  ("transcript.final", 2), ("call.ended", None)]
    assert [e.webhook_id for e in events[:3]] == accepted  # the same webhook-id as A's
    assert receiver.bad_signatures == 0
    ended = events[-1].data
    assert ended["reason"] == "instance_lost"
    assert ended["legs"] == [{"leg": "inbound", "speaker": "caller",
                              "text": "tone 400 hertz tone 700 hertz", "transcripts": 2}]
    # Delivered by B, and nothing of the call is left to send again.
    await b.wait_for_log("event stored", event_type="call.ended", call_id="CA-lost")
    b.process.terminate()
    stopped = await b.wait_for_log("webhook delivery stopped")
    assert stopped["delivered"] == 5  # A's three, then call.ended and call.completed
    await b.process.wait()
    assert query(tmp_path / "b.db", "SELECT COUNT(*) FROM events") == [(0,)]
    assert await redis_server.command("EXISTS", "callbridge:outbox:a",
                                      "callbridge:outbox-calls:a") == "0"
    assert await redis_server.command("GET", "callbridge:taken-over:a") == "b"
    # Consumers of the event stream hear of the call's end too, from the survivor.
    entries = await redis_server.command("XRANGE", "events", "-", "+")
    assert entries.count("\ntype\ncall.ended\n") == 1 and "instance_lost" in entries


async def test_an_instance_back_after_a_takeover_does_not_send_its_events_again(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, redis_server: RedisServer,
        tmp_path: Path) -> None:
    receiver.fail_statuses = [503] * 100_000
    env = _cluster_env(redis_server, tmp_path, "a")
    a = await bridge_factory(**env)
    b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"))
    call = _call(a, "CA-back", CALLER_THEN_LONG)
    await a.wait_for_log("event stored", event_type="transcript.final", call_id="CA-back",
                         occurrence=2)
    await _mirrored(a, since=len(a.logs))
    os.kill(a.process.pid, signal.SIGKILL)
    await a.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    receiver.fail_statuses.clear()
    await b.wait_for_log("lost instance taken over: its undelivered events are delivered "
                         "from here and its calls ended", instance="a")
    await receiver.wait_for(_completed("CA-back"), within_s=30)

    # A comes back with the same id and its file: what B took over is not sent again.
    again = await bridge_factory(**env)
    dropped = await again.wait_for_log("another instance took over this one's undelivered "
                                       "events while it was away; local copies of them are "
                                       "dropped, not sent twice")
    assert dropped["events"] == 3 and dropped["calls"] == 1
    await again.wait_for_log("webhook delivery ready")
    assert query(tmp_path / "a.db", "SELECT COUNT(*) FROM events") == [(0,)]
    assert query(tmp_path / "a.db", "SELECT COUNT(*) FROM live_calls") == [(0,)]
    assert not again.log_events("closing calls a previous run left open")
    assert _sequences(receiver.of_call("CA-back")) == [
        ("call.started", None), ("transcript.final", 1), ("transcript.final", 2),
        ("call.ended", None), ("call.completed", None)]


async def test_redis_restarted_mid_call_loses_nothing_and_keeps_order(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, redis_aof: RedisServer,
        tmp_path: Path) -> None:
    receiver.fail_statuses = [503] * 100_000  # events stay undelivered, so the copy holds them
    a = await bridge_factory(**_cluster_env(redis_aof, tmp_path, "a", **FAST_RETRIES))
    call = _call(a, "CA-restart", FOUR_FINALS)
    await a.wait_for_log("event stored", event_type="transcript.final", call_id="CA-restart",
                         occurrence=2)
    await _mirrored(a, since=len(a.logs))
    await redis_aof.stop()
    # A final arrives while Redis is away: kept locally, delivered locally, copied later.
    await a.wait_for_log("event stored", event_type="transcript.final", call_id="CA-restart",
                         occurrence=3)
    await a.wait_for_log("redis unreachable: cluster state degraded; calls go on and events "
                         "are kept locally until it is back")
    assert await _metric(a, "callbridge_cluster_outbox_backlog") > 0
    await redis_aof.start()
    await a.wait_for_log("redis reachable again: cluster state restored")
    result = await call
    assert result.close_code == 1000
    await a.wait_for_log("event stored", event_type="call.completed", call_id="CA-restart")
    await _mirrored(a, since=len(a.logs))
    assert await _copied_ids(redis_aof, "a") == _stored_ids(a, "CA-restart")

    receiver.fail_statuses.clear()
    await receiver.wait_for(_completed("CA-restart"), within_s=30)
    events = receiver.of_call("CA-restart")
    assert _sequences(events) == [("call.started", None), *(("transcript.final", n)
                                                           for n in range(1, 5)),
                                  ("call.ended", None), ("call.completed", None)]
    assert [e.webhook_id for e in events] == _stored_ids(a, "CA-restart")
    # Delivered events leave the copy too.
    await _mirrored(a, since=len(a.logs))
    assert await redis_aof.command("HLEN", "callbridge:outbox:a") == "0"
    assert len(a.log_events("redis unreachable: cluster state degraded; calls go on and "
                            "events are kept locally until it is back")) == 1


async def test_a_sentinel_failover_mid_call_loses_nothing_and_mirroring_goes_on(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    async with (RedisServer(tmp_path / "primary", appendonly=True) as primary,
                RedisServer(tmp_path / "replica", appendonly=True,
                            replica_of=primary) as replica,
                RedisSentinel(tmp_path / "sentinel", primary) as sentinel):
        await _replicated(primary, 1)
        receiver.fail_statuses = [503] * 100_000
        env = _cluster_env(primary, tmp_path, "a", CALLBRIDGE_CLUSTER_SENTINELS=sentinel.address,
                           CALLBRIDGE_CLUSTER_SENTINEL_PRIMARY=sentinel.name,
                           CALLBRIDGE_CLUSTER_WAIT_REPLICAS="1",
                           CALLBRIDGE_CLUSTER_WAIT_TIMEOUT_MS="1000", **FAST_RETRIES)
        env["CALLBRIDGE_REDIS_URL"] = ""
        a = await bridge_factory(**env)
        call = _call(a, "CA-failover", FOUR_FINALS)
        await a.wait_for_log("event stored", event_type="transcript.final",
                             call_id="CA-failover", occurrence=2)
        await _mirrored(a, since=len(a.logs))
        # WAIT 1 was met: the replica has every event the primary had.
        assert await _metric(a, "callbridge_cluster_wait_shortfalls_total") == 0
        await primary.kill()
        await a.wait_for_log("event stored", event_type="transcript.final",
                             call_id="CA-failover", occurrence=3)
        result = await call
        assert result.close_code == 1000
        await a.wait_for_log("event stored", event_type="call.completed",
                             call_id="CA-failover")
        # The replica is promoted; the bridge finds it through the Sentinel and catches up.
        await a.wait_for_log("redis reachable again: cluster state restored", within_s=30)
        assert "role:master" in await replica.command("INFO", "replication")
        await _mirrored(a, since=len(a.logs), within_s=30)
        assert await _copied_ids(replica, "a") == _stored_ids(a, "CA-failover")

        receiver.fail_statuses.clear()
        await receiver.wait_for(_completed("CA-failover"), within_s=30)
        events = receiver.of_call("CA-failover")
        assert _sequences(events) == [("call.started", None), *(("transcript.final", n)
                                                               for n in range(1, 5)),
                                      ("call.ended", None), ("call.completed", None)]
        assert [e.webhook_id for e in events] == _stored_ids(a, "CA-failover")
        await _mirrored(a, since=len(a.logs))
        assert await replica.command("HLEN", "callbridge:outbox:a") == "0"
