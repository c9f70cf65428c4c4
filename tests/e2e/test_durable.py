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
from tests.support.audio import pcm_program, ulaw
from tests.support.outbox_file import query
from tests.support.receiver import WebhookReceiver
from tests.support.speech import caller
from tests.support.telnyx_stt import TelnyxSttEmulator

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
    # call.ended and call.completed delivered; the rest dead.
    await receiver.wait_for(lambda events: len(receiver.of_call("CA-dead")) == 2)
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
    await receiver.wait_for(lambda events: len(receiver.of_call("CA-dead")) == 5)
    assert [e.type for e in receiver.of_call("CA-dead")] == [
        "call.ended", "call.completed", "call.started", "transcript.final", "transcript.final"]

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
    # The last final, call.ended and call.completed.
    assert summary["webhooks"] == {"rejected": 3, "delivered": 3}

    receiver.fail_statuses = [503] * 10_000  # down: everything is retried past the summary
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)},
                    call_id="CA-pending")
    await stream_call(bridge.url("/streams/twilio"), build_call(spec), speed=8)
    summary = await bridge.wait_for_log("call summary", call_id="CA-pending", within_s=30)
    assert summary["webhooks"] == {"pending": 6}


HELD_SPEECH = pcm_program(("silence", 200), ("tone", 1200, 400), ("silence", 8000))
HELD_SCRIPT = ["okay my card number is four one one one"]


def outbox_files(directory: Path) -> dict[str, bytes]:
    """The outbox file and its side files (-wal, -shm), as they are on disk now."""
    return {f.name: f.read_bytes() for f in sorted(directory.glob("outbox.db*"))}


async def test_a_final_held_for_redaction_survives_a_kill_masked_and_never_on_disk(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = list(HELD_SCRIPT)
    config = tmp_path / "hold.toml"
    config.write_text("[compliance]\nhold_s = 10.0\n")  # the kill lands inside the hold
    first = await bridge_factory(CALLBRIDGE_CONFIG=str(config))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(HELD_SPEECH)},
                    call_id="CA-held")
    call = asyncio.create_task(stream_call(first.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await first.wait_for_log("held finals stored", call_id="CA-held", leg="inbound", finals=1)
    os.kill(first.process.pid, signal.SIGKILL)
    await first.process.wait()
    with contextlib.suppress(aiohttp.ClientError, ConnectionError):
        await call
    sent = " ".join(json.dumps(frame) for s in stt.sessions for frame in s.sent)
    assert "four one one one" in sent  # the engine did say it, then the bridge died
    assert not any(e.type == "transcript.final" for e in receiver.of_call("CA-held"))
    files = outbox_files(tmp_path)
    assert {"outbox.db", "outbox.db-wal"} <= set(files)
    on_disk = b"".join(files.values())
    assert b"okay my card number is # # # #" in on_disk  # held, masked
    assert b"four" not in on_disk and b"one one" not in on_disk

    second = await bridge_factory(CALLBRIDGE_CONFIG=str(config))
    await receiver.wait_for(lambda _: [e.type for e in receiver.of_call("CA-held")][-1:] == [
        "call.completed"], within_s=30)
    await second.wait_for_log("closing calls a previous run left open", calls=1)
    events = receiver.of_call("CA-held")[:-1]  # call.completed: tests/e2e/test_completed.py
    assert [(e.type, e.data.get("sequence")) for e in events] == [
        ("call.started", None), ("transcript.final", 1), ("call.ended", None)]
    final = events[1].data
    assert final["text"] == "okay my card number is # # # #"
    assert final["redactions"] == [{"type": "masked_unreleased", "count": 1}]
    assert events[-1].data["legs"] == [{"leg": "inbound", "speaker": "caller",
                                        "text": "okay my card number is # # # #",
                                        "transcripts": 1}]
    for event in events:
        assert "four" not in event.body.decode()
    on_disk = b"".join(outbox_files(tmp_path).values())
    assert b"four" not in on_disk and b"one one" not in on_disk


def held_rows(directory: Path) -> int:
    [(count,)] = query(directory / "outbox.db", "SELECT COUNT(*) FROM held_finals")
    assert isinstance(count, int)
    return count


async def test_a_held_final_released_in_time_goes_out_redacted_and_its_masked_copy_goes(
        bridge_factory: BridgeFactory, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        tmp_path: Path) -> None:
    stt.script = [*HELD_SCRIPT, "one one one one one one one one one one one one thanks"]
    bridge = await bridge_factory()
    speech = pcm_program(("silence", 200), ("tone", 1200, 400), ("silence", 600),
                         ("tone", 1200, 500), ("silence", 600))
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(speech)},
                    call_id="CA-released")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"), build_call(spec),
                                           speed=1))
    await bridge.wait_for_log("held finals stored", call_id="CA-released", finals=1)
    await bridge.wait_for_log("held finals stored", call_id="CA-released", finals=0)
    await call
    await receiver.wait_for(receiver.ended("CA-released"))
    finals = [e.data for e in receiver.of_call("CA-released") if e.type == "transcript.final"]
    assert [(f["sequence"], f["text"]) for f in finals] == [
        (1, "okay my card number is [credit_card]"), (2, "thanks")]
    assert held_rows(tmp_path) == 0
