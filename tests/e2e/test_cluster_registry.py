"""The cluster's calls end to end: two bridges sharing a real ``redis-server``; a call on one
is listed, shown, paused, resumed and ended through the other."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.cluster.calls import command_key, new_command
from bridge.events import Track
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import ADMIN, _cluster_env
from tests.support.admin import start_call
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

# A tone to be transcribed, then silence long enough for every admin action to happen.
LONG_CALL = ulaw(pcm_program(("silence", 200), ("tone", 400, 600), ("silence", 30_000)))


async def _json(bridge: BridgeProcess, method: str, path: str, **query: str) -> tuple[int, Any]:
    status, body = await bridge.http(method, path, ADMIN, **query)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def _metric(bridge: BridgeProcess, name: str, **labels: str) -> float:
    _, text = await bridge.http("GET", "/metrics")
    return next(sample.value for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name and sample.labels == labels)


async def _two_bridges(bridge_factory: BridgeFactory, redis: RedisServer, tmp_path: Path,
                       **extra: str) -> tuple[BridgeProcess, BridgeProcess]:
    a = await bridge_factory(**_cluster_env(redis, tmp_path, "a", **extra))
    b = await bridge_factory(**_cluster_env(redis, tmp_path, "b", **extra))
    return a, b


async def _call_on(bridge: BridgeProcess, call_id: str) -> asyncio.Task[Any]:
    """Start a long call on ``bridge`` and wait until the cluster can see it."""
    call = start_call(bridge, call_id, {Track.INBOUND: LONG_CALL}, speed=1)
    await bridge.wait_for_log("cluster calls published", calls=1)
    return call


async def test_a_call_on_one_instance_is_listed_shown_paused_and_ended_through_another(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    call = await _call_on(a, "CA-cluster")

    status, listing = await _json(b, "GET", "/calls")
    assert status == 200 and listing["instance"] == "b" and listing["partial"] is False
    [listed] = listing["calls"]
    assert listed["call_id"] == "CA-cluster" and listed["instance"] == "a"
    assert listed["provider"] == "twilio" and listed["state"] == "started"
    assert "opened_at" not in listed and listed["duration_s"] >= 0

    status, detail = await _json(b, "GET", "/calls/CA-cluster")
    assert status == 200 and detail["instance"] == "a" and detail["call_id"] == "CA-cluster"

    status, answer = await _json(b, "POST", "/calls/CA-cluster/pause", leg="inbound")
    assert status == 200, answer
    assert answer == {"call_id": "CA-cluster", "paused": {"inbound": True},
                      "call_paused": False, "instance": "a"}
    await receiver.wait_for(lambda events: any(
        e.type == "transcription.paused" and e.data["call_id"] == "CA-cluster"
        and e.data["leg"] == "inbound" for e in events))
    status, answer = await _json(b, "POST", "/calls/CA-cluster/resume")
    assert status == 200 and answer["paused"] == {"inbound": False}
    await receiver.wait_for(lambda events: any(
        e.type == "transcription.resumed" and e.data["call_id"] == "CA-cluster"
        for e in events))

    status, cluster = await _json(b, "GET", "/cluster")
    assert status == 200 and cluster["cluster"] is True
    members = {m["instance"]: m for m in cluster["instances"]}
    assert members["a"]["alive"] and members["a"]["calls"] == 1
    assert members["a"]["load"] == round(1 / members["a"]["max_calls"], 3)
    assert members["b"]["calls"] == 0 and members["b"]["accepting_calls"] is True

    status, answer = await _json(b, "POST", "/calls/CA-cluster/end")
    assert status == 202 and answer == {"call_id": "CA-cluster", "ending": True,
                                        "instance": "a"}
    await call
    events = await receiver.wait_for(receiver.ended("CA-cluster"))
    [ended] = [e for e in events if e.type == "call.ended"]
    assert ended.data["reason"] == "ended_by_admin"
    await a.wait_for_log("cluster calls published", calls=0)
    assert (await _json(b, "GET", "/calls/CA-cluster"))[0] == 404
    assert (await _json(b, "GET", "/calls"))[1]["calls"] == []


async def test_an_action_for_an_unknown_call_is_404_and_a_bad_leg_400(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    _, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    for action in ("end", "pause", "resume"):
        status, body = await _json(b, "POST", f"/calls/CA-nowhere/{action}")
        assert status == 404 and "no live call with that id" in body
    assert (await _json(b, "GET", "/calls/CA-nowhere"))[0] == 404
    assert (await _json(b, "POST", "/calls/CA-nowhere/pause", leg="both"))[0] == 400


async def test_hostile_messages_on_an_instances_channel_are_ignored_and_it_serves_on(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    call = await _call_on(a, "CA-hostile")
    channel = "callbridge:commands:a"
    forged = new_command("end", "CA-hostile", None, sender="b", target="a", now=time.time())
    hostile = [
        "not json", "[]", "{}", "x" * 100_000, '{"v": 1, "action": "end"}',
        # Well formed, but signed with a key that is not the cluster's: must not end the call.
        forged.encode(command_key("another-token-0123456789")).decode(),
        json.dumps({**json.loads(forged.encode(command_key(ADMIN))), "action": "explode"}),
        json.dumps({**json.loads(forged.encode(command_key(ADMIN))), "leg": "both"}),
        json.dumps({**json.loads(forged.encode(command_key(ADMIN))), "action": ["end"]}),
        json.dumps({**json.loads(forged.encode(command_key(ADMIN))), "at": 1}),
    ]
    for message in hostile:
        assert await redis_server.command("PUBLISH", channel, message) == "1"
    # A takes its channel's messages in order: once this answer is back, it has seen them all.
    status, detail = await _json(b, "GET", "/calls/CA-hostile")
    assert status == 200 and detail["instance"] == "a" and detail["state"] == "started"
    ignored = await a.wait_for_log("admin command from the cluster channel ignored")
    assert "another-token" not in json.dumps(ignored)
    assert len(a.log_events("admin command from the cluster channel ignored")) == 1
    assert await _metric(a, "callbridge_cluster_admin_actions_total", outcome="ignored") == \
        len(hostile)
    assert not receiver.ended("CA-hostile")(receiver.events)

    # A replay of a command that was done is refused too.
    valid = new_command("pause", "CA-hostile", None, sender="b", target="a", now=time.time())
    body = valid.encode(command_key(ADMIN)).decode()
    assert await redis_server.command("PUBLISH", channel, body) == "1"
    assert await redis_server.command("PUBLISH", channel, body) == "1"
    status, _ = await _json(b, "POST", "/calls/CA-hostile/end")
    assert status == 202
    await call
    events = await receiver.wait_for(receiver.ended("CA-hostile"))
    assert sum(e.type == "transcription.paused" for e in events) == 1
    assert await _metric(a, "callbridge_cluster_admin_actions_total", outcome="ignored") == \
        len(hostile) + 1
    assert await _metric(b, "callbridge_cluster_admin_actions_total", outcome="answered") == 2
    assert a.process.returncode is None


async def test_an_owner_that_does_not_answer_gives_504(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path,
                              CALLBRIDGE_CLUSTER_COMMAND_TIMEOUT_S="0.5",
                              CALLBRIDGE_CLUSTER_TAKEOVER_S="30")
    call = await _call_on(a, "CA-frozen")
    a.process.send_signal(signal.SIGSTOP)  # alive for the cluster, but answering nothing
    try:
        status, body = await _json(b, "POST", "/calls/CA-frozen/pause")
    finally:
        a.process.send_signal(signal.SIGCONT)
    assert status == 504 and "instance a did not answer within 0.5 s" in body
    # A does it when it wakes; the answer is left to expire.
    assert (await _json(b, "POST", "/calls/CA-frozen/end"))[0] == 202
    await call


async def test_with_redis_away_the_listing_is_this_instances_and_says_partial(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    call = await _call_on(a, "CA-alone")
    await redis_server.kill()
    status, listing = await _json(a, "GET", "/calls")
    assert status == 200 and listing["partial"] is True
    assert [c["call_id"] for c in listing["calls"]] == ["CA-alone"]
    status, listing = await _json(b, "GET", "/calls")
    assert status == 200 and listing == {"calls": [], "instance": "b", "partial": True}
    status, body = await _json(b, "POST", "/calls/CA-alone/end")
    assert status == 503 and "Redis is unreachable" in body
    status, cluster = await _json(b, "GET", "/cluster")
    assert status == 200 and cluster["partial"] is True
    assert [m["instance"] for m in cluster["instances"]] == ["b"]
    # The owner still acts on its own calls.
    assert (await _json(a, "POST", "/calls/CA-alone/end"))[0] == 202
    await call


async def test_without_cluster_mode_the_cluster_is_this_instance(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN)
    status, cluster = await _json(bridge, "GET", "/cluster")
    assert status == 200 and cluster["cluster"] is False
    [here] = cluster["instances"]
    assert here["alive"] and here["calls"] == 0 and here["accepting_calls"] is True
    status, listing = await _json(bridge, "GET", "/calls")
    assert listing == {"calls": []}  # the single-process answer is unchanged


async def test_one_call_id_on_two_instances_is_listed_twice_and_chosen_by_instance(
        bridge_factory: BridgeFactory, redis_server: RedisServer, tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    c = await bridge_factory(**_cluster_env(redis_server, tmp_path, "c"))
    on_a, on_b = await _call_on(a, "CA-twice"), await _call_on(b, "CA-twice")

    status, listing = await _json(c, "GET", "/calls")
    assert sorted((x["call_id"], x["instance"]) for x in listing["calls"]) == [
        ("CA-twice", "a"), ("CA-twice", "b")]
    status, answer = await _json(c, "POST", "/calls/CA-twice/end")
    assert status == 409 and sorted(answer["instances"]) == ["a", "b"]
    assert (await _json(a, "GET", "/calls/CA-twice"))[1]["instance"] == "a"  # its own first
    status, detail = await _json(a, "GET", "/calls/CA-twice", instance="b")
    assert status == 200 and detail["instance"] == "b"
    assert (await _json(c, "GET", "/calls/CA-twice", instance="z"))[0] == 404

    status, answer = await _json(c, "POST", "/calls/CA-twice/end", instance="b")
    assert status == 202 and answer["instance"] == "b"
    await on_b
    await b.wait_for_log("cluster calls published", calls=0)
    assert (await _json(c, "GET", "/calls/CA-twice"))[1]["instance"] == "a"
    assert (await _json(c, "POST", "/calls/CA-twice/end"))[0] == 202
    await on_a


async def test_after_redis_comes_back_empty_the_calls_are_listed_and_reached_again(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    a, b = await _two_bridges(bridge_factory, redis_server, tmp_path)
    call = await _call_on(a, "CA-healed")
    await a.wait_for_log("listening for admin commands")
    await redis_server.kill()
    await redis_server.start()  # no persistence: Redis comes back empty
    await a.wait_for_log("cluster calls published again", calls=1)
    await a.wait_for_log("listening for admin commands", occurrence=2)
    assert await redis_server.command("EXISTS", "callbridge:instance:a") == "1"

    status, listing = await _json(b, "GET", "/calls")
    assert status == 200 and listing["partial"] is False
    assert [(c["call_id"], c["instance"]) for c in listing["calls"]] == [("CA-healed", "a")]
    status, answer = await _json(b, "POST", "/calls/CA-healed/pause")
    assert status == 200 and answer["instance"] == "a"
    await receiver.wait_for(lambda events: any(
        e.type == "transcription.paused" and e.data["call_id"] == "CA-healed" for e in events))
    assert (await _json(b, "POST", "/calls/CA-healed/end"))[0] == 202
    await call
