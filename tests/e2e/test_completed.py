"""call.completed end to end: after every call, and after a bridge killed mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as redis

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess, run_call
from tests.e2e.test_cluster import _cluster_env
from tests.support.admin import TOKEN
from tests.support.audio import pcm_program, ulaw
from tests.support.outbox_file import query
from tests.support.receiver import Received, WebhookReceiver
from tests.support.redis_server import RedisServer
from tests.support.speech import AGENT, CALLER
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e

LINE = ("leg", "speaker", "sequence", "start_ms", "end_ms", "text")


def completed(call_id: str) -> Any:
    return lambda events: any(e.type == "call.completed" and e.data["call_id"] == call_id
                              for e in events)


def lines_of(finals: list[Received]) -> list[dict[str, Any]]:
    """The finals as call.completed's transcript lines, in the conversation's order."""
    lines = [{key: f.data[key] for key in LINE} for f in finals]
    return sorted(lines, key=lambda line: (line["start_ms"], line["leg"], line["sequence"]))


async def test_a_call_ends_with_call_completed_carrying_every_final_in_order(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    spec = CallSpec("twilio", AudioEncoding.PCMU,
                    {Track.INBOUND: ulaw(CALLER), Track.OUTBOUND: ulaw(AGENT)},
                    call_id="CA-done", custom_parameters={"queue": "billing"})
    await run_call(bridge, receiver, spec)
    await receiver.wait_for(completed("CA-done"))

    events = receiver.of_call("CA-done")
    assert [e.type for e in events[-2:]] == ["call.ended", "call.completed"]
    assert [e.type for e in events].count("call.completed") == 1
    finals = [e for e in events if e.type == "transcript.final"]
    assert len(finals) == 3  # two of the caller's, one of the agent's
    done = events[-1].data
    assert done["transcript"] == lines_of(finals)
    assert {line["speaker"] for line in done["transcript"]} == {"caller", "agent"}
    assert {k: done[k] for k in ("call_id", "provider", "leg", "custom_parameters", "reason",
                                 "transcript_lines", "transcript_truncated", "transcript_url",
                                 "artifacts", "rebuilt")} == {
        "call_id": "CA-done", "provider": "twilio", "leg": None,
        "custom_parameters": {"queue": "billing"}, "reason": "stopped",
        "transcript_lines": 3, "transcript_truncated": False, "transcript_url": None,
        "artifacts": [], "rebuilt": False}
    ended = events[-2].data
    assert done["duration_ms"] == ended["duration_ms"]
    # The talk analytics call.ended carried, as it carried them.
    assert done["analytics"] == ended["analytics"] and "legs" in done["analytics"]
    assert receiver.bad_signatures == 0


LONG_SAYINGS = [" ".join(["alpha bravo charlie delta echo foxtrot"] * 14) + " one",
                " ".join(["golf hotel india juliett kilo lima"] * 14) + " two"]


async def test_a_long_transcript_is_cut_to_the_limit_and_linked_to_its_stored_file(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = list(LONG_SAYINGS)
    bridge = await bridge_factory(CALLBRIDGE_ARTIFACTS_ENABLED="true",
                                  CALLBRIDGE_ARTIFACTS_DIR=str(tmp_path / "kept"),
                                  CALLBRIDGE_ARTIFACTS_COMPLETED_MAX_BYTES="1024",
                                  CALLBRIDGE_SERVER_ADMIN_TOKEN=TOKEN)
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-long")
    await run_call(bridge, receiver, spec)
    await receiver.wait_for(completed("CA-long"))
    events = receiver.of_call("CA-long")
    finals = [e for e in events if e.type == "transcript.final"]
    assert [f.data["text"] for f in finals] == LONG_SAYINGS  # about 600 bytes each
    done = events[-1].data
    assert done["transcript"] == lines_of(finals)[:1]  # what fits in 1024 bytes
    assert done["transcript_truncated"] is True and done["transcript_lines"] == 2
    assert sorted(done["artifacts"]) == ["transcript.json", "transcript.srt",
                                         "transcript.txt", "transcript.vtt"]
    assert done["transcript_url"] == "/calls/CA-long/artifacts/transcript.json"
    # The link gives the whole transcript.
    status, body = await bridge.http("GET", done["transcript_url"], TOKEN)
    assert status == 200
    assert LONG_SAYINGS[1] in body and LONG_SAYINGS[0] in body


async def test_call_completed_is_not_sent_when_switched_off(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    config = tmp_path / "off.toml"
    config.write_text("[artifacts]\ncompleted = false\n")
    bridge = await bridge_factory(CALLBRIDGE_CONFIG=str(config))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-off")
    await run_call(bridge, receiver, spec)
    # The summary is written once every event the call published has settled.
    summary = await bridge.wait_for_log("call summary", call_id="CA-off")
    assert summary["webhooks"] == {"delivered": 4}  # started, two finals, ended
    assert [e.type for e in receiver.of_call("CA-off")] == [
        "call.started", "transcript.final", "transcript.final", "call.ended"]


# One final said and delivered, then one held back for redaction (it may be the start of a
# card number) when the bridge is killed, the call still streaming.
SPEECH = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 800),
                     ("tone", 1200, 400), ("silence", 10_000))
SCRIPT = ["hello I would like to pay my bill", "okay my card number is four one one one"]


async def test_a_killed_call_gets_call_completed_with_its_finals_rebuilt_after_restart(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = list(SCRIPT)
    config = tmp_path / "hold.toml"
    config.write_text("[compliance]\nhold_s = 10.0\n")  # the kill lands inside the hold
    first = await bridge_factory(CALLBRIDGE_CONFIG=str(config))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-cut")
    call = asyncio.create_task(stream_call(first.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    # The receiver is up: the first final is delivered (and leaves the outbox's events).
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" for e in receiver.of_call("CA-cut")))
    await first.wait_for_log("held finals stored", call_id="CA-cut", leg="inbound", finals=1)
    os.kill(first.process.pid, signal.SIGKILL)
    await first.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    [(pending,)] = query(tmp_path / "outbox.db", "SELECT COUNT(*) FROM events")
    assert pending == 0  # everything stored before the kill was delivered

    second = await bridge_factory(CALLBRIDGE_CONFIG=str(config))
    await receiver.wait_for(completed("CA-cut"), within_s=30)
    await second.wait_for_log("closing calls a previous run left open", calls=1)
    events = receiver.of_call("CA-cut")
    assert [(e.type, e.data.get("sequence")) for e in events] == [
        ("call.started", None), ("transcript.final", 1), ("transcript.final", 2),
        ("call.ended", None), ("call.completed", None)]
    assert events[3].data["reason"] == "bridge_restart"
    done = events[4].data
    assert done["transcript"] == lines_of(events[1:3])
    assert [line["text"] for line in done["transcript"]] == [
        "hello I would like to pay my bill", "okay my card number is # # # #"]
    assert {k: done[k] for k in ("reason", "duration_ms", "transcript_lines",
                                 "transcript_truncated", "rebuilt", "analytics")} == {
        "reason": "bridge_restart", "duration_ms": None, "transcript_lines": 2,
        "transcript_truncated": False, "rebuilt": True, "analytics": {}}
    assert receiver.bad_signatures == 0
    assert len({e.webhook_id for e in events}) == len(events)
    for event in events:
        assert "four" not in event.body.decode()
    # The call is closed: its transcript lines left the outbox with it.
    assert query(tmp_path / "outbox.db", "SELECT COUNT(*) FROM live_finals") == [(0,)]


def delete_outbox(directory: Path, name: str) -> None:
    for path in directory.glob(f"{name}*"):
        path.unlink()


async def copied(bridge: BridgeProcess, server: RedisServer, instance: str, call_id: str,
                 lines: int, held: int) -> None:
    """Until the instance's copy of the call in Redis holds ``lines`` transcript lines and
    ``held`` held finals; looked at again after each of the bridge's log lines (its mirror
    logs each pass)."""
    client = redis.Redis.from_url(server.url)
    try:
        async with asyncio.timeout(20):
            while True:
                raw = await client.hget(f"callbridge:outbox-calls:{instance}", call_id)
                record = orjson.loads(raw) if raw is not None else {}
                if (len(record.get("lines", [])), len(record.get("held", []))) == (lines,
                                                                                   held):
                    return
                async with bridge.changed:
                    await bridge.changed.wait()
    finally:
        await client.aclose()


async def test_a_survivor_sends_call_completed_for_a_lost_instances_call(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        redis_server: RedisServer, tmp_path: Path) -> None:
    stt.script = list(SCRIPT)
    config = tmp_path / "hold.toml"
    config.write_text("[compliance]\nhold_s = 10.0\n")
    a = await bridge_factory(CALLBRIDGE_CONFIG=str(config),
                             **_cluster_env(redis_server, tmp_path, "a"))
    b = await bridge_factory(**_cluster_env(redis_server, tmp_path, "b"))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="CA-lost")
    call = asyncio.create_task(stream_call(a.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await receiver.wait_for(lambda events: any(
        e.type == "transcript.final" for e in receiver.of_call("CA-lost")))
    await a.wait_for_log("held finals stored", call_id="CA-lost", leg="inbound", finals=1)
    await copied(a, redis_server, "a", "CA-lost", lines=1, held=1)
    os.kill(a.process.pid, signal.SIGKILL)  # the machine is gone, and its disk with it
    await a.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    delete_outbox(tmp_path, "a.db")

    await receiver.wait_for(completed("CA-lost"), within_s=30)
    await b.wait_for_log("lost instance taken over: its undelivered events are delivered "
                         "from here and its calls ended", instance="a")
    events = receiver.of_call("CA-lost")
    assert [(e.type, e.data.get("sequence")) for e in events] == [
        ("call.started", None), ("transcript.final", 1), ("transcript.final", 2),
        ("call.ended", None), ("call.completed", None)]
    assert events[3].data["reason"] == "instance_lost"
    done = events[4].data
    assert [line["text"] for line in done["transcript"]] == [
        "hello I would like to pay my bill", "okay my card number is # # # #"]
    assert done["transcript"] == lines_of(events[1:3])
    assert done["rebuilt"] is True and done["reason"] == "instance_lost"
    assert receiver.bad_signatures == 0
