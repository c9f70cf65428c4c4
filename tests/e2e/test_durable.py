"""Durable delivery end to end: a bridge killed mid-call, and the operator's outbox commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call, stream_call
from tests.conftest import BridgeFactory
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import caller

pytestmark = pytest.mark.e2e

CALLER = caller(("silence", 400), ("tone", 3000, 900))


async def test_a_killed_bridge_delivers_every_stored_final_after_restart(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    receiver.fail_statuses = [503] * 10_000  # the receiver is down while the call runs
    first = await bridge_factory()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-killed")
    call = asyncio.create_task(stream_call(first.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    # Two finals stored (none delivered: the receiver is down), the call still streaming.
    await first.wait_for_log("event stored", event_type="transcript.final",
                             call_id="CA-killed", occurrence=2)
    await first.wait_for_log("webhook attempt failed; will retry", call_id="CA-killed")
    os.kill(first.process.pid, signal.SIGKILL)
    await first.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    receiver.fail_statuses.clear()  # the receiver is back

    second = await bridge_factory()
    await receiver.wait_for(receiver.ended("CA-killed"), within_s=30)
    events = receiver.of_call("CA-killed")
    assert [(e.type, e.data.get("sequence")) for e in events] == [
        ("call.started", None), ("transcript.final", 1), ("transcript.final", 2),
        ("call.ended", None)]
    assert [e.data["text"] for e in events[1:3]] == ["tone 400 hertz", "tone 700 hertz"]
    ended = events[-1].data
    assert ended["reason"] == "bridge_restart"
    assert ended["legs"] == [{"leg": "inbound", "speaker": "caller",
                              "text": "tone 400 hertz tone 700 hertz", "transcripts": 2}]
    await second.wait_for_log("closing calls a previous run left open", calls=1)


async def outbox_command(bridge_env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "outbox", *args, env=bridge_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_operators_see_dead_events_and_replay_them(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    receiver.fail_statuses = [400] * 3  # call.started and the two finals are refused: dead
    bridge = await bridge_factory()
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER[:32000])},
                    call_id="CA-dead")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=0)
    await receiver.wait_for(receiver.ended("CA-dead"))
    env = {**os.environ, "CALLBRIDGE_OUTBOX_PATH": str(tmp_path / "outbox.db")}

    code, status = await outbox_command(env, "status")
    assert code == 0
    [row] = [line.split() for line in status.splitlines() if line.startswith("default")]
    assert row[1:5] == ["0", "0", "3", "0"]  # pending, retrying, dead, kept

    code, listing = await outbox_command(env, "list", "--dead")
    dead = [json.loads(line) for line in listing.splitlines()]
    assert [d["type"] for d in dead] == ["call.started", "transcript.final", "transcript.final"]
    assert all(d["last_status"] == 400 for d in dead)
    assert "hertz" not in listing  # no transcript text in operator listings

    code, replayed = await outbox_command(env, "replay", "--dead")
    assert code == 0 and replayed.startswith("3 deliveries queued again")
    await receiver.wait_for(lambda events: len(receiver.of_call("CA-dead")) == 4)
    assert [e.type for e in receiver.of_call("CA-dead")] == [
        "call.ended", "call.started", "transcript.final", "transcript.final"]

    code, purged = await outbox_command(env, "purge", "--older-than", "0")
    assert code == 0 and purged.startswith("0 events")  # delivered events were deleted at once


async def test_the_call_summary_counts_what_each_webhook_came_to(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    """Rejected events are counted as rejected; events still retrying when the summary is
    written (it waits 10 s) as pending."""
    settings = tmp_path / "callbridge.toml"  # at the end, no waiting on a receiver still down
    settings.write_text("[webhooks]\ndrain_timeout_s = 0.5\n")
    bridge = await bridge_factory(CALLBRIDGE_CONFIG=str(settings))
    receiver.fail_statuses = [400] * 3  # call.started and the first two finals
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-counted")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=8)
    summary = await bridge.wait_for_log("call summary", call_id="CA-counted")
    assert summary["webhooks"] == {"rejected": 3, "delivered": 2}  # the last final, ended

    receiver.fail_statuses = [503] * 10_000  # down: everything is retried past the summary
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-pending")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=8)
    summary = await bridge.wait_for_log("call summary", call_id="CA-pending", within_s=30)
    assert summary["webhooks"] == {"pending": 5}
