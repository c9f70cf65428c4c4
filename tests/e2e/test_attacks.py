"""Attacks from the network against a real ``callbridge serve``: each is refused with its close
code or status, counted, and leaves other calls (the victim's above all) untouched."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, StreamResult, build_call, stream_call
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support import dialects
from tests.support.audio import pcm_program, ulaw
from tests.support.receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

SPEECH = pcm_program(("silence", 200), ("tone", 600, 400), ("silence", 500))
TWILIO_TOKEN = "twilio-auth-token-for-tests"
ADMIN = "admin-token-for-the-attack-tests"


def twilio_call(call_id: str, *, repeat: int = 1, **parameters: str) -> list[tuple[float, str]]:
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH) * repeat},
                    call_id=call_id, custom_parameters=parameters)
    return build_call(spec)


async def first_close(url: str, messages: list[tuple[float, str]],
                      headers: dict[str, str] | None = None) -> int | None:
    """Send ``messages`` at once and return the close code the bridge answers with."""
    async with aiohttp.ClientSession() as session, session.ws_connect(
            url, headers=headers) as ws:
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            for _, text in messages:
                await ws.send_str(text)
        async with asyncio.timeout(20):
            while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE,
                                                    aiohttp.WSMsgType.CLOSED):
                pass
        return ws.close_code


async def scrape(bridge: BridgeProcess, family: str) -> dict[str, float]:
    """Samples of one metric family, by their label text."""
    status, text = await bridge.http("GET", "/metrics")
    assert status == 200
    samples = {}
    for line in text.splitlines():
        if line.startswith(family) and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name.removeprefix(family)] = float(value)
    return samples


async def test_streams_applies_the_credentials_of_the_dialect_it_recognises(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
                                  CALLBRIDGE_INGRESS_AUTH_EXOTEL_BASIC="exo-key:exo-token")
    streams = bridge.url("/streams")
    assert await first_close(streams, twilio_call("CA-unsigned")) == 1008
    exotel = dialects.exotel(ulaw(SPEECH), rate=8000, call_id="EX-unsigned")
    assert await first_close(streams, [(0.0, str(m)) for _, m in exotel]) == 1008
    # Signed as Twilio signs the URL it dialled, the same stream is welcome on /streams.
    signed = f"wss://127.0.0.1:{bridge.port}/streams"
    signature = base64.b64encode(hmac.new(TWILIO_TOKEN.encode(), signed.encode(),
                                          hashlib.sha1).digest()).decode()
    result = await stream_call(streams, twilio_call("CA-signed"), speed=0,
                               headers={"X-Twilio-Signature": signature})
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-signed"))
    assert receiver.of_call("CA-unsigned") == [] and receiver.of_call("EX-unsigned") == []
    refused = bridge.log_events("ingress authentication failed")
    assert [line["dialect"] for line in refused] == ["twilio", "exotel"]
    assert (await scrape(bridge, "callbridge_auth_failures_total"))[
        '{endpoint="streams"}'] == 2


async def test_a_signalwire_stream_recognised_as_twilio_needs_signalwires_token(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_INGRESS_AUTH_BEARER_TOKEN="signalwire-bearer-token")
    streams = bridge.url("/streams")
    assert await first_close(streams, twilio_call("SW-no-token")) == 1008
    result = await stream_call(streams, twilio_call("SW-token"), speed=0,
                               headers={"Authorization": "Bearer signalwire-bearer-token"})
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("SW-token"))
    assert receiver.of_call("SW-no-token") == []


async def test_idle_sockets_never_take_a_call_slot_and_are_closed_at_the_deadline(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_MAX_CALLS="2",
                                  CALLBRIDGE_SERVER_START_TIMEOUT_S="2")
    async with aiohttp.ClientSession() as session:
        idle = [await session.ws_connect(bridge.url("/streams/twilio"), autoping=True)
                for _ in range(6)]
        # Six silent sockets against two call slots: a real call still gets in.
        result = await stream_call(bridge.url("/streams/twilio"), twilio_call("CA-real"),
                                   speed=0)
        assert result.close_code == 1000
        await receiver.wait_for(receiver.ended("CA-real"))
        codes = []
        for ws in idle:
            async with asyncio.timeout(20):
                await ws.receive()
            codes.append(ws.close_code)
            await ws.close()
    assert codes == [1008] * 6
    refused = await scrape(bridge, "callbridge_media_refused_total")
    assert refused['{reason="start_timeout"}'] == 6
    assert len(bridge.log_events("media connection refused: no stream start in time")) == 6


async def test_connections_waiting_to_start_are_capped_per_address(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_MAX_PENDING_PER_ADDRESS="3")
    async with aiohttp.ClientSession() as session:
        waiting = [await session.ws_connect(bridge.url("/streams/twilio")) for _ in range(3)]
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(bridge.url("/streams/twilio"))
        assert caught.value.status == 503
        await waiting[0].close()  # its place is free again
        await bridge.wait_for_log("connection closed before the stream started")
        assert (await scrape(bridge, "callbridge_media_waiting"))[""] == 2
        again = await session.ws_connect(bridge.url("/streams/twilio"))
        for ws in [again, *waiting[1:]]:
            await ws.close()
    assert (await scrape(bridge, "callbridge_media_refused_total"))[
        '{reason="pending_per_address"}'] == 1


async def test_a_request_whose_headers_never_end_is_cut_off(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_HEADER_TIMEOUT_S="1")
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /streams/twilio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    await writer.drain()
    async with asyncio.timeout(20):  # the bridge closes it; the wait bound is generous
        assert await reader.read() == b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_a_second_stream_cannot_take_over_a_live_call_even_across_a_crash(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver, tmp_path: Path) -> None:
    async with WebhookReceiver() as intruders:
        config = tmp_path / "callbridge.toml"
        allowed = intruders.url.rsplit("/", 1)[0]
        config.write_text(f'[webhooks]\ncall_url_allowlist = ["{allowed}"]\n')
        bridge = await bridge_factory(CALLBRIDGE_CONFIG=str(config),
                                      CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN)
        victim = asyncio.create_task(stream_call(bridge.url("/streams/twilio"),
                                                 twilio_call("CA-victim", repeat=40),
                                                 speed=1))
        await receiver.wait_for(lambda events: any(
            e.type == "transcript.final" and e.data["call_id"] == "CA-victim" for e in events))
        intruder = twilio_call("CA-victim", callbridge_webhook_url=intruders.url)
        assert await first_close(bridge.url("/streams"), intruder) == 1008
        refusal = await bridge.wait_for_log("media connection refused")
        assert refusal["reason"] == "another live stream holds this call id"
        # The victim's feed and admin view are its own still.
        status, body = await bridge.http("GET", "/calls/CA-victim", ADMIN)
        assert status == 200 and json.loads(body)["stream_id"].startswith("MZ")
        finals = [e for e in receiver.of_call("CA-victim") if e.type == "transcript.final"]
        bridge.process.send_signal(signal.SIGKILL)
        await bridge.process.wait()
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await victim
        await bridge_factory(CALLBRIDGE_CONFIG=str(config))  # same outbox: recovery
        await receiver.wait_for(receiver.ended("CA-victim"))
        ended = next(e for e in receiver.of_call("CA-victim") if e.type == "call.ended")
        assert ended.data["reason"] == "bridge_restart"
        assert ended.data["legs"][0]["transcripts"] >= len(finals) >= 1
        stream_ids = {e.data["stream_id"] for e in receiver.of_call("CA-victim")}
        assert len(stream_ids) == 1  # nothing published under the intruder's stream
        assert intruders.events == [] and intruders.attempts == 0


async def test_separate_mode_keeps_a_second_stream_apart_under_its_own_id(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_DUPLICATE_CALL_ID="separate")
    first = asyncio.create_task(stream_call(bridge.url("/streams/twilio"),
                                            twilio_call("CA-two", repeat=3), speed=2))
    await bridge.wait_for_log("call started", call_id="CA-two")
    second: StreamResult = await stream_call(bridge.url("/streams/twilio"),
                                             twilio_call("CA-two"), speed=0)
    assert second.close_code == 1000 and (await first).close_code == 1000
    await receiver.wait_for(lambda _: receiver.ended("CA-two")(receiver.events)
                            and receiver.ended("CA-two~2")(receiver.events))
    apart = receiver.of_call("CA-two~2")
    assert {e.data["provider_call_id"] for e in apart} == {"CA-two"}
    for call_id in ("CA-two", "CA-two~2"):
        sequences = [e.data["sequence"] for e in receiver.of_call(call_id)
                     if e.type == "transcript.final"]
        assert sequences == list(range(1, len(sequences) + 1)) and sequences
        assert len({e.data["stream_id"] for e in receiver.of_call(call_id)}) == 1


async def test_hostile_numbers_and_headers_end_cleanly_while_a_call_goes_on(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN,
                                  CALLBRIDGE_INGRESS_AUTH_BEARER_TOKEN="signalwire-bearer-token")
    call = asyncio.create_task(stream_call(bridge.url("/streams/twilio"),
                                           twilio_call("CA-busy", repeat=4), speed=2))
    await bridge.wait_for_log("call started", call_id="CA-busy")
    bad_rate = twilio_call("CA-rate")
    start = json.loads(bad_rate[1][1])
    start["start"]["mediaFormat"]["sampleRate"] = "\u00b2"
    assert await first_close(bridge.url("/streams/twilio"), [(0, json.dumps(start))]) == 1007
    big_clock = twilio_call("CA-clock")
    media = json.loads(big_clock[2][1])
    media["media"]["timestamp"] = "1" + "0" * 400
    assert await first_close(bridge.url("/streams/twilio"),
                             [big_clock[1], (0, json.dumps(media))]) == 1007
    deep = twilio_call("CA-deep", deep="HERE")
    nested = '{"a":' * 1000 + '"x"' + "}" * 1000
    assert await first_close(bridge.url("/streams/twilio"),
                             [(0, deep[1][1].replace('"HERE"', nested))]) == 1002
    for query in ("token=%C2%B2", "last_event_id=%C2%B2&token=" + ADMIN):
        status, _ = await bridge.http("GET", f"/calls/CA-busy/events?{query}")
        assert status in (200, 401)
    # An Authorization header that is not UTF-8: refused and counted, not an error.
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /streams/signalwire HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Authorization: Bearer \xff\xfe\xfd\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 403")
    assert (await call).close_code == 1000
    await receiver.wait_for(lambda events: any(
        e.type == "call.completed" and e.data["call_id"] == "CA-busy" for e in events))
    assert [e.type for e in receiver.of_call("CA-busy")][-2:] == ["call.ended",
                                                                 "call.completed"]
    for quiet in ("CA-rate", "CA-deep"):  # refused at their start: no call at all
        assert receiver.of_call(quiet) == []
    await receiver.wait_for(lambda events: any(  # started, then ended by its clock
        e.type == "call.completed" and e.data["call_id"] == "CA-clock" for e in events))
    assert [(e.type, e.data.get("reason")) for e in receiver.of_call("CA-clock")] == [
        ("call.started", None), ("call.ended", "protocol_error"),
        ("call.completed", "protocol_error")]
    assert not [line for line in bridge.logs if line.get("level") == "error"]
    assert "Traceback" not in "\n".join(bridge.raw_stderr)
    failures = await scrape(bridge, "callbridge_auth_failures_total")
    assert failures['{endpoint="signalwire"}'] == 1


async def test_a_flood_of_provider_errors_is_logged_a_few_times_and_bounded(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory()
    spec = CallSpec("telnyx", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="TX-flood")
    messages = build_call(spec)
    error = json.dumps({"event": "error", "stream_id": spec.stream_id,
                        "payload": {"code": 100002, "title": "t" * 30_000,
                                    "detail": "d" * 30_000}})
    flooded = [*messages[:2], *[(0.0, error)] * 500, *messages[2:]]
    result = await stream_call(bridge.url("/streams/telnyx"), flooded, speed=0)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("TX-flood"))
    logged = bridge.log_events("provider reported a stream error")
    assert len(logged) == 5 and all(len(line["title"]) <= 300 for line in logged)
    summary = await bridge.wait_for_log("call summary", call_id="TX-flood")
    assert summary["provider_errors"] == 500
    assert sum(len(line) for line in bridge.raw_stderr) < 200_000


async def raw_request(bridge: BridgeProcess, head: bytes) -> bytes:
    """Send raw request bytes; the status line the bridge answers with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(head)
    await writer.drain()
    async with asyncio.timeout(10):
        status = await reader.readline()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return status


UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


async def test_bytes_that_are_not_utf8_in_signed_headers_are_a_counted_refusal(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    status = await raw_request(bridge, b"GET /streams/twilio HTTP/1.1\r\nHost: h\xff\xfex\r\n"
                               + UPGRADE + b"X-Twilio-Signature: abc\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 403")
    assert (await scrape(bridge, "callbridge_auth_failures_total"))['{endpoint="twilio"}'] == 1
    assert "Traceback" not in "\n".join(bridge.raw_stderr)


async def test_a_malformed_request_is_one_short_log_line(bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory()
    for _ in range(20):
        status = await raw_request(bridge, b"GET /streams?" + b"A" * 8000 + b"\xff HTTP/1.1\r\n"
                                   b"Host: a\r\n\r\n")
        assert status.split(b" ")[1] == b"400"
    await bridge.http("GET", "/healthz")
    text = "\n".join(bridge.raw_stderr)
    assert "Traceback" not in text and "A" * 400 not in text
    reported = [line for line in bridge.logs if line.get("logger") == "aiohttp.server"]
    assert 1 <= len(reported) <= 20
    assert all(len(json.dumps(line)) < 1000 for line in reported)


async def test_a_feed_token_opens_only_the_stream_it_was_issued_for(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_ADMIN_TOKEN=ADMIN)
    first = asyncio.create_task(stream_call(bridge.url("/streams/twilio"),
                                            twilio_call("CA-feed", repeat=3), speed=2))
    await bridge.wait_for_log("call started", call_id="CA-feed")
    status, body = await bridge.http("POST", "/calls/CA-feed/token", ADMIN)
    assert status == 200
    token = json.loads(body)["token"]
    assert (await first).close_code == 1000
    await receiver.wait_for(receiver.ended("CA-feed"))
    # Later, another stream announces the same call id: the first stream's token is no key
    # to it (nor to its own feed, replaced by the new stream's).
    second = asyncio.create_task(stream_call(bridge.url("/streams/twilio"),
                                             twilio_call("CA-feed", repeat=3), speed=2))
    await bridge.wait_for_log("call started", call_id="CA-feed", occurrence=2)
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bridge.port}/calls/CA-feed/events",
            params={"token": token}) as response:
        assert response.status == 401
    assert (await second).close_code == 1000


async def test_errors_before_the_stream_starts_are_not_logged(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory(CALLBRIDGE_INGRESS_AUTH_STREAM_TOKEN="shared-stream-token")
    error = json.dumps({"event": "error", "stream_id": "x", "payload": {"code": 1, "title": "x"}})
    spec = CallSpec("telnyx", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="TX-no-token")
    messages = build_call(spec)
    assert await first_close(bridge.url("/streams/telnyx"),
                             [(0, error)] * 3 + messages[:2]) == 1008
    assert bridge.log_events("provider reported a stream error") == []


async def test_a_long_refusal_reason_still_closes_with_its_code(
        bridge_factory: BridgeFactory) -> None:
    bridge = await bridge_factory()
    unknown = json.dumps({"event": "\U0001f600" * 40})
    assert await first_close(bridge.url("/streams/twilio"), [(0, unknown)]) == 1002


async def test_pause_marks_beyond_the_limit_make_no_events(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory()
    messages = twilio_call("CA-marks")
    marks = [(0.0, json.dumps({"event": "mark", "streamSid": "MZ", "mark": {
        "name": "callbridge:pause" if n % 2 == 0 else "callbridge:resume"}}))
        for n in range(1000)]
    result = await stream_call(bridge.url("/streams/twilio"),
                               [*messages[:2], *marks, *messages[2:]], speed=0)
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended("CA-marks"))
    toggles = [e for e in receiver.of_call("CA-marks") if e.type.startswith("transcription.")]
    assert len(toggles) == 200
    ended = next(e for e in receiver.of_call("CA-marks") if e.type == "call.ended")
    assert len(ended.body) < 50_000


async def test_only_the_dialects_served_have_a_door(bridge_factory: BridgeFactory,
                                                    receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_DIALECTS="twilio",
                                  CALLBRIDGE_SERVER_HOST="0.0.0.0",  # noqa: S104 - the case
                                  CALLBRIDGE_SERVER_REQUIRE_INGRESS_AUTH="true",
                                  TWILIO_AUTH_TOKEN=TWILIO_TOKEN)
    # It started: the one dialect served has its credential.
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
            await session.ws_connect(bridge.url("/streams/telnyx"))
        assert caught.value.status == 404
    spec = CallSpec("telnyx", AudioEncoding.PCMU, {Track.INBOUND: ulaw(SPEECH)},
                    call_id="TX-not-served")
    assert await first_close(bridge.url("/streams"), build_call(spec)) == 1008
    refusal = await bridge.wait_for_log("media connection refused")
    assert refusal["reason"] == "the telnyx dialect is not served (server.dialects)"
    assert receiver.of_call("TX-not-served") == []
