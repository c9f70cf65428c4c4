"""Engine concurrency limits end to end: bridges sharing a real ``redis-server`` (or one
alone), a Deepgram emulator counting its concurrent sessions, the webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.events import Track
from bridge.simulate import StreamResult
from tests.conftest import BridgeFactory, BridgeProcess
from tests.e2e.test_cluster import ADMIN, _cluster_env
from tests.support.admin import admin, start_call
from tests.support.audio import pcm_program, ulaw
from tests.support.deepgram import DeepgramEmulator
from tests.support.receiver import Received, WebhookReceiver
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.e2e

# A call that talks for as long as a test needs it: a tone every second for a minute
# (ended through the admin API long before).
LONG_CALL = ulaw(pcm_program(*[part for _ in range(60)
                               for part in (("tone", 300, 400), ("silence", 700))]))


def deepgram_env(emulator: DeepgramEmulator, max_streams: int, **extra: str) -> dict[str, str]:
    return {"CALLBRIDGE_STT_ENGINE": "deepgram", "DEEPGRAM_API_KEY": "test-deepgram-key",
            "CALLBRIDGE_DEEPGRAM_URL": emulator.url,
            "CALLBRIDGE_DEEPGRAM_MAX_STREAMS": str(max_streams), **extra}


def of_type(receiver: WebhookReceiver, call_id: str, kind: str) -> list[Received]:
    return [e for e in receiver.of_call(call_id) if e.type == kind]


async def transcribing(receiver: WebhookReceiver, call_id: str, count: int = 1) -> None:
    await receiver.wait_for(lambda _: len(of_type(receiver, call_id, "transcript.final"))
                            >= count, within_s=30)


async def waiting_for_a_slot(receiver: WebhookReceiver, call_id: str) -> None:
    await receiver.wait_for(lambda _: bool(of_type(receiver, call_id, "transcription.error")),
                            within_s=30)
    [error] = of_type(receiver, call_id, "transcription.error")
    assert error.data["error"]["code"] == "engine_capacity"
    assert error.data["error"]["retryable"] is True


async def end(bridge: BridgeProcess, call_id: str, call: asyncio.Task[StreamResult]) -> None:
    status, _ = await admin(bridge, "end", call_id, token=ADMIN)
    assert status == 202  # accepted: the call ends as its media connection closes
    await call


def long_call(bridge: BridgeProcess, call_id: str) -> asyncio.Task[StreamResult]:
    return start_call(bridge, call_id, {Track.INBOUND: LONG_CALL})


async def test_the_limit_holds_across_instances_and_a_waiting_leg_starts_when_a_call_ends(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    async with DeepgramEmulator() as deepgram:  # it counts; it never refuses
        a = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"),
                                 **deepgram_env(deepgram, 2))
        b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"),
                                 **deepgram_env(deepgram, 2))
        first, second = long_call(a, "CA-1"), long_call(b, "CA-2")
        await transcribing(receiver, "CA-1")
        await transcribing(receiver, "CA-2")
        third = long_call(a, "CA-3")
        await waiting_for_a_slot(receiver, "CA-3")
        assert len(deepgram.sessions) == 2

        await end(a, "CA-1", first)  # its slot frees, for the whole cluster
        await transcribing(receiver, "CA-3")
        await end(b, "CA-2", second)
        await end(a, "CA-3", third)
        for call_id in ("CA-2", "CA-3"):
            await receiver.wait_for(receiver.ended(call_id))

        assert deepgram.max_active == 2 and len(deepgram.sessions) == 3
        assert len(of_type(receiver, "CA-3", "transcription.error")) == 1  # however long
        [leg] = of_type(receiver, "CA-3", "call.ended")[0].data["legs"]
        assert leg["engine_capacity_waits"] == 1 and leg["upstream"] == "ok"
        _, metrics = await a.http("GET", "/metrics")
        assert 'callbridge_engine_capacity_refusals_total{engine="deepgram"} 1.0' in metrics
        assert 'callbridge_engine_sessions{engine="deepgram",scope="instance"} 0.0' in metrics


async def _rows(bridge: BridgeProcess, ready: Callable[[dict[str, Any]], bool],
                within_s: float = 10) -> dict[str, Any]:
    """``GET /cluster``'s rows by instance, once ``ready`` says they show what the test waits
    for (a member's row follows its heartbeat)."""
    async with asyncio.timeout(within_s):
        while True:
            _, body = await bridge.http("GET", "/cluster", token=ADMIN)
            rows = {row["instance"]: row for row in json.loads(body)["instances"]}
            if ready(rows):
                return rows
            await asyncio.sleep(0.05)  # another process's heartbeat: no event to wait on


async def test_an_instance_killed_frees_its_slots_after_takeover_s(
        bridge_factory: BridgeFactory, redis_server: RedisServer, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    async with DeepgramEmulator() as deepgram:
        a = await bridge_factory(**_cluster_env(redis_server, tmp_path, "a"),
                                 **deepgram_env(deepgram, 2))
        b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"),
                                 **deepgram_env(deepgram, 2))
        on_a = [long_call(a, "CA-a1"), long_call(a, "CA-a2")]
        await transcribing(receiver, "CA-a1")
        await transcribing(receiver, "CA-a2")
        survivor = long_call(b, "CA-b")
        await waiting_for_a_slot(receiver, "CA-b")
        _, body = await b.http("GET", "/metrics")
        assert 'callbridge_engine_sessions{engine="deepgram",scope="cluster"} 2.0' in body
        # GET /cluster on B shows which instance holds them, as A's heartbeat last said.
        assert (await _rows(b, lambda rows: rows["a"].get("engine_sessions") == {
            "deepgram": 2}))["b"]["engine_sessions"] == {"deepgram": 0}

        a.process.kill()  # SIGKILL: its leases stay in Redis until they expire
        await a.process.wait()
        for call in on_a:
            with contextlib.suppress(Exception):
                await call
        await transcribing(receiver, "CA-b")
        await end(b, "CA-b", survivor)
        await receiver.wait_for(receiver.ended("CA-b"))
        assert deepgram.max_active == 2 and len(deepgram.sessions) == 3


async def test_without_redis_the_limit_is_per_process_and_a_full_engine_sends_legs_to_the_secondary(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    async with DeepgramEmulator() as deepgram:
        bridge = await bridge_factory(**deepgram_env(deepgram, 1,
                                                     CALLBRIDGE_STT_SECONDARY_ENGINE="telnyx",
                                                     CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN))
        first = long_call(bridge, "CA-dg")
        await transcribing(receiver, "CA-dg")
        second = long_call(bridge, "CA-telnyx")
        await transcribing(receiver, "CA-telnyx")
        [failover] = of_type(receiver, "CA-telnyx", "transcription.failover")
        assert (failover.data["from"], failover.data["to"]) == ("deepgram", "telnyx")
        assert failover.data["error"]["code"] == "engine_capacity"
        assert of_type(receiver, "CA-telnyx", "transcription.error") == []
        await end(bridge, "CA-dg", first)
        await end(bridge, "CA-telnyx", second)
        await receiver.wait_for(receiver.ended("CA-telnyx"))
        assert deepgram.max_active == 1 and len(deepgram.sessions) == 1
        [leg] = of_type(receiver, "CA-telnyx", "call.ended")[0].data["legs"]
        assert leg["engine"] == "telnyx" and leg["failed_over"] is True


async def test_a_429_from_the_service_is_capacity_the_leg_waits_and_starts_when_room_comes(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    # No limit configured: the account is shared with others, and the service says it is full.
    async with DeepgramEmulator(max_concurrent=1) as deepgram:
        bridge = await bridge_factory(**deepgram_env(deepgram, 0,
                                                     CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN))
        first = long_call(bridge, "CA-first")
        await transcribing(receiver, "CA-first")
        second = long_call(bridge, "CA-second")
        await waiting_for_a_slot(receiver, "CA-second")
        assert deepgram.refused_for_capacity >= 1
        await end(bridge, "CA-first", first)
        await transcribing(receiver, "CA-second")
        await end(bridge, "CA-second", second)
        await receiver.wait_for(receiver.ended("CA-second"))
        assert len(of_type(receiver, "CA-second", "transcription.error")) == 1
        assert bridge.log_events("speech-to-text session failed; the call continues without "
                                 "transcripts for this leg") == []
        _, metrics = await bridge.http("GET", "/metrics")
        assert 'callbridge_engine_capacity_refusals_total{engine="deepgram"}' in metrics
        status, body = await bridge.http("GET", "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
