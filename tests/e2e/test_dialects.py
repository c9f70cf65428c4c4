"""Every further dialect end to end: a call through a real server, webhooks checked per leg,
and the audio each leg's upstream received compared with what was streamed."""

from __future__ import annotations

import json

import pytest

from bridge.codecs.pcm import split_stereo
from bridge.codecs.resample import resample
from bridge.simulate import stream_call
from tests.conftest import BridgeProcess
from tests.support import dialects
from tests.support.audio import ulaw
from tests.support.receiver import WebhookReceiver
from tests.support.speech import AGENT, AGENT_SAYS, CALLER, CALLER_SAYS
from tests.support.telnyx_stt import TelnyxSttEmulator

pytestmark = pytest.mark.e2e



def at(rate: int, pcm: bytes) -> bytes:
    return resample(pcm, rate_in=8000, rate_out=rate)


def interleave(left: bytes, right: bytes) -> bytes:
    size = min(len(left), len(right))
    return b"".join(left[n:n + 2] + right[n:n + 2] for n in range(0, size, 2))


def finals(receiver: WebhookReceiver, call_id: str) -> dict[str, list[str]]:
    by_leg: dict[str, list[str]] = {}
    for event in receiver.of_call(call_id):
        if event.type == "transcript.final":
            by_leg.setdefault(event.data["leg"], []).append(event.data["text"])
    return by_leg




async def play(bridge: BridgeProcess, receiver: WebhookReceiver, path: str,
               messages: list[dialects.Message], call_id: str, **kwargs: object) -> None:
    result = await stream_call(bridge.url(path), messages, speed=0, **kwargs)  # type: ignore[arg-type]
    assert result.close_code == 1000
    await receiver.wait_for(receiver.ended(call_id))


async def test_plivo_l16_two_legs(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                  receiver: WebhookReceiver) -> None:
    tracks = {"inbound": at(16000, CALLER), "outbound": at(16000, AGENT)}
    await play(bridge, receiver, "/streams/plivo",
               dialects.plivo(tracks, encoding="audio/x-l16", rate=16000, call_id="plivo-1"),
               "plivo-1")
    assert finals(receiver, "plivo-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    started = receiver.of_call("plivo-1")[0].data
    assert started["custom_parameters"] == {"tenant": "acme", "agent": "7"}
    assert {(s.param("input_format"), s.param("sample_rate")) for s in stt.sessions} == {
        ("linear16", "16000")}  # a 16 kHz leg goes up at 16 kHz
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted(tracks.values())


async def test_plivo_mulaw_recognised_on_the_common_endpoint(
        bridge: BridgeProcess, receiver: WebhookReceiver) -> None:
    tracks = {"inbound": ulaw(CALLER)}
    await play(bridge, receiver, "/streams",
               dialects.plivo(tracks, encoding="audio/x-mulaw", rate=8000, call_id="plivo-2"),
               "plivo-2")
    assert receiver.of_call("plivo-2")[0].data["provider"] == "plivo"
    assert finals(receiver, "plivo-2") == {"inbound": CALLER_SAYS}
    assert receiver.of_call("plivo-2")[-1].data["reason"] == "disconnected"  # Plivo: no stop


async def test_signalwire_big_endian_l16(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                         receiver: WebhookReceiver) -> None:
    tracks = {"inbound": at(16000, CALLER), "outbound": at(16000, AGENT)}
    await play(bridge, receiver, "/streams/signalwire",
               dialects.signalwire_l16(tracks, rate=16000, call_id="sw-1"), "sw-1")
    assert finals(receiver, "sw-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted(tracks.values())


async def test_exotel_linear_pcm(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                 receiver: WebhookReceiver) -> None:
    await play(bridge, receiver, "/streams/exotel",
               dialects.exotel(CALLER, rate=8000, call_id="ex-call"), "ex-call")
    assert finals(receiver, "ex-call") == {"inbound": CALLER_SAYS}
    [session] = stt.sessions
    assert session.param("input_format") == "linear16" and bytes(session.audio) == CALLER


async def test_bandwidth_two_tracks(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                    receiver: WebhookReceiver) -> None:
    tracks = {"inbound": ulaw(CALLER), "outbound": ulaw(AGENT)}
    await play(bridge, receiver, "/streams/bandwidth",
               dialects.bandwidth(tracks, call_id="bw-1"), "bw-1")
    assert finals(receiver, "bw-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    assert receiver.of_call("bw-1")[0].data["custom_parameters"] == {"queue": "billing"}
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted(tracks.values())


async def test_vonage_one_mixed_leg(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                    receiver: WebhookReceiver) -> None:
    audio = at(16000, CALLER)
    metadata = json.dumps({"event": "websocket:connected",
                           "content-type": "audio/l16;rate=16000", "call_id": "vonage-1",
                           "customer": "42"})
    await play(bridge, receiver, "/streams/vonage",
               dialects.binary(metadata, audio, rate=16000, channels=1), "vonage-1")
    assert finals(receiver, "vonage-1") == {"mixed": CALLER_SAYS}
    first = receiver.of_call("vonage-1")[1].data
    assert first["speaker"] == "call" and first["custom_parameters"]["customer"] == "42"
    [session] = stt.sessions
    assert bytes(session.audio) == audio


async def test_audiofork_stereo_is_two_legs(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                            receiver: WebhookReceiver) -> None:
    stereo = interleave(CALLER, AGENT)
    await play(bridge, receiver, "/streams/audiofork?mix=stereo&rate=8000",
               dialects.binary('{"callId": "fs-1"}', stereo, rate=8000, channels=2), "fs-1",
               protocols=("audio.drachtio.org",))
    assert finals(receiver, "fs-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    caller, agent = split_stereo(stereo)
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted([caller, agent])


async def test_jambonz_listen_stereo_16k(bridge: BridgeProcess, stt: TelnyxSttEmulator,
                                         receiver: WebhookReceiver) -> None:
    stereo = interleave(at(16000, CALLER), at(16000, AGENT))
    metadata = json.dumps({"callSid": "jb-1", "sampleRate": 16000, "mixType": "stereo",
                           "from": "+15551230000"})
    await play(bridge, receiver, "/streams/jambonz",
               dialects.binary(metadata, stereo, rate=16000, channels=2), "jb-1",
               protocols=("audio.jambonz.org",))
    assert finals(receiver, "jb-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    assert {s.param("sample_rate") for s in stt.sessions} == {"16000"}


async def test_audiohook_stereo_with_inverted_channels(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver) -> None:
    agent, caller = ulaw(AGENT), ulaw(CALLER)
    size = min(len(agent), len(caller))
    stereo = bytes(b for pair in zip(agent[:size], caller[:size], strict=True) for b in pair)

    def message(seq: int, kind: str, parameters: dict[str, object]) -> str:
        return json.dumps({"version": "2", "id": "ah-session", "type": kind, "seq": seq,
                           "serverseq": 0, "position": "PT0S", "parameters": parameters})

    media = [{"type": "audio", "format": "PCMU", "channels": ["internal", "external"],
              "rate": 8000}]
    messages: list[dialects.Message] = [(0.0, message(1, "open", {
        "organizationId": "org", "conversationId": "conv-ah-1",
        "participant": {"id": "p", "ani": "+1", "aniName": "", "dnis": "+2"},
        "media": media}))]
    messages += [(n * 0.2, stereo[n * 3200:(n + 1) * 3200])
                 for n in range(-(-len(stereo) // 3200))]
    messages += [(messages[-1][0], message(2, "ping", {})),
                 (messages[-1][0], message(3, "close", {"reason": "end"}))]
    await play(bridge, receiver, "/streams/audiohook", messages, "conv-ah-1")
    # the first channel listed is the agent (internal): it must land on the outbound leg
    assert finals(receiver, "conv-ah-1") == {"inbound": CALLER_SAYS, "outbound": AGENT_SAYS}
    assert receiver.of_call("conv-ah-1")[-1].data["reason"] == "stopped"
    assert sorted(bytes(s.audio) for s in stt.sessions) == sorted([caller[:size], agent[:size]])


@pytest.mark.parametrize(("codec", "announced"), [("G722", 8000), ("OPUS", 16000)])
async def test_telnyx_compressed_codecs_are_decoded(
        bridge: BridgeProcess, stt: TelnyxSttEmulator, receiver: WebhookReceiver,
        codec: str, announced: int) -> None:
    from tests.support.encode import encode_packets

    tracks = {"inbound": encode_packets(at(16000, CALLER), codec.lower(), 16000),
              "outbound": encode_packets(at(16000, AGENT), codec.lower(), 16000)}
    call_id = f"tx-{codec}"
    await play(bridge, receiver, "/streams/telnyx",
               dialects.telnyx_packets(tracks, codec=codec, rate=announced, call_id=call_id),
               call_id)
    heard = finals(receiver, call_id)
    # Lossy codecs ring a little after each tone, which the emulator's crude pitch
    # measurement hears: the tones must come back within 15 %.
    for leg, expected in (("inbound", [400, 700]), ("outbound", [1000])):
        pitches = [int(text.split()[1]) for text in heard[leg]]
        assert len(pitches) == len(expected)
        assert all(abs(p - e) <= 0.15 * e for p, e in zip(pitches, expected, strict=True))
    assert {(s.param("input_format"), s.param("sample_rate")) for s in stt.sessions} == {
        ("linear16", "16000")}


@pytest.mark.parametrize(("path", "offered", "selected"), [
    ("/streams/audiofork", ("audio.drachtio.org",), "audio.drachtio.org"),
    ("/streams/jambonz", ("audio.jambonz.org",), "audio.jambonz.org"),
    ("/streams/audiohook", (), None),  # Genesys offers none and aborts if one is chosen
    ("/streams/twilio", ("something-else",), None),
])
async def test_subprotocols_are_echoed_only_when_offered(
        bridge: BridgeProcess, path: str, offered: tuple[str, ...],
        selected: str | None) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(
            bridge.url(path), protocols=offered) as ws:
        assert ws.protocol == selected
