"""Metrics, readiness and the admin API's call views, on a real server."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.support.admin import TOKEN
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import AGENT_LIVE, CALLER_LIVE

pytestmark = pytest.mark.e2e



async def get(bridge: BridgeProcess, path: str, token: str | None = TOKEN,
              method: str = "GET") -> tuple[int, str]:
    return await bridge.http(method, path, token)


async def samples(bridge: BridgeProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, text = await get(bridge, "/metrics", token=None)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_follow_a_call(bridge_factory: BridgeFactory,
                                     receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER_LIVE), Track.OUTBOUND: ulaw(AGENT_LIVE)},
                    call_id="CA-metrics")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=2))
    await receiver.wait_for(lambda events: sum(
        e.type == "transcript.final" and e.data["call_id"] == "CA-metrics" for e in events) >= 2)
    during = await samples(bridge)
    twilio = (("dialect", "twilio"),)
    assert during[("callbridge_calls_active", twilio)] == 1
    assert during[("callbridge_legs_active", twilio)] == 2
    assert during[("callbridge_upstream_sessions_total",
                   (("engine", "telnyx"), ("event", "opened")))] == 2
    assert during[("callbridge_event_loop_lag_seconds", ())] < 1.0
    await call
    await receiver.wait_for(receiver.ended("CA-metrics"))
    await bridge.wait_for_log("call summary", call_id="CA-metrics")
    after = await samples(bridge)
    assert after[("callbridge_calls_active", twilio)] == 0
    assert after[("callbridge_calls_total", (("dialect", "twilio"), ("reason", "stopped")))] == 1
    frames = (len(CALLER_LIVE) + len(AGENT_LIVE)) // 320
    assert after[("callbridge_media_frames_total", twilio)] == frames
    assert after[("callbridge_transcripts_total", (("type", "final"),))] == 3
    assert after[("callbridge_webhook_deliveries_total", (("outcome", "delivered"),))] >= 4


async def test_readiness_follows_the_engine(bridge_factory: BridgeFactory,
                                            refused_port: int) -> None:
    ready = await bridge_factory()
    status, body = await get(ready, "/readyz", token=None)
    assert status == 200, body
    dead = f"ws://127.0.0.1:{refused_port}/v2/speech-to-text/transcription"
    unready = await bridge_factory(CALLBRIDGE_TELNYX_URL=dead)
    status, body = await get(unready, "/readyz", token=None)
    assert status == 503 and "speech-to-text engine not reachable" in body


async def test_admin_views_and_ending_a_call(bridge_factory: BridgeFactory,
                                            receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER_LIVE)},
                    call_id="CA-admin")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" and e.data["call_id"] == "CA-admin" for e in events))
    assert (await get(bridge, "/calls", token="nope-nope-nope-nope"))[0] == 401
    status, listing = await get(bridge, "/calls")
    assert status == 200 and '"call_id": "CA-admin"' in listing
    status, detail = await get(bridge, "/calls/CA-admin")
    assert status == 200 and '"frames"' in detail and "tone" not in detail  # no text
    status, _ = await get(bridge, "/calls/CA-admin/end", method="POST")
    assert status == 202
    await call
    events = await receiver.wait_for(receiver.ended("CA-admin"))
    ended = [e for e in events if e.type == "call.ended" and e.data["call_id"] == "CA-admin"]
    assert ended[0].data["reason"] == "ended_by_admin"
    assert (await get(bridge, "/calls/CA-admin"))[0] == 404


async def test_sigterm_drains_two_live_calls_and_exits_cleanly(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    import signal

    bridge = await bridge_factory(CALLBRIDGE_SERVER_DRAIN_S="0.5")
    long_call = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 500),
                            ("tone", 400, 700), ("silence", 8000))
    calls = [asyncio.create_task(stream_call(
        bridge.url("/streams/twilio"),
        build_call(CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(long_call)},
                            call_id=f"CA-drain-{n}")), speed=1)) for n in (1, 2)]
    await receiver.wait_for(lambda events: sum(
        e.type == "transcript.final" and e.data["call_id"].startswith("CA-drain")
        for e in events) >= 4)  # both calls have said both tones
    bridge.process.send_signal(signal.SIGTERM)
    await bridge.wait_for_log("draining: no new calls; live calls may finish")
    refused = await get(bridge, "/readyz", token=None)
    assert refused[0] == 503 and "draining" in refused[1]
    async with asyncio.timeout(30):
        assert await bridge.process.wait() == 0
    await asyncio.gather(*calls, return_exceptions=True)
    for n in (1, 2):
        events = receiver.of_call(f"CA-drain-{n}")
        assert [e.data["text"] for e in events if e.type == "transcript.final"] == [
            "tone 400 hertz", "tone 700 hertz"]
        assert [e.type for e in events[-2:]] == ["call.ended", "call.completed"]
        assert events[-2].data["reason"] == "shutdown"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_both_event_loops_carry_a_call(bridge_factory: BridgeFactory,
                                             receiver: WebhookReceiver, loop: str) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_EVENT_LOOP=loop)
    assert (await bridge.wait_for_log("event loop"))["loop"] == loop
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER_LIVE), Track.OUTBOUND: ulaw(AGENT_LIVE)},
                    call_id=f"CA-{loop}")
    events = await run_call(bridge, receiver, spec)
    finals = sorted(e.data["text"] for e in events if e.type == "transcript.final")
    assert finals == ["tone 1000 hertz", "tone 400 hertz", "tone 700 hertz"]
