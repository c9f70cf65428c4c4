"""The media reader against a real ``callbridge serve``: messages handled as the frame reader
parses them, a handler's error ending the stream at once, and the idle check on a timer."""

from __future__ import annotations

import asyncio
import json
import select
import socket

import aiohttp
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from bridge.events import AudioEncoding, Track
from bridge.simulate import CallSpec, build_call
from tests.conftest import BridgeFactory, BridgeProcess
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import CALLER

pytestmark = pytest.mark.e2e

# Far more than the socket buffers and the bridge's own read queue hold together.
FLOOD_CAP = 48 * 1024 * 1024


def twilio_messages(call_id: str) -> tuple[list[str], list[str]]:
    """The start messages and the media messages of a one-leg Twilio call."""
    spec = CallSpec("twilio", AudioEncoding.PCMU, {Track.INBOUND: ulaw(CALLER)}, call_id=call_id)
    messages = [text for _, text in build_call(spec)]
    head = [m for m in messages if '"media"' not in m][:2]
    media = [m for m in messages if '"media"' in m]
    return head, media


async def send_in_one_write(url: str, messages: list[str | bytes], *,
                            close_after: int = 0) -> tuple[int | None, list[str]]:
    """Open a WebSocket, write ``messages`` as frames in a single write to the socket, and
    read until the server closes (or, with ``close_after``, until it sent that many text
    messages; then close): the close code the server sent (None if none), and its texts."""
    protocol = ClientProtocol(parse_uri(url))
    reader, writer = await asyncio.open_connection("127.0.0.1", parse_uri(url).port)
    texts: list[str] = []
    try:
        protocol.send_request(protocol.connect())
        writer.write(b"".join(protocol.data_to_send()))
        async with asyncio.timeout(20):
            while protocol.handshake_exc is None and not protocol.events_received():
                data = await reader.read(65536)
                assert data, "the server closed during the handshake"
                protocol.receive_data(data)
            assert protocol.handshake_exc is None
            for message in messages:
                if isinstance(message, bytes):
                    protocol.send_binary(message)
                else:
                    protocol.send_text(message.encode())
            writer.write(b"".join(protocol.data_to_send()))
            while protocol.close_rcvd is None:
                data = await reader.read(65536)
                if not data:
                    break
                protocol.receive_data(data)
                texts += [bytes(event.data).decode() for event in protocol.events_received()
                          if isinstance(event, Frame) and event.opcode is Opcode.TEXT]
                if close_after and len(texts) >= close_after and protocol.state is State.OPEN:
                    protocol.send_close(1000)
                writer.write(b"".join(protocol.data_to_send()))  # the answer to its close
        return (None if protocol.close_rcvd is None else protocol.close_rcvd.code), texts
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_bad_message_ends_the_stream_and_no_later_frame_is_handled(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    head, media = twilio_messages("CA-bad-mid-burst")
    # One write: the bad message sits in the middle of what one socket read brings.
    code, _ = await send_in_one_write(bridge.url("/streams/twilio"),
                                      [*head, *media[:65], "{garbage", *media[65:165]])
    assert code == 1002
    events = await receiver.wait_for(receiver.ended("CA-bad-mid-burst"))
    mine = [e for e in events if e.data["call_id"] == "CA-bad-mid-burst"]
    assert mine[-1].data["reason"] == "protocol_error"
    assert [(e.data["sequence"], e.data["text"]) for e in mine
            if e.type == "transcript.final"] == [(1, "tone 400 hertz")]
    summary = await bridge.wait_for_log("call summary", call_id="CA-bad-mid-burst")
    assert summary["legs"]["inbound"]["frames"] == 65
    warnings = bridge.log_events("closing media connection: peer broke the protocol")
    assert [w["close_code"] for w in warnings if w.get("call_id") == "CA-bad-mid-burst"] == [
        1002]


async def test_a_silent_connection_is_pinged_then_closed_and_its_call_still_ends(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_IDLE_CHECK_S="0.3")
    head, media = twilio_messages("CA-goes-silent")
    async with aiohttp.ClientSession() as session, session.ws_connect(
            bridge.url("/streams/twilio"), autoping=False) as ws:
        for text in head + media[:65]:
            await ws.send_str(text)
        async with asyncio.timeout(20):
            first = await ws.receive()
            assert first.type is aiohttp.WSMsgType.PING
            await ws.pong(first.data)  # an answer keeps the connection open ...
            second = await ws.receive()
            assert second.type is aiohttp.WSMsgType.PING  # ... until the next silence
            # No answer this time: the bridge drops the connection without a close frame.
            last = await ws.receive()
        assert last.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    events = await receiver.wait_for(receiver.ended("CA-goes-silent"))
    mine = [e for e in events if e.data["call_id"] == "CA-goes-silent"]
    assert [e.data["text"] for e in mine if e.type == "transcript.final"] == ["tone 400 hertz"]
    assert mine[-1].data["reason"] == "protocol_error"
    warning = await bridge.wait_for_log("closing media connection: peer broke the protocol",
                                        call_id="CA-goes-silent")
    assert warning["error"] == "WebSocket error: TimeoutError"



async def test_audiohook_replies_come_in_order_when_its_messages_arrive_together(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    def message(seq: int, kind: str, parameters: dict[str, object]) -> str:
        return json.dumps({"version": "2", "id": "ah-burst", "type": kind, "seq": seq,
                           "serverseq": 0, "position": "PT0S", "parameters": parameters})

    audio = ulaw(CALLER)[:8000]  # one second of the caller, mono
    burst: list[str | bytes] = [message(1, "open", {
        "organizationId": "org", "conversationId": "conv-ah-burst",
        "participant": {"id": "p", "ani": "+1", "aniName": "", "dnis": "+2"},
        "media": [{"type": "audio", "format": "PCMU", "channels": ["external"],
                   "rate": 8000}]})]
    burst += [audio[n:n + 1600] for n in range(0, len(audio), 1600)]
    burst += [message(2, "ping", {}), message(3, "ping", {}),
              message(4, "close", {"reason": "end"})]
    code, replies = await send_in_one_write(bridge.url("/streams/audiohook"), burst,
                                            close_after=4)
    assert code == 1000
    assert [(r["type"], r["seq"], r["clientseq"]) for r in map(json.loads, replies)] == [
        ("opened", 1, 1), ("pong", 2, 2), ("pong", 3, 3), ("closed", 4, 4)]
    await receiver.wait_for(receiver.ended("conv-ah-burst"))


def flood_audiohook(url: str, call_id: str) -> tuple[socket.socket, int]:
    """Open an AudioHook stream and ping as fast as the bridge takes it, never reading a
    pong: the socket, and the bytes sent once the bridge stopped taking them (seconds
    without progress), dropped the connection, or took more than ``FLOOD_CAP``."""
    session = "s" * 256  # the longest session id: the largest replies

    def message(seq: int, kind: str, parameters: dict[str, object]) -> bytes:
        return json.dumps({"version": "2", "id": session, "type": kind, "seq": seq,
                           "serverseq": 0, "position": "PT0S",
                           "parameters": parameters}).encode()

    protocol = ClientProtocol(parse_uri(url))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.connect(("127.0.0.1", parse_uri(url).port))
    protocol.send_request(protocol.connect())
    client.sendall(b"".join(protocol.data_to_send()))
    while protocol.handshake_exc is None and not protocol.events_received():
        protocol.receive_data(client.recv(65536))
    assert protocol.handshake_exc is None
    protocol.send_text(message(1, "open", {
        "organizationId": "org", "conversationId": call_id,
        "participant": {"id": "p", "ani": "+1", "aniName": "", "dnis": "+2"},
        "media": [{"type": "audio", "format": "PCMU", "channels": ["external"],
                   "rate": 8000}]}))
    client.sendall(b"".join(protocol.data_to_send()))
    client.setblocking(False)
    sent, seq = 0, 1
    while sent < FLOOD_CAP:
        for _ in range(100):
            seq += 1
            protocol.send_text(message(seq, "ping", {}))
        pending = memoryview(b"".join(protocol.data_to_send()))
        while pending:
            _, writable, _ = select.select([], [client], [], 5)
            if not writable:
                return client, sent
            try:
                written = client.send(pending)
            except ConnectionError:
                return client, sent
            pending, sent = pending[written:], sent + written
    return client, sent


async def test_a_peer_that_never_reads_its_replies_is_not_read_from_either(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    # An AudioHook client may ping as fast as it likes and never read a pong: the replies
    # it leaves unread must stop the bridge reading its messages (back-pressure), not pile
    # up in the bridge's memory.
    client, sent = await asyncio.to_thread(
        flood_audiohook, bridge.url("/streams/audiohook"), "conv-never-reads")
    client.close()  # unread pongs in its buffer: the bridge sees a reset mid-write
    assert sent < FLOOD_CAP
    # The peer went away while the bridge was writing to it: its doing, not the bridge's.
    events = await receiver.wait_for(receiver.ended("conv-never-reads"))
    ended = [e for e in events if e.type == "call.ended"
             and e.data["call_id"] == "conv-never-reads"]
    assert ended[-1].data["reason"] == "disconnected"
    assert not bridge.log_events("closing media connection: internal error")


async def test_a_peer_that_reads_nothing_and_falls_silent_is_dropped_and_its_call_ends(
        bridge_factory: BridgeFactory, receiver: WebhookReceiver) -> None:
    bridge = await bridge_factory(CALLBRIDGE_SERVER_IDLE_CHECK_S="0.5")
    client, _ = await asyncio.to_thread(
        flood_audiohook, bridge.url("/streams/audiohook"), "conv-stays-silent")
    try:
        # The peer stays connected, reads nothing, says nothing: the idle check drops it,
        # though the bridge's pongs still wait in its full socket.
        events = await receiver.wait_for(receiver.ended("conv-stays-silent"))
    finally:
        client.close()
    ended = [e for e in events if e.type == "call.ended"
             and e.data["call_id"] == "conv-stays-silent"]
    assert ended[-1].data["reason"] == "protocol_error"
    warning = await bridge.wait_for_log("closing media connection: peer broke the protocol",
                                        call_id="conv-stays-silent")
    assert warning["error"] == "WebSocket error: TimeoutError"
